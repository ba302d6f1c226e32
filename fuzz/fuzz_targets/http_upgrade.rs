//! The HTTP/1.1 upgrade reader of `Engine::accept_http`: arbitrary bytes from the client, then
//! end of stream. No panic in the engine (`exchange` asserts none happened in its tasks), and no
//! 101 without the required headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../engine/tests/http_exchange/mod.rs"]
mod http_exchange;

fuzz_target!(|data: &[u8]| {
    let response = http_exchange::exchange(data);
    if response.starts_with(b"HTTP/1.1 101 ") {
        let head = String::from_utf8_lossy(data).to_ascii_lowercase();
        for needed in ["connection:", "upgrade:", "sec-websocket-version:", "sec-websocket-key:"] {
            assert!(head.contains(needed), "upgraded without {needed}");
        }
        assert!(head.starts_with("get "), "upgraded a request that is not a GET");
    }
});
