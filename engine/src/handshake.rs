//! The plain HTTP/1.1 WebSocket upgrade of [`crate::Engine::accept_http`] (spec §1.1).
//!
//! Hand-written rather than tungstenite's server handshake, because tungstenite refuses bytes
//! after the request head (`JunkAfterRequest`), and clients do pipeline their login frames right
//! behind the upgrade request. Those bytes become the session's early data.
//!
//! This file only reads the request head; what is accepted and what each refusal looks like
//! are the rules of [`crate::upgrade`], the same ones the Apache handler applies. Header names
//! are written in lower case.

use crate::client_ip_chain;
use crate::upgrade::{self, Route, UpgradeRequest};
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// The base paths whose `<base>/ws` (or `<base>/ws/`) is the WebSocket endpoint here: `/ws`
/// directly and `/push/ws` as behind a `ProxyPass /push/`.
const BASES: [&str; 2] = ["", "/push"];

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

/// The final response instead of the 101: status, body and extra headers.
type Answer = (u16, &'static str, &'static [(&'static str, &'static str)]);

fn is_upgrade_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    BASES.iter().any(|base| upgrade::classify(base, path) == Some(Route::WebSocket))
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
                let result = validate(&request, &header);
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
                let _ = respond(stream, (400, "Invalid request", &[])).await;
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
        Err(answer) => {
            respond(stream, answer).await?;
            Err(HandshakeError::Refused(answer.0))
        }
    }
}

/// The 101 response head for an acceptable upgrade request, or the refusal to answer with.
fn validate<'h>(
    request: &httparse::Request<'_, '_>,
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Result<String, Answer> {
    if !request.path.is_some_and(is_upgrade_path) {
        return Err((404, "", &[]));
    }
    let facts = UpgradeRequest {
        method: request.method.unwrap_or_default(),
        http11: request.version == Some(1),
        connection: header("connection"),
        upgrade: header("upgrade"),
        version: header("sec-websocket-version"),
        key: header("sec-websocket-key"),
        content_length: header("content-length"),
        transfer_encoding: header("transfer-encoding"),
    };
    upgrade::check_upgrade(&facts).map_err(|r| (r.status, r.body, r.headers))?;
    let mut head = format!("HTTP/1.1 101 {}\r\n", upgrade::reason(101));
    for (name, value) in upgrade::switching_headers(facts.key.unwrap_or_default(), header("origin"))
    {
        head.push_str(&format!("{}: {value}\r\n", name.to_ascii_lowercase()));
    }
    head.push_str("\r\n");
    Ok(head)
}

/// Writes a final response and closes the connection. As the Apache handler does, an empty body
/// goes without a content type.
async fn respond<S>(stream: &mut S, (status, body, headers): Answer) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut response = format!("HTTP/1.1 {status} {}\r\n", upgrade::reason(status));
    for (name, value) in headers {
        response.push_str(&format!("{}: {value}\r\n", name.to_ascii_lowercase()));
    }
    if !body.is_empty() {
        response.push_str("content-type: text/plain; charset=utf-8\r\n");
    }
    response
        .push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()));
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

    /// The whole response to `request`, which must be refused with `status`.
    async fn refused(request: &str, status: u16) -> String {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(request.as_bytes()).await.unwrap();
        let result = upgrade(&mut server, None).await;
        assert!(matches!(result, Err(HandshakeError::Refused(s)) if s == status), "{request}");
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        response
    }

    const GOOD_HEADERS: &str = "Host: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                                Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[tokio::test]
    async fn refusals_answer_like_the_module() {
        let response =
            refused(&format!("GET /push/test/cookie HTTP/1.1\r\n{GOOD_HEADERS}\r\n"), 404).await;
        assert_eq!(
            response,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let response = refused(&format!("POST /ws HTTP/1.1\r\n{GOOD_HEADERS}\r\n"), 405).await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\nallow: GET\r\n"),
            "{response}"
        );
        assert!(response.ends_with("\r\n\r\nHTTP method not allowed"), "{response}");
        let response = refused(&format!("OPTIONS /ws HTTP/1.1\r\n{GOOD_HEADERS}\r\n"), 403).await;
        assert!(
            response.ends_with("CORS request forbidden: request-method not allowed"),
            "{response}"
        );
        let response = refused(&format!("GET /ws HTTP/1.0\r\n{GOOD_HEADERS}\r\n"), 400).await;
        assert!(response.ends_with("WebSocket upgrades need HTTP/1.1\n"), "{response}");
        let request =
            format!("GET /ws HTTP/1.1\r\n{GOOD_HEADERS}\r\n").replace("Version: 13", "Version: 8");
        let response = refused(&request, 426).await;
        assert!(
            response.starts_with("HTTP/1.1 426 Upgrade Required\r\nsec-websocket-version: 13\r\n"),
            "{response}"
        );
        let request = format!("GET /ws HTTP/1.1\r\n{GOOD_HEADERS}\r\n")
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        let response = refused(&request, 400).await;
        assert!(response.ends_with("Invalid request header \"sec-websocket-key\""), "{response}");
    }

    #[tokio::test]
    async fn upgrade_accepts_token_lists_and_all_four_paths() {
        for path in ["/ws", "/ws/", "/push/ws", "/push/ws/?a=b"] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let request = format!("GET {path} HTTP/1.1\r\n{GOOD_HEADERS}\r\n")
                .replace("Upgrade: websocket", "Upgrade: foo, WebSocket");
            client.write_all(request.as_bytes()).await.unwrap();
            assert!(upgrade(&mut server, None).await.is_ok(), "{path}");
            let mut response = vec![0u8; 1024];
            let n = client.read(&mut response).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&response[..n]),
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            );
        }
    }
}
