//! Property tests of the Redis event parser, `event::parse(channel, payload)`.
//!
//! The parser is private to the engine; this test compiles the very same source file
//! (`engine/src/event.rs`) as a module of the test crate, with the two items it takes from the
//! engine (`crate::error::EventError`, `crate::message::{PushMessage, UpdatedFiles}`) re-exported
//! from the engine's public API. The fuzz target `event` does the same.

/// What `event.rs` imports as `crate::error`.
mod error {
    pub use nextcloud_push_engine::error::EventError;
}

/// What `event.rs` imports as `crate::message`.
mod message {
    pub use nextcloud_push_engine::{PushMessage, UpdatedFiles};
}

#[allow(dead_code)]
#[path = "../src/event.rs"]
mod event;

use event::{parse, ConfigEvent, Event, CHANNELS};
use message::{PushMessage, UpdatedFiles};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};

fn channel() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(CHANNELS.to_vec()).prop_map(str::to_string),
        1 => ".{0,24}",
        1 => "notify_[a-z_]{0,20}",
    ]
}

/// Any JSON value, a few levels deep (no floats: they need not survive a text round trip).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Extra keys the parser must ignore (none of the keys it reads).
fn extras() -> impl Strategy<Value = Vec<(String, Value)>> {
    vec(("x_[a-z_]{0,8}|group|extra|storage_id", json_value()), 0..3)
}

fn object(fields: Value, extras: &[(String, Value)]) -> String {
    let mut fields = fields;
    if let Value::Object(map) = &mut fields {
        for (k, v) in extras {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    fields.to_string()
}

/// A well-formed event: the channel, the payload as Nextcloud publishes it, and what the
/// parser must make of it.
fn well_formed() -> impl Strategy<Value = (&'static str, String, Event)> {
    let text = || ".{0,24}";
    prop_oneof![
        (any::<u32>(), text(), any::<u64>(), extras()).prop_map(|(storage, path, file_id, x)| (
            "notify_storage_update",
            object(json!({"storage": storage, "path": path, "file_id": file_id}), &x),
            Event::StorageUpdate { storage, path, file_id },
        )),
        (
            proptest::sample::select(vec![
                "notify_group_membership_update",
                "notify_user_share_created",
                "notify_activity",
                "notify_notification",
            ]),
            text(),
            extras(),
        )
            .prop_map(|(channel, user, x)| {
                let message = match channel {
                    "notify_activity" => PushMessage::Activity,
                    "notify_notification" => PushMessage::Notification,
                    _ => PushMessage::File(UpdatedFiles::Unknown),
                };
                (channel, object(json!({ "user": user }), &x), Event::User { user, message })
            }),
        (text(), text(), proptest::option::of(json_value()), extras()).prop_map(
            |(user, message, body, x)| {
                let mut fields = json!({"user": user, "message": message});
                if let Some(body) = &body {
                    fields["body"] = body.clone();
                }
                let expected = PushMessage::custom(&message, body.as_ref());
                ("notify_custom", object(fields, &x), Event::User { user, message: expected })
            }
        ),
        (text(), text(), extras()).prop_map(|(user, token, x)| (
            "notify_pre_auth",
            object(json!({"user": user, "token": token}), &x),
            Event::PreAuth { user, token },
        )),
        any::<u32>().prop_map(|c| ("notify_test_cookie", c.to_string(), Event::TestCookie(c))),
        text().prop_map(|s| (
            "notify_config",
            json!({ "log_spec": s }).to_string(),
            Event::Config(ConfigEvent::LogSpec(s)),
        )),
        text().prop_map(|s| {
            let expected = if s == "log_restore" {
                Event::Config(ConfigEvent::Restore)
            } else {
                Event::Config(ConfigEvent::LogSpec(s.clone()))
            };
            ("notify_config", Value::from(s).to_string(), expected)
        }),
        Just(("notify_config", "\"log_restore\"".to_string(), Event::Config(ConfigEvent::Restore))),
        text().prop_map(|s| ("notify_query", Value::from(s.clone()).to_string(), Event::Query(s))),
        text().prop_map(|s| (
            "notify_signal",
            Value::from(s.clone()).to_string(),
            Event::Signal(s)
        )),
    ]
}

proptest! {
    /// Arbitrary channel and bytes: never a panic; a channel the engine does not subscribe to is
    /// `Ok(None)` whenever the payload is UTF-8, and a non-UTF-8 payload is always an error.
    #[test]
    fn arbitrary_messages_never_panic(channel in channel(), payload in vec(any::<u8>(), 0..200)) {
        let result = parse(&channel, &payload);
        if std::str::from_utf8(&payload).is_err() {
            prop_assert!(result.is_err());
        } else if !CHANNELS.contains(&channel.as_str()) {
            prop_assert!(matches!(result, Ok(None)));
        }
        if CHANNELS.contains(&channel.as_str()) {
            prop_assert!(!matches!(result, Ok(None)), "a subscribed channel is always handled");
        }
    }

    /// Arbitrary JSON on every channel: never a panic.
    #[test]
    fn arbitrary_json_never_panics(channel in channel(), value in json_value()) {
        let _ = parse(&channel, value.to_string().as_bytes());
    }

    /// JSON-looking text close to the real payloads: never a panic.
    #[test]
    fn json_like_text_never_panics(
        channel in channel(),
        text in r#"\{("(user|storage|path|file_id|token|message|body|log_spec)":(-?[0-9]{1,24}(\.[0-9]{1,4})?|"[^"\\]{0,8}"|null|true|\{|\[|\]|\}),?){0,6}\}?|"[^"]{0,12}"?|-?[0-9]{1,30}"#,
    ) {
        let _ = parse(&channel, text.as_bytes());
    }

    /// Well-formed events, as Nextcloud publishes them (with extra keys), parse to themselves.
    #[test]
    fn well_formed_events_round_trip((channel, payload, expected) in well_formed()) {
        prop_assert_eq!(parse(channel, payload.as_bytes()).unwrap(), Some(expected));
    }

    /// Out-of-range numbers are errors, never wrapped or truncated values.
    #[test]
    fn out_of_range_numbers_are_errors(big in (u64::from(u32::MAX) + 1).., negative in i64::MIN..0) {
        prop_assert!(parse("notify_test_cookie", big.to_string().as_bytes()).is_err());
        prop_assert!(parse("notify_test_cookie", negative.to_string().as_bytes()).is_err());
        let storage = json!({"storage": big, "path": "p", "file_id": 1}).to_string();
        prop_assert!(parse("notify_storage_update", storage.as_bytes()).is_err());
        let file_id = json!({"storage": 1, "path": "p", "file_id": negative}).to_string();
        prop_assert!(parse("notify_storage_update", file_id.as_bytes()).is_err());
    }
}
