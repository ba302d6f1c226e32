//! `upgrade::{classify, check_upgrade}` on arbitrary strings: no panic, and an accepted upgrade
//! is always a GET over HTTP/1.1 with the four required headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mod_nextcloud_push_fuzz::fields;
use nextcloud_push_engine::upgrade::{check_upgrade, classify, UpgradeRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let f = fields(rest, 9);
    let _ = classify(&f[0], &f[1]);
    let opt = |i: usize, bit: u8| (flags & bit != 0).then_some(f[i].as_str());
    let request = UpgradeRequest {
        method: &f[2],
        http11: flags & 1 != 0,
        connection: opt(3, 4),
        upgrade: opt(4, 8),
        version: opt(5, 16),
        key: opt(6, 32),
        content_length: opt(7, 64),
        transfer_encoding: opt(8, 128),
    };
    if check_upgrade(&request).is_ok() {
        assert!(request.method == "GET" && request.http11);
        assert!(request.connection.is_some() && request.upgrade.is_some());
        assert!(request.version.is_some() && request.key.is_some());
        assert!(request.transfer_encoding.is_none());
    }
});
