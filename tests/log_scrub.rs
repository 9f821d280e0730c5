//! Secrets never reach the logs (docs/design.md#observability): the real binary at trace level,
//! JSON and text, through a login, a refused login, a TOTP login, a re-login after eviction, a
//! credential rotation and a shutdown with logout. Every password, the TOTP secret, every TOTP code
//! sent and every token issued are then searched for in everything the process wrote.
mod common;

use cma_sim::{Account, FakeCma};
use common::*;

const TOTP_SECRET: &str = "KRUGS4ZANFZSAYJAORSXG5BAONSWG4TFOQ";
const TWOFA_EMAIL: &str = "twofa@example.com";
const TWOFA_PASSWORD: &str = "second-account-pw-91";
const WRONG_PASSWORD: &str = "definitely-wrong-pw-77";
const ROTATED_PASSWORD: &str = "rotated-pw-after-reload-55";

async fn scenario(format: &str) {
    let fake = FakeCma::builder()
        .account(account())
        .account(Account::new(TWOFA_EMAIL, TWOFA_PASSWORD).with_totp(TOTP_SECRET))
        .account(Account::new("bad@example.com", "the real one"))
        .without_rate_limit()
        .start()
        .await
        .unwrap();
    let dir = tempdir();
    let mut secret = SecretVolume::new(&[("password", PASSWORD)]);
    std::fs::write(dir.join("twofa-password"), TWOFA_PASSWORD).unwrap();
    std::fs::write(dir.join("totp"), format!("{TOTP_SECRET}\n")).unwrap();
    std::fs::write(dir.join("bad-password"), WRONG_PASSWORD).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "{url}"
[profiles.default]
email = "{EMAIL}"
password_file = "{password}"
[profiles.twofa]
email = "{TWOFA_EMAIL}"
password_file = "twofa-password"
totp_secret_file = "totp"
[profiles.bad]
email = "bad@example.com"
password_file = "bad-password"
[log]
format = "{format}"
level = "trace"
"#,
            url = fake.url(),
            password = secret.path("password").display(),
        ),
    )
    .unwrap();
    let mut binary = Binary::start(&config, &[("RUST_LOG", "trace")]);
    let client = reqwest::Client::new();
    let url = binary.url.clone();
    let get = |profile: &str| {
        client
            .get(format!("{url}/v3/user"))
            .header("x-cma-profile", profile)
            .send()
    };
    eventually(30, "the default profile serves", || async {
        get("default").await.unwrap().status() == 200
    })
    .await;
    eventually(30, "the two-factor profile serves", || async {
        get("twofa").await.unwrap().status() == 200
    })
    .await;
    assert_eq!(get("bad").await.unwrap().status(), 503);

    fake.evict_sessions(EMAIL);
    assert_eq!(get("default").await.unwrap().status(), 200);

    fake.set_password(EMAIL, ROTATED_PASSWORD);
    secret.update(&[("password", ROTATED_PASSWORD)]);
    binary.wait_for_line("configuration reloaded");
    eventually(30, "the rotated credentials log in", || async {
        fake.login_attempts()
            .iter()
            .filter(|a| a.email == EMAIL && a.status == 200)
            .count()
            == 3
    })
    .await;
    assert_eq!(get("default").await.unwrap().status(), 200);

    binary.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = binary.child.wait().unwrap().code();
        (code, binary.log_text())
    })
    .await
    .unwrap();
    let (code, log) = code;
    assert_eq!(code, Some(0));
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    assert!(log.contains("logged out"), "the scenario ran to the logout");

    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        ROTATED_PASSWORD.into(),
        TWOFA_PASSWORD.into(),
        WRONG_PASSWORD.into(),
        TOTP_SECRET.into(),
    ];
    secrets.extend(fake.issued_tokens());
    assert!(fake.issued_tokens().len() >= 4);
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{format} log leaked a secret ({} chars)",
            secret.len()
        );
    }
    let codes: Vec<String> = fake
        .login_attempts()
        .into_iter()
        .filter_map(|a| a.tfa_token)
        .collect();
    assert!(!codes.is_empty());
    for code in codes {
        for (at, _) in log.match_indices(&code) {
            let before = log[..at].chars().next_back();
            let after = log[at + code.len()..].chars().next();
            // Fractions of seconds in timestamps are digits too; a code stands alone.
            let in_number = before.is_some_and(|c| c.is_ascii_digit() || c == '.')
                || after.is_some_and(|c| c.is_ascii_digit());
            assert!(
                in_number,
                "{format} log leaked a TOTP code: …{}…",
                &log[at.saturating_sub(40)..(at + 46).min(log.len())]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_trace_logs_hold_no_secret() {
    scenario("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_trace_logs_hold_no_secret() {
    scenario("text").await;
}
