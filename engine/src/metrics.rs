//! Per-engine counters (spec §7), and what `notify_query "metrics"` writes to Redis.
//!
//! Several Apache servers (one push daemon each) may share one Redis: every engine answers the
//! query. `notify_push_metrics` (what `occ notify_push:metrics` reads) then holds the answer
//! written last; with a server label ([`Engine::set_server_label`]) the JSON says whose it is
//! (`"server"`) and each engine also writes its own `notify_push_metrics:<label>`, which expires.

use crate::Engine;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The Redis key `occ notify_push:metrics` reads (spec §2.3).
pub const METRICS_KEY: &str = "notify_push_metrics";
/// How long a server's own `notify_push_metrics:<label>` outlives the query that wrote it: a
/// server that is gone stops showing up.
pub const SERVER_METRICS_TTL: Duration = Duration::from_secs(300);

/// The key a labelled server writes its own answer to: `notify_push_metrics:<label>`.
pub fn server_metrics_key(label: &str) -> String {
    format!("{METRICS_KEY}:{label}")
}

/// A snapshot of the engine's counters. Serializes to exactly the JSON object that
/// `occ notify_push:metrics` expects (same keys, same order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub active_connection_count: u64,
    pub active_user_count: u64,
    pub total_connection_count: u64,
    pub mapping_query_count: u64,
    pub events_received: u64,
    pub messages_sent: u64,
    pub messages_sent_file: u64,
    pub messages_sent_activity: u64,
    pub messages_sent_notification: u64,
    pub messages_sent_custom: u64,
}

impl Metrics {
    /// The JSON written to Redis key `notify_push_metrics`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// [`Metrics::to_json`] with `"server": <label>` after the spec's keys when there is a
    /// label (the incumbent's readers ignore extra keys); without one, exactly `to_json`.
    pub fn to_json_for(&self, server: Option<&str>) -> String {
        #[derive(Serialize)]
        struct Labelled<'a> {
            #[serde(flatten)]
            metrics: &'a Metrics,
            #[serde(skip_serializing_if = "Option::is_none")]
            server: Option<&'a str>,
        }
        serde_json::to_string(&Labelled { metrics: self, server }).unwrap_or_default()
    }

    /// The Prometheus text of the incumbent's `/metrics` listener (10 lines, no HELP/TYPE).
    pub fn to_prometheus(&self) -> String {
        format!(
            "active_connection_count {}\nactive_user_count {}\ntotal_connection_count {}\nmapping_query_count {}\n\
             event_count_total {}\nmessage_count_total {}\nmessage_count_total{{type=\"file\"}} {}\n\
             message_count_total{{type=\"notification\"}} {}\nmessage_count_total{{type=\"activity\"}} {}\n\
             message_count_total{{type=\"custom\"}} {}\n",
            self.active_connection_count,
            self.active_user_count,
            self.total_connection_count,
            self.mapping_query_count,
            self.events_received,
            self.messages_sent,
            self.messages_sent_file,
            self.messages_sent_notification,
            self.messages_sent_activity,
            self.messages_sent_custom,
        )
    }

    /// The same samples as [`Metrics::to_prometheus`], each family preceded by `# HELP` and
    /// `# TYPE` lines: the body of `<base>/metrics` (Prometheus text exposition format 0.0.4).
    pub fn to_prometheus_with_help(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        family(
            "active_connection_count",
            "gauge",
            "Authenticated WebSocket connections.",
            &[("", self.active_connection_count)],
        );
        family(
            "active_user_count",
            "gauge",
            "Distinct users with at least one connection.",
            &[("", self.active_user_count)],
        );
        family(
            "total_connection_count",
            "counter",
            "Connections authenticated since the push daemon started.",
            &[("", self.total_connection_count)],
        );
        family(
            "mapping_query_count",
            "counter",
            "Storage mapping database queries (cache misses).",
            &[("", self.mapping_query_count)],
        );
        family(
            "event_count_total",
            "counter",
            "Redis pub/sub messages received, including unparseable ones.",
            &[("", self.events_received)],
        );
        family(
            "message_count_total",
            "counter",
            "Messages sent to clients, in total and per type.",
            &[
                ("", self.messages_sent),
                ("{type=\"file\"}", self.messages_sent_file),
                ("{type=\"notification\"}", self.messages_sent_notification),
                ("{type=\"activity\"}", self.messages_sent_activity),
                ("{type=\"custom\"}", self.messages_sent_custom),
            ],
        );
        out
    }
}

impl Engine {
    /// Names the Apache server this engine runs in (the daemon passes e.g.
    /// `web1/cloud.example.com:443`; see the module's docs/internals.md). Call it before
    /// [`Engine::start`]; the first label set stays. With a label, the answer to
    /// `notify_query "metrics"` carries `"server": <label>` and also goes to
    /// `notify_push_metrics:<label>` (expiring after [`SERVER_METRICS_TTL`]); without one
    /// (the default) the engine answers exactly as notify_push does.
    pub fn set_server_label(&self, label: impl Into<String>) {
        let _ = self.server_label.set(label.into());
    }

    /// The label set by [`Engine::set_server_label`].
    pub fn server_label(&self) -> Option<&str> {
        self.server_label.get().map(String::as_str)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub active_connections: AtomicU64,
    pub active_users: AtomicU64,
    pub total_connections: AtomicU64,
    pub events_received: AtomicU64,
    pub sent_file: AtomicU64,
    pub sent_activity: AtomicU64,
    pub sent_notification: AtomicU64,
    pub sent_custom: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Metrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let file = get(&self.sent_file);
        let activity = get(&self.sent_activity);
        let notification = get(&self.sent_notification);
        let custom = get(&self.sent_custom);
        Metrics {
            active_connection_count: get(&self.active_connections),
            active_user_count: get(&self.active_users),
            total_connection_count: get(&self.total_connections),
            // Counted by the storage mapping itself; `Engine::metrics` fills it in.
            mapping_query_count: 0,
            events_received: get(&self.events_received),
            messages_sent: file + activity + notification + custom,
            messages_sent_file: file,
            messages_sent_activity: activity,
            messages_sent_notification: notification,
            messages_sent_custom: custom,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_in_spec_order() {
        let m = Metrics { total_connection_count: 82, events_received: 36, ..Default::default() };
        assert_eq!(
            m.to_json(),
            "{\"active_connection_count\":0,\"active_user_count\":0,\"total_connection_count\":82,\
             \"mapping_query_count\":0,\"events_received\":36,\"messages_sent\":0,\"messages_sent_file\":0,\
             \"messages_sent_activity\":0,\"messages_sent_notification\":0,\"messages_sent_custom\":0}"
        );
        assert_eq!(m.to_prometheus().lines().count(), 10);
        let documented = m.to_prometheus_with_help();
        let samples: Vec<&str> = documented.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, m.to_prometheus().lines().collect::<Vec<_>>());
        assert_eq!(documented.lines().filter(|l| l.starts_with("# HELP ")).count(), 6);
        assert!(documented.contains("# TYPE active_connection_count gauge\n"));
        assert!(documented.contains("# TYPE message_count_total counter\n"));
    }

    #[test]
    fn a_server_label_is_one_more_key_at_the_end() {
        let m = Metrics { active_connection_count: 2, ..Default::default() };
        assert_eq!(m.to_json_for(None), m.to_json());
        let labelled = m.to_json_for(Some("web1/cloud.example.com:443"));
        let expected = m.to_json().replace('}', ",\"server\":\"web1/cloud.example.com:443\"}");
        assert_eq!(labelled, expected);
        assert_eq!(
            server_metrics_key("web1/cloud.example.com:443"),
            "notify_push_metrics:web1/cloud.example.com:443"
        );
    }
}
