//! The client-IP vouching header: how the push daemon tells the Apache it runs in
//! which client a request to Nextcloud is made for, so Nextcloud sees that client's address as
//! `REMOTE_ADDR` without any `trusted_proxies` entry.
//!
//! The daemon reaches Nextcloud through the same Apache over loopback and adds
//! `X-Nextcloud-Push-Vouch: v1 <unix seconds> <client ip> <hex HMAC-SHA256>` where the MAC covers
//! `v1 <unix seconds> <client ip>` under a per-daemon random key the Apache parent generated
//! before it forked the daemon (Apache children inherit it). The module's `post_read_request`
//! hook strips the header from every request and honours it only on a loopback connection, with
//! a valid MAC (constant-time comparison) and a timestamp within [`MAX_SKEW_SECS`].
//!
//! Pure code: signing here, verifying here too (the Apache glue calls [`VouchKey::verify`]).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::net::IpAddr;

/// The request header name.
pub const HEADER: &str = "X-Nextcloud-Push-Vouch";
/// A vouch older or newer than this (seconds) is refused, so a leaked header line is useless
/// soon after.
pub const MAX_SKEW_SECS: u64 = 60;
/// Key length in bytes.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The per-daemon secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct VouchKey([u8; KEY_LEN]);

impl fmt::Debug for VouchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VouchKey(****)")
    }
}

impl VouchKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> VouchKey {
        VouchKey(bytes)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> VouchKey {
        use rand::TryRngCore;
        let mut bytes = [0u8; KEY_LEN];
        // The OS generator does not fail on Linux once booted; a failure would leave zeros,
        // so fall back to the thread generator (itself seeded from the OS) then.
        if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
            use rand::RngCore;
            rand::rng().fill_bytes(&mut bytes);
        }
        VouchKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_key())
    }

    /// The header value vouching for `client` at time `now` (unix seconds).
    pub fn sign(&self, client: IpAddr, now: u64) -> String {
        let text = format!("v1 {now} {client}");
        let mut mac = self.mac();
        mac.update(text.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = text;
        out.push(' ');
        for b in tag {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The client IP a header value vouches for, if its MAC is valid (constant-time check) and
    /// its timestamp is within [`MAX_SKEW_SECS`] of `now`.
    pub fn verify(&self, value: &str, now: u64) -> Option<IpAddr> {
        let mut parts = value.trim().split(' ');
        let (version, ts, ip, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "v1" {
            return None;
        }
        let tag = decode_hex(tag)?;
        let mut mac = self.mac();
        mac.update(format!("v1 {ts} {ip}").as_bytes());
        mac.verify_slice(&tag).ok()?;
        let ts: u64 = ts.parse().ok()?;
        if ts.abs_diff(now) > MAX_SKEW_SECS {
            return None;
        }
        ip.parse().ok()
    }
}

fn unreachable_key() -> HmacSha256 {
    // `new_from_slice` only fails for MACs with a fixed key size, which HMAC is not.
    panic!("HMAC-SHA256 refused a {KEY_LEN}-byte key")
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Is `ip` a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x.y.z)?
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = VouchKey::from_bytes([7; KEY_LEN]);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let header = key.sign(ip, 1_000_000);
        assert!(header.starts_with("v1 1000000 203.0.113.9 "), "{header}");
        assert_eq!(key.verify(&header, 1_000_000), Some(ip));
        assert_eq!(key.verify(&header, 1_000_000 + MAX_SKEW_SECS), Some(ip));
        assert_eq!(key.verify(&header, 1_000_000 + MAX_SKEW_SECS + 1), None, "too old");
        assert_eq!(key.verify(&header, 1_000_000 - MAX_SKEW_SECS - 1), None, "from the future");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(key.verify(&key.sign(v6, 5), 5), Some(v6));
    }

    #[test]
    fn forgeries_fail() {
        let key = VouchKey::from_bytes([7; KEY_LEN]);
        let other = VouchKey::from_bytes([8; KEY_LEN]);
        let header = key.sign("203.0.113.9".parse().unwrap(), 100);
        assert_eq!(other.verify(&header, 100), None, "another key");
        let swapped = header.replace("203.0.113.9", "203.0.113.8");
        assert_eq!(key.verify(&swapped, 100), None, "another IP");
        let retimed = header.replacen("v1 100 ", "v1 101 ", 1);
        assert_eq!(key.verify(&retimed, 101), None, "another time");
        for bad in
            ["", "v1", "v1 100 1.2.3.4", "v1 100 1.2.3.4 zz", "v2 100 1.2.3.4 00", "x y z w v"]
        {
            assert_eq!(key.verify(bad, 100), None, "{bad:?}");
        }
        assert_eq!(key.verify(&format!("{header} extra"), 100), None);
        assert_ne!(VouchKey::generate(), VouchKey::generate());
        assert_eq!(format!("{key:?}"), "VouchKey(****)");
    }

    #[test]
    fn loopback() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "::2", "::ffff:10.0.0.1", "0.0.0.0"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
