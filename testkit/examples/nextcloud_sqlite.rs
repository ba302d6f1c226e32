//! Creates an empty Nextcloud SQLite database with the tables the push daemon reads (for the
//! sandbox of `scripts/setup`).
//!
//! `cargo run -p testkit --example nextcloud_sqlite -- /path/to/data/nextcloud.db [prefix]`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, prefix) = match args.as_slice() {
        [path] => (path.as_str(), "oc_"),
        [path, prefix] => (path.as_str(), prefix.as_str()),
        _ => {
            eprintln!("usage: nextcloud_sqlite <file.db> [table prefix, default oc_]");
            std::process::exit(2);
        }
    };
    testkit::apache::create_nextcloud_sqlite(std::path::Path::new(path), prefix);
}
