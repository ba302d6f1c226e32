//! The push daemon's life under everything Apache does, for the event, worker and
//! prefork MPMs: graceful reloads with 200 connected clients (plain and wss) that all keep
//! receiving, a changed configuration that replaces the daemon (clients get a Close frame),
//! stop and graceful-stop (Close 1001, nothing left behind, socket removed), a SIGKILLed daemon
//! (respawned within 2 s, 503 meanwhile), a hard restart, child recycling
//! (MaxConnectionsPerChild 1), configtest (no daemon, nothing left), the daemon's process
//! hygiene (name, uid, descriptors, peer credentials) and its RLIMIT_NOFILE (the hard limit
//! taken; 503 when it is used up). Processes, descriptors and limits are checked through /proc.
//! Every test ends with the error-log oracle.

mod common;

use common::client::{raw_request, status_of, upgrade_request};
use common::{Client, Ending, Stack, T};
use futures_util::future::join_all;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::apache::{self, ApacheBuilder, Mode, Mpm};
use testkit::require;
use testkit::tls::TestCa;

/// Users the crowd tests log in as (the engine allows 65 connections per user).
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];

fn password(user: &str) -> String {
    format!("{user}-password")
}

async fn stack(
    mpm: Mpm,
    configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder,
) -> Result<Stack, testkit::Skip> {
    let stack = Stack::start(Mode::Foreground, |b| configure(b.mpm(mpm))).await?;
    for u in USERS {
        stack.nextcloud.add_user(u, &password(u), u);
    }
    Ok(stack)
}

/// `n` logged-in clients over `url`, spread over [`USERS`], connected 20 at a time.
async fn crowd(url: &str, n: usize) -> Vec<(&'static str, Client)> {
    let mut out = Vec::with_capacity(n);
    let users: Vec<&'static str> = (0..n).map(|i| USERS[i % USERS.len()]).collect();
    for chunk in users.chunks(20) {
        let batch = join_all(
            chunk.iter().map(|u| async move { (*u, Client::login(url, u, &password(u), T).await) }),
        )
        .await;
        out.extend(batch);
    }
    out
}

/// Publishes `marker` to every user and checks that every client receives it.
async fn all_receive(stack: &Stack, clients: &mut [(&'static str, Client)], marker: &str) {
    for u in USERS {
        stack.publish("notify_custom", &format!(r#"{{"user":"{u}","message":"{marker}"}}"#)).await;
    }
    let results = join_all(
        clients
            .iter_mut()
            .map(|(u, c)| async move { c.next_text(T).await.map_err(|e| format!("{u}: {e}")) }),
    )
    .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(t) if t == marker => None,
            Ok(t) => Some(format!("got {t:?}")),
            Err(e) => Some(e),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} clients did not get {marker:?}: {:?}\n{}",
        failed.len(),
        clients.len(),
        &failed[..failed.len().min(5)],
        stack.apache.error_log()
    );
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A wss client through `ca`'s TLS vhost, logged in as `user`.
async fn wss_login(ca: &TestCa, url: &str, user: &str) -> Client {
    let ws = ca.connect(url, T).await.unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::from_ws(ws);
    c.send_login(user, &password(user)).await;
    c.expect_text(common::AUTHENTICATED, T).await;
    c
}

/// 200 clients (190 plain, 10 wss bridged by workers) connected; a graceful reload keeps every
/// session and the daemon; events still reach all of them, and new clients connect.
async fn graceful_keeps_every_session(mpm: Mpm) -> Result<(), testkit::Skip> {
    let ca = TestCa::generate()?;
    let tls_port = testkit::free_port();
    let mut stack =
        stack(mpm, |b| ca.tls_vhost(b, tls_port, &["NextcloudPushDebounce Off"])).await?;
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let mut clients = crowd(&stack.ws_url(), 190).await;
    let wss_url = testkit::tls::wss_url(tls_port);
    for i in 0..10 {
        let u = USERS[i % USERS.len()];
        clients.push((u, wss_login(&ca, &wss_url, u).await));
    }
    all_receive(&stack, &mut clients, "before_graceful").await;

    stack.apache.ctl_restart("graceful").await;
    stack.apache.graceful_restart().await;
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "{}: graceful kept the daemon", mpm.name());
    all_receive(&stack, &mut clients, "after_graceful").await;
    // New sessions after the reload, plain and wss.
    let mut fresh = crowd(&stack.ws_url(), 4).await;
    fresh.push(("u0", wss_login(&ca, &wss_url, "u0").await));
    all_receive(&stack, &mut fresh, "fresh").await;
    assert_eq!(count(&stack.apache.error_log(), "NCP0009"), 1, "one daemon start only");
    drop(clients);
    drop(fresh);
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_keeps_200_sessions_under_event() {
    require!(graceful_keeps_every_session(Mpm::Event).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_keeps_200_sessions_under_worker() {
    require!(graceful_keeps_every_session(Mpm::Worker).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_keeps_200_sessions_under_prefork() {
    require!(graceful_keeps_every_session(Mpm::Prefork).await);
}

/// `apachectl restart` (SIGHUP: a hard restart stops every child at once): plain sessions live
/// in the daemon, which is kept, so they stay open and keep receiving; bridged wss sessions
/// (their TLS stays in Apache: `NextcloudPushTlsHandoff Off` here) live in their children's
/// bridges, so the parent has the daemon close them with 1001 first (the `R` stop notice;
/// without it they end without a Close frame); new clients of both kinds connect.
async fn hard_restart(mpm: Mpm) -> Result<(), testkit::Skip> {
    let ca = TestCa::generate()?;
    let tls_port = testkit::free_port();
    let mut stack = stack(mpm, |b| {
        // A companion config file, as in Nextcloud's Docker image: the PHP CLI evaluates the
        // configuration at every (re)start, which makes the restart take longer.
        ca.tls_vhost(b, tls_port, &["NextcloudPushTlsHandoff Off"])
            .extra_file("nextcloud/config/zz.config.php", "<?php\n$CONFIG = ['loglevel' => 2];\n")
    })
    .await?;
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let mut clients = crowd(&stack.ws_url(), 8).await;
    let wss_url = testkit::tls::wss_url(tls_port);
    let mut bridged = Vec::new();
    for u in ["u0", "u1"] {
        bridged.push(wss_login(&ca, &wss_url, u).await);
    }
    all_receive(&stack, &mut clients, "before_restart").await;
    stack.apache.await_error_log("NCP0022", T).await;

    stack.apache.ctl_restart("restart").await;
    for c in bridged.iter_mut() {
        let (_, ending) = c.expect_end(T).await;
        assert_eq!(ending, Ending::CloseFrame(Some((1001, String::new()))), "{}", mpm.name());
    }
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "{}: restart kept the daemon", mpm.name());
    all_receive(&stack, &mut clients, "after_restart").await;
    let mut fresh = crowd(&stack.ws_url(), 4).await;
    fresh.push(("u0", wss_login(&ca, &wss_url, "u0").await));
    all_receive(&stack, &mut fresh, "fresh").await;
    stack.apache.await_error_log("NCP0113", T).await;
    drop(clients);
    drop(fresh);
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_restart_keeps_plain_sessions_and_closes_wss_ones() {
    for mpm in Mpm::ALL {
        require!(hard_restart(mpm).await);
    }
}

/// wss sessions whose TLS session moved to the daemon live there like plain ones: they stay
/// open and keep receiving through a hard restart, a graceful restart and SIGKILL of every
/// Apache child, and get Close 1001 (then close_notify) when Apache stops.
async fn handed_off_wss_outlives_apache_children(mpm: Mpm) -> Result<(), testkit::Skip> {
    let ca = TestCa::generate()?;
    let tls_port = testkit::free_port();
    let mut stack = stack(mpm, |b| ca.tls_vhost(b, tls_port, &[])).await?;
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let wss_url = testkit::tls::wss_url(tls_port);
    let mut moved = Vec::new();
    for u in ["u0", "u1", "u2"] {
        moved.push((u, wss_login(&ca, &wss_url, u).await));
    }
    let what = mpm.name();
    let handed = || count(&stack.apache.error_log(), "NCP0114: TLS session handed over");
    assert_eq!(handed(), 3, "{what}: every wss session moved to the daemon");
    all_receive(&stack, &mut moved, "before").await;
    stack.apache.await_error_log("NCP0022", T).await;

    stack.apache.ctl_restart("restart").await;
    all_receive(&stack, &mut moved, "after_hard_restart").await;
    stack.apache.graceful_restart().await;
    all_receive(&stack, &mut moved, "after_graceful").await;
    let parent = stack.apache.pid();
    let children: Vec<u32> = apache::processes()
        .iter()
        .filter(|p| p.ppid == parent && p.pid != daemon && p.comm != "nextcloud-push")
        .map(|p| p.pid)
        .collect();
    assert!(!children.is_empty(), "{what}: Apache has children");
    for pid in &children {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    all_receive(&stack, &mut moved, "after_sigkill").await;
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "{what}: the daemon was kept");

    let out = stack.apache.ctl("stop");
    assert!(out.status.success(), "apache2 -k stop: {}", String::from_utf8_lossy(&out.stderr));
    for (_, c) in moved.iter_mut() {
        let (_, ending) = c.expect_end(T).await;
        assert_eq!(ending, Ending::CloseFrame(Some((1001, String::new()))), "{what}");
    }
    let status = stack.apache.await_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{what}: apache2 exit {status:?}");
    // The children killed above, as the parent reports them.
    stack.apache.allow("exit signal Killed");
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_off_wss_sessions_outlive_restarts_and_killed_children() {
    for mpm in Mpm::ALL {
        require!(handed_off_wss_outlives_apache_children(mpm).await);
    }
}

/// A graceful reload with a changed push configuration replaces the daemon: its sessions get a
/// Close frame (1001, so clients reconnect), and new sessions reach the new daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_configuration_replaces_the_daemon_and_closes_sessions() {
    let mut stack = require!(stack(Mpm::Event, |b| b).await);
    let old = stack.apache.daemon_pid().expect("daemon");
    let mut clients = crowd(&stack.ws_url(), 8).await;
    let conf = stack.apache.root().join("conf/httpd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("NextcloudPushDebounce Off"));
    std::fs::write(&conf, text.replace("NextcloudPushDebounce Off", "NextcloudPushDebounce On"))
        .unwrap();
    stack.apache.graceful_restart().await;
    let ends = join_all(clients.iter_mut().map(|(_, c)| c.expect_end(T))).await;
    for (_, ending) in ends {
        assert_eq!(ending, Ending::CloseFrame(Some((1001, String::new()))));
    }
    let new = stack.apache.await_daemon(Some(old), T).await;
    assert_ne!(new, old);
    assert!(!apache::processes().iter().any(|p| p.pid == old && p.state != 'Z'), "old daemon gone");
    stack.await_subscribed().await;
    let mut fresh = crowd(&stack.ws_url(), 2).await;
    all_receive(&stack, &mut fresh, "new_daemon").await;
    stack.apache.await_error_log("NCP0006", T).await;
    stack.finish();
}

/// `apachectl stop` or `graceful-stop`: every session gets Close 1001, Apache and the daemon
/// exit, nothing of the server is left (checked by `finish`) and the socket file is gone.
async fn stop_closes_sessions(mpm: Mpm, verb: &str) -> Result<(), testkit::Skip> {
    let mut stack = stack(mpm, |b| b).await?;
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let mut clients = crowd(&stack.ws_url(), 6).await;
    let out = stack.apache.ctl(verb);
    assert!(out.status.success(), "apache2 -k {verb}: {}", String::from_utf8_lossy(&out.stderr));
    let ends = join_all(clients.iter_mut().map(|(_, c)| c.expect_end(T))).await;
    for (_, ending) in ends {
        assert_eq!(
            ending,
            Ending::CloseFrame(Some((1001, String::new()))),
            "{} -k {verb}",
            mpm.name()
        );
    }
    let status = stack.apache.await_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{} -k {verb}: apache2 exit {status:?}",
        mpm.name()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while apache::processes().iter().any(|p| p.pid == daemon && p.state != 'Z') {
        assert!(Instant::now() < deadline, "daemon {daemon} still running after -k {verb}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stack.apache.daemon_socket().exists(), "socket left behind after -k {verb}");
    stack.apache.await_error_log("NCP0103", T).await;
    stack.finish();
    Ok(())
}

#[tokio::test]
async fn stop_and_graceful_stop_under_event() {
    require!(stop_closes_sessions(Mpm::Event, "stop").await);
    require!(stop_closes_sessions(Mpm::Event, "graceful-stop").await);
}

#[tokio::test]
async fn stop_and_graceful_stop_under_worker() {
    require!(stop_closes_sessions(Mpm::Worker, "stop").await);
    require!(stop_closes_sessions(Mpm::Worker, "graceful-stop").await);
}

#[tokio::test]
async fn stop_and_graceful_stop_under_prefork() {
    require!(stop_closes_sessions(Mpm::Prefork, "stop").await);
    require!(stop_closes_sessions(Mpm::Prefork, "graceful-stop").await);
}

/// One upgrade attempt: the status and how long the answer took.
async fn attempt(stack: &Stack) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let (_stream, head, _) =
        raw_request(stack.apache.addr(), upgrade_request(stack.apache.port(), "").as_bytes(), T)
            .await;
    (status_of(&head), started.elapsed())
}

/// SIGKILL of the daemon: its sessions drop, Apache respawns it within 2 s, new clients
/// connect; every answer meanwhile is a quick 101 or 503, never a hang.
async fn sigkill_respawns(mpm: Mpm) -> Result<(), testkit::Skip> {
    let mut stack = stack(mpm, |b| b).await?;
    stack.apache.allow("NCP0011");
    stack.apache.allow("NCP0032");
    let old = stack.apache.daemon_pid().expect("daemon");
    let mut clients = crowd(&stack.ws_url(), 4).await;
    let killed = Instant::now();
    apache::signal(old, "KILL");
    let mut statuses = Vec::new();
    loop {
        let (status, took) = attempt(&stack).await;
        assert!(took < Duration::from_millis(2500), "an upgrade took {took:?} (status {status:?})");
        assert!(matches!(status, Some(101) | Some(503)), "status {status:?}");
        statuses.push(status);
        if status == Some(101) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(2), "no 101 within 2 s: {statuses:?}");
    }
    let new = stack.apache.await_daemon(Some(old), Duration::from_secs(2)).await;
    assert!(killed.elapsed() < Duration::from_secs(3), "respawn took {:?}", killed.elapsed());
    let ends = join_all(clients.iter_mut().map(|(_, c)| c.expect_end(T))).await;
    assert!(ends.iter().all(|(_, e)| *e == Ending::Dropped), "{}: {ends:?}", mpm.name());
    stack.await_subscribed().await;
    let mut fresh = crowd(&stack.ws_url(), 4).await;
    all_receive(&stack, &mut fresh, "after_respawn").await;
    assert_ne!(new, old);
    assert_eq!(count(&stack.apache.error_log(), "NCP0011"), 1, "one clear line per death");
    stack.finish();
    Ok(())
}

#[tokio::test]
async fn sigkilled_daemon_is_respawned_under_event() {
    require!(sigkill_respawns(Mpm::Event).await);
}

#[tokio::test]
async fn sigkilled_daemon_is_respawned_under_worker() {
    require!(sigkill_respawns(Mpm::Worker).await);
}

#[tokio::test]
async fn sigkilled_daemon_is_respawned_under_prefork() {
    require!(sigkill_respawns(Mpm::Prefork).await);
}

/// While there is no daemon (it keeps dying: the respawn waits ~10 s for the monitor hook), an
/// upgrade gets a quick 503 with Retry-After and one clear log line each; then it comes back.
#[tokio::test]
async fn without_a_daemon_upgrades_get_a_quick_503() {
    let mut stack = require!(stack(Mpm::Event, |b| b).await);
    stack.apache.allow("NCP0011");
    stack.apache.allow("NCP0032");
    // Three deaths within 10 s of their start: respawning waits for the monitor hook.
    // A respawned daemon is killed once it is ready (NCP0101), not while it starts.
    let mut pid = stack.apache.daemon_pid().expect("daemon");
    let mut deaths = 0;
    'kill: loop {
        assert!(deaths < 5, "still respawning fast after {deaths} deaths");
        let ready = count(&stack.apache.error_log(), "NCP0101");
        apache::signal(pid, "KILL");
        deaths += 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = stack.apache.error_log();
            if log.contains("keeps dying") {
                break 'kill;
            }
            if let Some(new) = stack.apache.daemon_pid().filter(|p| *p != pid) {
                if count(&log, "NCP0101") > ready {
                    pid = new;
                    continue 'kill;
                }
            }
            assert!(Instant::now() < deadline, "neither a respawn nor a throttle after a death");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let last = Some(pid);
    let before = count(&stack.apache.error_log(), "NCP0032");
    for _ in 0..3 {
        let started = Instant::now();
        let (_stream, head, _) = raw_request(
            stack.apache.addr(),
            upgrade_request(stack.apache.port(), "").as_bytes(),
            T,
        )
        .await;
        assert_eq!(status_of(&head), Some(503), "{head}");
        assert!(head.contains("Retry-After: 5"), "{head}");
        assert!(started.elapsed() < Duration::from_millis(500), "503 took {:?}", started.elapsed());
    }
    assert_eq!(count(&stack.apache.error_log(), "NCP0032"), before + 3, "one line per 503");
    // The monitor hook starts it again.
    stack.apache.await_daemon(last, Duration::from_secs(20)).await;
    stack.await_subscribed().await;
    let mut fresh = crowd(&stack.ws_url(), 2).await;
    all_receive(&stack, &mut fresh, "back").await;
    stack.finish();
}

/// Children recycled after every connection (MaxConnectionsPerChild 1) and idle maintenance
/// never touch the sessions, which live in the daemon.
async fn recycling_keeps_sessions(mpm: Mpm) -> Result<(), testkit::Skip> {
    let mut stack = stack(mpm, |b| {
        let b = b.max_connections_per_child(1);
        match mpm {
            Mpm::Prefork => {
                b.start_servers(4).mpm_knob("MinSpareServers", 1).mpm_knob("MaxSpareServers", 1)
            }
            _ => b
                .start_servers(2)
                .threads_per_child(4)
                .max_request_workers(32)
                .mpm_knob("MinSpareThreads", 4)
                .mpm_knob("MaxSpareThreads", 8),
        }
    })
    .await?;
    if mpm == Mpm::Event {
        // httpd itself (reproduced without this module): event children that reached
        // MaxConnectionsPerChild 1 sometimes miss the stop and are SIGKILLed after 9 s.
        stack.apache.allow("AH00045");
        stack.apache.allow("AH00046");
    }
    // One at a time, retrying a reset handshake: with MaxConnectionsPerChild 1 httpd itself
    // resets a connection that an exiting child had already accepted (not a session: the
    // handshake never completed).
    let mut clients = Vec::new();
    for i in 0..12 {
        let u = USERS[i % USERS.len()];
        let mut attempts = 0;
        let ws = loop {
            attempts += 1;
            match tokio::time::timeout(T, tokio_tungstenite::connect_async(stack.ws_url())).await {
                Ok(Ok((ws, _))) => break ws,
                Ok(Err(e)) if attempts < 5 => eprintln!("handshake {i} attempt {attempts}: {e}"),
                other => panic!("handshake {i} failed: {other:?}"),
            }
        };
        let mut c = Client::from_ws(ws);
        c.send_login(u, &password(u)).await;
        c.expect_text(common::AUTHENTICATED, T).await;
        clients.push((u, c));
    }
    let first_children = stack.apache.children();
    // More connections recycle more children.
    for _ in 0..6 {
        let raw = apache::raw_exchange(
            stack.apache.addr(),
            b"GET /status.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            T,
        );
        assert_eq!(apache::status_code(&raw), Some(200));
    }
    all_receive(&stack, &mut clients, "after_recycling").await;
    let deadline = Instant::now() + T;
    // Every request above was a child's last connection: some of the first children are gone.
    while first_children.iter().all(|c| stack.apache.children().contains(c)) {
        assert!(Instant::now() < deadline, "no child was recycled: {first_children:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all_receive(&stack, &mut clients, "still_here").await;
    assert_eq!(count(&stack.apache.error_log(), "NCP0009"), 1, "one daemon start only");
    stack.finish();
    Ok(())
}

#[tokio::test]
async fn child_recycling_keeps_sessions_under_event() {
    require!(recycling_keeps_sessions(Mpm::Event).await);
}

#[tokio::test]
async fn child_recycling_keeps_sessions_under_worker() {
    require!(recycling_keeps_sessions(Mpm::Worker).await);
}

#[tokio::test]
async fn child_recycling_keeps_sessions_under_prefork() {
    require!(recycling_keeps_sessions(Mpm::Prefork).await);
}

/// Runs a command in its own process group; after it exits, nothing of that group may remain
/// (a forked daemon would stay in it) and no daemon socket may exist.
fn run_alone(mut cmd: Command, socket: &Path) -> String {
    let child = cmd
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn");
    let pgid = child.id();
    let out = child.wait_with_output().expect("wait");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let left: Vec<_> =
        apache::processes().into_iter().filter(|p| p.pgrp == pgid && p.state != 'Z').collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!socket.exists(), "configtest created {}", socket.display());
    text
}

/// `apache2 -t` and `apache2ctl configtest` start no daemon and leave nothing behind.
#[tokio::test]
async fn configtest_starts_no_daemon() {
    let env = require!(apache::Env::require());
    for mpm in Mpm::ALL {
        let root = apache::Apache::builder(&env).mpm(mpm).render();
        let socket = root.path().join("run/nextcloud-push.sock");
        let mut t = Command::new(&env.apache_bin);
        t.arg("-t").arg("-f").arg(&root.conf);
        let text = run_alone(t, &socket);
        assert!(text.contains("Syntax OK"), "{text}");
        if let Some(ctl) = testkit::find_binary("apache2ctl") {
            let mut c = Command::new(ctl);
            c.arg("configtest").env("APACHE_ARGUMENTS", format!("-f {}", root.conf.display()));
            let text = run_alone(c, &socket);
            assert!(text.contains("Syntax OK"), "{text}");
        }
        let log = std::fs::read_to_string(root.path().join("logs/error.log")).unwrap_or_default();
        assert!(!log.contains("NCP0009"), "a daemon was started:\n{log}");
    }
}

/// What the daemon holds: its name, its uid and its descriptors.
fn daemon_facts(pid: u32) -> (String, String, u32, Vec<String>) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).trim_end_matches('\0').replace('\0', " ");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap();
    (comm, cmdline, uid, fd_targets(pid))
}

/// What each of `pid`'s descriptors points at (`socket:[inode]`, a path, `pipe:[…]`).
fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// TCP socket states in /proc/net/tcp*.
const LISTEN: &str = "0A";
const ESTABLISHED: &str = "01";

/// Inodes (as `socket:[inode]`) of the TCP sockets in `state` whose local port is `port`
/// (/proc/net/tcp and tcp6).
fn tcp_socket_inodes(port: u16, state: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        out.extend(text.lines().skip(1).filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == state).then(|| format!("socket:[{}]", f[9]))
        }));
    }
    out
}

/// The daemon is `nextcloud-push` in ps, never root, holds none of Apache's listeners, log pipes
/// or log files (the main ErrorLog only), and only Apache's own users may hand it sessions.
#[tokio::test]
async fn daemon_process_hygiene() {
    for mpm in Mpm::ALL {
        let mut stack =
            require!(stack(mpm, |b| b.server_line("CustomLog \"|/bin/cat\" \"%r\"")).await);
        let pid = stack.apache.daemon_pid().expect("daemon");
        let (comm, cmdline, uid, fds) = daemon_facts(pid);
        assert_eq!(comm, apache::DAEMON_NAME);
        assert_eq!(cmdline, apache::DAEMON_NAME, "ps -f shows the name too");
        if apache::euid() == 0 {
            assert_ne!(uid, 0, "{}: the daemon runs as User, not root", mpm.name());
        }
        // RLIMIT_NOFILE raised to the hard limit (65536 when the kernel lets root raise it);
        // when fewer than 50,000 sessions fit, one notice line says so and what to change.
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let nofile: u64 = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let hard = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(4))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap();
        assert!(nofile >= hard.min(65536), "{}: daemon RLIMIT_NOFILE {nofile}", mpm.name());
        let notice = stack.apache.error_log().contains("NCP0018");
        assert_eq!(notice, nofile < 50_256, "{}: NCP0018 with a limit of {nofile}", mpm.name());
        let listeners = tcp_socket_inodes(stack.apache.port(), LISTEN);
        assert!(!listeners.is_empty());
        let root = stack.apache.root().display().to_string();
        for fd in &fds {
            assert!(!listeners.contains(fd), "{}: daemon holds Apache's listener {fd}", mpm.name());
            assert!(
                !fd.starts_with("pipe:"),
                "{}: daemon holds a pipe (piped log?): {fds:?}",
                mpm.name()
            );
            if fd.starts_with(&format!("{root}/logs/")) {
                assert!(fd.ends_with("logs/error.log"), "{}: daemon holds {fd}", mpm.name());
            }
            assert!(!fd.contains("access.log"), "{}: {fd}", mpm.name());
        }
        if mpm == Mpm::Event && apache::euid() == 0 && testkit::find_binary("python3").is_some() {
            peer_credentials_are_checked(&mut stack).await;
        }
        stack.finish();
    }
}

/// A process of another uid that reaches the socket (its mode loosened on purpose) is refused
/// by the peer-credential check before any answer.
async fn peer_credentials_are_checked(stack: &mut Stack) {
    use std::os::unix::fs::PermissionsExt;
    stack.apache.allow("NCP0109");
    let socket = stack.apache.daemon_socket().to_path_buf();
    let dir_mode = std::fs::metadata(socket.parent().unwrap()).unwrap().permissions().mode();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(socket.parent().unwrap(), std::fs::Permissions::from_mode(0o777))
        .unwrap();
    let script = format!(
        "import socket,struct,json\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.connect({path:?})\n\
         h=json.dumps({{'protocol':2,'engine':0}}).encode()\n\
         s.settimeout(5)\n\
         try:\n  s.sendall(struct.pack('<I',len(h))+h)\n  print('answer', s.recv(1))\n\
         except OSError as e:\n  print('answer refused', e)\n",
        path = socket.display().to_string()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .uid(54321)
        .gid(54321)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("answer b''") || text.contains("answer refused"),
        "a foreign uid got an answer: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(socket.parent().unwrap(), std::fs::Permissions::from_mode(dir_mode))
        .unwrap();
    stack.apache.await_error_log("NCP0109", T).await;
}

/// Descriptors the daemon keeps for itself (`wire::ready::FD_RESERVE`, docs/internals.md).
const FD_RESERVE: u64 = 256;
/// The sessions the daemon should hold when Apache's hard limit allows.
const WANTED_SESSIONS: u64 = 50_000;

/// RLIMIT_NOFILE. Apache started with soft 1024 and this machine's hard limit (what
/// systemd gives apache2.service on Debian: 1024:524288): the daemon runs with soft = hard, and
/// NCP0018 appears exactly when that leaves room for fewer than 50 000 sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_takes_the_hard_fd_limit() {
    let (_, hard) = testkit::limits::nofile("self").expect("own limits");
    let hard = hard.min(testkit::limits::nr_open());
    let mut stack = require!(stack(Mpm::Event, |b| b.nofile(1024, hard).allow("NCP0018")).await);
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let (soft_d, hard_d) = testkit::limits::nofile(&daemon.to_string()).expect("daemon limits");
    assert_eq!(soft_d, hard_d, "the daemon raises its soft limit to the hard limit");
    assert!(hard_d >= hard, "daemon hard limit {hard_d} below Apache's {hard}");
    let warned = stack.apache.error_log().contains("NCP0018");
    assert_eq!(warned, soft_d - FD_RESERVE < WANTED_SESSIONS, "NCP0018 at fd limit {soft_d}");
    eprintln!(
        "daemon RLIMIT_NOFILE {soft_d}:{hard_d} (Apache started with 1024:{hard}): room for {} \
         sessions",
        soft_d - FD_RESERVE
    );
    stack.finish();
}

/// When the daemon's descriptors run out, an upgrade gets a quick 503 with Retry-After (the
/// daemon refuses before any 101; NCP0032 in Apache's log, NCP0106 in the daemon's), every
/// open session keeps receiving, and once some sessions end new ones are admitted again.
/// Apache runs with RLIMIT_NOFILE 300 (and without CAP_SYS_RESOURCE), so 44 sessions fill it.
async fn out_of_descriptors(mpm: Mpm) -> Result<(), testkit::Skip> {
    let mut stack =
        stack(mpm, |b| b.nofile(300, 300).allow("NCP0018").allow("NCP0032").allow("NCP0106"))
            .await?;
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let (limit, _) = testkit::limits::nofile(&daemon.to_string()).expect("daemon limits");
    assert_eq!(limit, 300, "the daemon could not raise the limit Apache was started with");
    let room = (limit - FD_RESERVE) as usize;
    stack.apache.await_error_log(&format!("at most {room} push sessions"), T).await;
    let mut clients = crowd(&stack.ws_url(), room).await;

    for _ in 0..3 {
        let (status, took) = attempt(&stack).await;
        assert_eq!(status, Some(503), "upgrade with {room} sessions open");
        assert!(took < Duration::from_millis(500), "503 took {took:?}");
    }
    let (_stream, head, _) =
        raw_request(stack.apache.addr(), upgrade_request(stack.apache.port(), "").as_bytes(), T)
            .await;
    assert!(head.contains("Retry-After:"), "{head}");
    stack.apache.await_error_log("NCP0106", T).await;
    assert!(stack.apache.error_log().contains("fd limit 300"));
    all_receive(&stack, &mut clients, "full_house").await;

    // Four sessions end: four new ones get in (once the daemon has seen them go).
    for (_, client) in clients.drain(..4) {
        client.close().await;
    }
    let deadline = Instant::now() + T;
    let mut fresh = Vec::new();
    while fresh.len() < 4 {
        assert!(Instant::now() < deadline, "no room again after 4 sessions ended");
        let upgrade = upgrade_request(stack.apache.port(), "");
        let (stream, head, leftover) =
            raw_request(stack.apache.addr(), upgrade.as_bytes(), T).await;
        match status_of(&head) {
            Some(101) => {
                let user = USERS[fresh.len()];
                let mut client = Client::from_raw(stream, leftover).await;
                client.send_login(user, &password(user)).await;
                client.expect_text(common::AUTHENTICATED, T).await;
                fresh.push((user, client));
            }
            // The daemon has not seen the closed sessions end yet.
            Some(503) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected answer {other:?}: {head}"),
        }
    }
    all_receive(&stack, &mut clients, "after").await;
    all_receive(&stack, &mut fresh, "after").await;
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "the daemon survived");
    drop(clients);
    drop(fresh);
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_answers_503() {
    for mpm in Mpm::ALL {
        require!(out_of_descriptors(mpm).await);
    }
}

/// Prefork ends a child on SIGHUP/SIGTERM from inside the signal handler (`just_die`: the
/// child pool's cleanups, then exit). Hard restarts with many bridged wss sessions, whose
/// bridges are ending (the daemon closed them after the stop notice) just as the signal lands:
/// every child exits at once, none is left for the parent to SIGTERM again and SIGKILL.
async fn hard_restarts_leave_no_stuck_child(mpm: Mpm) -> Result<(), testkit::Skip> {
    let ca = TestCa::generate()?;
    let tls_port = testkit::free_port();
    let mut stack = stack(mpm, |b| {
        ca.tls_vhost(b, tls_port, &["NextcloudPushTlsHandoff Off"])
            .server_line("StartServers 20")
            .server_line("MinSpareServers 20")
            .server_line("MaxSpareServers 40")
    })
    .await?;
    let wss_url = testkit::tls::wss_url(tls_port);
    for round in 0..6 {
        let mut bridged = join_all((0..16).map(|i| wss_login(&ca, &wss_url, USERS[i % 4]))).await;
        stack.apache.await_error_log("NCP0022", T).await;
        let started = Instant::now();
        stack.apache.ctl_restart("restart").await;
        for c in bridged.iter_mut() {
            let (_, ending) = c.expect_end(T).await;
            assert_eq!(ending, Ending::CloseFrame(Some((1001, String::new()))), "round {round}");
        }
        let log = stack.apache.error_log();
        assert!(
            !log.contains("still did not exit"),
            "{}: round {round}: a child did not exit at the hard restart ({:?})\n{}",
            mpm.name(),
            started.elapsed(),
            log.lines().filter(|l| l.contains("AH0004")).collect::<Vec<_>>().join("\n")
        );
    }
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_restarts_with_ending_bridges_leave_no_stuck_child() {
    require!(hard_restarts_leave_no_stuck_child(Mpm::Prefork).await);
}

/// SIGTERM straight to prefork children whose bridges are busy relaying a flood of events
/// (the signal lands anywhere in the relay: reading the daemon, writing through mod_ssl,
/// allocating; not only in poll(2)): each child exits at once.
async fn children_busy_relaying_exit_on_sigterm(mpm: Mpm) -> Result<(), testkit::Skip> {
    let ca = TestCa::generate()?;
    let tls_port = testkit::free_port();
    let mut stack = stack(mpm, |b| {
        ca.tls_vhost(b, tls_port, &["NextcloudPushTlsHandoff Off", "NextcloudPushDebounce Off"])
            .server_line("StartServers 12")
            .server_line("MinSpareServers 12")
            .server_line("MaxSpareServers 40")
    })
    .await?;
    let wss_url = testkit::tls::wss_url(tls_port);
    let daemon = stack.apache.daemon_pid().expect("daemon");
    let parent = stack.apache.pid();
    let body = "x".repeat(30_000);
    let mut stuck = Vec::new();
    for round in 0..4 {
        let mut bridged = join_all((0..8).map(|_| wss_login(&ca, &wss_url, "u0"))).await;
        let readers: Vec<_> = bridged
            .drain(..)
            .map(|mut c| tokio::spawn(async move { c.expect_end(Duration::from_secs(30)).await }))
            .collect();
        // The flood goes on while the children are signalled.
        let (published, mut progress) = tokio::sync::watch::channel(0);
        let flood = async {
            for i in 0..300 {
                let event = format!(r#"{{"user":"u0","message":"m{i}","body":"{body}"}}"#);
                stack.publish("notify_custom", &event).await;
                published.send_replace(i + 1);
            }
        };
        let kill = async {
            progress.wait_for(|n| *n >= 30).await.expect("the flood publishes");
            // Only the children holding a client connection (SIGTERM to a prefork child
            // waiting for the accept mutex makes the whole server exit, AH00144).
            let connections = tcp_socket_inodes(tls_port, ESTABLISHED);
            let children: Vec<u32> = apache::processes()
                .iter()
                .filter(|p| p.ppid == parent && p.pid != daemon && p.comm != "nextcloud-push")
                .filter(|p| fd_targets(p.pid).iter().any(|fd| connections.contains(fd)))
                .map(|p| p.pid)
                .collect();
            for pid in &children {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            children
        };
        let ((), children) = tokio::join!(flood, kill);
        assert!(!children.is_empty(), "round {round}: no child holds a wss connection");
        // Still running (an exited child stays a zombie until the parent reaps it).
        let running = || -> Vec<u32> {
            let now = apache::processes();
            children
                .iter()
                .copied()
                .filter(|c| now.iter().any(|p| p.pid == *c && p.state != 'Z'))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stuck.extend(running().into_iter().map(|p| (round, p)));
        for r in readers {
            let _ = r.await;
        }
    }
    let mut stacks = String::new();
    for (_, pid) in &stuck {
        stacks.push_str(&format!("--- pid {pid} ---\n{}", apache::backtrace(*pid)));
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    assert!(
        stuck.is_empty(),
        "{}: children alive 5 s after SIGTERM: {stuck:?}\n{stacks}",
        mpm.name()
    );
    stack.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefork_children_busy_relaying_exit_on_sigterm() {
    require!(children_busy_relaying_exit_on_sigterm(Mpm::Prefork).await);
}
