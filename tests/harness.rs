//! Self-tests of the real-apache2 harness (`testkit::apache`) with plain Apache, no module: the
//! generated config serves under every MPM and mode, the Nextcloud `.htaccess` catch-all really
//! rewrites (the precondition of the module's `.htaccess` test), and the error-log oracle fails
//! a test on an unexpected line and passes it once the line is whitelisted.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use testkit::apache::{self, Apache, Mode, Mpm};

const T: Duration = Duration::from_secs(10);

fn get(apache: &Apache, path: &str) -> (Option<u16>, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let raw = apache::raw_exchange(apache.addr(), req.as_bytes(), T);
    (apache::status_code(&raw), String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test]
async fn plain_apache_serves_under_every_mpm_and_mode() {
    let Some(env) =
        apache::env_without_module_or_skip("plain_apache_serves_under_every_mpm_and_mode")
    else {
        return;
    };
    for mpm in Mpm::ALL {
        for mode in Mode::ALL {
            let apache = Apache::builder(&env).mpm(mpm).start(mode).await;
            let (status, body) = get(&apache, "/status.txt");
            assert_eq!(status, Some(200), "{mpm:?} {mode:?}: {body}");
            assert!(body.contains("testkit static file"), "{mpm:?} {mode:?}: {body}");
            let line = apache.await_access_log("GET /status.txt HTTP/1.1 200", T).await;
            assert!(line.ends_with(" -"), "Connection: close must log %X as '-': {line}");
            if mode == Mode::Single {
                assert!(apache.children().is_empty(), "-X must not fork children");
            } else {
                assert!(!apache.children().is_empty(), "-DFOREGROUND must have children");
            }
            apache.finish();
        }
    }
}

#[tokio::test]
async fn nextcloud_htaccess_rewrites_unknown_paths_to_index_php() {
    let Some(env) = apache::env_without_module_or_skip("nextcloud_htaccess_rewrites") else {
        return;
    };
    let apache = Apache::builder(&env).nextcloud_htaccess(true).start(Mode::Foreground).await;
    // Without a module claiming it, /push/ws is caught by the front-controller rule.
    let (status, body) = get(&apache, "/push/ws");
    assert_eq!(status, Some(200), "{body}");
    assert!(body.contains("Nextcloud front controller stand-in"), "{body}");
    // The rules protecting config/ are active too.
    let (status, _) = get(&apache, "/config/config.php");
    assert_eq!(status, Some(404));
    apache.finish();
}

#[tokio::test]
async fn error_log_oracle_fails_on_unexpected_lines_and_honours_the_whitelist() {
    let Some(env) = apache::env_without_module_or_skip("error_log_oracle") else {
        return;
    };
    let denied = "<Location /denied>\n        Require all denied\n    </Location>";
    for whitelisted in [false, true] {
        let mut b = Apache::builder(&env).vhost_line(denied);
        if whitelisted {
            b = b.allow("AH01630");
        }
        let apache = b.start(Mode::Single).await;
        let (status, _) = get(&apache, "/denied");
        assert_eq!(status, Some(403));
        apache.await_error_log("AH01630", T).await;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| apache.finish()));
        assert_eq!(outcome.is_ok(), whitelisted, "oracle with whitelisted={whitelisted}");
    }
}

#[tokio::test]
async fn config_test_reports_syntax_errors() {
    let Some(env) = apache::env_without_module_or_skip("config_test_reports_syntax_errors") else {
        return;
    };
    let good = Apache::builder(&env).config_test();
    assert!(good.success(), "{}", good.output);
    assert!(good.output.contains("Syntax OK"), "{}", good.output);
    let bad = Apache::builder(&env).server_line("LogLevel loud").config_test();
    assert!(!bad.success(), "{}", bad.output);
    assert!(bad.output.contains("Log level keyword"), "{}", bad.output);
    assert_eq!(bad.offending_line().as_deref(), Some("LogLevel loud"), "{}", bad.output);
}
