//! The Nextcloud HTTP double as a standalone program, for the sandbox script.
//!
//! Users come from `--user login:password:uid` (repeatable) and/or the environment variable
//! `NEXTCLOUD_DOUBLE_USERS` (`login:password:uid,login2:password2:uid2`); the uid defaults to the
//! login when omitted (`login:password`). `--bind ADDR` (or `NEXTCLOUD_DOUBLE_BIND`, default
//! `127.0.0.1:0`) picks the address. It prints its base URL (with a trailing `/`) as the first
//! line on stdout, then serves until killed.

use testkit::nextcloud::NextcloudDouble;

fn parse_user(spec: &str) -> Option<(String, String, String)> {
    let mut parts = spec.splitn(3, ':');
    let login = parts.next()?.to_string();
    let password = parts.next()?.to_string();
    let uid = parts.next().map(str::to_string).unwrap_or_else(|| login.clone());
    (!login.is_empty()).then_some((login, password, uid))
}

fn main() {
    let mut users = Vec::new();
    let mut bind = std::env::var("NEXTCLOUD_DOUBLE_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    if let Ok(list) = std::env::var("NEXTCLOUD_DOUBLE_USERS") {
        users.extend(
            list.split(',').filter(|s| !s.trim().is_empty()).filter_map(|s| parse_user(s.trim())),
        );
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--user" => match args.next().as_deref().and_then(parse_user) {
                Some(user) => users.push(user),
                None => usage("--user needs login:password[:uid]"),
            },
            "--bind" => bind = args.next().unwrap_or_else(|| usage("--bind needs an address")),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let borrowed: Vec<(&str, &str, &str)> =
        users.iter().map(|(l, p, u)| (l.as_str(), p.as_str(), u.as_str())).collect();
    let double = match NextcloudDouble::start_on(&bind, &borrowed) {
        Ok(double) => double,
        Err(e) => {
            eprintln!("nextcloud-double: cannot listen on {bind}: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", double.base_url());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn usage(error: &str) -> ! {
    if !error.is_empty() {
        eprintln!("nextcloud-double: {error}");
    }
    eprintln!("usage: nextcloud-double [--bind 127.0.0.1:0] [--user login:password[:uid]]...  (env NEXTCLOUD_DOUBLE_USERS, NEXTCLOUD_DOUBLE_BIND)");
    std::process::exit(if error.is_empty() { 0 } else { 2 });
}
