//! Client IP without `trusted_proxies`.
//!
//! The push daemon calls Nextcloud (login check, `/test/remote`, …) through this Apache over
//! loopback and vouches for the client it acts for with `X-Nextcloud-Push-Vouch` (see
//! `nextcloud_push_engine::vouch`). [`post_read_request`] runs before mod_remoteip for every
//! request: it removes the header from every request, forged or not, and only when the TCP peer
//! (`c->client_ip`) is a loopback address and the MAC is valid under the daemon's key does it
//! set `r->useragent_ip`/`r->useragent_addr` to the vouched address. mod_php and php-fpm
//! (mod_proxy_fcgi) pass that on as `REMOTE_ADDR`, so Nextcloud's `getRemoteAddress()` and its
//! brute-force protection see each client's own address.
//!
//! [`vhost_address`] computes, in post_config, where the daemon connects: the vhost's own
//! address and port (`*` becomes 127.0.0.1).

use super::log::{log_at, Severity};
use super::{ffi, pool, server_config};
use nextcloud_push_engine::vouch;
use std::ffi::{c_char, c_int, CStr, CString};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The header as a C string for the APR table calls.
const HEADER: &CStr = c"X-Nextcloud-Push-Vouch";

/// `post_read_request`: strip the vouching header, apply a valid one. Always DECLINED.
///
/// # Safety
/// `r` must be the live request of the current hook.
pub unsafe fn post_read_request(r: *mut ffi::request_rec) -> c_int {
    let declined = ffi::DECLINED;
    if r.is_null() {
        return declined;
    }
    // SAFETY: live request; headers_in is its table, the value a pool string.
    let value = unsafe { pool::cstr(ffi::apr_table_get((*r).headers_in, HEADER.as_ptr())) };
    let Some(value) = value.map(str::to_owned) else { return declined };
    // SAFETY: live table; removes every occurrence, so nothing later (PHP included) sees it.
    unsafe { ffi::apr_table_unset((*r).headers_in, HEADER.as_ptr()) };

    // SAFETY: every request has its live connection; client_ip is a pool string.
    let peer = unsafe { pool::cstr((*(*r).connection).client_ip) }
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    // SAFETY: the request's live server; request threads only read the configuration.
    let conf = unsafe { server_config::get_ref((*r).server) };
    let key = conf.and_then(|c| c.runtime.vouch_key.as_ref());
    let vouched = match (peer, key) {
        (Some(peer), Some(key)) if vouch::is_loopback(peer) => {
            key.verify(&value, vouch::now_secs())
        }
        _ => None,
    };
    let Some(client) = vouched else {
        ::log::debug!(
            target: "nextcloud_push::apache",
            "NCP0041: stripped an {} header without effect (peer {}; only the push daemon over \
             loopback can vouch)",
            vouch::HEADER,
            peer.map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        return declined;
    };
    // SAFETY: live request on its own thread.
    if unsafe { set_useragent(r, client) } {
        ::log::debug!(
            target: "nextcloud_push::apache",
            "NCP0042: request from the push daemon on behalf of client {client}"
        );
    }
    declined
}

/// Sets `r->useragent_ip` and `r->useragent_addr` (keeping the port) as mod_remoteip does.
///
/// # Safety
/// `r` must be a live request used on its own thread.
unsafe fn set_useragent(r: *mut ffi::request_rec, client: IpAddr) -> bool {
    let Ok(text) = CString::new(client.to_string()) else { return false };
    // SAFETY: per contract; useragent_addr (or the connection's client_addr) is a live sockaddr.
    unsafe {
        let old = if (*r).useragent_addr.is_null() {
            (*(*r).connection).client_addr
        } else {
            (*r).useragent_addr
        };
        let port = if old.is_null() { 0 } else { (*old).port };
        let mut sa: *mut ffi::apr_sockaddr_t = std::ptr::null_mut();
        let rv = ffi::apr_sockaddr_info_get(
            &mut sa,
            text.as_ptr(),
            0, // APR_UNSPEC: a numeric address, no lookup
            port,
            ffi::APR_IPV4_ADDR_OK as i32,
            (*r).pool,
        );
        if rv != 0 || sa.is_null() {
            log_at((*r).server, Severity::Debug, &format!("cannot parse vouched address {client}"));
            return false;
        }
        (*r).useragent_addr = sa;
        (*r).useragent_ip = pool::pstr((*r).pool, &client.to_string()) as *mut c_char;
    }
    true
}

/// The port a Nextcloud URL connects to: explicit, else 443 for https and 80 for http.
pub fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let explicit = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => Some(port),
        _ => None,
    };
    match explicit {
        Some(port) => port.parse().ok(),
        None => match scheme.to_ascii_lowercase().as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    }
}

/// Where the daemon reaches this vhost: its own address (a wildcard becomes 127.0.0.1) and
/// port, preferring the address whose port is the Nextcloud URL's. The bool says whether the
/// port matched. `None` if the server has no usable address.
///
/// # Safety
/// Parent, in post_config; `s` must be a live server_rec.
pub unsafe fn vhost_address(s: *const ffi::server_rec, url: &str) -> Option<(SocketAddr, bool)> {
    let want = url_port(url);
    let mut candidates: Vec<SocketAddr> = Vec::new();
    // SAFETY: per contract; `addrs` is the server's NULL-terminated list of live records.
    unsafe {
        let mut a = (*s).addrs;
        while !a.is_null() {
            let ip = sockaddr_ip((*a).host_addr);
            let port = if (*a).host_port != 0 { (*a).host_port } else { (*s).port };
            if let (Some(ip), true) = (ip, port != 0) {
                candidates.push(SocketAddr::new(loopback_for(ip), port));
            }
            a = (*a).next;
        }
        if candidates.is_empty() {
            // The main server (its address is the wildcard with port 0): Apache's listeners.
            let mut l = ffi::ap_listeners;
            while !l.is_null() {
                if let Some(ip) = sockaddr_ip((*l).bind_addr) {
                    let port = (*(*l).bind_addr).port;
                    if port != 0 {
                        candidates.push(SocketAddr::new(loopback_for(ip), port));
                    }
                }
                l = (*l).next;
            }
        }
    }
    if let Some(found) = candidates.iter().find(|c| Some(c.port()) == want) {
        return Some((*found, true));
    }
    candidates.first().map(|c| (*c, false))
}

/// A wildcard listens on loopback too.
fn loopback_for(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    }
}

/// # Safety
/// `sa` must be NULL or a live apr_sockaddr_t.
unsafe fn sockaddr_ip(sa: *mut ffi::apr_sockaddr_t) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    let mut text: *mut c_char = std::ptr::null_mut();
    // SAFETY: live sockaddr; the string is allocated from the sockaddr's pool.
    let rv = unsafe { ffi::apr_sockaddr_ip_get(&mut text, sa) };
    if rv != 0 {
        return None;
    }
    // SAFETY: NULL or a NUL-terminated pool string.
    unsafe { pool::cstr(text) }.and_then(|t| t.parse().ok())
}

/// The host of a URL if it is an IP literal (`http://127.0.0.1:8080/`, `http://[::1]/`).
pub fn url_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    host_port.split(':').next()?.parse().ok()
}

/// Logs how engine `index` reaches Nextcloud (NCP0043).
pub fn log_route(
    s: *const ffi::server_rec,
    index: usize,
    url: &str,
    route: Option<(SocketAddr, bool)>,
) {
    let literal = url_ip(url);
    let msg = match (route, literal) {
        (Some(_), Some(ip)) if vouch::is_loopback(ip) => format!(
            "NCP0043: engine {index} calls Nextcloud at {url} as written (an IP-literal URL is              not redirected); it is a loopback address, so client addresses are vouched for"
        ),
        (Some(_), Some(_)) => format!(
            "NCP0043: engine {index} calls Nextcloud at {url} as written (an IP-literal URL is              not redirected, and not over loopback: no vouching); use a host name to go              through this Apache, or add this server to trusted_proxies"
        ),
        (route, _) => return log_named_route(s, index, url, route),
    };
    log_at(s, Severity::Info, &msg);
}

fn log_named_route(
    s: *const ffi::server_rec,
    index: usize,
    url: &str,
    route: Option<(SocketAddr, bool)>,
) {
    let msg = match route {
        Some((addr, true)) => format!(
            "NCP0043: engine {index} calls Nextcloud ({url}) through this Apache at {addr} over \
             loopback, vouching for client addresses (no trusted_proxies entry needed)"
        ),
        Some((addr, false)) => format!(
            "NCP0043: engine {index} calls Nextcloud ({url}) through this Apache at {addr} over \
             loopback (no listener on the URL's port {}), vouching for client addresses",
            url_port(url).map_or_else(|| "?".to_owned(), |p| p.to_string())
        ),
        None => format!(
            "NCP0043: engine {index} calls Nextcloud at {url} directly (NextcloudPushLoopback Off \
             or no vhost address); Nextcloud sees clients through X-Forwarded-For and needs this \
             server in trusted_proxies"
        ),
    };
    log_at(s, Severity::Info, &msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_ports() {
        assert_eq!(url_port("https://cloud.example.com/"), Some(443));
        assert_eq!(url_port("http://cloud.example.com"), Some(80));
        assert_eq!(url_port("https://cloud.example.com:8443/nextcloud/"), Some(8443));
        assert_eq!(url_port("http://user:pw@host:81/x"), Some(81));
        assert_eq!(url_port("http://[::1]:8080/"), Some(8080));
        assert_eq!(url_port("http://[::1]/"), Some(80));
        assert_eq!(url_port("HTTPS://Cloud/"), Some(443));
        assert_eq!(url_port("ftp://x/"), None);
        assert_eq!(url_port("nonsense"), None);
    }

    #[test]
    fn url_ips() {
        assert_eq!(url_ip("http://127.0.0.1:8080/x"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(url_ip("http://[::1]/"), Some("::1".parse().unwrap()));
        assert_eq!(url_ip("https://u:p@10.0.0.5/"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(url_ip("https://cloud.example.com/"), None);
    }

    #[test]
    fn wildcards_become_loopback() {
        assert_eq!(loopback_for("0.0.0.0".parse().unwrap()), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(loopback_for("::".parse().unwrap()), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            loopback_for("192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
