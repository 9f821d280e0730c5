//! The configuration's rules, one test each, with the text of the error each one gives: its key,
//! where it was written, and never a secret. Longer than ~500 lines because every section's
//! refusals are pinned here, side by side, where their wording can be compared; the shapes and
//! their validation live in the section files.
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;
use crate::body::BodyPace;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

const MINIMAL: &str = r#"
        [profiles.default]
        email = "svc@example.com"
        password = "pw"
    "#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml(MINIMAL, no_env(), None).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.admin_listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(25));
    assert_eq!(c.server.max_body, 1 << 30);
    assert_eq!(c.server.replay_body_limit, 1 << 20);
    assert_eq!(c.server.replay_memory, 32 << 20);
    assert_eq!(c.server.limits.send_timeout, Duration::from_secs(30));
    assert_eq!(c.server.cpu_affinity, CpuAffinity::Auto);
    assert_eq!(c.upstream.base_url, "https://api.contentstack.io");
    let p = &c.profiles[0];
    assert_eq!(&*p.name, "default");
    assert_eq!(p.validate_interval, Some(Duration::from_secs(300)));
    assert_eq!(p.max_token_age, None);
    assert_eq!(p.rejected_retry, Duration::from_secs(300));
}

#[test]
fn env_overrides_file_values() {
    let env = vec![
        (
            "CMA_AUTH_PROXY_UPSTREAM__URL".to_owned(),
            "http://127.0.0.1:1234".to_owned(),
        ),
        (
            "CMA_AUTH_PROXY_PROFILES__DEFAULT__EMAIL".to_owned(),
            "other@example.com".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let c = Config::from_toml(MINIMAL, env, None).unwrap();
    assert_eq!(c.upstream.base_url, "http://127.0.0.1:1234");
    match &c.profiles[0].credentials {
        Credentials::Login(login) => assert_eq!(login.email, "other@example.com"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn region_selects_host() {
    let c = Config::from_toml(
        &format!("[upstream]\nregion = \"eu\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.upstream.base_url, "https://eu-api.contentstack.com");
}

fn error_of(text: &str) -> String {
    Config::from_toml(text, no_env(), None)
        .unwrap_err()
        .to_string()
}

#[test]
fn rejects_unknown_keys() {
    let e = error_of(&format!("[server]\nlisten_addr = \"x\"\n{MINIMAL}"));
    assert!(e.contains("listen_addr"), "{e}");
    let e = error_of(&format!("{MINIMAL}\npasword_file = \"/x\""));
    assert!(e.contains("pasword_file"), "{e}");
}

#[test]
fn rejects_bad_durations_and_sizes() {
    let e = error_of(&format!("[server]\nshutdown_grace = \"soon\"\n{MINIMAL}"));
    assert!(e.contains("soon") || e.contains("shutdown_grace"), "{e}");
    let e = error_of(&format!("[server]\nmax_body = \"lots\"\n{MINIMAL}"));
    assert!(e.contains("server.max_body"), "{e}");
}

#[test]
fn body_pace_defaults_and_validation() {
    let c = Config::from_toml(MINIMAL, no_env(), None).unwrap();
    assert_eq!(
        c.server.body_pace,
        BodyPace {
            idle_timeout: Duration::from_secs(10),
            min_rate: 1024
        }
    );
    let c = Config::from_toml(
        &format!("[server]\nbody_idle_timeout = \"2s\"\nbody_min_rate = \"0\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.server.body_pace.idle_timeout, Duration::from_secs(2));
    assert_eq!(
        c.server.body_pace.min_rate, 0,
        "0 turns the minimum rate off"
    );
    let e = error_of(&format!("[server]\nbody_idle_timeout = \"0s\"\n{MINIMAL}"));
    assert!(e.contains("server.body_idle_timeout"), "{e}");
    let e = error_of(&format!("[server]\nsend_timeout = \"0s\"\n{MINIMAL}"));
    assert!(e.contains("server.send_timeout"), "{e}");
    let e = error_of(&format!("[server]\nbody_min_rate = \"fast\"\n{MINIMAL}"));
    assert!(e.contains("server.body_min_rate"), "{e}");
}

#[test]
fn replay_memory_holds_at_least_one_kept_body() {
    let c = Config::from_toml(
        &format!("[server]\nreplay_body_limit = \"64KiB\"\nreplay_memory = \"64KiB\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.server.replay_memory, 64 << 10);
    let e = error_of(&format!("[server]\nreplay_memory = \"512KiB\"\n{MINIMAL}"));
    assert!(e.contains("server.replay_memory"), "{e}");
}

#[test]
fn rejects_profile_without_credentials() {
    let e = error_of("[profiles.default]\nemail = \"a@b.c\"\n");
    assert!(e.contains("profiles.default"), "{e}");
    assert!(e.contains("neither"), "{e}");
    let e = error_of("");
    assert!(e.contains("no profile configured"), "{e}");
}

#[test]
fn rejects_missing_secret_file_naming_key_and_path() {
    let e = error_of(
        "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"/nonexistent/cma/password\"\n",
    );
    assert!(e.contains("profiles.default.password_file"), "{e}");
    assert!(e.contains("/nonexistent/cma/password"), "{e}");
}

#[test]
fn secret_file_trailing_newline_is_ignored_and_never_printed() {
    let dir = tempdir();
    std::fs::write(dir.join("password"), "s3cret-pw\n").unwrap();
    let c = Config::from_toml(
        "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
        no_env(),
        Some(&dir),
    )
    .unwrap();
    match &c.profiles[0].credentials {
        Credentials::Login(login) => {
            assert_eq!(login.password.expose_secret(), "s3cret-pw")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.watched_files, vec![dir.join("password")]);
    assert!(!format!("{c:?}").contains("s3cret-pw"));
}

#[test]
fn management_token_profile() {
    let c = Config::from_toml(
        "[profiles.mt]\nmanagement_token = \"cs-mgmt-token\"\n",
        no_env(),
        None,
    )
    .unwrap();
    assert!(!c.profiles[0].has_session());
    assert!(!format!("{c:?}").contains("cs-mgmt-token"));
}

#[test]
fn totp_secret_must_be_base32() {
    let e = error_of(&format!("{MINIMAL}totp_secret = \"not base32 !\"\n"));
    assert!(e.contains("totp_secret"), "{e}");
    let ok = Config::from_toml(
        &format!("{MINIMAL}totp_secret = \"jbsw y3dp ehpk 3pxp\"\n"),
        no_env(),
        None,
    );
    assert!(ok.is_ok());
}

#[test]
fn redis_token_store() {
    let dir = tempdir();
    std::fs::write(dir.join("key"), format!("{}\n", "ab".repeat(32))).unwrap();
    let c = Config::from_toml(
        &format!("[token_store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\nencryption_key_file = \"key\"\n{MINIMAL}"),
        no_env(),
        Some(&dir),
    )
    .unwrap();
    let TokenStoreConfig::Redis(r) = &c.token_store else {
        panic!()
    };
    assert_eq!(r.encryption_key.as_ref().unwrap().0, [0xab; 32]);
    assert_eq!(r.key_prefix, "cma-auth-proxy:");
    assert!(!format!("{c:?}").contains("hunter2"));
    std::fs::write(dir.join("key"), "short").unwrap();
    let e = Config::from_toml(
        &format!("[token_store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\nencryption_key_file = \"key\"\n{MINIMAL}"),
        no_env(),
        Some(&dir),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("32-byte"), "{e}");
    assert!(
        error_of(&format!("[token_store]\nkind = \"redis\"\n{MINIMAL}"))
            .contains("token_store.url")
    );
    let e = Config::from_toml(
        &format!("[token_store]\nkind = \"redis\"\nurl = \"rediss://:hunter2@redis.internal/#insecure\"\nallow_plaintext = true\n{MINIMAL}"),
        no_env(),
        Some(&dir),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("token_store.url") && e.contains("#insecure"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    assert!(
        error_of(&format!("[token_store]\nurl = \"redis://x\"\n{MINIMAL}"))
            .contains("only to kind")
    );
}

#[test]
fn redis_needs_a_sealing_key_unless_plaintext_is_asked_for_explicitly() {
    let dir = tempdir();
    std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
    let store = |extra: &str| {
        Config::from_toml(
            &format!(
                "[token_store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1\"\n{extra}\n{MINIMAL}"
            ),
            no_env(),
            Some(&dir),
        )
    };
    let e = store("").unwrap_err().to_string();
    assert!(
        e.contains("token_store.encryption_key_file")
            && e.contains("openssl rand -base64 32")
            && e.contains("allow_plaintext = true"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let c = store("allow_plaintext = true").unwrap();
    let TokenStoreConfig::Redis(r) = &c.token_store else {
        panic!()
    };
    assert!(r.encryption_key.is_none());
    assert!(store("encryption_key_file = \"key\"").is_ok());
    let e = store("encryption_key_file = \"key\"\nallow_plaintext = true")
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_store.allow_plaintext"), "{e}");
    // Leaving sealing on is not an opt-out.
    assert!(store("allow_plaintext = false").is_err());
    assert!(
        error_of(&format!("[token_store]\nallow_plaintext = true\n{MINIMAL}"))
            .contains("only to kind")
    );
}

#[test]
fn redis_ca_file_needs_rediss_and_a_pem_certificate() {
    let dir = tempdir();
    let store = |url: &str, ca: &str| {
        Config::from_toml(
            &format!(
                "[token_store]\nkind = \"redis\"\nurl = \"{url}\"\nca_file = \"{ca}\"\nallow_plaintext = true\n{MINIMAL}"
            ),
            no_env(),
            Some(&dir),
        )
    };
    let cert = rcgen::generate_simple_self_signed(vec!["redis.internal".to_owned()]).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("not.pem"), "hello").unwrap();
    let c = store("rediss://redis.internal:6380", "ca.pem").unwrap();
    let TokenStoreConfig::Redis(r) = &c.token_store else {
        panic!()
    };
    assert_eq!(r.roots_pem.as_deref(), Some(cert.cert.pem().as_bytes()));
    let e = store("redis://redis.internal", "ca.pem")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token_store.ca_file") && e.contains("rediss://"),
        "{e}"
    );
    let e = store("rediss://redis.internal", "not.pem")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token_store.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = store("rediss://redis.internal", "missing.pem")
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_store.ca_file"), "{e}");
    assert!(
        error_of(&format!("[token_store]\nca_file = \"ca.pem\"\n{MINIMAL}"))
            .contains("only to kind")
    );
}

#[test]
fn unknown_region_and_token_store_are_errors() {
    let e = error_of(&format!("[upstream]\nregion = \"mars\"\n{MINIMAL}"));
    assert!(
        e.starts_with("`upstream.region` (line 2, column 10): expected one of \"na\", \"eu\", \"au\", \"azure-na\", \"azure-eu\", \"gcp-na\", \"gcp-eu\", found a string"),
        "{e}"
    );
    let e = error_of(&format!("[token_store]\nkind = \"disk\"\n{MINIMAL}"));
    assert!(
        e.starts_with("`token_store.kind` (line 2, column 8): expected \"memory\" or \"redis\""),
        "{e}"
    );
    let e = error_of(&format!("[server]\ncpu_affinity = \"always\"\n{MINIMAL}"));
    assert!(
        e.starts_with(
            "`server.cpu_affinity` (line 2, column 16): expected one of \"auto\", \"on\", \"off\""
        ),
        "{e}"
    );
    for (text, value) in [("on", CpuAffinity::On), ("off", CpuAffinity::Off)] {
        let toml = format!("[server]\ncpu_affinity = \"{text}\"\n{MINIMAL}");
        let config = Config::from_toml(&toml, no_env(), None).unwrap();
        assert_eq!(config.server.cpu_affinity, value);
    }
}

#[test]
fn unix_listen_address() {
    let c = Config::from_toml(
        &format!("[server]\nlisten = \"unix:/tmp/cma.sock\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.server.listen, ListenAddr::Unix("/tmp/cma.sock".into()));
}

/// Stands for a secret in the texts below; no error may show any part of it.
const MARKER: &str = "Sekr1t-4471";

fn assert_no_secret(e: &ConfigError, values: &[&str]) -> String {
    let shown = e.to_string();
    let debug = format!("{e:?}");
    for value in values.iter().chain(&[MARKER, "Sekr1t", "4471"]) {
        assert!(
            !shown.contains(value) && !debug.contains(value),
            "{value:?} shown in {shown} / {debug}"
        );
    }
    shown
}

#[test]
fn syntax_errors_say_where_and_what_was_expected_never_the_text() {
    let profile = "[profiles.default]\nemail = \"a@b.c\"\n";
    for (line, text) in [
        (3, format!("{profile}password = \"{MARKER}\n")),
        (3, format!("{profile}password = '{MARKER}\n")),
        (3, format!("{profile}password = \"{MARKER}\\q\"\n")),
        (3, format!("{profile}password = {MARKER}\n")),
        (3, format!("{profile}password = \"{MARKER}\" \"more\"\n")),
        (3, format!("{profile}password = {{ value = \"{MARKER}\"\n")),
        (3, format!("{profile}\"{MARKER}\n")),
        (
            4,
            format!("{profile}password = \"{MARKER}\"\npassword = \"{MARKER}\"\n"),
        ),
        (4, format!("{profile}password = \"\"\"{MARKER}\n")),
    ] {
        let e = Config::from_toml(&text, no_env(), None).unwrap_err();
        let shown = assert_no_secret(&e, &[]);
        assert!(matches!(e, ConfigError::Syntax { .. }), "{shown}");
        assert!(
            shown.starts_with(&format!("line {line}, column ")) && shown.contains("not valid TOML"),
            "{text:?}: {shown}"
        );
    }
    let e = error_of(&format!("{MINIMAL}\nlisten = \"x\n"));
    assert!(e.ends_with("invalid basic string, expected `\"`"), "{e}");
}

#[test]
fn type_errors_on_secret_keys_name_key_and_line_but_never_the_value() {
    let profile = "[profiles.default]\nemail = \"a@b.c\"\n";
    for (key, line, found) in [
        ("password", "password = [\"Sekr1t-4471\", 4471]", "an array"),
        (
            "password",
            "password = { inner = \"Sekr1t-4471\" }",
            "a table",
        ),
        ("password", "password.inner = \"Sekr1t-4471\"", "a table"),
        (
            "totp_secret",
            "totp_secret = [4471.5]\npassword = \"x\"",
            "an array",
        ),
    ] {
        let e = Config::from_toml(&format!("{profile}{line}\n"), no_env(), None).unwrap_err();
        let shown = assert_no_secret(&e, &[]);
        assert!(
            shown.starts_with(&format!("`profiles.default.{key}` (line 3, column "))
                && shown.ends_with(&format!("): expected a string, found {found}")),
            "{line}: {shown}"
        );
    }
    // No key takes a date-time; said without the value.
    let e = Config::from_toml(
        &format!("{profile}management_token = 4471-05-27T07:32:00Z\n"),
        no_env(),
        None,
    )
    .unwrap_err();
    let shown = assert_no_secret(&e, &[]);
    assert_eq!(
        shown,
        "`profiles.default.management_token` (line 3, column 20): is a date-time, which no key takes"
    );
    let e = Config::from_toml(
        &format!("[token_store]\nkind = \"redis\"\nurl = [44711234]\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap_err();
    let shown = assert_no_secret(&e, &[]);
    assert!(
        shown
            .starts_with("`token_store.url` (line 3, column 7): expected a string, found an array"),
        "{shown}"
    );
}

/// `config` reads a number or a boolean where a key wants a string, so a secret written without
/// quotes is that text (and warned about as any inline secret), not an error that could show it.
#[test]
fn a_secret_written_as_a_number_is_its_text() {
    let c = Config::from_toml(
        "[profiles.default]\nemail = \"a@b.c\"\npassword = 44711234\n",
        no_env(),
        None,
    )
    .unwrap();
    let login = c.profiles[0].login().unwrap();
    assert_eq!(login.password.expose_secret(), "44711234");
    assert!(
        c.warnings
            .iter()
            .any(|w| matches!(w, ConfigWarning::InlineSecret { key, .. } if key == "profiles.default.password"))
    );
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn environment_errors_name_the_variable_and_never_the_value() {
    for (var, needle) in [
        (
            "CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS",
            "environment variable CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS (`server.max_connections`): expected an integer, found a string",
        ),
        (
            "CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__INNER",
            "environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__INNER (`profiles.default.password`): expected a string, found a table",
        ),
        (
            "CMA_AUTH_PROXY_PROFILES__OTHER__PASSWORD__INNER",
            "environment variable CMA_AUTH_PROXY_PROFILES__OTHER__PASSWORD__INNER (`profiles.other.password`): expected a string, found a table",
        ),
        (
            "CMA_AUTH_PROXY_PROFILES__DEFAULT",
            "environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT (`profiles.default`): expected a table, found a string",
        ),
        (
            "CMA_AUTH_PROXY_SERVER____LISTEN",
            "`CMA_AUTH_PROXY_SERVER____LISTEN`: names no configuration key",
        ),
        (
            "CMA_AUTH_PROXY_SERVER__LISTNE",
            "environment variable CMA_AUTH_PROXY_SERVER__LISTNE (`server.listne`): unknown key; the keys here are `listen`, `admin_listen`,",
        ),
        (
            "CMA_AUTH_PROXY_SERVR__LISTEN",
            "environment variable CMA_AUTH_PROXY_SERVR__LISTEN (`servr`): unknown key; the keys here are `server`, `upstream`,",
        ),
    ] {
        let e = Config::from_toml(MINIMAL, env(&[(var, MARKER)]), None).unwrap_err();
        let shown = assert_no_secret(&e, &[]);
        assert!(shown.contains(needle), "{var}: {shown}");
    }
}

#[test]
fn environment_strings_are_read_as_numbers_and_booleans_where_a_key_wants_one() {
    let c = Config::from_toml(
        &format!("{MINIMAL}[profiles.default.rate_limit]\n"),
        env(&[
            ("CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS", "10"),
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT__LOGOUT_ON_SHUTDOWN",
                "false",
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT__RATE_LIMIT__READS_PER_SECOND",
                "2.5",
            ),
            ("CMA_AUTH_PROXY_PROFILES__DEFAULT__RATE_LIMIT__BURST", "3"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(c.server.limits.max_connections, 10);
    let p = &c.profiles[0];
    assert!(!p.logout_on_shutdown);
    let rate_limit = p.rate_limit.as_ref().unwrap();
    assert_eq!(rate_limit.reads_per_second, Some(2.5));
    assert_eq!(rate_limit.burst, 3);
    // `config` reads the file's values the same way: a number in quotes is a number.
    let c = Config::from_toml(
        &format!("[server]\nmax_connections = \"10\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.server.limits.max_connections, 10);
}

#[test]
fn validation_errors_say_where_the_key_was_written() {
    let e = error_of(&format!("[server]\nmax_body = \"big\"\n{MINIMAL}"));
    assert!(
        e.starts_with("`server.max_body` (line 2, column 12): "),
        "{e}"
    );
    let e = Config::from_toml(
        MINIMAL,
        env(&[("CMA_AUTH_PROXY_UPSTREAM__REGION", "mars")]),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "environment variable CMA_AUTH_PROXY_UPSTREAM__REGION (`upstream.region`): expected one of \"na\""
        ),
        "{e}"
    );
    let dir = tempdir();
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{MINIMAL}\n[server]\nlisten = [8080]\n")).unwrap();
    let e = Config::load(&path, no_env()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "`server.listen` (line 7, column 10 of {}): expected a string, found an array",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn secrets_written_inline_or_in_the_environment_are_warned_about() {
    let c = Config::from_toml(
        "[profiles.default]\nemail = \"a@b.c\"\npassword = \"Sekr1t-4471\"\n",
        env(&[
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT__TOTP_SECRET",
                "JBSWY3DPEHPK3PXP",
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__MT__MANAGEMENT_TOKEN",
                "Sekr1t-4471",
            ),
        ]),
        None,
    )
    .unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(warnings[0].starts_with(
        "`profiles.default.password` is written in the configuration file (line 3, column 12)"
    ));
    assert!(
        warnings[0].ends_with("name it with `password_file`"),
        "{}",
        warnings[0]
    );
    assert!(warnings[1].starts_with(
        "`profiles.default.totp_secret` comes from the environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT__TOTP_SECRET"
    ));
    assert!(warnings[2].contains("CMA_AUTH_PROXY_PROFILES__MT__MANAGEMENT_TOKEN,"));
    for w in &warnings {
        assert!(!w.contains("Sekr1t") && !w.contains("JBSWY3DP"), "{w}");
    }
}

#[test]
fn a_plain_listener_beyond_loopback_is_warned_about() {
    let warnings = |listen: &str| {
        Config::from_toml(
            &format!("[server]\nlisten = \"{listen}\"\n{MINIMAL}"),
            no_env(),
            None,
        )
        .unwrap()
        .warnings
        .into_iter()
        .filter(|w| matches!(w, ConfigWarning::ListenWithoutTls { .. }))
        .count()
    };
    assert_eq!(warnings("0.0.0.0:8080"), 1);
    assert_eq!(warnings("10.1.2.3:8080"), 1);
    assert_eq!(warnings("[::]:8080"), 1);
    assert_eq!(warnings("127.0.0.1:8080"), 0);
    assert_eq!(warnings("[::1]:8080"), 0);
    assert_eq!(warnings("unix:/tmp/cma.sock"), 0);
}

#[test]
fn a_unix_socket_others_can_reach_or_take_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let open = tempdir();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let closed = tempdir();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o750)).unwrap();
    let warnings = |dir: &Path, mode: &str| -> Vec<String> {
        Config::from_toml(
            &format!(
                "[server]\nlisten = \"unix:{}\"\n{mode}\n{MINIMAL}",
                dir.join("cma.sock").display()
            ),
            no_env(),
            None,
        )
        .unwrap()
        .warnings
        .into_iter()
        .filter(|w| {
            matches!(
                w,
                ConfigWarning::SocketInOpenDirectory { .. } | ConfigWarning::SocketOpenToAll { .. }
            )
        })
        .map(|w| w.to_string())
        .collect()
    };
    assert_eq!(
        warnings(&closed, "listen_mode = \"0660\""),
        Vec::<String>::new()
    );
    let w = warnings(&open, "");
    assert!(
        w.len() == 1 && w[0].contains("every user can write to"),
        "{w:?}"
    );
    for mode in ["0666", "0777", "0602"] {
        let w = warnings(&closed, &format!("listen_mode = \"{mode}\""));
        assert!(
            w.len() == 1 && w[0].contains("lets every user connect"),
            "{mode}: {w:?}"
        );
    }
}

#[test]
fn a_file_in_a_directory_others_can_write_to_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(&config, MINIMAL).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let directory_warnings = |c: Config| -> Vec<String> {
        c.warnings
            .into_iter()
            .filter(|w| matches!(w, ConfigWarning::OpenDirectory { .. }))
            .map(|w| w.to_string())
            .collect()
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(directory_warnings(Config::load(&config, no_env()).unwrap()).is_empty());
    // Anyone could rename another file over the 0600 config: that is warned about.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let w = directory_warnings(Config::load(&config, no_env()).unwrap());
    assert!(
        w.len() == 1 && w[0].contains("writable by every user") && w[0].contains("rename"),
        "{w:?}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn files_open_to_other_users_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("password"), "pw").unwrap();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&config, 0o600);
    mode(&dir.join("password"), 0o644);
    let c = Config::load(&config, no_env()).unwrap();
    assert_eq!(
        c.warnings,
        vec![ConfigWarning::FileAccess {
            path: dir.join("password"),
            role: FileRole::Secret,
            mode: 0o644,
            readers: Some(Who::Everyone),
            writers: None,
        }]
    );
    mode(&config, 0o622);
    mode(&dir.join("password"), 0o440);
    let c = Config::load(&config, no_env()).unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![format!(
            "configuration file {} (mode 0622) is writable by every user: whoever can change \
                 it can send the credentials elsewhere; let only the proxy's user write it (`chmod go-w`)",
            config.display()
        )]
    );
}

#[test]
fn every_file_is_read_with_a_bound() {
    let dir = tempdir();
    let secret = |path: &Path| {
        Config::from_toml(
            &format!(
                "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"{}\"\n",
                path.display()
            ),
            no_env(),
            None,
        )
    };
    std::fs::write(dir.join("largest"), vec![b'a'; SECRET_FILE_LIMIT as usize]).unwrap();
    assert!(secret(&dir.join("largest")).is_ok());
    std::fs::write(
        dir.join("too-large"),
        vec![b'a'; SECRET_FILE_LIMIT as usize + 1],
    )
    .unwrap();
    let e = secret(&dir.join("too-large")).unwrap_err().to_string();
    assert!(
        e.contains("`profiles.default.password_file`") && e.contains("larger than 64 KiB"),
        "{e}"
    );
    let e = secret(Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(e.contains("/dev/zero: not a regular file"), "{e}");

    let config = dir.join("config.toml");
    let mut text = MINIMAL.to_owned();
    text.push_str(&"#".repeat(CONFIG_FILE_LIMIT as usize));
    std::fs::write(&config, text).unwrap();
    let e = Config::load(&config, no_env()).unwrap_err().to_string();
    assert!(
        e.contains("`--config`") && e.contains("larger than 1 MiB"),
        "{e}"
    );

    std::fs::write(dir.join("ca.pem"), vec![b'a'; PEM_FILE_LIMIT as usize + 1]).unwrap();
    let e = error_of(&format!(
        "[upstream]\nca_file = \"{}\"\n{MINIMAL}",
        dir.join("ca.pem").display()
    ));
    assert!(
        e.contains("`upstream.ca_file`") && e.contains("larger than 1 MiB"),
        "{e}"
    );
}

/// The login profile `default` with `settings` (TOML lines of the profile), for other modules'
/// unit tests.
pub(crate) fn login_profile(settings: &str) -> ProfileConfig {
    let c = Config::from_toml(
        &format!("[profiles.default]\nemail = \"a@b.c\"\npassword = \"x\"\n{settings}"),
        no_env(),
        None,
    )
    .unwrap();
    (*c.profiles[0]).clone()
}

/// A directory of one test's own, removed with everything in it when dropped; it reads as its
/// path.
pub(crate) struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

pub(crate) fn tempdir() -> TempDir {
    TempDir(
        tempfile::Builder::new()
            .prefix("cma-auth-proxy-test-")
            .tempdir()
            .unwrap(),
    )
}

#[test]
fn a_token_store_set_from_the_environment_reads_its_kind_first() {
    let c = Config::from_toml(
        MINIMAL,
        env(&[
            ("CMA_AUTH_PROXY_TOKEN_STORE__URL", "redis://127.0.0.1"),
            ("CMA_AUTH_PROXY_TOKEN_STORE__ALLOW_PLAINTEXT", "true"),
            ("CMA_AUTH_PROXY_TOKEN_STORE__KIND", "redis"),
            ("CMA_AUTH_PROXY_TOKEN_STORE__TIMEOUT", "1s"),
        ]),
        None,
    )
    .unwrap();
    let TokenStoreConfig::Redis(r) = &c.token_store else {
        panic!("{:?}", c.token_store)
    };
    assert!(r.encryption_key.is_none());
    assert_eq!(r.timeout, Duration::from_secs(1));
    let e = error_of(&format!(
        "[token_store]\nkind = \"memory\"\nurl = \"redis://x\"\n{MINIMAL}"
    ));
    assert!(
        e.starts_with("`token_store.url` (line 3, column 7): applies only to kind = \"redis\""),
        "{e}"
    );
}

#[test]
fn session_endpoint_is_emulated_unless_denied() {
    use crate::policy::SessionEndpoint;
    let c = Config::from_toml(MINIMAL, no_env(), None).unwrap();
    assert_eq!(c.policy.session_endpoint, SessionEndpoint::Emulate);
    let c = Config::from_toml(
        &format!("[policy]\nsession_endpoint = \"deny\"\n{MINIMAL}"),
        no_env(),
        None,
    )
    .unwrap();
    assert_eq!(c.policy.session_endpoint, SessionEndpoint::Deny);
    let e = error_of(&format!(
        "[policy]\nsession_endpoint = \"forward\"\n{MINIMAL}"
    ));
    assert!(e.contains("`policy.session_endpoint`"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

/// What a first-time operator gets wrong, each answered with the key as written, what to write
/// instead, and the path the proxy actually looked at.
#[test]
fn errors_name_what_to_fix() {
    let e = error_of(&format!("[server]\nshutdown_grace = 30\n{MINIMAL}"));
    assert_eq!(
        e,
        "`server.shutdown_grace` (line 2, column 18): expected a duration such as \"30s\", \"5m\" or \"1h\", found an integer; write \"30s\" for 30 seconds"
    );
    for size in ["\"\"", "\"lots\"", "1.5", "\"-1\""] {
        let e = error_of(&format!("[server]\nmax_body = {size}\n{MINIMAL}"));
        assert!(
            e.starts_with("`server.max_body` (line 2, column 12): expected a size such as \"64KiB\" or \"1MiB\" (or a whole number of bytes), found a"),
            "{size}: {e}"
        );
        assert!(!e.contains("parse") && !e.contains("float from"), "{e}");
    }

    // Relative paths are relative to the configuration file, and shown resolved.
    let dir = tempdir();
    let path = dir.join("config.toml");
    let profile = "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n";
    std::fs::write(&path, profile).unwrap();
    let secret = dir.join("password");
    let e = Config::load(&path, no_env()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "`profiles.default.password_file` (line 3, column 17 of {}): cannot read secret file {}: ",
            path.display(),
            secret.display()
        )) && e.ends_with(&format!(
            "create it holding the secret alone, readable by the proxy's user only: `install -m 600 /dev/null {0}`, then write the secret into {0}",
            secret.display()
        )),
        "{e}"
    );
    // A relative --config too: the file's own path is shown absolute.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&path, &cwd);
    let e = Config::load(&relative, no_env()).unwrap_err().to_string();
    assert!(e.contains(&format!("of {}", path.display())), "{e}");

    // An empty secret file is reported under the key that names it.
    std::fs::write(&secret, "\n").unwrap();
    let e = Config::load(&path, no_env()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "`profiles.default.password_file` (line 3, column 17 of {}): {} is empty; write the password into it",
            path.display(),
            secret.display()
        )
    );
    let e = error_of("[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"\"\n");
    assert_eq!(
        e,
        "`profiles.default.password_file` (line 3, column 17): is empty; name the file that holds the password"
    );
}

/// `path` relative to `base` through `..` segments (both absolute).
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let mut ups = PathBuf::new();
    let mut base = base.to_path_buf();
    loop {
        if let Ok(rest) = path.strip_prefix(&base) {
            return ups.join(rest);
        }
        ups.push("..");
        assert!(base.pop(), "no common prefix");
    }
}

/// The OAuth profile `default` with `settings` (TOML lines of its `oauth` table), its refresh
/// token file and state directory in a fresh directory, for other modules' unit tests.
pub(crate) fn oauth_profile(settings: &str) -> ProfileConfig {
    let dir = tempdir();
    std::fs::write(dir.join("refresh-token"), "rt-bootstrap\n").unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    let c = Config::from_toml(
        &format!("[profiles.default.oauth]\n{OAUTH}{settings}"),
        no_env(),
        Some(&dir),
    )
    .unwrap();
    // Read during validation; the tests that use the profile never touch the files.
    (*c.profiles[0]).clone()
}

const OAUTH: &str = r#"app_id = "app0"
client_id = "client0"
redirect_uri = "http://127.0.0.1:8184/callback"
refresh_token_file = "refresh-token"
state_dir = "state"
"#;

#[test]
fn an_oauth_profile_derives_its_endpoints_from_the_region() {
    let p = oauth_profile("");
    let oauth = p.oauth().unwrap();
    assert_eq!(
        oauth.token_url,
        "https://developerhub-api.contentstack.com/token"
    );
    assert_eq!(
        oauth.authorize_url,
        "https://app.contentstack.com/#!/apps/app0/authorize"
    );
    assert_eq!(
        oauth.bootstrap.as_ref().unwrap().token.expose_secret(),
        "rt-bootstrap"
    );
    assert!(oauth.client_secret.is_none());
    assert!(p.has_session() && p.login().is_none());
    // The refresh token never shows.
    let debug = format!("{p:?}");
    assert!(!debug.contains("rt-bootstrap"), "{debug}");

    let dir = tempdir();
    std::fs::write(dir.join("refresh-token"), "rt").unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    let c = Config::from_toml(
        &format!("[upstream]\nregion = \"azure-eu\"\n[profiles.default.oauth]\n{OAUTH}"),
        no_env(),
        Some(&dir),
    )
    .unwrap();
    let oauth = c.profiles[0].oauth().unwrap();
    assert_eq!(
        oauth.token_url,
        "https://azure-eu-developerhub-api.contentstack.com/token"
    );
    // A custom upstream (a simulator) serves the OAuth endpoints itself, unless they are written.
    let c = Config::from_toml(
        &format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[profiles.default.oauth]\n{OAUTH}token_url = \"http://127.0.0.1:10/token\"\n"
        ),
        no_env(),
        Some(&dir),
    )
    .unwrap();
    let oauth = c.profiles[0].oauth().unwrap();
    assert_eq!(oauth.token_url, "http://127.0.0.1:10/token");
    assert_eq!(
        oauth.authorize_url,
        "http://127.0.0.1:9/#!/apps/app0/authorize"
    );
}

#[test]
fn oauth_keys_are_validated_by_name() {
    let dir = tempdir();
    std::fs::write(dir.join("refresh-token"), "rt-secret-value").unwrap();
    std::fs::write(dir.join("empty"), "\n").unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    let error = |toml: &str| {
        Config::from_toml(toml, no_env(), Some(&dir))
            .unwrap_err()
            .to_string()
    };
    let without = |key: &str| {
        OAUTH
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let table = "[profiles.default.oauth]\n";
    for key in ["app_id", "client_id", "redirect_uri"] {
        let e = error(&format!("{table}{}", without(key)));
        assert!(
            e.contains(&format!("`profiles.default.oauth.{key}`")) && e.contains("required"),
            "{e}"
        );
    }
    let e = error(&format!("{table}{}", without("state_dir")));
    assert!(
        e.contains("`profiles.default.oauth.state_dir`") && e.contains("required"),
        "{e}"
    );
    let e = error(&format!(
        "{table}{}state_dir = \"refresh-token\"\n",
        without("state_dir")
    ));
    assert!(e.contains("is not a directory"), "{e}");
    let e = error(&format!(
        "[token_store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\nallow_plaintext = true\n{table}{OAUTH}"
    ));
    assert!(
        e.contains("`profiles.default.oauth.state_dir`") && e.contains("fleet store"),
        "{e}"
    );
    let e = error(&format!(
        "{table}{}redirect_uri = \"ftp://x\"\n",
        without("redirect_uri")
    ));
    assert!(e.contains("`profiles.default.oauth.redirect_uri`"), "{e}");
    let e = error(&format!("{table}{OAUTH}token_url = \"not a url\"\n"));
    assert!(e.contains("`profiles.default.oauth.token_url`"), "{e}");
    let e = error(&format!("{table}{}app_id = \"a/b\"\n", without("app_id")));
    assert!(e.contains("`profiles.default.oauth.app_id`"), "{e}");
    let e = error(&format!(
        "{table}{}refresh_token_file = \"empty\"\n",
        without("refresh_token_file")
    ));
    assert!(
        e.contains("`profiles.default.oauth.refresh_token_file`") && e.contains("empty"),
        "{e}"
    );
    let e = error(&format!("{table}{OAUTH}bogus = 1\n"));
    assert!(e.contains("bogus") || e.contains("unknown key"), "{e}");
    // One way to obtain tokens per profile.
    let e = error(&format!(
        "[profiles.default]\nemail = \"a@b.c\"\npassword = \"pw\"\n{table}{OAUTH}"
    ));
    assert!(e.contains("an OAuth profile takes no"), "{e}");
    let e = error(&format!(
        "[profiles.default]\nmax_token_age = \"1h\"\n{table}{OAUTH}"
    ));
    assert!(e.contains("`profiles.default.max_token_age`"), "{e}");
    for e in [
        error(&format!("{table}{OAUTH}token_url = \"nope\"\n")),
        error(&format!("{table}{OAUTH}bogus = 1\n")),
    ] {
        assert!(!e.contains("rt-secret-value"), "{e}");
    }
    // Without a refresh token file the profile is valid: `oauth login` keeps one in state_dir.
    Config::from_toml(
        &format!("{table}{}", without("refresh_token_file")),
        no_env(),
        Some(&dir),
    )
    .unwrap();
}

#[test]
fn a_memory_token_store_may_take_a_key_to_seal_oauth_state() {
    let dir = tempdir();
    std::fs::write(dir.join("key"), "cd".repeat(32)).unwrap();
    std::fs::write(dir.join("refresh-token"), "rt").unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    let c = Config::from_toml(
        &format!("[token_store]\nencryption_key_file = \"key\"\n[profiles.default.oauth]\n{OAUTH}"),
        no_env(),
        Some(&dir),
    )
    .unwrap();
    assert!(matches!(
        c.token_store,
        TokenStoreConfig::Memory {
            encryption_key: Some(_)
        }
    ));
    assert!(c.profiles[0].oauth().unwrap().state_key.is_some());
    // The other keys of the store are still redis's own.
    let e = Config::from_toml(
        &format!("[token_store]\nencryption_key_file = \"key\"\ntimeout = \"1s\"\n{MINIMAL}"),
        no_env(),
        Some(&dir),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("applies only to kind = \"redis\""), "{e}");
}
