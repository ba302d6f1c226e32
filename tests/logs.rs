//! The push daemon's log lines go wherever Apache's `ErrorLog` points: a file (every other
//! test), a piped logger, and syslog. Real apache2, real daemon.

mod common;

use common::{Stack, ALICE, T};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::apache::Mode;
use testkit::require;

/// `ErrorLog "|tee -a …"`: Apache points the daemon's stderr at the pipe; the daemon's lines
/// (startup, a session) reach the logger, which writes them where the oracle reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_lines_reach_a_piped_logger() {
    let stack = require!(
        Stack::start(Mode::Foreground, |b| b
            .server_line("ErrorLog \"|/usr/bin/tee -a {root}/logs/error.log\""))
        .await
    );
    let ready = stack.apache.await_error_log("NCP0101", T).await;
    assert!(ready.contains("[nextcloud_push:info]"), "{ready}");
    let mut alice = stack.login(ALICE).await;
    stack.apache.await_error_log("alice connected", T).await;
    stack.roundtrip(&mut alice, "alice", "piped").await;
    alice.close().await;
    stack.finish();
}

/// `ErrorLog syslog:local7`: Apache's stderr goes nowhere, so the daemon writes to syslog(3)
/// with the facility Apache opened. A datagram socket at /dev/log stands in for the syslog
/// daemon (only where the machine has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_lines_reach_syslog() {
    let dev_log = Path::new("/dev/log");
    if dev_log.exists() {
        assert!(
            !testkit::in_ci(),
            "/dev/log exists (a syslog daemon runs): this test needs to stand in for it"
        );
        eprintln!("skipped: /dev/log belongs to a running syslog daemon");
        return;
    }
    let socket = match UnixDatagram::bind(dev_log) {
        Ok(s) => s,
        Err(e) => {
            assert!(!testkit::in_ci(), "cannot bind /dev/log ({e}); run as root");
            eprintln!("skipped: cannot bind /dev/log ({e})");
            return;
        }
    };
    // Children and the daemon run as nobody.
    let _ = std::process::Command::new("chmod").args(["0666", "/dev/log"]).status();
    struct Remove;
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/dev/log");
        }
    }
    let _remove = Remove;
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (received, stop) = (received.clone(), stop.clone());
        move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut buf) {
                    received.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        }
    });
    let stack =
        require!(Stack::start(Mode::Foreground, |b| b.server_line("ErrorLog syslog:local7")).await);
    let seen = |needle: &str| received.lock().unwrap().iter().any(|l| l.contains(needle));
    let deadline = Instant::now() + T;
    while !seen("NCP0101") {
        assert!(
            Instant::now() < deadline,
            "no daemon line in syslog: {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = received.lock().unwrap().iter().find(|l| l.contains("NCP0101")).cloned().unwrap();
    // <local7.info> = 23 * 8 + 6
    assert!(line.starts_with("<190>"), "facility local7, level info: {line}");
    assert!(line.contains("[nextcloud_push:info]"), "{line}");
    let alice = stack.login(ALICE).await;
    let deadline = Instant::now() + T;
    while !seen("alice connected") {
        assert!(Instant::now() < deadline, "no session line in syslog");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.close().await;
    stack.finish();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = reader.join();
}
