//! The module loads into Debian's apache2, `apache2 -t` accepts a good configuration, and every bad
//! directive value refuses the configuration with a message naming the directive.

use testkit::apache::{Apache, ApacheBuilder, Env};
use testkit::require;

const DIRECTIVES: [&str; 11] = [
    "NextcloudPushAllowSelfSigned",
    "NextcloudPushConfig",
    "NextcloudPushDatabase",
    "NextcloudPushDebounce",
    "NextcloudPushMaxConnectionTime",
    "NextcloudPushMaxDebounceTime",
    "NextcloudPushNextcloudUrl",
    "NextcloudPushPath",
    "NextcloudPushRedis",
    "NextcloudPushSocket",
    "NextcloudPushTablePrefix",
];

fn builder(env: &Env) -> ApacheBuilder {
    Apache::builder(env).nextcloud_url("http://127.0.0.1:9").redis("127.0.0.1", 6379)
}

#[test]
fn the_module_loads_and_lists_every_directive() {
    let env = require!(Env::require());
    let dump = builder(&env).run_once(&["-t", "-D", "DUMP_MODULES"]);
    assert!(dump.success(), "{}", dump.output);
    assert!(dump.output.contains("nextcloud_push_module (shared)"), "{}", dump.output);

    let listing = builder(&env).run_once(&["-L"]);
    assert!(listing.success(), "{}", listing.output);
    for directive in DIRECTIVES {
        assert!(
            listing.output.contains(directive),
            "apache2 -L lacks {directive}:\n{}",
            listing.output
        );
    }
}

#[test]
fn a_good_configuration_passes_the_config_test() {
    let env = require!(Env::require());
    let minimal = builder(&env).config_test();
    assert!(minimal.success(), "{}", minimal.output);
    assert!(minimal.output.contains("Syntax OK"), "{}", minimal.output);

    // Every directive with a valid value, and the module loaded without any push vhost.
    let full = builder(&env)
        .daemon_socket("/tmp/ncp-config-test.sock")
        .vhost_line("NextcloudPushPath /nextcloud/push")
        .vhost_line("NextcloudPushNextcloudUrl https://cloud.example.com/nextcloud")
        .vhost_line("NextcloudPushRedis redis://127.0.0.1:6379/2")
        .vhost_line("NextcloudPushDatabase sqlite:///var/lib/nextcloud/owncloud.db")
        .vhost_line("NextcloudPushTablePrefix oc_")
        .vhost_line("NextcloudPushAllowSelfSigned On")
        .vhost_line("NextcloudPushMaxDebounceTime 30")
        .vhost_line("NextcloudPushMaxConnectionTime 2h")
        .vhost_line("NextcloudPushDebounce Off")
        .config_test();
    assert!(full.success(), "{}", full.output);
    let off = builder(&env).push_config(false).config_test();
    assert!(off.success(), "{}", off.output);
}

#[test]
fn every_bad_directive_value_is_refused_naming_the_directive() {
    let env = require!(Env::require());
    // (directive, line, at server level?)
    let cases: &[(&str, &str, bool)] = &[
        ("NextcloudPushPath", "NextcloudPushPath push", false),
        ("NextcloudPushPath", "NextcloudPushPath /", false),
        ("NextcloudPushPath", "NextcloudPushPath /push/", false),
        ("NextcloudPushNextcloudUrl", "NextcloudPushNextcloudUrl cloud.example.com", false),
        ("NextcloudPushRedis", "NextcloudPushRedis localhost:6379", false),
        ("NextcloudPushDatabase", "NextcloudPushDatabase oracle://db/nextcloud", false),
        ("NextcloudPushTablePrefix", "NextcloudPushTablePrefix oc-", false),
        ("NextcloudPushAllowSelfSigned", "NextcloudPushAllowSelfSigned maybe", false),
        ("NextcloudPushDebounce", "NextcloudPushDebounce sometimes", false),
        ("NextcloudPushMaxDebounceTime", "NextcloudPushMaxDebounceTime 0", false),
        ("NextcloudPushMaxDebounceTime", "NextcloudPushMaxDebounceTime soon", false),
        ("NextcloudPushMaxConnectionTime", "NextcloudPushMaxConnectionTime -5", false),
        ("NextcloudPushSocket", "NextcloudPushSocket /run/nextcloud-push/", true),
        ("NextcloudPushSocket", &format!("NextcloudPushSocket /{}", "s".repeat(120)), true),
    ];
    for (directive, line, server_level) in cases {
        let b = builder(&env);
        let b = if *server_level { b.server_line(*line) } else { b.vhost_line(*line) };
        let test = b.config_test();
        assert!(!test.success(), "`{line}` was accepted:\n{}", test.output);
        assert!(
            test.output.contains(directive),
            "`{line}`: the message does not name {directive}:\n{}",
            test.output
        );
        assert_eq!(test.offending_line().as_deref(), Some(*line), "{}", test.output);
    }
}

#[test]
fn a_missing_or_incomplete_config_php_is_refused() {
    let env = require!(Env::require());
    let missing = builder(&env)
        .push_config(false)
        .vhost_line("NextcloudPushConfig /nonexistent/nextcloud/config/config.php")
        .config_test();
    assert!(!missing.success(), "{}", missing.output);
    assert!(missing.output.contains("NextcloudPushConfig"), "{}", missing.output);
    assert!(
        missing.output.contains("/nonexistent/nextcloud/config/config.php"),
        "{}",
        missing.output
    );

    // No overwrite.cli.url and no NextcloudPushNextcloudUrl: the daemon would not know where
    // to check credentials.
    let no_url = builder(&env)
        .config_php_text("<?php\n$CONFIG = array (\n  'dbtype' => 'sqlite3',\n  'datadirectory' => '{root}/data',\n);\n")
        .config_test();
    assert!(!no_url.success(), "{}", no_url.output);
    assert!(no_url.output.contains("overwrite.cli.url"), "{}", no_url.output);
}
