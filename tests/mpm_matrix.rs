//! The core push scenario under every MPM (event, worker, prefork) and both ways of running
//! apache2 in the foreground (`-X`, `-DFOREGROUND`): login ok and refused, pipelined login frames,
//! delivery to the right user only, and the access-log line of the upgrade.

mod common;

use common::client::{masked_text_frame, raw_request, status_of, upgrade_request};
use common::{Client, Stack, ALICE, AUTHENTICATED, BOB, INVALID_CREDENTIALS, QUIET, T};
use testkit::apache::{Mode, Mpm};
use testkit::require;

async fn core_scenario(mpm: Mpm, mode: Mode) -> Result<(), testkit::Skip> {
    let what = format!("{} MPM, {mode:?}", mpm.name());
    eprintln!("core scenario: {what}");
    let stack = Stack::start(mode, |b| b.mpm(mpm)).await?;

    let mut alice = stack.login(ALICE).await;
    let mut bob = stack.login(BOB).await;

    let mut wrong = Client::connect(&stack.ws_url(), T).await;
    wrong.send_login(BOB.0, "wrong").await;
    let (texts, _) = wrong.expect_end(T).await;
    assert_eq!(texts, [INVALID_CREDENTIALS], "{what}");

    let mut bytes = upgrade_request(stack.apache.port(), "").into_bytes();
    bytes.extend(masked_text_frame(ALICE.0));
    bytes.extend(masked_text_frame(ALICE.1));
    let (stream, head, rest) = raw_request(stack.apache.addr(), &bytes, T).await;
    assert_eq!(status_of(&head), Some(101), "{what}: {head}");
    let mut pipelined = Client::from_raw(stream, rest).await;
    pipelined.expect_text(AUTHENTICATED, T).await;

    stack.publish("notify_activity", r#"{"user":"alice"}"#).await;
    alice.expect_text("notify_activity", T).await;
    pipelined.expect_text("notify_activity", T).await;
    stack.roundtrip(&mut bob, "bob", "only_bob").await;
    bob.expect_no_text(QUIET).await;

    let line = stack.apache.await_access_log("GET /push/ws HTTP/1.1 101", T).await;
    assert!(!line.is_empty(), "{what}");
    stack.finish();
    Ok(())
}

async fn both_modes(mpm: Mpm) {
    for mode in Mode::ALL {
        require!(core_scenario(mpm, mode).await);
    }
}

#[tokio::test]
async fn core_scenario_under_event() {
    both_modes(Mpm::Event).await;
}

#[tokio::test]
async fn core_scenario_under_worker() {
    both_modes(Mpm::Worker).await;
}

#[tokio::test]
async fn core_scenario_under_prefork() {
    both_modes(Mpm::Prefork).await;
}
