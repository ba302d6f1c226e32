//! Talking to `Engine::accept_http` over an in-memory stream, for the upgrade reader's property
//! tests (`engine/tests/prop_upgrade.rs`) and its fuzz target (`fuzz/fuzz_targets/http_upgrade.rs`).
#![allow(dead_code)]

use nextcloud_push_engine::{Engine, EngineConfig, Overrides};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub static PANICS: AtomicUsize = AtomicUsize::new(0);

/// One engine (never started: no Redis or Nextcloud is contacted before a login) on a
/// current-thread runtime, and a panic hook that counts panics in the engine's tasks.
pub fn engine() -> &'static (tokio::runtime::Runtime, Arc<Engine>) {
    static ENGINE: OnceLock<(tokio::runtime::Runtime, Arc<Engine>)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = EngineConfig::load(
            None,
            &Overrides {
                nextcloud_url: Some("http://127.0.0.1:9/".into()),
                redis_url: Some("redis://127.0.0.1:9/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let engine = {
            let _entered = runtime.enter();
            Engine::new(config).unwrap()
        };
        (runtime, engine)
    })
}

/// Sends `bytes` (then end of stream) to `accept_http` and returns what came back: everything up
/// to the end of the stream, or a 101's head.
pub fn exchange(bytes: &[u8]) -> Vec<u8> {
    let (runtime, engine) = engine();
    let before = PANICS.load(Ordering::SeqCst);
    let response = runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        engine.accept_http(server, Some("192.0.2.1".parse().unwrap()));
        let _ = client.write_all(bytes).await;
        let _ = client.shutdown().await;
        let mut response = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
                let head_done = response.windows(4).any(|w| w == b"\r\n\r\n");
                if response.starts_with(b"HTTP/1.1 101 ") && head_done {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("the engine answered");
        response
    });
    assert_eq!(PANICS.load(Ordering::SeqCst), before, "the engine panicked on {bytes:?}");
    response
}
