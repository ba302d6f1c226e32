//! Client IP chain captured at upgrade time (spec §1.2).

use std::net::IpAddr;

/// Builds the list of client IPs forwarded to Nextcloud as `X-Forwarded-For` during login.
///
/// 1. `X-Forwarded-For` if present and *every* comma-separated, trimmed entry parses as an IP
///    (header order); otherwise `X-Real-IP` (one IP); otherwise the `for=` entries of
///    `Forwarded` that are IPs; otherwise nothing.
/// 2. The TCP peer is appended (none on a Unix socket).
pub fn client_ip_chain(
    xff: Option<&str>,
    x_real_ip: Option<&str>,
    forwarded: Option<&str>,
    peer: Option<IpAddr>,
) -> Vec<IpAddr> {
    let mut chain = xff
        .and_then(|xff| {
            xff.split(',')
                .map(|entry| entry.trim().parse::<IpAddr>().ok())
                .collect::<Option<Vec<_>>>()
        })
        .or_else(|| x_real_ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok()).map(|ip| vec![ip]))
        .or_else(|| forwarded.map(forwarded_for))
        .unwrap_or_default();
    chain.extend(peer);
    chain
}

/// RFC 7239 `for=` values that are IP addresses (`for=192.0.2.1`, `for="[2001:db8::1]:4711"`).
fn forwarded_for(header: &str) -> Vec<IpAddr> {
    header
        .split([',', ';'])
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            if !key.trim().eq_ignore_ascii_case("for") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            if let Some(v6) = value.strip_prefix('[') {
                return v6.split(']').next()?.parse().ok();
            }
            if let Ok(ip) = value.parse() {
                return Some(ip);
            }
            // IPv4 with a port
            let (host, _port) = value.rsplit_once(':')?;
            host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
        })
        .collect()
}

/// The chain as Nextcloud receives it: `ip1, ip2` (empty string for an empty chain).
pub(crate) fn join_chain(chain: &[IpAddr]) -> String {
    chain.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn xff_in_order_then_peer() {
        let chain = client_ip_chain(
            Some("203.0.113.7, 10.0.0.2"),
            Some("1.1.1.1"),
            None,
            Some(ip("::ffff:127.0.0.1")),
        );
        assert_eq!(chain, vec![ip("203.0.113.7"), ip("10.0.0.2"), ip("::ffff:127.0.0.1")]);
        assert_eq!(join_chain(&chain), "203.0.113.7, 10.0.0.2, ::ffff:127.0.0.1");
    }

    #[test]
    fn one_bad_xff_entry_drops_the_header() {
        let peer = Some(ip("127.0.0.1"));
        assert_eq!(
            client_ip_chain(Some("1.2.3.4, unknown"), None, None, peer),
            vec![ip("127.0.0.1")]
        );
        assert_eq!(
            client_ip_chain(Some("1.2.3.4:80"), Some("5.6.7.8"), None, peer),
            vec![ip("5.6.7.8"), ip("127.0.0.1")]
        );
        assert_eq!(
            client_ip_chain(
                Some("bad"),
                Some("bad"),
                Some("for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""),
                None
            ),
            vec![ip("192.0.2.60"), ip("2001:db8::1")]
        );
        assert_eq!(
            client_ip_chain(None, None, Some("for=_hidden, for=198.51.100.1:8080"), None),
            vec![ip("198.51.100.1")]
        );
        assert!(client_ip_chain(None, None, None, None).is_empty());
        assert_eq!(join_chain(&[]), "");
    }
}
