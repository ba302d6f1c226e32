//! `nextcloud-cgi`: the notify_push app's routes as a CGI program, so a test's Nextcloud double
//! runs *behind Apache* the way PHP does and sees the `REMOTE_ADDR` Apache decided (so
//! the push daemon → Apache (vouching header) → CGI `REMOTE_ADDR` path is real).
//!
//! Mount it with mod_cgid/mod_cgi as `/index.php` (`ScriptAlias /index.php <path>` plus
//! `CGIPassAuth On`), so `PATH_INFO` is `/apps/notify_push/…`. Configuration comes from the
//! CGI environment (`SetEnv`):
//! - `NCP_CGI_REDIS` (required): Redis URL of the test;
//! - `NCP_CGI_USERS`: `login:password:uid` entries separated by commas (the uid defaults to the
//!   login);
//! - `NCP_CGI_APP_VERSION`: the installed app version written by `/test/version` (default
//!   `1.4.0`).
//!
//! Routes (lib/Controller/*.php of the app, with an empty `trusted_proxies`, so
//! `getRemoteAddress()` is `REMOTE_ADDR`):
//! - `GET /apps/notify_push/uid`: Basic auth → 200 uid, else 401 JSON;
//! - `GET /apps/notify_push/test/cookie`: `token` header == Redis `test-token` (else 403) →
//!   the app-config cookie, stored by tests in Redis `cgi:appconfig:cookie` (`0` if unset);
//! - `GET /apps/notify_push/test/remote`: token check; SET `notify_push_forwarded_header`
//!   (`HTTP_X_FORWARDED_FOR`) and `notify_push_remote` (`REMOTE_ADDR`); → `REMOTE_ADDR`;
//! - `GET /apps/notify_push/test/version`: SET `notify_push_app_version`; → 200 `null`.
//!
//! Every request is also appended, as JSON, to the Redis list `cgi:requests`
//! (`method`, `path`, `remote_addr`, `forwarded_for`, `vouch`: the `X-Nextcloud-Push-Vouch`
//! header if PHP would have seen one), so tests can assert what "PHP" saw.

use base64::Engine as _;
use std::env;
use std::io::Write;

fn var(name: &str) -> Option<String> {
    env::var(name).ok()
}

fn respond(status: &str, content_type: &str, body: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Status: {status}\r\nContent-Type: {content_type}\r\n\r\n{body}");
    let _ = out.flush();
}

fn main() {
    let Some(redis_url) = var("NCP_CGI_REDIS") else {
        respond("500 Internal Server Error", "text/plain", "NCP_CGI_REDIS is not set");
        return;
    };
    let mut redis = match redis::Client::open(redis_url.as_str()).and_then(|c| c.get_connection()) {
        Ok(c) => c,
        Err(e) => {
            respond("500 Internal Server Error", "text/plain", &format!("redis: {e}"));
            return;
        }
    };
    let method = var("REQUEST_METHOD").unwrap_or_default();
    let path = var("PATH_INFO").unwrap_or_default();
    let remote_addr = var("REMOTE_ADDR").unwrap_or_default();
    let forwarded_for = var("HTTP_X_FORWARDED_FOR");
    let token = var("HTTP_TOKEN");
    let record = serde_json::json!({
        "method": method,
        "path": path,
        "remote_addr": remote_addr,
        "forwarded_for": forwarded_for,
        "vouch": var("HTTP_X_NEXTCLOUD_PUSH_VOUCH"),
        "token": token,
    });
    let _: redis::RedisResult<()> =
        redis::cmd("RPUSH").arg("cgi:requests").arg(record.to_string()).query(&mut redis);

    let get = |redis: &mut redis::Connection, key: &str| -> Option<String> {
        redis::cmd("GET").arg(key).query::<Option<String>>(redis).ok().flatten()
    };
    let token_ok = |redis: &mut redis::Connection| -> bool {
        match (get(redis, "test-token"), &token) {
            (Some(expected), Some(got)) => !got.is_empty() && expected == *got,
            _ => false,
        }
    };
    let forbidden = || respond("403 Forbidden", "application/json", "{\"message\":\"Forbidden\"}");

    match path.as_str() {
        "/apps/notify_push/uid" => {
            let users = var("NCP_CGI_USERS").unwrap_or_default();
            let credentials = var("HTTP_AUTHORIZATION")
                .and_then(|h| h.strip_prefix("Basic ").map(str::to_owned))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
                .and_then(|raw| String::from_utf8(raw).ok());
            let uid = credentials.and_then(|c| {
                let (login, password) = c.split_once(':')?;
                users.split(',').find_map(|entry| {
                    let mut parts = entry.splitn(3, ':');
                    let (l, p) = (parts.next()?, parts.next()?);
                    let uid = parts.next().unwrap_or(l);
                    (l == login && p == password).then(|| uid.to_owned())
                })
            });
            match uid {
                Some(uid) => respond("200 OK", "text/plain; charset=utf-8", &uid),
                None => respond(
                    "401 Unauthorized",
                    "application/json",
                    "{\"message\":\"Current user is not logged in\"}",
                ),
            }
        }
        "/apps/notify_push/test/cookie" => {
            if !token_ok(&mut redis) {
                return forbidden();
            }
            let cookie = get(&mut redis, "cgi:appconfig:cookie").unwrap_or_else(|| "0".into());
            respond("200 OK", "application/json; charset=utf-8", &cookie);
        }
        "/apps/notify_push/test/remote" => {
            if !token_ok(&mut redis) {
                return forbidden();
            }
            let _: redis::RedisResult<()> = redis::cmd("SET")
                .arg("notify_push_forwarded_header")
                .arg(forwarded_for.clone().unwrap_or_default())
                .query(&mut redis);
            let _: redis::RedisResult<()> =
                redis::cmd("SET").arg("notify_push_remote").arg(&remote_addr).query(&mut redis);
            // getRemoteAddress() with an empty trusted_proxies list: REMOTE_ADDR.
            respond("200 OK", "text/plain; charset=utf-8", &remote_addr);
        }
        "/apps/notify_push/test/version" => {
            let version = var("NCP_CGI_APP_VERSION").unwrap_or_else(|| "1.4.0".into());
            let _: redis::RedisResult<()> =
                redis::cmd("SET").arg("notify_push_app_version").arg(&version).query(&mut redis);
            respond("200 OK", "application/json; charset=utf-8", "null");
        }
        _ => respond("404 Not Found", "text/plain", ""),
    }
}
