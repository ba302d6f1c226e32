//! A minimal push client: logs in and prints every text frame it receives.
//!
//! `cargo run -p testkit --example push_client -- ws://127.0.0.1:8780/push/ws demo demo`

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, user, password] = args.as_slice() else {
        eprintln!("usage: push_client <ws://host/push/ws> <username> <password>");
        std::process::exit(2);
    };
    let (mut ws, response) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("connect {url}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("connected ({}), logging in as {user}", response.status());
    for frame in [user, password] {
        if let Err(e) = ws.send(Message::text(frame.as_str())).await {
            eprintln!("send: {e}");
            std::process::exit(1);
        }
    }
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(text)) => println!("{text}"),
            Ok(Message::Close(frame)) => {
                eprintln!("closed by server: {frame:?}");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("connection ended: {e}");
                std::process::exit(1);
            }
        }
    }
}
