//! The Redis pub/sub listener: subscribe to the 11 channels, dispatch events, reconnect forever.

use crate::event::{self, ConfigEvent, Event};
use crate::message::{PushMessage, UpdatedFiles};
use crate::metrics;
use crate::user::LogUser;
use crate::{Engine, Signal};
use futures_util::{FutureExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TARGET: &str = "nextcloud_push::redis";
const PING_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn listen_loop(engine: Arc<Engine>, cancel: CancellationToken) {
    let timing = engine.config.timing.clone();
    let mut backoff = timing.redis_backoff;
    let mut outage = false;
    // Cluster nodes tried at once (without backoff) since the last subscription: each known
    // node once, then the usual backoff.
    let mut quick_tries = 0;
    // Pub/sub round trips for `/test/cookie` (engine/src/selftest.rs); only this loop serves them.
    let mut syncs = engine.selftest.sync_rx.lock().await;
    loop {
        let node = engine.redis.pubsub_node();
        let url = node.shown.as_str();
        let connect = async {
            let pubsub = node.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&event::CHANNELS[..]).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let connected = tokio::select! {
            connected = connect => connected,
            _ = cancel.cancelled() => return,
        };
        match connected {
            Ok((mut sink, mut stream)) => {
                engine.redis_link.up();
                if outage {
                    log::info!(target: TARGET, "NCP1002: Redis at {url} is back, subscribed again");
                } else {
                    log::info!(target: TARGET, "NCP1002: subscribed to Redis at {url}");
                }
                backoff = timing.redis_backoff;
                quick_tries = 0;
                if engine.redis.is_cluster() {
                    // The cluster's other nodes, for when this one fails.
                    let learner = engine.clone();
                    engine.spawn(async move { learner.redis.learn_nodes().await });
                }
                let mut ping = tokio::time::interval_at(
                    tokio::time::Instant::now() + timing.redis_ping,
                    timing.redis_ping,
                );
                let reason = loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(message) => handle(&engine, message.get_channel_name(), message.get_payload_bytes()),
                            None => break "connection closed".to_string(),
                        },
                        _ = ping.tick() => {
                            match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => break format!("ping failed: {e}"),
                                Err(_) => break "ping timed out".to_string(),
                            }
                        }
                        Some(done) = syncs.recv() => {
                            // Redis answers the PING after every message published before it,
                            // and redis-rs queues those messages for `stream` before it completes
                            // the PING: handle them, then report the round trip done.
                            match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => break format!("ping failed: {e}"),
                                Err(_) => break "ping timed out".to_string(),
                            }
                            while let Some(Some(message)) = stream.next().now_or_never() {
                                handle(&engine, message.get_channel_name(), message.get_payload_bytes());
                            }
                            let _ = done.send(());
                        }
                        _ = cancel.cancelled() => return,
                    }
                };
                // The daemon's runtime drops the connection's driver task while stopping,
                // possibly before this one: that end is not an outage.
                if cancel.is_cancelled() {
                    return;
                }
                engine.redis_link.down(&reason);
                outage = true;
                if engine.redis.node_failed(&node) {
                    quick_tries += 1;
                    log::warn!(
                        target: TARGET,
                        "NCP1001: Redis cluster node at {url} disconnected ({reason}); subscribing on the next node now; events published meanwhile are lost"
                    );
                    continue;
                }
                log::warn!(
                    target: TARGET,
                    "NCP1001: Redis server at {url} disconnected ({reason}), reconnecting in {}s; events published meanwhile are lost",
                    backoff.as_secs_f32()
                );
            }
            Err(e) => {
                if cancel.is_cancelled() {
                    return;
                }
                engine.redis_link.down(&e.to_string());
                if engine.redis.node_failed(&node) && quick_tries < engine.redis.node_count() {
                    quick_tries += 1;
                    log::debug!(target: TARGET, "Redis cluster node at {url} unreachable ({e}); trying the next node");
                    continue;
                }
                if outage {
                    log::debug!(target: TARGET, "Redis at {url} still unreachable: {e}");
                } else {
                    log::warn!(
                        target: TARGET,
                        "NCP1001: cannot connect to Redis at {url}: {e}; retrying with backoff (WebSocket sessions stay open)"
                    );
                    outage = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(timing.redis_backoff_max);
    }
}

pub(crate) struct StorageUpdate {
    storage: u32,
    path: String,
    file_id: u64,
}

/// Pending storage updates before new ones are dropped.
pub(crate) const STORAGE_QUEUE: usize = 4096;
/// Mapping lookups running at the same time.
const STORAGE_CONCURRENCY: usize = 32;

/// Resolves storage updates to users with up to [`STORAGE_CONCURRENCY`] lookups in flight, but
/// delivers in publication order, so the ids of one upload (file, then its ancestors) keep
/// their order in `notify_file_id`.
pub(crate) async fn storage_pipeline(
    engine: Arc<Engine>,
    updates: tokio::sync::mpsc::Receiver<StorageUpdate>,
    cancel: CancellationToken,
) {
    let resolved = tokio_stream_from(updates)
        .map(|update| {
            let mapping = engine.storage_mapping();
            async move {
                let users = mapping.users_for_path(update.storage, &update.path).await;
                (users, update.file_id)
            }
        })
        .buffered(STORAGE_CONCURRENCY);
    tokio::pin!(resolved);
    loop {
        tokio::select! {
            next = resolved.next() => match next {
                Some((users, file_id)) => {
                    for user in users {
                        engine.registry.send(&user, PushMessage::File(UpdatedFiles::Known(vec![file_id])));
                    }
                }
                None => return,
            },
            _ = cancel.cancelled() => return,
        }
    }
}

fn tokio_stream_from<T>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Handles one pub/sub message. Bad payloads are logged once and dropped.
pub(crate) fn handle(engine: &Arc<Engine>, channel: &str, payload: &[u8]) {
    engine.counters.events_received.fetch_add(1, Ordering::Relaxed);
    let event = match event::parse(channel, payload) {
        Ok(Some(event)) => event,
        Ok(None) => return,
        Err(e) => {
            // The error quotes the offending value: whoever can publish must not fill the log.
            let why = crate::text::clip(&e.to_string());
            log::warn!(target: TARGET, "NCP1003: dropping invalid message on {channel} ({} bytes): {why}", payload.len());
            return;
        }
    };
    match event {
        Event::User { user, message } => {
            if matches!(message, PushMessage::File(_)) {
                // notify_user_share_created / notify_group_membership_update: a new mount may exist
                engine.storage_mapping().user_access_changed(&user);
            }
            log::debug!(target: TARGET, "{channel} for {}", LogUser(&user));
            engine.registry.send(&user, message);
        }
        Event::StorageUpdate { storage, path, file_id } => {
            if engine.storage_updates.try_send(StorageUpdate { storage, path, file_id }).is_err() {
                log::warn!(target: TARGET, "NCP1006: storage update queue full, dropping an update of storage {storage}");
            }
        }
        Event::PreAuth { user, token } => {
            log::debug!(target: TARGET, "pre-auth token for {}", LogUser(&user));
            engine.add_pre_auth(token, user);
        }
        Event::TestCookie(cookie) => {
            engine.test_cookie.store(cookie, Ordering::SeqCst);
            engine.test_cookie_arrived.notify_waiters();
        }
        Event::Config(ConfigEvent::LogSpec(spec)) => engine.apply_log_spec(&spec),
        Event::Config(ConfigEvent::Restore) => engine.restore_log_level(),
        Event::Query(query) if query == "metrics" => {
            let engine = engine.clone();
            engine.clone().spawn(async move {
                let label = engine.server_label();
                let json = engine.metrics().to_json_for(label);
                // occ's key first (it reads after 10 ms); then, with a label, this server's own
                // key. Two commands, not a pipeline: the keys may live on different cluster nodes.
                let mut writes = vec![redis::Cmd::set(metrics::METRICS_KEY, &json)];
                if let Some(label) = label {
                    let ttl = metrics::SERVER_METRICS_TTL.as_secs();
                    writes.push(redis::Cmd::set_ex(metrics::server_metrics_key(label), &json, ttl));
                }
                let result = async {
                    let mut connection = engine.redis.commands().await?;
                    for write in &writes {
                        write.query_async::<()>(&mut connection).await?;
                    }
                    Ok::<_, redis::RedisError>(())
                }
                .await;
                if let Err(e) = result {
                    log::warn!(target: TARGET, "NCP1004: cannot write notify_push_metrics: {e}");
                }
            });
        }
        Event::Query(query) => {
            log::warn!(target: TARGET, "NCP1005: unknown notify_query {:?} ignored", crate::text::clip(&query))
        }
        Event::Signal(signal) if signal == "reset" => {
            log::info!(target: TARGET, "reset signal received, closing every connection");
            let _ = engine.signals.send(Signal::Reset);
        }
        Event::Signal(signal) => {
            log::warn!(target: TARGET, "NCP1005: unknown notify_signal {:?} ignored", crate::text::clip(&signal))
        }
    }
}
