//! Per-engine counters (spec §7).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

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
}
