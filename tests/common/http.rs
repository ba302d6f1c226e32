//! Plain HTTP/1.1 requests to a test Apache (one request per connection).

use std::net::SocketAddr;
use std::time::Duration;

use testkit::apache;

/// One `method path` request with `headers` (`Host: localhost`, `Connection: close`; a POST
/// gets an empty body): (status, response head, body, de-chunked).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    let raw = apache::raw_exchange(addr, request.as_bytes(), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = apache::status_code(&raw).unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if header(head, "Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            dechunk(body)
        } else {
            body.to_string()
        };
    (status, head.to_string(), body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
