//! The session a credential rotation replaces is logged out as soon as no request uses it (at most
//! 30 s later), and a shutdown in between logs it out too: none of the account's 20 sessions leaks.
mod common;

use common::*;

const NEW_PASSWORD: &str = "rotated password 3";

fn config_text(fake_url: &str, password_file: &std::path::Path, server: &str) -> String {
    config_toml(
        fake_url,
        server,
        &profile_from_file(password_file.display(), "validate_interval = \"0s\""),
    )
}

/// A mounted Secret holding the password, and a config file that reads it (with `server` added to
/// `[server]`) in a directory of its own: the Secret, the config's directory and the config file.
fn secret_and_config(fake_url: &str, server: &str) -> (SecretVolume, TempDir, std::path::PathBuf) {
    let secret = SecretVolume::new(&[("password", PASSWORD)]);
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(fake_url, &secret.path("password"), server),
    )
    .unwrap();
    (secret, dir, config)
}

/// Changes the password in the simulator and in the mounted Secret, and waits for the login with it.
async fn rotate(fake: &cma_sim::FakeCma, secret: &mut SecretVolume) {
    fake.set_password(EMAIL, NEW_PASSWORD);
    secret.update(&[("password", NEW_PASSWORD)]);
    eventually(15, "the login with the new password", || async {
        fake.logins() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_request_in_flight_the_old_session_is_logged_out_at_once() {
    let fake = fake().await;
    let (mut secret, _dir, config) = secret_and_config(&fake.url(), "");
    let proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let old = fake.issued_tokens()[0].clone();

    rotate(&fake, &mut secret).await;
    eventually(2, "the old session logged out", || async {
        fake.logouts().contains(&old)
    })
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_keeps_the_old_session_until_it_finishes() {
    let fake = fake().await;
    let (mut secret, _dir, config) = secret_and_config(&fake.url(), "");
    let proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let old = fake.issued_tokens()[0].clone();

    let slow = tokio::spawn(proxy.get("/v3/_sim/slow?ms=5000").send());
    eventually(10, "the slow request reached the CMA", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/slow")
    })
    .await;
    rotate(&fake, &mut secret).await;
    assert!(
        !slow.is_finished(),
        "the slow request outlasts the rotation"
    );
    assert!(
        !fake.logouts().contains(&old),
        "logged out under a request in flight"
    );
    let response = slow.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        200,
        "the request finished with its session"
    );
    eventually(2, "the old session logged out", || async {
        fake.logouts().contains(&old)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_a_rotation_logs_the_old_session_out_too() {
    let fake = fake().await;
    let (mut secret, _dir, config) = secret_and_config(&fake.url(), "shutdown_grace = \"20s\"");
    let mut binary = Binary::start(&config, &[]);
    let client = reqwest::Client::new();
    let url = binary.url.clone();
    eventually(30, "the proxy serves", || async {
        client
            .get(format!("{url}/v3/user"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let old = fake.issued_tokens()[0].clone();
    // A request keeps the old session in use through the rotation and into the shutdown.
    let slow = tokio::spawn(client.get(format!("{url}/v3/_sim/slow?ms=2000")).send());
    eventually(10, "the slow request reached the CMA", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/slow")
    })
    .await;
    rotate(&fake, &mut secret).await;
    binary.signal("TERM");
    let code = tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let new = fake.issued_tokens()[1].clone();
    let logouts = fake.logouts();
    assert!(logouts.contains(&old), "the retiring session leaked");
    assert!(logouts.contains(&new), "the current session leaked");
    assert!(fake.live_sessions(EMAIL).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_logs_out_a_retiring_session_that_is_still_in_use() {
    let fake = fake().await;
    let (mut secret, _dir, config) = secret_and_config(&fake.url(), "");
    let mut proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let old = fake.issued_tokens()[0].clone();
    // A use that outlives the drain, as a request cut when shutdown_grace runs out may.
    let in_use = proxy
        .running
        .as_ref()
        .unwrap()
        .proxy()
        .tokens()
        .cached("default")
        .unwrap();

    rotate(&fake, &mut secret).await;
    assert!(!fake.logouts().contains(&old), "still in use");
    proxy.shutdown().await;
    // Shutdown does not leave it to the 30 s wait: the session is logged out before it returns.
    assert!(fake.logouts().contains(&old), "the retiring session leaked");
    drop(in_use);
}
