//! Storage → users mapping for `notify_storage_update` (spec §3): the [`StorageMapping`] trait
//! and [`NoStorageMapping`], the mapping of an engine without a database. The database-backed
//! mapping is [`crate::db::DbStorageMapping`]; a mapping plugs in through
//! [`crate::Engine::set_storage_mapping`].

use futures_util::future::BoxFuture;

/// Which users see a change at `path` in storage `storage`.
pub trait StorageMapping: Send + Sync + 'static {
    /// Users (uids) to send a File message to. Duplicates are allowed (they merge per connection).
    fn users_for_path<'a>(&'a self, storage: u32, path: &'a str) -> BoxFuture<'a, Vec<String>>;

    /// Number of mapping queries executed so far (cache misses), for the metrics.
    fn query_count(&self) -> u64 {
        0
    }

    /// `notify_user_share_created` / `notify_group_membership_update` for `uid`: the user may now
    /// see storages the mapping does not list them for yet. Default: nothing cached, nothing to do.
    fn user_access_changed(&self, _uid: &str) {}

    /// `/test/mapping/<storage>` (spec §5): the number of mount rows of `storage` whose root
    /// path is `''`; `0` when unknown (no database, database error).
    fn root_count(&self, _storage: u32) -> BoxFuture<'_, u64> {
        Box::pin(std::future::ready(0))
    }

    /// The state of the link to the database, `None` without one.
    fn link(&self) -> Option<crate::health::LinkState> {
        None
    }
}

/// The default mapping: no database, so no users. Logs at debug.
#[derive(Debug, Default)]
pub struct NoStorageMapping;

impl StorageMapping for NoStorageMapping {
    fn users_for_path<'a>(&'a self, storage: u32, path: &'a str) -> BoxFuture<'a, Vec<String>> {
        log::debug!(
            target: "nextcloud_push::redis",
            "storage update for storage {storage} path {path:?} ignored: no storage mapping configured"
        );
        Box::pin(std::future::ready(Vec::new()))
    }
}
