//! The plain HTTP/1.1 WebSocket upgrade of [`crate::Engine::accept_http`] (spec §1.1).
//!
//! Hand-written rather than tungstenite's server handshake, because tungstenite refuses bytes
//! after the request head (`JunkAfterRequest`), and clients do pipeline their login frames right
//! behind the upgrade request. Those bytes become the session's early data.

use crate::client_ip_chain;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

pub(crate) struct Upgraded {
    pub early_data: Vec<u8>,
    pub chain: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("I/O error during the upgrade: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the request head was complete")]
    Eof,
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("refused with {0}")]
    Refused(u16),
}

fn is_upgrade_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    matches!(path, "/ws" | "/ws/" | "/push/ws" | "/push/ws/")
}

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads the request head, validates it, answers 101 (or an error status) and returns the bytes
/// that followed the head together with the client IP chain.
pub(crate) async fn upgrade<S>(
    stream: &mut S,
    peer: Option<IpAddr>,
) -> Result<Upgraded, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (head_len, response, chain) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let result = validate(request.method, request.path, &header);
                let chain = client_ip_chain(
                    header("x-forwarded-for"),
                    header("x-real-ip"),
                    header("forwarded"),
                    peer,
                );
                break (len, result, chain);
            }
            Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => {
                return Err(HandshakeError::TooLarge)
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => {
                let _ = respond(stream, 400, "Bad Request", "Invalid request").await;
                return Err(HandshakeError::Malformed(e.to_string()));
            }
        }
    };
    match response {
        Ok(head) => {
            stream.write_all(head.as_bytes()).await?;
            stream.flush().await?;
            Ok(Upgraded { early_data: buffer.split_off(head_len), chain })
        }
        Err((status, reason, body)) => {
            respond(stream, status, reason, body).await?;
            Err(HandshakeError::Refused(status))
        }
    }
}

type Refusal = (u16, &'static str, &'static str);

fn validate<'h>(
    method: Option<&str>,
    path: Option<&str>,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Result<String, Refusal> {
    if !path.is_some_and(is_upgrade_path) {
        return Err((404, "Not Found", ""));
    }
    if method != Some("GET") {
        return Err((405, "Method Not Allowed", "HTTP method not allowed"));
    }
    if !header("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err((400, "Bad Request", "Invalid request header \"connection\""));
    }
    if !header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        return Err((400, "Bad Request", "Invalid request header \"upgrade\""));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err((400, "Bad Request", "Invalid request header \"sec-websocket-version\""));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err((400, "Bad Request", "Missing request header \"sec-websocket-key\""));
    };
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n",
        derive_accept_key(key.trim().as_bytes())
    );
    if let Some(origin) = header("origin") {
        head.push_str(&format!("access-control-allow-origin: {origin}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head)
}

async fn respond<S>(stream: &mut S, status: u16, reason: &str, body: &str) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upgrade_keeps_pipelined_bytes() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let request = "GET /push/ws?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
                       Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://o.example\r\n\
                       X-Forwarded-For: 1.2.3.4\r\n\r\nPIPELINED";
        client.write_all(request.as_bytes()).await.unwrap();
        let upgraded = upgrade(&mut server, Some("127.0.0.1".parse().unwrap())).await.unwrap();
        assert_eq!(upgraded.early_data, b"PIPELINED");
        assert_eq!(
            upgraded.chain,
            vec!["1.2.3.4".parse::<IpAddr>().unwrap(), "127.0.0.1".parse().unwrap()]
        );
        let mut response = vec![0u8; 1024];
        let n = client.read(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response[..n]);
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        assert!(
            response.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{response}"
        );
        assert!(
            response.contains("access-control-allow-origin: https://o.example\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn missing_connection_upgrade_is_400() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let request = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\n\r\n";
        client.write_all(request.as_bytes()).await.unwrap();
        assert!(matches!(upgrade(&mut server, None).await, Err(HandshakeError::Refused(400))));
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert!(response.ends_with("Invalid request header \"connection\""), "{response}");
    }
}
