//! Per-user fan-out: user → broadcast channel shared by all of that user's connections.

use crate::message::PushMessage;
use crate::metrics::Counters;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// The incumbent refuses a connection when the user already has more than 64: 65 are accepted.
pub(crate) const USER_CONNECTION_LIMIT: usize = 65;

/// Messages a connection may fall behind before the oldest are dropped. The incumbent uses 4;
/// 16 costs a few hundred bytes per online user and makes bursts of custom messages survive.
const CHANNEL_CAPACITY: usize = 16;

struct UserEntry {
    sender: broadcast::Sender<PushMessage>,
    connections: usize,
}

pub(crate) struct Registry {
    users: Mutex<HashMap<String, UserEntry>>,
    counters: Arc<Counters>,
}

/// A registered connection; unregisters on drop.
pub(crate) struct Registration<'a> {
    registry: &'a Registry,
    uid: String,
    pub receiver: broadcast::Receiver<PushMessage>,
}

impl Registry {
    pub fn new(counters: Arc<Counters>) -> Registry {
        Registry { users: Mutex::new(HashMap::new()), counters }
    }

    /// Registers a connection of `uid`; `None` when the user is at the connection limit.
    pub fn register(&self, uid: &str) -> Option<Registration<'_>> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = match users.get_mut(uid) {
            Some(entry) if entry.connections >= USER_CONNECTION_LIMIT => return None,
            Some(entry) => {
                entry.connections += 1;
                entry.sender.subscribe()
            }
            None => {
                let (sender, receiver) = broadcast::channel(CHANNEL_CAPACITY);
                users.insert(uid.to_string(), UserEntry { sender, connections: 1 });
                self.counters.active_users.fetch_add(1, Ordering::Relaxed);
                receiver
            }
        };
        self.counters.active_connections.fetch_add(1, Ordering::Relaxed);
        self.counters.total_connections.fetch_add(1, Ordering::Relaxed);
        Some(Registration { registry: self, uid: uid.to_string(), receiver })
    }

    fn unregister(&self, uid: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = users.get_mut(uid) {
            entry.connections -= 1;
            self.counters.active_connections.fetch_sub(1, Ordering::Relaxed);
            if entry.connections == 0 {
                users.remove(uid);
                self.counters.active_users.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends to every connection of `uid`; users without connections are skipped silently.
    pub fn send(&self, uid: &str, message: PushMessage) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = users.get(uid) {
            let _ = entry.sender.send(message);
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.unregister(&self.uid);
    }
}
