//! Message-id registry of the Apache glue and the push daemon: `NCP0001`–`NCP0999` (the engine
//! owns `NCP1000`–`NCP1999`, see `nextcloud_push_engine::log_ids`). Every line at `warn` or above
//! carries an id, so tests and admins can whitelist or grep expected lines.
//!
//! | id | level | where | meaning |
//! |---|---|---|---|
//! | `NCP0001` | info | parent | banner: module version and handoff protocol, once per Apache start |
//! | `NCP0002` | error | any | a panic was caught at the httpd boundary (the hook failed safely) |
//! | `NCP0003` | error | any | panic message and location (panic hook) |
//! | `NCP0004` | info | parent | push enabled for a server: base path, engine index, daemon socket |
//! | `NCP0005` | debug | parent | graceful restart keeps the running daemon (configuration unchanged) |
//! | `NCP0006` | info | parent | configuration changed: the running daemon is replaced |
//! | `NCP0007` | info | parent | push no longer enabled anywhere: the daemon is stopped |
//! | `NCP0008` | debug | parent | a stopped daemon ended (how) |
//! | `NCP0009` | info | parent | daemon started (pid, socket) |
//! | `NCP0010` | crit | parent | the daemon failed to start (no respawn until the next restart) |
//! | `NCP0011` | error | parent | the daemon died (also: killed during its startup) and is restarted (throttled after 3 fast deaths) |
//! | `NCP0012` | notice | parent | throttled restart of the daemon by the monitor hook |
//! | `NCP0013` | warn | parent | the daemon did not report ready within 10 s |
//! | `NCP0014` | error | daemon | cannot bind the daemon socket (startup fails) |
//! | `NCP0015` | error | daemon | cannot drop privileges (startup fails) |
//! | `NCP0016` | debug | daemon | cannot raise RLIMIT_NOFILE |
//! | `NCP0017` | debug | daemon | the process title could not be changed |
//! | `NCP0018` | notice | parent | the daemon's RLIMIT_NOFILE leaves room for fewer than 50,000 sessions (and what to raise) |
//! | `NCP0019` | info | parent | how many wss sessions Apache workers may bridge at once (`NextcloudPushMaxBridged`, MaxRequestWorkers) |
//! | `NCP0020` | emerg | check_config | invalid `NextcloudPushSocket` (startup refused) |
//! | `NCP0021` | emerg | check_config | invalid push configuration of a server (startup refused) |
//! | `NCP0022` | debug | parent | the parent's stop handlers were wrapped for this generation (stop notices to the daemon) |
//! | `NCP0023` | warn | parent | the reopened error logs could not be passed to the kept push daemon (it keeps writing to the old ones) |
//! | `NCP0031` | error | child | push enabled but not set up in this process (503) |
//! | `NCP0032` | error | child | the daemon did not accept the handoff in time or refused it (503) |
//! | `NCP0033` | debug | child | the client went away while the 101 was sent |
//! | `NCP0034` | error | child | handoff failed after the 101 (the client sees the connection close) |
//! | `NCP0035` | debug | child | a bridged (TLS or HTTP/2) WebSocket ended, and why (daemon closed, client gone, idle for `Timeout`, Apache stopping) |
//! | `NCP0036` | debug | child | a wss session's TLS stays with its worker (bridged), and why (not eligible, a record half-read, …) |
//! | `NCP0037` | debug | child | a wss session's TLS session moved to the push daemon (the worker let go) |
//! | `NCP0038` | debug | child | a wss upgrade got 503: the bridge cap is reached (the daemon logs NCP0116) |
//! | `NCP0039` | debug | child | a WebSocket over HTTP/2 (`H2WebSockets on`) is relayed by its h2 worker (bridged) |
//! | `NCP0040` | error | child | the daemon did not answer a `<base>/test/…` or `<base>/metrics` request (503) |
//! | `NCP0041` | debug | child | an `X-Nextcloud-Push-Vouch` header was stripped without effect (not from loopback, bad MAC, too old) |
//! | `NCP0042` | debug | child | a vouched client address was applied to a request from the push daemon |
//! | `NCP0043` | info | parent | how the daemon reaches Nextcloud for an engine (loopback address or the URL) |
//! | `NCP0101` | info | daemon | daemon ready: version, socket, engines, fd limit |
//! | `NCP0102` | info | daemon | daemon stopping (SIGTERM/SIGINT): close 1001 to every session |
//! | `NCP0103` | info | daemon | daemon stopped |
//! | `NCP0104` | debug | daemon | one handoff dropped (child went away, timeout, protocol error) |
//! | `NCP0105` | warn | daemon | `accept` on the daemon socket failed (e.g. out of descriptors); at most one line per minute |
//! | `NCP0106` | warn | daemon | a handoff was refused (unknown engine, configuration or protocol mismatch, fd limit, shutting down); one line per 100 refusals |
//! | `NCP0107` | debug | daemon | a WebSocket was handed over (early bytes, client IP chain) |
//! | `NCP0108` | debug | daemon | a bridged (TLS or HTTP/2) WebSocket arrived from an Apache worker (early bytes, client IP chain, ping interval) |
//! | `NCP0109` | warn | daemon | a connection to the daemon socket from a uid other than root or Apache's `User` was refused (peer credentials) |
//! | `NCP0110` | debug | daemon | a control request (self-test endpoint, metrics) was answered |
//! | `NCP0111` | info | daemon | stop notice from the Apache parent (`apachectl stop` or `graceful-stop`): every session gets Close 1001, then the daemon exits |
//! | `NCP0112` | debug | daemon | an unknown byte on the stop-notice channel was ignored |
//! | `NCP0113` | info | daemon | restart notice from the Apache parent (`apachectl restart`, not graceful): the bridged (TLS) sessions get Close 1001, the daemon and plain sessions stay |
//! | `NCP0114` | debug | daemon | a TLS session was adopted (version, suite, sequence numbers, pending bytes, client IP chain; never secrets) |
//! | `NCP0115` | warn | daemon | a TLS session offer was refused (self-check failed, bad state); the worker bridges it |
//! | `NCP0116` | warn | daemon | a wss session got 503 at the bridge cap (`NextcloudPushMaxBridged`); one line per 100 refusals |
//! | `NCP0117` | debug | daemon | a reopened error log from the parent was installed (slot: 0 main, `i + 1` engine `i`) |
