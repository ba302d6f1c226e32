//! A Nextcloud HTTP double: a small HTTP/1.1 server on 127.0.0.1 answering the routes the push
//! engine calls, with a request log and failure knobs.
//!
//! It runs on its own threads (no tokio), so it works from `#[test]`, `#[tokio::test]` of any
//! flavour, and as the standalone `nextcloud-double` binary. Every response carries
//! `Connection: close`.
//!
//! Routes are a table of `(method, path) → handler` ([`NextcloudDouble::route`]); the built-in
//! one is `GET /index.php/apps/notify_push/uid` (spec §4.1): Basic auth matching a configured
//! user gives 200 `text/plain` with the uid as body, anything else 401
//! `{"message":"Current user is not logged in"}`. Unknown routes get 404.

use base64::Engine as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const UID_PATH: &str = "/index.php/apps/notify_push/uid";

/// One request as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// `(login, password)` from a Basic `Authorization` header.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (login, password) = decoded.split_once(':')?;
        Some((login.to_string(), password.to_string()))
    }
}

/// A response from a route handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse { status, content_type: content_type.to_string(), body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse::new(status, "application/json; charset=utf-8", body)
    }
}

/// login → (password, uid)
pub type Users = HashMap<String, (String, String)>;

/// A route handler: gets the request and the current users.
pub type Handler = Arc<dyn Fn(&RecordedRequest, &Users) -> HttpResponse + Send + Sync>;

struct State {
    users: Mutex<Users>,
    routes: Mutex<HashMap<(String, String), Handler>>,
    log: Mutex<Vec<RecordedRequest>>,
    delay: Mutex<Duration>,
    forced_status: Mutex<Option<u16>>,
    stopping: AtomicBool,
}

pub struct NextcloudDouble {
    addr: SocketAddr,
    state: Arc<State>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

impl NextcloudDouble {
    /// Starts the double on 127.0.0.1:<free port> with `(login, password, uid)` users.
    pub fn start(users: &[(&str, &str, &str)]) -> NextcloudDouble {
        NextcloudDouble::start_on("127.0.0.1:0", users).expect("cannot start the Nextcloud double")
    }

    /// Starts the double on a given address (`"127.0.0.1:0"` for a free port).
    pub fn start_on(bind: &str, users: &[(&str, &str, &str)]) -> std::io::Result<NextcloudDouble> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let users = users
            .iter()
            .map(|(login, password, uid)| {
                (login.to_string(), (password.to_string(), uid.to_string()))
            })
            .collect();
        let state = Arc::new(State {
            users: Mutex::new(users),
            routes: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            forced_status: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        state.routes.lock().unwrap().insert(("GET".into(), UID_PATH.into()), Arc::new(uid_route));
        let accept_state = state.clone();
        let accept_thread =
            std::thread::Builder::new().name("nextcloud-double".into()).spawn(move || {
                let state = accept_state;
                for stream in listener.incoming() {
                    if state.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let state = state.clone();
                        std::thread::spawn(move || serve(stream, &state));
                    }
                }
            })?;
        Ok(NextcloudDouble { addr, state, accept_thread: Some(accept_thread) })
    }

    /// `http://127.0.0.1:<port>/` (with the trailing slash, as Nextcloud's `overwrite.cli.url`).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds or replaces a route (exact path match, query string ignored).
    pub fn route(
        &self,
        method: &str,
        path: &str,
        handler: impl Fn(&RecordedRequest, &Users) -> HttpResponse + Send + Sync + 'static,
    ) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert((method.to_string(), path.to_string()), Arc::new(handler));
    }

    pub fn add_user(&self, login: &str, password: &str, uid: &str) {
        self.state
            .users
            .lock()
            .unwrap()
            .insert(login.to_string(), (password.to_string(), uid.to_string()));
    }

    /// Every response waits this long first (e.g. to exceed the auth timeout).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Every route answers this status (`Some(500)`, `Some(429)`, …) until reset with `None`.
    pub fn force_status(&self, status: Option<u16>) {
        *self.state.forced_status.lock().unwrap() = status;
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests received so far for `path` (query ignored).
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path.split('?').next() == Some(path)).collect()
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for NextcloudDouble {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // unblock accept()
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The built-in `GET /index.php/apps/notify_push/uid` (spec §4.1).
pub fn uid_route(request: &RecordedRequest, users: &Users) -> HttpResponse {
    match request.basic_auth() {
        Some((login, password)) => match users.get(&login) {
            Some((expected, uid)) if *expected == password => HttpResponse::text(200, uid.clone()),
            _ => not_logged_in(),
        },
        None => not_logged_in(),
    }
}

fn not_logged_in() -> HttpResponse {
    HttpResponse::json(401, r#"{"message":"Current user is not logged in"}"#)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request =
        RecordedRequest { method: method.to_string(), path: path.to_string(), headers, body };
    state.log.lock().unwrap().push(request.clone());

    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let response = match *state.forced_status.lock().unwrap() {
        Some(status) => HttpResponse::text(status, reason(status)),
        None => {
            let route_path = request.path.split('?').next().unwrap_or("").to_string();
            let handler =
                state.routes.lock().unwrap().get(&(request.method.clone(), route_path)).cloned();
            match handler {
                Some(handler) => handler(&request, &state.users.lock().unwrap().clone()),
                None => HttpResponse::text(404, ""),
            }
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response.body);
    let _ = stream.flush();
}
