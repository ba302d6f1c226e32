//! The Redis event parser, `event::parse(channel, payload)`, compiled from `engine/src/event.rs`
//! (it is private to the engine) with the two items it imports re-exported from the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// What `event.rs` imports as `crate::error`.
mod error {
    pub use nextcloud_push_engine::error::EventError;
}

/// What `event.rs` imports as `crate::message`.
mod message {
    pub use nextcloud_push_engine::{PushMessage, UpdatedFiles};
}

#[allow(dead_code)]
#[path = "../../engine/src/event.rs"]
mod event;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    // Mostly a subscribed channel; otherwise the channel is the payload up to the first NUL.
    let (channel, payload) = match event::CHANNELS.get(usize::from(pick) % 16) {
        Some(channel) => (channel.to_string(), payload),
        None => {
            let mut parts = payload.splitn(2, |&b| b == 0);
            let channel = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            (channel, parts.next().unwrap_or_default())
        }
    };
    let result = event::parse(&channel, payload);
    if !event::CHANNELS.contains(&channel.as_str()) && std::str::from_utf8(payload).is_ok() {
        assert!(matches!(result, Ok(None)));
    }
});
