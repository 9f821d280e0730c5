//! Live reload and credential rotation (docs/design.md#reload-and-rotation), with Secrets laid out
//! as Kubernetes mounts them.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;

const NEW_PASSWORD: &str = "rotated password 2";

fn config_text(fake_url: &str, password_file: &std::path::Path, extra: &str) -> String {
    config_toml(
        fake_url,
        "",
        &profile_from_file(
            password_file.display(),
            &format!("validate_interval = \"0s\"\n{extra}"),
        ),
    )
}

/// A directory holding the password file and a config file that reads it: the directory, the
/// config file and its text.
fn config_dir(fake_url: &str) -> (TempDir, std::path::PathBuf, String) {
    let dir = tempdir();
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    let config = dir.join("config.toml");
    let text = config_text(fake_url, &dir.join("password"), "");
    std::fs::write(&config, &text).unwrap();
    (dir, config, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn symlink_swap_rotation_under_load_logs_in_anew_and_logs_the_old_session_out() {
    let fake = Arc::new(fake().await);
    let mut secret = SecretVolume::new(&[("password", PASSWORD)]);
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(&fake.url(), &secret.path("password"), ""),
    )
    .unwrap();
    let proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let old_token = fake.issued_tokens()[0].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let (client, url, stop, done) = (
                proxy.client.clone(),
                proxy.url.clone(),
                stop.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = if i % 2 == 0 {
                        client.get(format!("{url}/v3/user"))
                    } else {
                        client
                            .post(format!("{url}/v3/_sim/upload"))
                            .body(vec![1u8; 4096])
                    };
                    let status = request.send().await.unwrap().status();
                    if status != 200 {
                        failures.push(status);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    eventually(10, "clients are busy", || async {
        done.load(Ordering::Relaxed) > 200
    })
    .await;

    // The password is changed in Contentstack, then the Secret is updated.
    fake.set_password(EMAIL, NEW_PASSWORD);
    secret.update(&[("password", NEW_PASSWORD)]);
    eventually(15, "the old session is logged out", || async {
        fake.logouts().contains(&old_token)
    })
    .await;
    let after = done.load(Ordering::Relaxed);
    eventually(10, "clients keep going after the rotation", || async {
        done.load(Ordering::Relaxed) > after + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert_eq!(fake.logins(), 2, "{:?}", fake.login_attempts());
    let status = proxy.status_json().await;
    assert_eq!(status["config"]["version"], 2);
    let m = metrics(&proxy.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_reauth_total{profile="default",trigger="rotate"}"#],
        1.0
    );
    assert_eq!(
        m[r#"cma_auth_proxy_config_reloads_total{outcome="success"}"#],
        1.0
    );
}

#[tokio::test]
async fn rotation_clears_the_rejected_backoff() {
    let fake = fake().await;
    let mut secret = SecretVolume::new(&[("password", "stale password")]);
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(
            &fake.url(),
            &secret.path("password"),
            "rejected_retry = \"1h\"",
        ),
    )
    .unwrap();
    let proxy = proxy_from_file(&config).await;
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_eq!(
        response.headers()["x-cma-auth-proxy-error"],
        "login_rejected"
    );
    assert_eq!(fake.login_attempts().len(), 1);

    secret.update(&[("password", PASSWORD)]);
    eventually(
        15,
        "a login with the new password, long before rejected_retry",
        || async { fake.logins() == 1 },
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(fake.login_attempts().len(), 2);
}

#[tokio::test]
async fn a_broken_config_is_counted_and_the_old_one_keeps_serving() {
    let fake = fake().await;
    let (_dir, config, good) = config_dir(&fake.url());
    let proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);

    std::fs::write(&config, format!("{good}\nunknown_key = 1\n")).unwrap();
    eventually(15, "the failed reload is counted", || async {
        metrics(&proxy.admin)
            .await
            .get(r#"cma_auth_proxy_config_reloads_total{outcome="error"}"#)
            .is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(proxy.status_json().await["config"]["version"], 1);

    std::fs::write(
        &config,
        good.replace("validate_interval = \"0s\"", "validate_interval = \"1h\""),
    )
    .unwrap();
    eventually(15, "the fixed config is loaded", || async {
        proxy.status_json().await["config"]["version"] == 2
    })
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(
        fake.logins(),
        1,
        "a reload without credential changes keeps the session"
    );
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let fake = fake().await;
    let (_dir, config, _) = config_dir(&fake.url());
    let mut binary = Binary::start(&config, &[]);
    binary.wait_for_line("live reload on");
    binary.signal("HUP");
    binary.wait_for_line("configuration reloaded: unchanged");
    let m = metrics(&binary.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_config_reloads_total{outcome="success"}"#],
        1.0
    );
}

/// A config line that breaks the TOML syntax while holding a secret: the reload fails, and neither
/// the line nor the secret reaches the log (the parser's own messages quote the source line).
#[tokio::test]
async fn a_failed_reload_logs_where_the_error_is_but_never_the_secret() {
    const SECRET: &str = "unterminated-s3cret-in-config";
    let fake = fake().await;
    let (_dir, config, good) = config_dir(&fake.url());
    let mut binary = Binary::start(&config, &[]);
    binary.wait_for_line("live reload on");

    for broken in [
        format!("password = \"{SECRET}\n"),
        format!("password = {SECRET}\n"),
        format!("password = [\"{SECRET}\", 12]\n"),
        format!("management_token = 1{SECRET}\n"),
    ] {
        let broken_config = good.replace("password_file = ", &format!("{broken}password_file = "));
        std::fs::write(&config, broken_config).unwrap();
        let line = binary.wait_for_line("configuration reload failed");
        // The broken line is the ninth: `[server]` with two keys and a blank line, `[upstream]`
        // with one, `[profiles.default]` and its `email`.
        assert!(line.contains("line 9"), "{line}");
    }
    std::fs::write(&config, &good).unwrap();
    binary.wait_for_line("configuration reloaded");
    let log = binary.log_text();
    assert!(!log.contains("s3cret"), "{log}");
}

/// A stream of requests on a `RUST_LOG=trace` log kept in the config's own directory keeps the
/// watcher busy with events that concern no configured file. A credential rotation must still
/// apply at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_applies_within_two_seconds_while_clients_keep_a_trace_log_next_to_the_config_busy()
 {
    let fake = fake().await;
    let mut secret = SecretVolume::new(&[("password", PASSWORD)]);
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(&fake.url(), &secret.path("password"), ""),
    )
    .unwrap();
    let mut binary = Binary::start_logging_to(
        &config,
        &[("RUST_LOG", "trace")],
        &dir.join("cma-auth-proxy.log"),
    );
    binary.wait_for_line("live reload on");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (url, stop, done) = (binary.url.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.get(format!("{url}/v3/user")).send().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    eventually(10, "clients are busy", || async {
        done.load(Ordering::Relaxed) > 200
    })
    .await;
    assert_eq!(fake.logins(), 1);

    fake.set_password(EMAIL, NEW_PASSWORD);
    secret.update(&[("password", NEW_PASSWORD)]);
    eventually(2, "a login with the new password", || async {
        fake.logins() == 2
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
}

/// Waits until the file has not grown for a whole second; panics after `secs`.
async fn until_quiet(path: &std::path::Path, secs: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut size = std::fs::metadata(path).unwrap().len();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = std::fs::metadata(path).unwrap().len();
        if now != size {
            size = now;
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() >= std::time::Duration::from_secs(1) {
            return size;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} kept growing for {secs} s (now {size} bytes)",
            path.display()
        );
    }
}

/// The log file in the watched directory at trace level: neither the proxy's own lines nor the
/// file-watch library's lines about them may start a reload, or a line about a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_at_trace_level_with_its_log_next_to_the_config_neither_reloads_nor_writes() {
    let fake = fake().await;
    let (dir, config, _) = config_dir(&fake.url());
    let log = dir.join("cma-auth-proxy.log");
    let mut binary = Binary::start_logging_to(&config, &[("RUST_LOG", "trace")], &log);
    binary.wait_for_line("live reload on");
    eventually(10, "the first login", || async { fake.logins() == 1 }).await;

    let settled = until_quiet(&log, 15).await;
    // The observation window the issue names: an idle proxy does nothing for 10 s.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let size = std::fs::metadata(&log).unwrap().len();
    let text = binary.log_text();
    assert_eq!(
        size,
        settled,
        "the idle proxy kept writing: {}",
        &text[settled as usize..]
    );
    assert!(!text.contains("reloading"), "{text}");
    let m = metrics(&binary.admin).await;
    let reloads: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("cma_auth_proxy_config_reloads_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(reloads, 0.0, "{m:?}");
}

/// An editor saves by writing a new file and renaming it over the old one; the watcher follows the
/// path, not the file it first saw.
#[tokio::test]
async fn a_config_replaced_by_rename_is_reloaded() {
    let fake = fake().await;
    let (dir, config, good) = config_dir(&fake.url());
    let proxy = proxy_from_file(&config).await;
    for version in [2, 3] {
        let saved = dir.join(format!(".config.toml.{version}.swp"));
        std::fs::write(&saved, format!("{good}max_token_age = \"{version}h\"\n")).unwrap();
        std::fs::rename(&saved, &config).unwrap();
        eventually(15, "the renamed file is loaded", || async {
            proxy.status_json().await["config"]["version"] == version
        })
        .await;
    }
}

/// Secret files open to other users are named in the log at start and after every reload, until
/// they are fixed.
#[tokio::test]
async fn file_mode_warnings_are_logged_at_start_and_after_every_reload() {
    use std::os::unix::fs::PermissionsExt;
    let fake = fake().await;
    let dir = tempdir();
    let password = dir.join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(&fake.url(), &password, "")).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut binary = Binary::start(&config, &[]);
    let warning = format!(
        "{} (mode 0644) is readable by every user",
        password.display()
    );
    let warnings = |binary: &Binary| {
        binary
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN") && l.contains(&warning))
            .count()
    };
    binary.wait_for_line("live reload on");
    assert_eq!(warnings(&binary), 1, "{}", binary.log_text());

    binary.signal("HUP");
    binary.wait_for_line("configuration reloaded");
    assert_eq!(warnings(&binary), 2, "{}", binary.log_text());

    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    binary.signal("HUP");
    binary.wait_for_line("configuration reloaded");
    assert_eq!(warnings(&binary), 2, "{}", binary.log_text());
}

/// Rotates the password three times with `rotate` (which puts the new password where the config
/// reads it) and checks that each rotation is reloaded: the watcher keeps following the files
/// through directories that are replaced.
async fn three_rotations(proxy: &Proxy, fake: &cma_sim::FakeCma, mut rotate: impl FnMut(&str)) {
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    for rotation in 1..=3 {
        let password = format!("rotated password {rotation}");
        fake.set_password(EMAIL, &password);
        rotate(&password);
        eventually(10, &format!("rotation {rotation} is reloaded"), || async {
            proxy.status_json().await["config"]["version"] == 1 + rotation
        })
        .await;
        eventually(10, &format!("rotation {rotation} logs in"), || async {
            fake.logins() == 1 + rotation as usize
        })
        .await;
    }
}

/// Makes `link` point at `target`, atomically, as the kubelet and release tools do.
fn repoint(link: &std::path::Path, target: &str) {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push("_tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// A Secret mounted with `items: [{key: password, path: cma/password}]`: the file sits in a
/// subdirectory, `sec/cma -> ..data/cma`, and every update replaces (and deletes) the directory the
/// file was in.
#[tokio::test]
async fn a_secret_in_a_subdirectory_is_followed_through_every_rotation() {
    let fake = fake().await;
    let sec = tempdir();
    let write_version = |n: u32, password: &str| {
        let dir = sec.join(format!("..2026_11_27_{n}")).join("cma");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("password"), password).unwrap();
    };
    write_version(0, PASSWORD);
    std::os::unix::fs::symlink("..2026_11_27_0", sec.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cma", sec.join("cma")).unwrap();
    let config_dir = tempdir();
    let config = config_dir.join("config.toml");
    let text = config_text(&fake.url(), &sec.join("cma/password"), "");
    std::fs::write(&config, text).unwrap();
    let proxy = proxy_from_file(&config).await;
    let mut version = 0;
    three_rotations(&proxy, &fake, |password| {
        version += 1;
        write_version(version, password);
        repoint(&sec.join("..data"), &format!("..2026_11_27_{version}"));
        std::fs::remove_dir_all(sec.join(format!("..2026_11_27_{}", version - 1))).unwrap();
    })
    .await;
}

/// A configuration reached through a symlinked release directory (`app/current -> releases/vN`),
/// with the password file beside it: a release swaps the link.
#[tokio::test]
async fn a_config_in_a_symlinked_release_directory_is_followed_through_every_release() {
    let fake = fake().await;
    let app = tempdir();
    let release = |n: u32, password: &str| {
        let dir = app.join("releases").join(format!("v{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("password"), password).unwrap();
        let text = config_text(&fake.url(), std::path::Path::new("password"), "");
        std::fs::write(dir.join("config.toml"), text).unwrap();
    };
    release(0, PASSWORD);
    std::os::unix::fs::symlink("releases/v0", app.join("current")).unwrap();
    let proxy = proxy_from_file(&app.join("current/config.toml")).await;
    let mut version = 0;
    three_rotations(&proxy, &fake, |password| {
        version += 1;
        release(version, password);
        repoint(&app.join("current"), &format!("releases/v{version}"));
        std::fs::remove_dir_all(app.join("releases").join(format!("v{}", version - 1))).unwrap();
    })
    .await;
}

/// A password file that is a symlink into another directory, where the file is replaced.
#[tokio::test]
async fn a_secret_symlinked_from_another_directory_is_followed_through_every_rotation() {
    let fake = fake().await;
    let (conf, vault) = (tempdir(), tempdir());
    std::fs::write(vault.join("password"), PASSWORD).unwrap();
    std::os::unix::fs::symlink(vault.join("password"), conf.join("password")).unwrap();
    let config = conf.join("config.toml");
    std::fs::write(
        &config,
        config_text(&fake.url(), &conf.join("password"), ""),
    )
    .unwrap();
    let proxy = proxy_from_file(&config).await;
    three_rotations(&proxy, &fake, |password| {
        std::fs::write(vault.join("password.new"), password).unwrap();
        std::fs::rename(vault.join("password.new"), vault.join("password")).unwrap();
    })
    .await;
}
