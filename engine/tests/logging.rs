//! Log lines of a Redis outage and of bad payloads: one line per outage, one on recovery, one
//! per bad message, each warn line with its message id. Own test binary: the logger is global.

mod common;

use common::{Harness, FRAME};
use std::sync::Mutex;
use std::time::Duration;
use testkit::require;

static LINES: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("nextcloud_push")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            LINES.lock().unwrap().push((
                record.level(),
                record.target().to_string(),
                record.args().to_string(),
            ));
        }
    }

    fn flush(&self) {}
}

fn lines_with(id: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, line)| line.contains(id))
        .map(|(_, _, l)| l.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_outage_and_per_bad_message() {
    common::time_limit(async {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        let mut h = require!(
            Harness::start_with(|c| c.timing.redis_ping = Duration::from_millis(100)).await
        );
        let mut foo = h.login("foo", "bar").await;
        assert_eq!(lines_with("NCP1002").len(), 1, "subscribed line");
        // the pub/sub keepalive PINGs are answered: no disconnect while Redis is up
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(lines_with("NCP1001").is_empty(), "{:?}", lines_with("NCP1001"));

        h.publish("notify_activity", "{broken").await;
        // The event is counted as received before its line is written: await the line.
        assert!(
            testkit::wait_until(FRAME, || async { !lines_with("NCP1003").is_empty() }).await,
            "no line for the bad message"
        );
        let bad = lines_with("NCP1003");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("notify_activity"), "{}", bad[0]);

        // A wrong-typed value of 64 KiB: serde's error quotes it, the log line must not.
        let huge = "x".repeat(1 << 16);
        h.redis.publish(
            "notify_storage_update",
            &format!(r#"{{"storage":"{huge}","path":"/","file_id":1}}"#),
        );
        h.redis.publish("notify_signal", &format!(r#""{huge}""#));
        assert!(
            testkit::wait_until(Duration::from_secs(20), || async {
                lines_with("NCP1003").len() >= 2 && !lines_with("NCP1005").is_empty()
            })
            .await,
            "bad values logged: {:?}",
            LINES
                .lock()
                .unwrap()
                .iter()
                .map(|(_, _, l)| l.chars().take(120).collect::<String>())
                .collect::<Vec<_>>()
        );
        for line in lines_with("NCP1003").iter().chain(lines_with("NCP1005").iter()) {
            assert!(
                line.len() < 600,
                "{} bytes: {}…",
                line.len(),
                line.chars().take(200).collect::<String>()
            );
        }
        assert!(lines_with("NCP1003")[1].contains("bytes"), "{}", lines_with("NCP1003")[1]);

        h.redis.stop();
        // several reconnect attempts fail meanwhile (backoff 1 s, 2 s)
        let engine_down = testkit::wait_until(Duration::from_secs(10), || async {
            !lines_with("NCP1001").is_empty()
        })
        .await;
        assert!(engine_down, "no outage line");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        h.redis.restart();
        assert!(h.redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(15)).await);
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));

        let outage = lines_with("NCP1001");
        assert_eq!(outage.len(), 1, "one line per outage: {outage:?}");
        let recovered = lines_with("NCP1002");
        assert_eq!(recovered.len(), 2, "{recovered:?}");
        assert!(recovered[1].contains("is back"), "{}", recovered[1]);

        // every warn/error line carries a message id
        for (level, target, line) in LINES.lock().unwrap().iter() {
            if *level <= log::Level::Warn {
                assert!(line.starts_with("NCP1"), "{target}: {line}");
            }
            assert!(
                ["nextcloud_push::ws", "nextcloud_push::redis", "nextcloud_push::auth"]
                    .contains(&target.as_str()),
                "unexpected target {target}"
            );
        }
    })
    .await;
}
