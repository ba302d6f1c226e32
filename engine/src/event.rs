//! Redis pub/sub channels and their payloads (spec §2.2).

use crate::error::EventError;
use crate::message::PushMessage;
use serde::Deserialize;

/// Exactly the 11 channels the incumbent subscribes to.
pub const CHANNELS: [&str; 11] = [
    "notify_storage_update",
    "notify_group_membership_update",
    "notify_user_share_created",
    "notify_test_cookie",
    "notify_activity",
    "notify_notification",
    "notify_pre_auth",
    "notify_custom",
    "notify_config",
    "notify_query",
    "notify_signal",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StorageUpdate {
        storage: u32,
        path: String,
        file_id: u64,
    },
    /// A message for one user (activity, notification, custom, share, group membership).
    User {
        user: String,
        message: PushMessage,
    },
    PreAuth {
        user: String,
        token: String,
    },
    TestCookie(u32),
    Config(ConfigEvent),
    Query(String),
    Signal(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigEvent {
    LogSpec(String),
    Restore,
}

#[derive(Deserialize)]
struct StorageUpdate {
    storage: u32,
    path: String,
    file_id: u64,
}

#[derive(Deserialize)]
struct UserPayload {
    user: String,
}

#[derive(Deserialize)]
struct PreAuth {
    user: String,
    token: String,
}

#[derive(Deserialize)]
struct Custom {
    user: String,
    message: String,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigPayload {
    Spec { log_spec: String },
    Bare(String),
}

/// Parses one pub/sub message. `Ok(None)` for a channel the engine does not handle.
pub fn parse(channel: &str, payload: &[u8]) -> Result<Option<Event>, EventError> {
    let payload = std::str::from_utf8(payload).map_err(|_| EventError::Utf8)?;
    let event = match channel {
        "notify_storage_update" => {
            let p: StorageUpdate = serde_json::from_str(payload)?;
            Event::StorageUpdate { storage: p.storage, path: p.path, file_id: p.file_id }
        }
        "notify_group_membership_update" | "notify_user_share_created" => {
            let p: UserPayload = serde_json::from_str(payload)?;
            Event::User {
                user: p.user,
                message: PushMessage::File(crate::message::UpdatedFiles::Unknown),
            }
        }
        "notify_activity" => {
            let p: UserPayload = serde_json::from_str(payload)?;
            Event::User { user: p.user, message: PushMessage::Activity }
        }
        "notify_notification" => {
            let p: UserPayload = serde_json::from_str(payload)?;
            Event::User { user: p.user, message: PushMessage::Notification }
        }
        "notify_custom" => {
            let p: Custom = serde_json::from_str(payload)?;
            Event::User { user: p.user, message: PushMessage::custom(&p.message, p.body.as_ref()) }
        }
        "notify_pre_auth" => {
            let p: PreAuth = serde_json::from_str(payload)?;
            Event::PreAuth { user: p.user, token: p.token }
        }
        "notify_test_cookie" => Event::TestCookie(serde_json::from_str(payload)?),
        "notify_config" => match serde_json::from_str::<ConfigPayload>(payload)? {
            ConfigPayload::Spec { log_spec } => Event::Config(ConfigEvent::LogSpec(log_spec)),
            ConfigPayload::Bare(s) if s == "log_restore" => Event::Config(ConfigEvent::Restore),
            ConfigPayload::Bare(s) => Event::Config(ConfigEvent::LogSpec(s)),
        },
        "notify_query" => Event::Query(serde_json::from_str(payload)?),
        "notify_signal" => Event::Signal(serde_json::from_str(payload)?),
        _ => return Ok(None),
    };
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::UpdatedFiles;

    #[test]
    fn payload_shapes() {
        assert_eq!(
            parse("notify_storage_update", br#"{"storage":3,"path":"files/a","file_id":1234}"#)
                .unwrap(),
            Some(Event::StorageUpdate { storage: 3, path: "files/a".into(), file_id: 1234 })
        );
        assert_eq!(
            parse("notify_activity", br#"{"user":"alice","extra":1}"#).unwrap(),
            Some(Event::User { user: "alice".into(), message: PushMessage::Activity })
        );
        assert_eq!(
            parse("notify_group_membership_update", br#"{"user":"a","group":"g"}"#).unwrap(),
            Some(Event::User {
                user: "a".into(),
                message: PushMessage::File(UpdatedFiles::Unknown)
            })
        );
        assert_eq!(
            parse("notify_test_cookie", b"29344007").unwrap(),
            Some(Event::TestCookie(29344007))
        );
        assert_eq!(
            parse("notify_signal", br#""reset""#).unwrap(),
            Some(Event::Signal("reset".into()))
        );
        assert_eq!(
            parse("notify_query", br#""metrics""#).unwrap(),
            Some(Event::Query("metrics".into()))
        );
        assert_eq!(
            parse("notify_config", br#"{"log_spec":"notify_push=debug"}"#).unwrap(),
            Some(Event::Config(ConfigEvent::LogSpec("notify_push=debug".into())))
        );
        assert_eq!(
            parse("notify_config", br#""log_restore""#).unwrap(),
            Some(Event::Config(ConfigEvent::Restore))
        );
        assert_eq!(parse("other", b"x").unwrap(), None);
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(parse("notify_activity", br#"{"user":1}"#).is_err());
        assert!(parse("notify_activity", b"{not json").is_err());
        assert!(parse("notify_test_cookie", br#""1""#).is_err());
        assert!(parse("notify_storage_update", br#"{"storage":-1,"path":"","file_id":1}"#).is_err());
        assert!(parse("notify_custom", br#"{"user":"a"}"#).is_err());
    }
}
