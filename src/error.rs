//! Error types of the module, one enum per domain, as in the engine (`nextcloud_push_engine::error`).
//! The message ids that log lines carry are listed in [`crate::log_ids`].

use crate::config::Directive;
use std::io;
use std::time::Duration;

/// A `NextcloudPush*` directive that httpd refuses (it prints the message with file and line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    /// A bad value; the message names the directive.
    #[error("{}: {reason}", .directive.name())]
    Value { directive: Directive, reason: String },
    /// The directive is not allowed where it stands (httpd's own message).
    #[error("{0}")]
    Context(String),
    #[error("argument is not valid UTF-8")]
    NotUtf8,
    #[error("unknown directive id {0}")]
    UnknownId(usize),
    #[error("module configuration missing")]
    NoConfig,
}

/// `NextcloudPushSocket` once resolved against `DefaultRuntimeDir` (refused in `check_config`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SocketPathError {
    #[error("invalid path \"{0}\"")]
    Invalid(String),
    #[error("{path} is longer than {max} bytes")]
    TooLong { path: String, max: usize },
}

/// The daemon socket's protocol (`crate::wire`), as either side sees it.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot connect to the push daemon at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("the push daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the push daemon refused the connection (unknown engine, out of file descriptors or shutting down)")]
    Refused,
    #[error(
        "as many wss sessions as NextcloudPushMaxBridged allows are bridged by workers already"
    )]
    BridgesFull,
    #[error("push daemon connection: {0}")]
    Io(#[from] io::Error),
    #[error("push daemon protocol error: {0}")]
    Protocol(String),
}

/// Reading or writing an Apache client connection through its filters (the bytes buffered
/// before the handoff, the TLS bridge).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("reading buffered client data failed (APR status {0})")]
    Drain(i32),
    #[error("client sent more than {0} bytes before the 101")]
    TooMuch(usize),
    #[error("no client socket")]
    NoSocket,
    #[error("read failed ({0})")]
    Read(String),
    #[error("write failed ({0})")]
    Write(String),
    #[error("connection aborted")]
    Aborted,
}

/// Starting the push daemon, as the Apache parent sees it (`apache::process::spawn`).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call in the parent failed before or at the fork.
    #[error("{call}: {source}")]
    Sys { call: &'static str, source: io::Error },
    #[error("waiting for the push daemon: {0}")]
    Wait(io::Error),
    /// The daemon reported that its startup failed (a configuration or environment problem:
    /// no respawn until the next restart).
    #[error("{0}")]
    Startup(String),
    /// The daemon ended before it reported anything (killed, e.g. by an admin's SIGKILL): a
    /// death, not a configuration failure, so it is retried.
    #[error("the push daemon exited during startup ({0})")]
    DiedDuringStartup(String),
}

/// Why the daemon's startup failed (sent to the parent on the readiness pipe).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot create a push engine: {0:#}")]
    Engine(nextcloud_push_engine::Error),
    #[error("cannot use the socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("cannot bind the push daemon socket {path}: {source}")]
    Bind { path: String, source: io::Error },
    #[error("cannot drop privileges to User/Group")]
    DropPrivileges,
}

/// Why the daemon refuses a WebSocket handoff (the child answers 503).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("handoff protocol {theirs} from an Apache child, this daemon speaks {ours}")]
    Protocol { theirs: u32, ours: u32 },
    #[error("shutting down")]
    ShuttingDown,
    #[error("unknown engine {0}")]
    UnknownEngine(u32),
    #[error(
        "engine {0} has another configuration than the Apache child expects (a child of an \
         older configuration generation?)"
    )]
    StaleConfig(u32),
    #[error("{live} sockets open, fd limit {limit}")]
    FdLimit { live: u64, limit: u64 },
    #[error("{0} bridged sessions hold Apache workers already (NextcloudPushMaxBridged)")]
    BridgesFull(usize),
}
