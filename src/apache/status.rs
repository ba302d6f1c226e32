//! The push section of mod_status's `server-status` page, HTML and `?auto`: the daemon's pid,
//! version and uptime, its sessions by transport, and per Nextcloud instance the users,
//! connections, events, messages and the state of Redis and the database. The figures come from
//! the daemon (a control request, `wire::control::STATUS_PATH`), asked with a short bound: a
//! dead or stopped daemon shows as such and never stalls the page.

use super::{ffi, server_config};
use crate::wire::control::{self, ControlRequest, DaemonStatus};
use nextcloud_push_engine::health::LinkState;
use std::ffi::c_int;
use std::time::Duration;

/// mod_status's `AP_STATUS_SHORT`: the `?auto` report.
const AP_STATUS_SHORT: c_int = 0x1;
/// How long server-status waits for the daemon.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

type StatusHook = unsafe extern "C" fn(*mut ffi::request_rec, c_int) -> c_int;

/// `register_hooks`: mod_status's optional hook (looked up by name when mod_status runs it).
///
/// # Safety
/// Only from `register_hooks`.
pub unsafe fn register() {
    let hook: StatusHook = status_hook;
    // SAFETY: APR stores every optional hook as `fn()`; mod_status calls it with the signature
    // of `ap_HOOK_status_hook_t` (mod_status.h), which `StatusHook` mirrors.
    unsafe {
        ffi::apr_optional_hook_add(
            c"status_hook".as_ptr(),
            Some(std::mem::transmute::<StatusHook, unsafe extern "C" fn()>(hook)),
            std::ptr::null(),
            std::ptr::null(),
            ffi::APR_HOOK_MIDDLE as c_int,
        );
    }
}

unsafe extern "C" fn status_hook(r: *mut ffi::request_rec, flags: c_int) -> c_int {
    super::guard("status_hook", ffi::OK as c_int, || {
        // SAFETY: mod_status passes its live request; request threads only read the config.
        let conf = unsafe { server_config::get_ref((*r).server) };
        let Some(socket) =
            conf.filter(|c| c.runtime.daemon).and_then(|c| c.runtime.socket_path.as_deref())
        else {
            return ffi::OK as c_int;
        };
        let request = ControlRequest {
            engine: 0,
            config: None,
            method: "GET".into(),
            path: control::STATUS_PATH.into(),
            token: None,
        };
        let status = control::ask(socket, &request, STATUS_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                serde_json::from_str::<DaemonStatus>(&answer.body)
                    .map_err(|e| format!("unreadable answer ({e})"))
            });
        let text = if flags & AP_STATUS_SHORT != 0 { auto(&status) } else { html(&status) };
        // SAFETY: the live request of this hook; ap_rwrite copies the bytes.
        unsafe { ffi::ap_rwrite(text.as_ptr() as *const _, text.len() as c_int, r) };
        ffi::OK as c_int
    })
}

fn state(link: &LinkState) -> &'static str {
    if link.up {
        "up"
    } else if link.since == 0 {
        "unknown"
    } else {
        "down"
    }
}

/// The `?auto` lines (`Key: value`, as mod_status writes its own).
fn auto(status: &Result<DaemonStatus, String>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(why) => {
            return format!("NextcloudPushDaemon: unreachable\nNextcloudPushDaemonError: {why}\n")
        }
    };
    let mut out = format!(
        "NextcloudPushDaemon: running\nNextcloudPushPid: {}\nNextcloudPushVersion: {}\n\
         NextcloudPushServer: {}\nNextcloudPushUptime: {}\nNextcloudPushSessionsPlain: {}\n\
         NextcloudPushSessionsTLS: {}\nNextcloudPushSessionsBridged: {}\nNextcloudPushInstances: {}\n",
        status.pid,
        status.version,
        one_line(&status.server),
        status.uptime_secs,
        status.plain,
        status.tls,
        status.bridged,
        status.engines.len()
    );
    for (i, e) in status.engines.iter().enumerate() {
        out.push_str(&format!(
            "NextcloudPushInstance{i}URL: {}\nNextcloudPushInstance{i}Users: {}\n\
             NextcloudPushInstance{i}Connections: {}\nNextcloudPushInstance{i}Events: {}\n\
             NextcloudPushInstance{i}Messages: {}\nNextcloudPushInstance{i}Redis: {}\n\
             NextcloudPushInstance{i}RedisSince: {}\n",
            e.nextcloud_url,
            e.users,
            e.connections,
            e.events,
            e.messages,
            state(&e.redis),
            e.redis.since
        ));
        if let Some(error) = &e.redis.last_error {
            out.push_str(&format!("NextcloudPushInstance{i}RedisLastError: {}\n", one_line(error)));
        }
        match &e.database {
            None => out.push_str(&format!("NextcloudPushInstance{i}Database: none\n")),
            Some(db) => {
                out.push_str(&format!(
                    "NextcloudPushInstance{i}Database: {}\nNextcloudPushInstance{i}DatabaseSince: {}\n",
                    state(db),
                    db.since
                ));
                if let Some(error) = &db.last_error {
                    out.push_str(&format!(
                        "NextcloudPushInstance{i}DatabaseLastError: {}\n",
                        one_line(error)
                    ));
                }
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn link_html(link: &LinkState) -> String {
    let mut cell = match link.since {
        0 => state(link).to_owned(),
        since => format!("{} since {}", state(link), since),
    };
    if let Some(error) = &link.last_error {
        cell.push_str(&format!("<br />last error: {}", escape(error)));
    }
    cell
}

/// The HTML section.
fn html(status: &Result<DaemonStatus, String>) -> String {
    let mut out = String::from("<hr />\n<h2>Nextcloud push (mod_nextcloud_push)</h2>\n");
    let status = match status {
        Ok(status) => status,
        Err(why) => {
            out.push_str(&format!(
                "<p>The push daemon did not answer within {STATUS_TIMEOUT:?}: {}</p>\n",
                escape(why)
            ));
            return out;
        }
    };
    out.push_str(&format!(
        "<dl>\n<dt>Push daemon: pid {}, version {}, server {}, up {} s</dt>\n<dt>Sessions: {} \
         plain, {} TLS (handed over), {} bridged (each holds a worker)</dt>\n</dl>\n",
        status.pid,
        escape(&status.version),
        escape(&status.server),
        status.uptime_secs,
        status.plain,
        status.tls,
        status.bridged
    ));
    out.push_str(
        "<table border=\"0\"><tr><th>Nextcloud</th><th>Users</th><th>Connections</th>\
         <th>Events</th><th>Messages</th><th>Redis</th><th>Database</th></tr>\n",
    );
    for e in &status.engines {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&e.nextcloud_url),
            e.users,
            e.connections,
            e.events,
            e.messages,
            link_html(&e.redis),
            e.database.as_ref().map_or_else(|| "none".to_owned(), link_html)
        ));
    }
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::EngineStatus;

    fn sample() -> DaemonStatus {
        DaemonStatus {
            pid: 42,
            version: "0.1.0".into(),
            uptime_secs: 90,
            server: "web1/cloud.example:443".into(),
            plain: 3,
            tls: 2,
            bridged: 1,
            engines: vec![EngineStatus {
                nextcloud_url: "https://cloud.example/".into(),
                users: 4,
                connections: 5,
                events: 6,
                messages: 7,
                redis: LinkState {
                    up: false,
                    since: 1700,
                    last_error: Some("refused\nagain".into()),
                },
                database: None,
            }],
        }
    }

    #[test]
    fn auto_lines() {
        let text = auto(&Ok(sample()));
        for line in [
            "NextcloudPushDaemon: running",
            "NextcloudPushPid: 42",
            "NextcloudPushServer: web1/cloud.example:443",
            "NextcloudPushSessionsTLS: 2",
            "NextcloudPushSessionsBridged: 1",
            "NextcloudPushInstance0Users: 4",
            "NextcloudPushInstance0Redis: down",
            "NextcloudPushInstance0RedisSince: 1700",
            "NextcloudPushInstance0RedisLastError: refused again",
            "NextcloudPushInstance0Database: none",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let down = auto(&Err("no answer".into()));
        assert!(down.starts_with("NextcloudPushDaemon: unreachable\n"), "{down}");
    }

    #[test]
    fn html_escapes_what_it_shows() {
        let mut s = sample();
        s.engines[0].redis.last_error = Some("<script>".into());
        let text = html(&Ok(s));
        assert!(text.contains("&lt;script&gt;") && !text.contains("<script>"), "{text}");
        assert!(html(&Err("<x>".into())).contains("&lt;x&gt;"));
    }
}
