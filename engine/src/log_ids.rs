//! The engine's message-id registry (documentation only).
//!
//! Every `warn!`/`error!` line the engine logs starts with a stable id so tests and admins can
//! whitelist or grep expected lines; some `info!` lines carry one too. The engine owns
//! `NCP1000`–`NCP1999` (the Apache glue and the push daemon own `NCP0001`–`NCP0999`).
//!
//! | id | level | target | meaning |
//! |---|---|---|---|
//! | `NCP1001` | warn | `nextcloud_push::redis` | Redis unreachable / pub/sub connection lost; reconnecting with backoff (one line per outage) |
//! | `NCP1002` | info | `nextcloud_push::redis` | Redis pub/sub (re)connected and subscribed (logged on recovery) |
//! | `NCP1003` | warn | `nextcloud_push::redis` | invalid JSON or wrong types on a channel; the message is dropped |
//! | `NCP1004` | warn | `nextcloud_push::redis` | writing `notify_push_metrics` failed |
//! | `NCP1005` | warn | `nextcloud_push::redis` | unknown `notify_signal` / `notify_query` value |
//! | `NCP1006` | warn | `nextcloud_push::redis` | storage update queue full, update dropped |
//! | `NCP1007` | warn | `nextcloud_push::redis` | config.php `verify_peer_name => false` is not supported |
//! | `NCP1008` | warn | `nextcloud_push::selftest` | a `notify_config` log spec that names no level for the push server; ignored |
//! | `NCP1009` | info | `nextcloud_push::selftest` | log level changed or restored by `notify_config` (`occ notify_push:log`) |
//! | `NCP1010` | warn | `nextcloud_push::auth` | Nextcloud unreachable or answered an error status during a login |
//! | `NCP1011` | info | `nextcloud_push::auth` | per-user connection limit exceeded |
//! | `NCP1013` | warn | `nextcloud_push::selftest` | `POST /test/version` could not learn the app version from Nextcloud; the module's own version is reported |
//! | `NCP1014` | warn | `nextcloud_push::selftest` | `POST /test/version` could not write `notify_push_version` (answered `error`) |
//! | `NCP1020` | warn | `nextcloud_push::ws` | unexpected WebSocket error on an authenticated session |
//! | `NCP1021` | info | `nextcloud_push::ws` | unanswered or mismatched pong, connection dropped |
//! | `NCP1022` | warn | `nextcloud_push::ws` | WebSocket upgrade (accept_http) failed |
//! | `NCP1030` | warn | `nextcloud_push::ws` | shutdown deadline passed with sessions still open |
//! | `NCP1101` | warn | `nextcloud_push::sql` | database unreachable (at start or after a lost connection); retrying with backoff. One line per outage |
//! | `NCP1102` | info | `nextcloud_push::sql` | database (re)connected: the mapping query works again |
//! | `NCP1103` | warn | `nextcloud_push::sql` | the mapping query failed on a reachable database (missing table, wrong prefix, permissions); at most one line a minute |
