//! Debounce on (the production default): merge, timing, custom bypass, no starvation
//! (spec §1.6). The algorithm itself is unit-tested with injected time in `src/message.rs`.

mod common;

use common::{Harness, FRAME};
use nextcloud_push_engine::EngineConfig;
use std::time::{Duration, Instant};
use testkit::require;

async fn debounced() -> Option<Harness> {
    debounced_with(|_| {}).await
}

async fn debounced_with(tweak: impl FnOnce(&mut EngineConfig)) -> Option<Harness> {
    match Harness::start_with(|c| {
        c.debounce = true;
        tweak(c);
    })
    .await
    {
        Ok(h) => Some(h),
        Err(skip) => {
            eprintln!("SKIPPED: {skip}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_merges_into_one_frame_file_first() {
    common::time_limit(async {
        let Some(h) = debounced().await else { return };
        let mut foo = h.login("foo", "bar").await;
        foo.send_text("listen notify_file_id").await;
        foo.sync(FRAME).await;
        let started = Instant::now();
        h.redis.publish("notify_notification", r#"{"user":"foo"}"#);
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        for id in [11, 20, 10, 1] {
            h.redis.publish(
                "notify_storage_update",
                &format!(r#"{{"storage":10,"path":"files/x","file_id":{id}}}"#),
            );
        }
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_file_id [11,20,10,1]".into()));
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_notification".into()));
        let elapsed = started.elapsed();
        // ≥ the 100 ms quiet window, at most a tick (500 ms) after it, plus slack
        assert!(
            elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
        assert_eq!(h.engine.metrics().messages_sent, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_event_waits_for_the_debounce_time() {
    common::time_limit(async {
        let Some(h) = debounced().await else { return };
        let mut foo = h.login("foo", "bar").await;
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        let first = Instant::now();
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        // D = 1 s × f, f in [0.5, 1.5) with one connection
        let gap = first.elapsed();
        assert!(gap >= Duration::from_millis(450), "second activity after {gap:?}");
        assert!(gap < Duration::from_millis(2200), "second activity after {gap:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_messages_bypass_debounce() {
    common::time_limit(async {
        let Some(h) = debounced().await else { return };
        let mut foo = h.login("foo", "bar").await;
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        h.redis.publish("notify_custom", r#"{"user":"foo","message":"now"}"#);
        // the custom message overtakes the debounced activity
        assert_eq!(foo.next_text(FRAME).await, Ok("now".into()));
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}

/// The incumbent only drains after 500 ms without any message, so this stream (one event per
/// 200 ms for 3 s) would hold every file event back until it stops. The engine drains on a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_stream_does_not_starve_debounced_messages() {
    common::time_limit(async {
        let Some(h) = debounced().await else { return };
        let mut foo = h.login("foo", "bar").await;
        let redis_url = h.redis.url();
        let publisher = std::thread::spawn(move || {
            let client = redis::Client::open(redis_url).unwrap();
            let mut connection = client.get_connection().unwrap();
            for id in 0..15u64 {
                let payload = format!(r#"{{"storage":10,"path":"files/x","file_id":{id}}}"#);
                redis::cmd("PUBLISH")
                    .arg("notify_storage_update")
                    .arg(payload)
                    .query::<i64>(&mut connection)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let started = Instant::now();
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_file".into()));
        let first = started.elapsed();
        publisher.join().unwrap();
        assert!(
            first < Duration::from_millis(2000),
            "first notify_file only after {first:?}: starved"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_off_sends_immediately() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        h.redis.publish("notify_activity", r#"{"user":"foo"}"#);
        let started = Instant::now();
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        assert!(started.elapsed() < Duration::from_millis(400));
    })
    .await;
}

/// D(File/Activity) = max(1, min(active / 10, 15)) × f seconds, f drawn per connection from
/// [0.5, 1.5) (spec §1.6). With 30 connections D is 3 s × f: every connection's second activity
/// waits 1.5–4.5 s (the scaling), and the connections wait different times (the jitter). Each
/// connection is its own user, and its second activity is published the moment its first
/// arrives, so the gap is that connection's D (a first delayed by an earlier send cannot hide
/// another connection's D).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_time_scales_with_connections_and_is_jittered_per_connection() {
    common::time_limit(async {
        const CONNECTIONS: usize = 30;
        let Some(h) = debounced_with(|c| c.timing.tick = Duration::from_millis(10)).await else {
            return;
        };
        let name = |i: usize| format!("jitter{i}");
        let mut clients = Vec::new();
        for i in 0..CONNECTIONS {
            h.nextcloud.add_user(&name(i), "pw", &name(i));
            clients.push(h.login(&name(i), "pw").await);
        }
        h.wait_connections(CONNECTIONS as u64).await;
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel(CONNECTIONS);
        let readers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                let first_tx = first_tx.clone();
                tokio::spawn(async move {
                    assert_eq!(
                        client.next_text(Duration::from_secs(8)).await,
                        Ok("notify_activity".into())
                    );
                    let first = Instant::now();
                    first_tx.send((i, first)).await.unwrap();
                    // D < 4.5 s
                    let second = client.next_text(Duration::from_secs(8)).await;
                    assert_eq!(second, Ok("notify_activity".into()));
                    (first, Instant::now())
                })
            })
            .collect();
        let activity = |i: usize| format!(r#"{{"user":"{}"}}"#, name(i));
        for i in 0..CONNECTIONS {
            h.redis.publish("notify_activity", &activity(i));
        }
        // Each connection just sent: its second activity waits for its own debounce time.
        let mut published = vec![None; CONNECTIONS];
        for _ in 0..CONNECTIONS {
            let (i, _) = first_rx.recv().await.expect("a reader failed");
            h.redis.publish("notify_activity", &activity(i));
            published[i] = Some(Instant::now());
        }
        // A gap is that connection's D only if the engine held the second activity back (it
        // arrived well after it was published); on a loaded machine a publish can come late,
        // after D, and then the activity goes out at once.
        let mut gaps = Vec::new();
        let mut late = 0;
        for (i, reader) in readers.into_iter().enumerate() {
            let (first, second) = reader.await.expect("reader");
            let held = second.saturating_duration_since(published[i].expect("published"));
            if held >= Duration::from_millis(200) {
                gaps.push(second - first);
            } else {
                late += 1;
            }
        }
        gaps.sort();
        assert!(
            gaps.len() >= 10,
            "only {} gaps measure D ({late} publishes came late)",
            gaps.len()
        );
        let (shortest, longest) = (gaps[0], gaps[gaps.len() - 1]);
        assert!(
            shortest >= Duration::from_millis(1400) && longest < Duration::from_millis(4800),
            "with {CONNECTIONS} connections D is 3 s × [0.5, 1.5): the debounce time does not \
             scale with the connection count; gaps {gaps:?}"
        );
        // f spreads D over 3 s; a constant f gives gaps within a millisecond. 500 ms leaves room
        // for a loaded machine that stalls the engine and delivers several seconds at once.
        assert!(
            longest - shortest >= Duration::from_millis(500),
            "D is the same for every connection: no per-connection jitter; gaps {gaps:?}"
        );
    })
    .await;
}
