//! The module's own push engine on a loopback TCP port, for the benchmark's ProxyPass setups:
//! Apache + `mod_proxy_wstunnel` (`ProxyPass /push/ws ws://127.0.0.1:PORT/ws`) in front of
//! exactly the engine the module's daemon runs, so a module/ProxyPass ratio isolates the proxy
//! hop. Connections go through `Engine::accept_http` (the engine's own HTTP/1.1 upgrade).
//!
//! ```text
//! engine-tcp --config-php PATH [--listen 127.0.0.1:0] [--max-seconds 3600]
//! ```
//! Prints `listening ADDR` as its first stdout line. Exits on SIGTERM/SIGINT, when its stdin
//! reaches EOF (the benchmark holds the pipe: if the benchmark dies, so does this), or after
//! `--max-seconds`. Like the daemon: a multi-thread tokio runtime with one worker per core,
//! TCP_NODELAY on every client socket (Apache sets it on the sockets it hands off), the file
//! descriptor limit raised to its hard limit, no logger installed (the daemon under
//! `LogLevel warn` logs nothing per session either).

use nextcloud_push_engine::{Engine, EngineConfig, Overrides};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

fn usage(error: &str) -> ! {
    eprintln!("engine-tcp: {error}");
    eprintln!("usage: engine-tcp --config-php PATH [--listen 127.0.0.1:0] [--max-seconds 3600]");
    std::process::exit(2);
}

fn main() {
    let mut config_php: Option<PathBuf> = None;
    let mut listen = "127.0.0.1:0".to_string();
    let mut max_seconds: u64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config-php" => config_php = args.next().map(PathBuf::from),
            "--listen" => {
                listen = args.next().unwrap_or_else(|| usage("--listen needs an address"))
            }
            "--max-seconds" => {
                max_seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--max-seconds needs a number"))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let Some(config_php) = config_php else { usage("--config-php is required") };
    if let Ok(limit) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, limit.1, limit.1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("engine-tcp")
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start tokio: {e}")));
    let code = runtime.block_on(serve(config_php, listen, Duration::from_secs(max_seconds)));
    runtime.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

async fn serve(config_php: PathBuf, listen: String, max: Duration) -> i32 {
    let config = match EngineConfig::load(Some(&config_php), &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("engine-tcp: {e}");
            return 1;
        }
    };
    let engine = match Engine::new(config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("engine-tcp: {e}");
            return 1;
        }
    };
    engine.start();
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("engine-tcp: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("listening {addr}");
    let _ = std::io::stdout().flush();

    let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("engine-tcp: cannot install signal handlers");
        return 1;
    };
    let deadline = tokio::time::sleep(max);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    engine.accept_http(stream, Some(peer.ip()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("engine-tcp: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut eof => break,
            _ = &mut deadline => {
                eprintln!("engine-tcp: --max-seconds {} reached", max.as_secs());
                break;
            }
        }
    }
    drop(listener);
    engine.shutdown().await;
    0
}
