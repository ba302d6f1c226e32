//! Which Nextcloud instance a log record concerns, for a `log` backend that routes records per
//! instance (the Apache module sends them to that vhost's `ErrorLog` at that vhost's
//! `LogLevel`).
//!
//! An engine built with [`crate::Engine::for_instance`] runs every task it spawns (sessions,
//! the Redis listener, the storage pipeline, the database probe) inside a task-local scope
//! holding its instance number, and its constructor inside the same scope, so [`instance`]
//! answers for every record it emits; records from anywhere else answer `None`.
//!
//! `occ notify_push:log <level>` (`notify_config {"log_spec": …}`) overrides the configured
//! levels of the whole process until `--restore`: [`level_override`] says by how much.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

tokio::task_local! {
    static INSTANCE: Option<usize>;
}

/// `0`: no override; else `LevelFilter as usize + 1`.
static OVERRIDE: AtomicUsize = AtomicUsize::new(0);

/// The instance the current task works for, if it runs inside an engine's scope.
pub fn instance() -> Option<usize> {
    INSTANCE.try_with(|i| *i).ok().flatten()
}

/// The level `occ notify_push:log` set for the whole process, until `--restore`.
pub fn level_override() -> Option<log::LevelFilter> {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => None,
        n => LEVELS.get(n - 1).copied(),
    }
}

const LEVELS: [log::LevelFilter; 6] = [
    log::LevelFilter::Off,
    log::LevelFilter::Error,
    log::LevelFilter::Warn,
    log::LevelFilter::Info,
    log::LevelFilter::Debug,
    log::LevelFilter::Trace,
];

pub(crate) fn set_override(level: Option<log::LevelFilter>) {
    OVERRIDE.store(level.map_or(0, |l| l as usize + 1), Ordering::Relaxed);
}

/// `future`, run inside the scope of `instance`.
pub(crate) fn scoped<F: Future>(
    instance: Option<usize>,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<Option<usize>, F> {
    INSTANCE.scope(instance, future)
}

/// `f`, run (synchronously) inside the scope of `instance`.
pub(crate) fn sync_scoped<R>(instance: Option<usize>, f: impl FnOnce() -> R) -> R {
    INSTANCE.sync_scope(instance, f)
}

/// `future` inside the scope of the instance the caller runs for (a task spawned from a
/// scoped task or constructor keeps its instance).
pub(crate) fn inherit<F: Future>(
    future: F,
) -> tokio::task::futures::TaskLocalFuture<Option<usize>, F> {
    scoped(instance(), future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_nest_and_spawned_tasks_inherit_only_through_inherit() {
        assert_eq!(instance(), None);
        scoped(Some(3), async {
            assert_eq!(instance(), Some(3));
            let kept = tokio::spawn(inherit(async { instance() })).await.unwrap();
            let lost = tokio::spawn(async { instance() }).await.unwrap();
            assert_eq!((kept, lost), (Some(3), None));
            sync_scoped(Some(1), || assert_eq!(instance(), Some(1)));
            assert_eq!(instance(), Some(3));
        })
        .await;
        assert_eq!(instance(), None);
    }

    #[test]
    fn the_override_round_trips_every_level() {
        for level in LEVELS {
            set_override(Some(level));
            assert_eq!(level_override(), Some(level));
        }
        set_override(None);
        assert_eq!(level_override(), None);
    }
}
