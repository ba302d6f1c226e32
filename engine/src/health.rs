//! The state of the engine's links to Redis and to the database, for `server-status`: up or
//! down, since when, and the last error seen.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A link's state as reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Connected (Redis: subscribed; database: the last probe or query worked).
    pub up: bool,
    /// Unix time of the last change between up and down (0: never connected or failed yet).
    pub since: u64,
    /// The last error seen, cut to a sane length.
    pub last_error: Option<String>,
}

/// A link's state, updated by the code that owns the link.
#[derive(Debug, Default)]
pub(crate) struct Link(Mutex<LinkState>);

impl Link {
    pub fn up(&self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !state.up || state.since == 0 {
            state.up = true;
            state.since = now();
        }
    }

    pub fn down(&self, error: &str) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.up || state.since == 0 {
            state.up = false;
            state.since = now();
        }
        state.last_error = Some(crate::text::clip(error));
    }

    pub fn state(&self) -> LinkState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What `Engine::health` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub redis: LinkState,
    /// `None` without a database (file events reach nobody).
    pub database: Option<LinkState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_remembers_since_when_and_the_last_error() {
        let link = Link::default();
        assert_eq!(link.state(), LinkState::default(), "nothing known yet");
        link.down("refused");
        let down = link.state();
        assert!(!down.up && down.since > 0);
        assert_eq!(down.last_error.as_deref(), Some("refused"));
        link.down("refused again");
        assert_eq!(link.state().since, down.since, "still the same outage");
        link.up();
        let up = link.state();
        assert!(up.up && up.since >= down.since);
        assert_eq!(up.last_error.as_deref(), Some("refused again"), "kept after recovery");
        link.down(&"x".repeat(1000));
        let cut = link.state().last_error.unwrap();
        assert!(cut.len() < 260 && cut.ends_with("(1000 bytes)"), "{cut}");
    }
}
