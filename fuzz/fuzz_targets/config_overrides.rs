//! `EngineConfig::load` with arbitrary `NextcloudPush*` directive strings (no config.php).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_nextcloud_push_fuzz::fields;
use nextcloud_push_engine::{EngineConfig, Overrides};

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 4);
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    let overrides = Overrides {
        nextcloud_url: some(&f[0]),
        redis_url: some(&f[1]),
        database_url: some(&f[2]),
        table_prefix: some(&f[3]),
        ..Default::default()
    };
    if let Ok(config) = EngineConfig::load(None, &overrides) {
        assert!(config.nextcloud_url.ends_with('/'));
        assert!(config.table_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let _ = config.fingerprint();
        let _ = format!("{config:?}");
    }
});
