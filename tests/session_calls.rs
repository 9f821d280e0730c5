//! The session calls (login, validation, logout) against upstreams that misbehave: a redirect is
//! never followed, an answer is read only up to a bound, text the upstream sends never reaches a
//! client, `/status` or the log, and a failed login names its cause.
mod common;

use cma_sim::FakeCma;
use cma_sim::endless::EndlessUpstream;
use common::*;
use http::StatusCode;

/// A second simulator with the same account: anything sent there would have been accepted.
async fn elsewhere() -> FakeCma {
    fake().await
}

fn login_error_text(body: &serde_json::Value) -> String {
    body["error_message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_login_answered_with_a_redirect_sends_the_password_nowhere_else() {
    let fake = fake().await;
    let other = elsewhere().await;
    fake.set_session_redirect(Some((StatusCode::TEMPORARY_REDIRECT, other.url())));
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "min_backoff = \"1m\"\nmax_backoff = \"5m\""),
    )
    .await;
    for _ in 0..10 {
        let response = proxy.get("/v3/user").send().await.unwrap();
        assert_proxy_answer(&response, 503, "login_unavailable");
        assert!(response.headers().contains_key("retry-after"));
        let message = login_error_text(&response.json().await.unwrap());
        assert!(
            message.contains("307") && message.contains(&other.addr().to_string()),
            "names the status and where it pointed: {message}"
        );
    }
    assert!(
        other.requests().is_empty(),
        "the redirect target received {:?}",
        other.requests()
    );
    // Not a tight loop: the redirect backs off like any transient failure.
    assert_eq!(fake.login_requests(), 1);
    let status = proxy.status_json().await;
    assert!(
        status["profiles"]["default"]["last_error"]
            .as_str()
            .unwrap()
            .contains("redirect"),
        "{status}"
    );
}

#[tokio::test]
async fn validation_and_logout_answered_with_a_redirect_send_the_token_nowhere_else() {
    let fake = fake().await;
    let other = elsewhere().await;
    let mut proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "validate_interval = \"100ms\""),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let before = fake.requests().len();
    fake.set_session_redirect(Some((StatusCode::PERMANENT_REDIRECT, other.url())));
    eventually(10, "two validations met the redirect", || async {
        fake.requests()[before..]
            .iter()
            .filter(|r| r.path == "/v3/user")
            .count()
            >= 2
    })
    .await;
    proxy.shutdown().await;
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == http::Method::DELETE && r.path == "/v3/user-session"),
        "the logout was attempted"
    );
    assert!(
        other.requests().is_empty(),
        "the redirect target received {:?}",
        other.requests()
    );
    // An inconclusive validation keeps the token: no second login.
    assert_eq!(fake.logins(), 1);
}

#[tokio::test]
async fn an_endless_login_answer_is_cut_at_its_cap_and_the_client_gets_an_answer() {
    // Without a cap the proxy would read (and hold) all 64 MiB.
    let upstream = EndlessUpstream::start(200, 64 << 20).await.unwrap();
    let toml = config_toml(
        &upstream.url(),
        "",
        &profile(PASSWORD, "min_backoff = \"1m\"\nmax_backoff = \"5m\""),
    );
    let running =
        cma_auth_proxy::start(cma_auth_proxy::Config::from_toml(&toml, Vec::new(), None).unwrap())
            .await
            .unwrap();
    let url = format!("http://{}/v3/user", running.proxy_addr().tcp().unwrap());
    let response = reqwest::get(&url).await.unwrap();
    assert_proxy_answer(&response, 503, "login_unavailable");
    let message = login_error_text(&response.json().await.unwrap());
    assert!(message.contains("larger than"), "{message}");
    eventually(10, "the endless answer was abandoned", || async {
        upstream.finished() >= 1
    })
    .await;
    // The cap (1 MiB) plus what the loopback socket buffers held when the proxy hung up.
    assert!(
        upstream.written() < 24 << 20,
        "{} bytes were read",
        upstream.written()
    );
    running.shutdown().await;
}

/// `run` with the given upstream and password file contents; text logs at debug.
fn binary(upstream: &str, extra: &str) -> Binary {
    let dir = tempdir();
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(
            upstream,
            "",
            &(profile_from_file("password", extra) + "[log]\nlevel = \"debug\"\n"),
        ),
    )
    .unwrap();
    Binary::start(&config, &[]).owning(dir)
}

async fn stop(mut binary: Binary) -> String {
    binary.signal("TERM");
    tokio::task::spawn_blocking(move || {
        binary.child.wait().unwrap();
        binary.log_text()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_reply_that_echoes_the_request_leaks_the_password_nowhere() {
    let fake = fake().await;
    fake.set_login_echo(Some((StatusCode::BAD_REQUEST, 141)));
    let binary = binary(&fake.url(), "");
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/v3/user", binary.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    let status = text(&format!("{}/status", binary.admin)).await;
    let metrics = text(&format!("{}/metrics", binary.admin)).await;
    let log = stop(binary).await;
    assert!(
        fake.login_attempts()
            .iter()
            .all(|a| a.error_code == Some(141)),
        "the upstream echoed every login"
    );
    // What is kept is safe and still says what happened.
    assert!(
        body.contains("HTTP 400") && body.contains("error_code 141"),
        "{body}"
    );
    for (place, text) in [
        ("the client's 503", &body),
        ("/status", &status),
        ("/metrics", &metrics),
        ("the log", &log),
    ] {
        assert!(!text.contains(PASSWORD), "the password reached {place}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_cannot_connect_names_the_cause_in_the_log_and_status() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut binary = binary(&upstream, "min_backoff = \"1m\"\nmax_backoff = \"5m\"");
    let line = binary.wait_for_logged("next login attempt");
    assert!(line.contains("Connection refused"), "{line}");
    let status: serde_json::Value = reqwest::get(format!("{}/status", binary.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last_error = status["profiles"]["default"]["last_error"]
        .as_str()
        .unwrap();
    assert!(last_error.contains("Connection refused"), "{last_error}");
    let log = stop(binary).await;
    assert!(!log.contains(PASSWORD));
}
