//! Generates Rust bindings for the few httpd and APR items the module uses.
//!
//! Header discovery, each step overridable by an environment variable:
//! - httpd: `APACHE_INCLUDE_DIR`, else `$APXS -q INCLUDEDIR` (`APXS` defaults to `apxs`);
//! - APR: `APR_INCLUDE_DIR`, else `$APR_CONFIG --includes` (`APR_CONFIG` defaults to
//!   `apr-1-config`).
//!
//! Build against the headers of the httpd you ship to: struct layouts only grow between MMN
//! minor versions, so bindings from newer headers must not touch fields an older server lacks.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "install the httpd and APR development headers and libclang \
                            (Debian/Ubuntu: `apt-get install apache2-dev libclang-dev`)";

fn main() {
    for var in ["APXS", "APR_CONFIG", "APACHE_INCLUDE_DIR", "APR_INCLUDE_DIR", "LIBCLANG_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=src/apache/wrapper.h");

    let httpd = match httpd_include_dir() {
        Ok(dir) => dir,
        Err(e) => fail(&e),
    };
    let apr = match apr_include_dirs() {
        Ok(dirs) => dirs,
        Err(e) => fail(&e),
    };
    if !httpd.join("httpd.h").is_file() {
        fail(&format!(
            "{} has no httpd.h (set APACHE_INCLUDE_DIR or APXS to the right httpd)",
            httpd.display()
        ));
    }
    if !apr.iter().any(|d| d.join("apr.h").is_file()) {
        fail(&format!(
            "no apr.h in {:?} (set APR_INCLUDE_DIR or APR_CONFIG to the right APR)",
            apr
        ));
    }

    let mut builder = bindgen::Builder::default()
        .header("src/apache/wrapper.h")
        .clang_arg(format!("-I{}", httpd.display()))
        .clang_args(apr.iter().map(|d| format!("-I{}", d.display())))
        // apr-1-config --cppflags on Linux; harmless elsewhere.
        .clang_args(["-D_REENTRANT", "-D_GNU_SOURCE"])
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .rust_target(bindgen::RustTarget::stable(85, 0).unwrap_or_else(|e| fail(&e.to_string())))
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(true)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .generate_cstr(true)
        .merge_extern_blocks(true);
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }

    let bindings =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => fail(&format!("bindgen failed on src/apache/wrapper.h: {e}")),
            Err(_) => fail("bindgen could not run (is libclang installed? set LIBCLANG_PATH)"),
        };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).unwrap_or_else(|e| fail(&e.to_string()));
    // The TLS handoff calls into the system libssl, the very copy mod_ssl loaded into Apache:
    // linked dynamically, never a second (vendored or static) OpenSSL.
    println!("cargo:rustc-link-lib=dylib=ssl");
}

/// Every httpd/APR function the module calls; nothing else is generated.
const FUNCTIONS: &[&str] = &[
    "ap_hook_(pre_config|check_config|post_config|translate_name|map_to_storage|handler|monitor)",
    "ap_log_error_",
    "ap_get_module_config",
    "ap_set_module_config",
    "ap_state_query",
    "ap_mpm_query",
    "ap_retained_data_(get|create)",
    "ap_server_root_relative",
    "ap_runtime_dir_relative",
    "ap_check_cmd_context",
    "ap_close_listeners",
    "ap_run_drop_privileges",
    "ap_recent_ctime_ex",
    "ap_send_interim_response",
    "ap_get_brigade",
    "ap_get_conn_socket",
    // WebSockets over HTTP/2 (src/apache/bridge.rs): the h2 stream's input pipe
    "ap_get_pollfd_from_conn",
    "ap_ssl_conn_is_ssl",
    "ap_rwrite",
    "ap_set_content_type",
    "ap_set_content_length",
    "ap_remove_(input|output)_filter_byhandle",
    "ap_hook_child_stopping",
    // Stop notices (the parent's stop handlers are wrapped once children start)
    "ap_hook_child_(status|init)",
    "ap_fflush",
    "apr_brigade_write",
    "apr_pool_cleanup_(register|kill|null)",
    "apr_pool_userdata_(get|set)",
    "apr_pstrmemdup",
    "apr_palloc",
    "apr_table_(get|set|clear)",
    "apr_brigade_(create|flatten|length|cleanup)",
    "apr_os_sock_get",
    "apr_os_file_get",
    "apr_proc_other_child_(register|unregister)",
    "apr_time_now",
    // The client-IP vouching hook and the vhost's own address
    "ap_hook_post_read_request",
    "apr_table_unset",
    "apr_sockaddr_info_get",
    "apr_sockaddr_ip_get",
    // The TLS session handoff (src/apache/tls.rs): mod_ssl's optional hooks, the tap filter
    // below mod_ssl, and libssl.
    "apr_optional_hook_add",
    "ap_register_output_filter",
    "ap_add_output_filter_handle",
    "ap_pass_brigade",
    "ap_hook_pre_connection",
    "SSL_set_msg_callback",
    "SSL_ctrl",
    "SSL_(get|set)_ex_data",
    "SSL_CTX_(get|set)_ex_data",
    "CRYPTO_get_ex_new_index",
    "SSL_CTX_(get|set)_keylog_callback",
    "SSL_get_SSL_CTX",
    "SSL_version",
    "SSL_get_current_cipher",
    "SSL_CIPHER_get_protocol_id",
    "SSL_get_session",
    "SSL_SESSION_get_master_key",
    "SSL_SESSION_get_max_fragment_length",
    "SSL_get_(client|server)_random",
    "SSL_has_pending",
    "SSL_rstate_string",
    "SSL_in_init",
    "SSL_get_key_update_type",
    "SSL_get_shutdown",
    "SSL_set_quiet_shutdown",
    "SSL_get_current_compression",
    "SSL_get0_alpn_selected",
    "SSL_get_early_data_status",
];

const TYPES: &[&str] = &[
    "module",
    "command_rec",
    "cmd_parms",
    "request_rec",
    "conn_rec",
    "server_rec",
    "process_rec",
    "apr_proc_t",
    "unixd_config_rec",
    "cmd_how",
    "ap_input_mode_t",
    "apr_read_type_e",
    "ap_conn_keepalive_e",
    "server_addr_rec",
    "ap_listen_rec",
    "ap_filter_t",
    "ap_filter_rec_t",
    "ap_filter_type",
    "SSL",
    "SSL_CTX",
];

const VARS: &[&str] = &[
    "MODULE_MAGIC_(NUMBER_MAJOR|NUMBER_MINOR|COOKIE)",
    "RSRC_CONF",
    "GLOBAL_ONLY",
    "NOT_IN_VIRTUALHOST",
    "OK",
    "DECLINED",
    "DONE",
    "HTTP_(SWITCHING_PROTOCOLS|BAD_REQUEST|NOT_FOUND|METHOD_NOT_ALLOWED|UPGRADE_REQUIRED)",
    "HTTP_(INTERNAL_SERVER_ERROR|NOT_IMPLEMENTED|SERVICE_UNAVAILABLE)",
    "APLOG_(EMERG|ALERT|CRIT|ERR|WARNING|NOTICE|INFO|DEBUG|TRACE1|TRACE8|LEVELMASK)",
    "APR_HOOK_(REALLY_FIRST|FIRST|MIDDLE|LAST)",
    "AP_SQ_(MAIN_STATE|MS_CREATE_PRE_CONFIG|MS_EXITING)",
    "AP_MPMQ_(MPM_STATE|STOPPING|MAX_DAEMONS|MAX_THREADS)",
    "APR_OC_REASON_(DEATH|UNWRITABLE|RESTART|UNREGISTER|LOST|RUNNING)",
    "AP_CTIME_OPTION_USEC",
    "APR_EAGAIN",
    "APR_(NO_DESC|POLL_SOCKET|POLL_FILE)",
    "APR_EOF",
    "APR_CTIME_LEN",
    "ap_unixd_config",
    "ap_server_conf",
    "ap_listeners",
    "APR_IPV4_ADDR_OK",
    "AP_FTYPE_CONNECTION",
    "SSL3_RT_(HEADER|CHANGE_CIPHER_SPEC|HANDSHAKE|ALERT|APPLICATION_DATA|INNER_CONTENT_TYPE)",
    "SSL_KEY_UPDATE_(NONE|NOT_REQUESTED|UPDATED)",
    "TLS1_(2|3)_VERSION",
    "SSL_CTRL_SET_MSG_CALLBACK_ARG",
    "SSL_EARLY_DATA_ACCEPTED",
    "CRYPTO_EX_INDEX_SSL(_CTX)?",
];

fn httpd_include_dir() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("APACHE_INCLUDE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".to_owned());
    let dir = run(&apxs, &["-q", "INCLUDEDIR"]).map_err(|e| {
        format!("cannot ask `{apxs} -q INCLUDEDIR` ({e}); set APXS or APACHE_INCLUDE_DIR")
    })?;
    Ok(PathBuf::from(dir.trim()))
}

fn apr_include_dirs() -> Result<Vec<PathBuf>, String> {
    if let Some(dirs) = env::var_os("APR_INCLUDE_DIR") {
        return Ok(env::split_paths(&dirs).collect());
    }
    let cfg = env::var("APR_CONFIG").unwrap_or_else(|_| "apr-1-config".to_owned());
    let out = run(&cfg, &["--includes"]).map_err(|e| {
        format!("cannot ask `{cfg} --includes` ({e}); set APR_CONFIG or APR_INCLUDE_DIR")
    })?;
    let dirs: Vec<PathBuf> = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("-I"))
        .map(|d| Path::new(d).to_path_buf())
        .collect();
    if dirs.is_empty() {
        return Err(format!("`{cfg} --includes` printed no -I directory"));
    }
    Ok(dirs)
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("exit status {}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: mod_nextcloud_push build: {msg}; {INSTALL_HINT}");
    std::process::exit(1);
}
