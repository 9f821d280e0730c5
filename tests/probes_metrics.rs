//! Admin endpoints (docs/design.md#observability): probes through a login failure and recovery,
//! `/status`, and every metric series after a scripted scenario.
mod common;

use common::*;
use http::StatusCode;

async fn probe(proxy: &Proxy, path: &str) -> u16 {
    reqwest::get(format!("{}{path}", proxy.admin))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn probes_follow_login_failure_and_recovery() {
    let fake = fake().await;
    fake.set_login_outage(Some(StatusCode::BAD_GATEWAY));
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "min_backoff = \"50ms\"\nmax_backoff = \"100ms\""),
    )
    .await;
    eventually(5, "the first login attempt has failed", || async {
        !fake.login_attempts().is_empty()
    })
    .await;
    assert_eq!(probe(&proxy, "/livez").await, 200);
    assert_eq!(probe(&proxy, "/startupz").await, 503);
    assert_eq!(probe(&proxy, "/readyz").await, 503);

    fake.set_login_outage(None);
    eventually(10, "readiness after recovery", || async {
        proxy.get("/v3/user").send().await.unwrap();
        probe(&proxy, "/readyz").await == 200
    })
    .await;
    assert_eq!(probe(&proxy, "/startupz").await, 200);

    // Refused credentials and no token: not ready (but still alive).
    fake.set_password(EMAIL, "rotated elsewhere");
    fake.evict_sessions(EMAIL);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 503);
    assert_eq!(probe(&proxy, "/readyz").await, 503);
    assert_eq!(probe(&proxy, "/livez").await, 200);
    let status = proxy.status_json().await;
    assert_eq!(
        status["profiles"]["default"]["last_login_outcome"],
        "rejected"
    );
    assert!(
        status["profiles"]["default"]["last_error"]
            .as_str()
            .unwrap()
            .contains("104")
    );
}

#[tokio::test]
async fn a_cached_token_in_transient_backoff_stays_ready() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "max_token_age = \"200ms\"\nmin_backoff = \"5s\"\nmax_backoff = \"5s\"\nvalidate_interval = \"0s\""),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    // The max-age refresh fails transiently; the old token is still good and still cached.
    fake.set_login_outage(Some(StatusCode::SERVICE_UNAVAILABLE));
    eventually(10, "the refresh has failed", || async {
        proxy.status_json().await["profiles"]["default"]["last_login_outcome"] == "transient"
    })
    .await;
    assert_eq!(probe(&proxy, "/readyz").await, 200);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let status = proxy.status_json().await;
    assert!(
        status["profiles"]["default"]["backoff_remaining_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(status["profiles"]["default"]["token_age_seconds"].is_u64());
}

#[tokio::test]
async fn status_shows_no_secret_and_no_token() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let text = text(&format!("{}/status", proxy.admin)).await;
    assert!(!text.contains(PASSWORD));
    for token in fake.issued_tokens() {
        assert!(!text.contains(&token), "{text}");
    }
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["config"]["version"], 1);
    assert_eq!(status["profiles"]["default"]["ready"], true);
    assert_eq!(
        status["profiles"]["default"]["last_login_outcome"],
        "success"
    );
}

#[tokio::test]
async fn metrics_after_a_scripted_scenario() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "validate_interval = \"0s\"")).await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    }
    assert_eq!(
        proxy.get("/v3/user-session").send().await.unwrap().status(),
        403
    );
    fake.evict_sessions(EMAIL);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let m = metrics(&proxy.admin).await;
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("{series} missing: {m:#?}"))
    };
    assert_eq!(
        get(r#"cma_auth_proxy_requests_total{profile="default",method="GET",status="200"}"#),
        4.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_requests_total{profile="none",method="GET",status="403"}"#),
        1.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_logins_total{profile="default",outcome="success"}"#),
        2.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"}"#),
        1.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_replays_total{outcome="replayed"}"#),
        1.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_denied_total{reason="policy_denied"}"#),
        1.0
    );
    // Latency by profile and outcome: 4 answered by Contentstack, 1 refused by the proxy itself.
    assert_eq!(
        get(r#"cma_auth_proxy_request_duration_seconds_count{profile="default",outcome="ok"}"#),
        4.0
    );
    assert_eq!(
        get(
            r#"cma_auth_proxy_request_duration_seconds_count{profile="none",outcome="proxy_error"}"#
        ),
        1.0
    );
    assert_eq!(
        get(r#"cma_auth_proxy_upstream_duration_seconds_count{profile="default"}"#),
        4.0
    );
    assert_eq!(get("cma_auth_proxy_in_flight_requests"), 0.0);
    assert!(get(r#"cma_auth_proxy_token_age_seconds{profile="default"}"#) >= 0.0);
    assert_eq!(
        get(&format!(
            r#"cma_auth_proxy_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

#[tokio::test]
async fn validation_finds_an_evicted_token_before_any_client() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "validate_interval = \"100ms\""),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.evict_sessions(EMAIL);
    eventually(10, "a background re-login", || async { fake.logins() == 2 }).await;
    let m = metrics(&proxy.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_reauth_total{profile="default",trigger="validate"}"#],
        1.0
    );
    let before = fake.requests().len();
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    // The client's request went straight through with the new token: no 401, no replay.
    let after: Vec<_> = fake.requests().into_iter().skip(before).collect();
    assert_eq!(after.len(), 1, "{after:?}");
}

#[tokio::test]
async fn max_token_age_logs_in_afresh_and_logs_the_old_session_out() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "max_token_age = \"300ms\"\nvalidate_interval = \"0s\"",
        ),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let first = fake.issued_tokens()[0].clone();
    eventually(10, "the old session logged out", || async {
        fake.logouts().contains(&first)
    })
    .await;
    assert!(fake.logins() >= 2);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="max_age"}"#
        )
        .await
            >= 1.0
    );
    // The logout is counted once its answer is back, which can be just after the fake saw it.
    counter_reaching(
        &proxy.admin,
        r#"cma_auth_proxy_logouts_total{profile="default"}"#,
        1.0,
    )
    .await;
}

/// `/status` gives every time in RFC 3339 (UTC) beside its Unix seconds, and the build's version
/// in one place; the admin root lists the endpoints instead of a bare 404.
#[tokio::test]
async fn status_times_read_as_dates_and_the_admin_root_lists_the_endpoints() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    eventually(10, "a login", || async {
        !proxy.status_json().await["profiles"]["default"]["last_login_at"].is_null()
    })
    .await;
    let status = proxy.status_json().await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    for (unix, rfc3339) in [
        (
            &status["profiles"]["default"]["last_login_at"],
            &status["profiles"]["default"]["last_login_at_rfc3339"],
        ),
        (
            &status["config"]["loaded_at"],
            &status["config"]["loaded_at_rfc3339"],
        ),
    ] {
        let unix = unix.as_u64().unwrap();
        let date = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
        assert_eq!(
            date.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            unix,
            "{rfc3339}"
        );
        assert!(rfc3339.as_str().unwrap().ends_with('Z'), "UTC: {rfc3339}");
    }

    for path in ["/", "/nothing-here"] {
        let response = reqwest::get(format!("{}{path}", proxy.admin))
            .await
            .unwrap();
        let expected = if path == "/" { 200 } else { 404 };
        assert_eq!(response.status(), expected);
        let text = response.text().await.unwrap();
        for endpoint in ["/livez", "/startupz", "/readyz", "/status", "/metrics"] {
            assert!(
                text.contains(&format!("  {endpoint} ")),
                "{endpoint} in {text}"
            );
        }
    }
}

#[tokio::test]
async fn a_probe_is_answered_when_keep_alive_connections_fill_the_admin_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = fake().await;
    let proxy = proxy(&fake, "max_connections = 2", &profile(PASSWORD, "")).await;
    let admin = proxy.admin.trim_start_matches("http://").to_owned();
    // Every admin slot is held by a keep-alive connection that has asked for /livez once (as a
    // peer polling every few seconds, under idle_timeout, would).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(&admin).await.unwrap();
        conn.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let n = conn.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(conn);
    }
    // The kubelet's probe, on a connection of its own, still gets its answer: the longest idle
    // connection makes room for it.
    let probe = reqwest::Client::new()
        .get(format!("{}/livez", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
}
