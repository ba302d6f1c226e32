//! The push daemon's log lines go wherever Apache's `ErrorLog` points: a file (every other
//! test), a piped logger, and syslog; the lines of a Nextcloud instance follow its vhost's
//! `LogLevel` and `ErrorLog`; after logrotate's graceful restart a kept daemon writes to the
//! new files. Real apache2, real daemon.

mod common;

use common::{Stack, ALICE, BOB, T};
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

/// A push vhost with its own `ErrorLog` and `LogLevel nextcloud_push:debug` under a main server
/// at `info`: the instance's lines (its Redis subscription, a session) go to the vhost's log,
/// the daemon's own lines to the main log, neither to the other. Then what Debian's logrotate
/// does (both files renamed, a graceful restart): the daemon is kept, and its next lines, of
/// either kind, land in the new files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_lines_follow_the_vhost_error_log_and_level_and_rotation() {
    let mut stack = require!(
        Stack::start(Mode::Foreground, |b| b
            .server_line("LogLevel info nextcloud_push:debug")
            .vhost_line("ErrorLog \"{root}/logs/cloud-error.log\"")
            .vhost_line("LogLevel info nextcloud_push:debug"))
        .await
    );
    let logs = stack.apache.root().join("logs");
    let cloud = logs.join("cloud-error.log");
    let await_cloud = |needle: &'static str| testkit::apache::await_file_line(&cloud, needle, T);
    await_cloud("NCP1002").await;
    let mut alice = stack.login(ALICE).await;
    let connected = await_cloud("alice connected").await;
    assert!(connected.contains("[nextcloud_push:debug]"), "{connected}");
    stack.roundtrip(&mut alice, "alice", "own_log").await;
    let main = stack.apache.error_log();
    assert!(main.contains("NCP0101"), "the daemon's own lines stay in the main log:\n{main}");
    for line in ["NCP1002", "alice connected", "notify_custom for alice"] {
        assert!(!main.contains(line), "{line:?} is the instance's: not in the main log\n{main}");
    }
    assert!(!std::fs::read_to_string(&cloud).unwrap().contains("NCP0101"));

    let daemon = stack.apache.daemon_pid().expect("daemon");
    std::fs::rename(&cloud, logs.join("cloud-error.log.1")).unwrap();
    std::fs::rename(logs.join("error.log"), logs.join("error.log.1")).unwrap();
    stack.apache.graceful_restart().await;
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "a graceful restart keeps the daemon");
    // The daemon's own line about the reopened logs lands in the new main log.
    stack.apache.await_error_log("NCP0117", T).await;
    let mut bob = stack.login(BOB).await;
    await_cloud("bob connected").await;
    stack.roundtrip(&mut bob, "bob", "after_rotation").await;
    stack.roundtrip(&mut alice, "alice", "session_kept").await;
    let old = std::fs::read_to_string(logs.join("cloud-error.log.1")).unwrap();
    assert!(!old.contains("bob connected"), "the rotated file got a line after the rotation");
    alice.close().await;
    bob.close().await;
    stack.finish();
}

/// `LogLevel nextcloud_push:warn` on the push vhost silences the instance's debug lines even
/// with the main server at debug (which still gets the daemon's own debug lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vhost_log_level_filters_the_instance_lines() {
    let stack = require!(
        Stack::start(Mode::Foreground, |b| b.vhost_line("LogLevel info nextcloud_push:warn")).await
    );
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, "alice", "quiet").await;
    alice.close().await;
    // The instance logs a line before the client can see what it concerns (`authenticated`,
    // the event): had they passed the filter, they would be in the log by now.
    let log = stack.apache.error_log();
    assert!(log.contains("NCP0107"), "the daemon's own debug lines pass:\n{log}");
    for line in ["alice connected", "notify_custom for alice", "NCP1002"] {
        assert!(!log.contains(line), "{line:?} is below the vhost's level\n{log}");
    }
    stack.finish();
}
