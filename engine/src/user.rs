//! User ids in logs: the uid itself only when the log level is info or more verbose, a hash
//! otherwise (as the incumbent). A uid comes from outside (any Redis publisher names one), so it
//! is clipped like every other outside text ([`crate::text::clip`]).

use std::fmt;

pub(crate) struct LogUser<'a>(pub &'a str);

impl fmt::Display for LogUser<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if log::max_level() >= log::LevelFilter::Info {
            if self.0.len() <= crate::text::MAX_ECHO {
                f.write_str(self.0)
            } else {
                f.write_str(&crate::text::clip(self.0))
            }
        } else {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in self.0.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            write!(f, "user#{hash:016x}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogUser;

    #[test]
    fn uid_only_at_info_or_more_verbose() {
        log::set_max_level(log::LevelFilter::Warn);
        let hidden = LogUser("alice").to_string();
        assert!(hidden.starts_with("user#") && !hidden.contains("alice"), "{hidden}");
        assert_eq!(hidden, LogUser("alice").to_string(), "stable hash");
        log::set_max_level(log::LevelFilter::Info);
        assert_eq!(LogUser("alice").to_string(), "alice");
        // a uid from a Redis publisher may be any size: clipped, its size noted
        let long = LogUser(&"u".repeat(1 << 20)).to_string();
        assert!(long.ends_with("… (1048576 bytes)"), "{}", &long[long.len() - 40..]);
        assert!(long.len() <= crate::text::MAX_ECHO + 20, "{} bytes", long.len());
        log::set_max_level(log::LevelFilter::Off);
    }
}
