//! Push messages and the per-connection debounce queue (spec §1.4, §1.6).

use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Which files changed: known ids (de-duplicated, first-seen order) or "something changed".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdatedFiles {
    Unknown,
    Known(Vec<u64>),
}

impl UpdatedFiles {
    /// Union of id lists; anything merged with `Unknown` becomes `Unknown`.
    pub fn merge(&mut self, other: &UpdatedFiles) {
        match (&mut *self, other) {
            (UpdatedFiles::Known(ids), UpdatedFiles::Known(more)) => {
                for id in more {
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
            }
            _ => *self = UpdatedFiles::Unknown,
        }
    }
}

/// One event for one user, as it travels through the user's fan-out channel.
#[derive(Clone, Debug, PartialEq)]
pub enum PushMessage {
    File(UpdatedFiles),
    Activity,
    Notification,
    /// The complete frame text (`message` or `message <compact json>`), serialized once per
    /// event and shared by every connection of the user.
    Custom(Utf8Bytes),
}

impl PushMessage {
    /// The custom frame text: `message` alone for a missing or `null` body.
    pub fn custom(message: &str, body: Option<&serde_json::Value>) -> PushMessage {
        let text = match body {
            None | Some(serde_json::Value::Null) => message.to_string(),
            Some(body) => format!("{message} {body}"),
        };
        PushMessage::Custom(text.into())
    }

    /// The text frame for a connection (`listen_file_id`: the connection opted into ids).
    pub fn to_text(&self, listen_file_id: bool) -> Utf8Bytes {
        match self {
            PushMessage::File(UpdatedFiles::Known(ids)) if listen_file_id => {
                format!("notify_file_id {}", serde_json::to_string(ids).unwrap_or_default()).into()
            }
            PushMessage::File(_) => Utf8Bytes::from_static("notify_file"),
            PushMessage::Activity => Utf8Bytes::from_static("notify_activity"),
            PushMessage::Notification => Utf8Bytes::from_static("notify_notification"),
            PushMessage::Custom(text) => text.clone(),
        }
    }
}

/// Debounce time of File and Activity: `max(1, min(active / 10, max_debounce))` seconds × `factor`.
pub fn debounce_time(active_connections: u64, max_debounce_time: u64, factor: f64) -> Duration {
    let secs = (active_connections / 10).min(max_debounce_time).max(1);
    Duration::from_secs_f64(secs as f64 * factor)
}

const NOTIFICATION_DEBOUNCE: Duration = Duration::from_secs(1);
const QUIET_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Slot {
    pending: Option<PushMessage>,
    last_received: Instant,
    last_sent: Instant,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        let long_ago = now.checked_sub(Duration::from_secs(120)).unwrap_or(now);
        Slot { pending: None, last_received: long_ago, last_sent: long_ago }
    }
}

/// The three debounce slots of one connection (File, Activity, Notification). Time is injected
/// so the algorithm is unit-tested without sleeping.
#[derive(Debug)]
pub struct SendQueue {
    slots: [Slot; 3],
}

impl SendQueue {
    pub fn new(now: Instant) -> SendQueue {
        SendQueue { slots: [Slot::new(now), Slot::new(now), Slot::new(now)] }
    }

    /// Queues a message. Custom messages are never debounced and are handed back to be sent now.
    pub fn push(&mut self, message: PushMessage, now: Instant) -> Option<PushMessage> {
        let index = match message {
            PushMessage::File(_) => 0,
            PushMessage::Activity => 1,
            PushMessage::Notification => 2,
            PushMessage::Custom(_) => return Some(message),
        };
        let slot = &mut self.slots[index];
        match (&mut slot.pending, &message) {
            (Some(PushMessage::File(files)), PushMessage::File(more)) => files.merge(more),
            (Some(_), _) => {}
            (pending @ None, _) => *pending = Some(message),
        }
        slot.last_received = now;
        None
    }

    /// Takes the messages that are due at `now`, in the order File, Activity, Notification.
    /// `file_debounce` is the D of File and Activity (see [`debounce_time`]); Notification uses 1 s.
    pub fn drain(&mut self, now: Instant, file_debounce: Duration) -> Vec<PushMessage> {
        let mut due = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.pending.is_none() {
                continue;
            }
            let debounce = if index == 2 { NOTIFICATION_DEBOUNCE } else { file_debounce };
            if now.saturating_duration_since(slot.last_sent) > debounce
                && now.saturating_duration_since(slot.last_received) > QUIET_WINDOW
            {
                slot.last_sent = now;
                due.extend(slot.pending.take());
            }
        }
        due
    }

    /// The moment after which the earliest pending slot becomes sendable: [`SendQueue::drain`]
    /// sends it at any `now` strictly later (same `file_debounce`). `None` when nothing is pending.
    pub fn next_due(&self, file_debounce: Duration) -> Option<Instant> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.pending.is_some())
            .map(|(index, slot)| {
                let debounce = if index == 2 { NOTIFICATION_DEBOUNCE } else { file_debounce };
                (slot.last_sent + debounce).max(slot.last_received + QUIET_WINDOW)
            })
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|slot| slot.pending.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ids: &[u64]) -> PushMessage {
        PushMessage::File(UpdatedFiles::Known(ids.to_vec()))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn run(connections: u64) {
        let base = Instant::now();
        let d = debounce_time(connections, 15, 1.0);
        let mut queue = SendQueue::new(base);
        assert_eq!(queue.push(PushMessage::Activity, base), None);
        assert_eq!(queue.push(file(&[1]), base), None);
        assert_eq!(queue.push(file(&[2]), base + ms(10)), None);
        // inside the 100 ms quiet window: held
        assert!(queue.drain(base + ms(20), d).is_empty());
        // merged, file first
        assert_eq!(queue.drain(base + ms(200), d), vec![file(&[1, 2]), PushMessage::Activity]);
        // inside the debounce window: held
        queue.push(file(&[3]), base + ms(200) + d / 2);
        queue.push(file(&[4]), base + ms(200) + d / 2 + ms(50));
        assert!(queue.drain(base + ms(200) + d - ms(10), d).is_empty());
        assert_eq!(queue.drain(base + ms(200) + d + ms(10), d), vec![file(&[3, 4])]);
        assert!(queue.drain(base + Duration::from_secs(300), d).is_empty());
        assert!(queue.is_empty());
    }

    #[test]
    fn send_queue_with_100_connections() {
        assert_eq!(debounce_time(100, 15, 1.0), Duration::from_secs(10));
        run(100);
    }

    #[test]
    fn send_queue_with_1_connection() {
        assert_eq!(debounce_time(1, 15, 1.0), Duration::from_secs(1));
        run(1);
    }

    #[test]
    fn debounce_formula() {
        assert_eq!(debounce_time(0, 15, 0.5), ms(500));
        assert_eq!(debounce_time(19, 15, 1.5), ms(1500));
        assert_eq!(debounce_time(150, 15, 0.5), ms(7500));
        assert_eq!(debounce_time(10_000, 15, 1.5), ms(22_500));
        assert_eq!(debounce_time(10_000, 3, 1.0), Duration::from_secs(3));
        assert_eq!(debounce_time(10_000, 0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn next_due_is_the_earliest_sendable_moment() {
        let base = Instant::now();
        let d = Duration::from_secs(10);
        let mut queue = SendQueue::new(base);
        assert_eq!(queue.next_due(d), None);
        // nothing sent for 120 s: only the quiet window counts
        queue.push(file(&[1]), base);
        queue.push(PushMessage::Activity, base + ms(30));
        assert_eq!(queue.next_due(d), Some(base + ms(100)));
        let due = queue.next_due(d).unwrap();
        // strictly after: nothing at the due moment itself, the file just after it
        assert!(queue.drain(due, d).is_empty());
        assert_eq!(queue.drain(due + ms(1), d), vec![file(&[1])]);
        assert_eq!(queue.next_due(d), Some(base + ms(130)));
        assert_eq!(queue.drain(base + ms(131), d), vec![PushMessage::Activity]);
        assert_eq!(queue.next_due(d), None);
        // after a send the debounce time counts from `last_sent`
        queue.push(file(&[2]), base + ms(200));
        assert_eq!(queue.next_due(d), Some(base + ms(101) + d));
        // a notification only waits its fixed 1 s, so it is due first
        queue.push(PushMessage::Notification, base + ms(300));
        assert_eq!(queue.next_due(d), Some(base + ms(400)));
        assert_eq!(queue.drain(base + ms(401), d), vec![PushMessage::Notification]);
        queue.push(PushMessage::Notification, base + ms(500));
        assert_eq!(queue.next_due(d), Some(base + ms(1401)));
        // at the file's due moment the drain sends file, then notification, in that order
        let due = base + ms(101) + d;
        assert_eq!(queue.drain(due + ms(1), d), vec![file(&[2]), PushMessage::Notification]);
        assert_eq!(queue.next_due(d), None);
    }

    #[test]
    fn unknown_downgrades_known_ids() {
        let base = Instant::now();
        let mut queue = SendQueue::new(base);
        queue.push(file(&[6]), base);
        queue.push(PushMessage::File(UpdatedFiles::Unknown), base);
        queue.push(file(&[7]), base);
        let out = queue.drain(base + ms(150), Duration::from_secs(1));
        assert_eq!(out, vec![PushMessage::File(UpdatedFiles::Unknown)]);
        assert_eq!(out[0].to_text(true).as_str(), "notify_file");
    }

    #[test]
    fn ids_dedup_in_first_seen_order() {
        let base = Instant::now();
        let mut queue = SendQueue::new(base);
        for id in [11, 20, 11, 10, 1, 20] {
            queue.push(file(&[id]), base);
        }
        let out = queue.drain(base + ms(150), Duration::from_secs(1));
        assert_eq!(out[0].to_text(true).as_str(), "notify_file_id [11,20,10,1]");
        assert_eq!(out[0].to_text(false).as_str(), "notify_file");
    }

    #[test]
    fn notification_uses_fixed_one_second() {
        let base = Instant::now();
        let mut queue = SendQueue::new(base);
        queue.push(PushMessage::Notification, base);
        // a long file debounce does not hold notifications
        assert_eq!(
            queue.drain(base + ms(150), Duration::from_secs(20)),
            vec![PushMessage::Notification]
        );
        queue.push(PushMessage::Notification, base + ms(200));
        assert!(queue.drain(base + ms(1100), Duration::from_secs(20)).is_empty());
        assert_eq!(
            queue.drain(base + ms(1200), Duration::from_secs(20)),
            vec![PushMessage::Notification]
        );
    }

    #[test]
    fn custom_is_never_queued() {
        let base = Instant::now();
        let mut queue = SendQueue::new(base);
        let body = serde_json::json!({"a":[1,2],"b":"x y"});
        let msg = PushMessage::custom("my_msg", Some(&body));
        assert_eq!(queue.push(msg.clone(), base), Some(msg.clone()));
        assert_eq!(msg.to_text(false).as_str(), "my_msg {\"a\":[1,2],\"b\":\"x y\"}");
        assert_eq!(
            PushMessage::custom("m", Some(&serde_json::Value::Null)).to_text(false).as_str(),
            "m"
        );
        assert_eq!(
            PushMessage::custom("s", Some(&serde_json::json!("hello"))).to_text(false).as_str(),
            "s \"hello\""
        );
        assert!(queue.is_empty());
    }
}
