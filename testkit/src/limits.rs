//! Process limits and capabilities as `/proc` shows them (for the RLIMIT_NOFILE tests).

/// `Max open files` of a process: (soft, hard); `None` if it cannot be read. "unlimited" reads
/// as `u64::MAX`.
pub fn nofile(pid: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let parse = |f: Option<&str>| match f? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

/// `/proc/sys/fs/nr_open`: no RLIMIT_NOFILE can exceed it.
pub fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Does this process have CAP_SYS_RESOURCE (bit 24 of `CapEff`)?
pub fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let (soft, hard) = super::nofile("self").expect("limits");
        assert!(soft <= hard && soft > 0, "{soft} {hard}");
        assert!(super::nr_open() >= 1024);
    }
}
