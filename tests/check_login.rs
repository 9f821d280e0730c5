//! `check --login`: logs in once per profile, validates with GET /v3/user, logs out; non-zero exit
//! on any failure.
mod common;

use common::*;

fn run_check(config: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(proxy_binary())
        .args(["check", "--login", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A configuration and its secrets in a directory of their own: the directory and the file.
fn config(fake_url: &str, password: &str) -> (TempDir, std::path::PathBuf) {
    let dir = tempdir();
    std::fs::write(dir.join("password"), password).unwrap();
    std::fs::write(dir.join("mt"), "cs-management-token").unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nurl = \"{fake_url}\"\n[profiles.default]\nemail = \"{EMAIL}\"\npassword_file = \"password\"\n\
             [profiles.mt]\nmanagement_token_file = \"mt\"\n"
        ),
    )
    .unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_login_logs_in_validates_and_logs_out() {
    let fake = fake().await;
    let (_dir, path) = config(&fake.url(), PASSWORD);
    let (code, out) = tokio::task::spawn_blocking(move || run_check(&path))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("profile default: ok"), "{out}");
    assert!(
        out.contains("profile mt: ok: management token: not checked"),
        "{out}"
    );
    assert_eq!(fake.logins(), 1);
    assert!(fake.requests().iter().any(|r| r.path == "/v3/user"));
    assert_eq!(fake.logouts(), fake.issued_tokens());
    assert!(
        fake.live_sessions(EMAIL).is_empty(),
        "no session left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_login_fails_with_a_clear_message_on_refused_credentials() {
    let fake = fake().await;
    let (_dir, path) = config(&fake.url(), "wrong");
    let (code, out) = tokio::task::spawn_blocking(move || run_check(&path))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("profile default: FAILED: login rejected by Contentstack: email or password invalid (error_code 104)"), "{out}");
    assert!(
        !out.contains("wrong\n") && !out.contains("\"wrong\""),
        "{out}"
    );
    assert_eq!(fake.login_attempts().len(), 1);
}
