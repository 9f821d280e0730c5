//! Login discipline (docs/design.md#the-login-discipline): refused credentials are never retried
//! inside `rejected_retry`, so the account never locks; transient failures back off, fail fast
//! meanwhile, and recover.
mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_means_one_attempt_fast_503s_and_no_lockout() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile("wrong password", "")).await;
    let client = proxy.client.clone();
    let url = format!("{}/v3/user", proxy.url);
    let mut responses = concurrently(200, |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.unwrap() }
    })
    .await;
    for _ in 0..50 {
        responses.push(client.get(&url).send().await.unwrap());
    }
    for response in responses {
        assert_proxy_answer(&response, 503, "login_rejected");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=300).contains(&retry_after), "{retry_after}");
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error_message"].as_str().unwrap();
        assert!(message.contains("error_code 104"), "{message}");
        assert!(
            !message.contains("wrong password"),
            "the password leaked: {message}"
        );
    }
    let attempts = fake.login_attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].error_code, Some(104));
    assert!(!fake.is_locked(EMAIL));
    let status = proxy.status_json().await;
    assert_eq!(
        status["profiles"]["default"]["last_login_outcome"],
        "rejected"
    );
    assert_eq!(status["profiles"]["default"]["ready"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_outage_backs_off_fails_fast_and_recovers() {
    let fake = fake().await;
    fake.set_login_outage(Some(StatusCode::BAD_GATEWAY));
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "min_backoff = \"100ms\"\nmax_backoff = \"400ms\""),
    )
    .await;
    // While logins fail, requests are answered at once with 503 and a Retry-After.
    eventually(10, "at least 4 failed login attempts", || async {
        let response = proxy.get("/v3/user").send().await.unwrap();
        assert_proxy_answer(&response, 503, "login_unavailable");
        assert!(response.headers().contains_key("retry-after"));
        fake.login_attempts().len() >= 4
    })
    .await;
    let attempts = fake.login_attempts();
    assert!(attempts.iter().all(|a| a.status == 502));
    // Backoff: no two attempts closer than min_backoff, however many requests arrived.
    for pair in attempts.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(100), "attempts {gap:?} apart");
    }
    let status = proxy.status_json().await;
    assert_eq!(
        status["profiles"]["default"]["last_login_outcome"],
        "transient"
    );

    fake.set_login_outage(None);
    eventually(10, "recovery after the outage", || async {
        proxy.get("/v3/user").send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(fake.logins(), 1);
    let status = proxy.status_json().await;
    assert_eq!(
        status["profiles"]["default"]["last_login_outcome"],
        "success"
    );
    assert!(status["profiles"]["default"]["backoff_remaining_seconds"].is_null());
    assert!(status["profiles"]["default"]["last_error"].is_null());
}
