//! `DbConfig::from_url` (a `NextcloudPushDatabase` URL) and `redact_url` on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextcloud_push_engine::db::{redact_url, DbConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let _ = redact_url(url);
    if let Ok(config) = DbConfig::from_url(url, "oc_") {
        let _ = config.describe();
        let _ = format!("{config:?}");
    }
});
