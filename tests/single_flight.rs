//! N concurrent cold requests cause exactly one login (docs/design.md#single-flight).
mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_cold_requests_cause_one_login() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let client = proxy.client.clone();
    let url = format!("{}/v3/user", proxy.url);
    let statuses = concurrently(500, |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.unwrap().status().as_u16() }
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // The start-up login and the 500 requests together: one login.
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.login_attempts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_does_not_cancel_the_login_it_started() {
    let fake = fake().await;
    // The start-up login fails, so the next login is started by a request.
    fake.set_login_outage(Some(http::StatusCode::BAD_GATEWAY));
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "min_backoff = \"10ms\"\nmax_backoff = \"10ms\""),
    )
    .await;
    // Judged, not just received: the outage must have answered it before it is lifted.
    eventually(5, "the start-up login has failed", || async {
        fake.login_attempts().len() == 1
    })
    .await;
    assert_eq!(fake.login_attempts()[0].status, 502);
    fake.set_login_outage(None);
    fake.set_login_delay(Some(Duration::from_millis(500)));
    // Clients that give up while their login is in flight: the login must go on (else its session
    // could be created upstream and lost) and no second login may start behind it.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let url = format!("{}/v3/user", proxy.url);
    eventually(5, "a request has started the slow login", || async {
        // Within the 10 ms backoff after the failed start-up login the answer is a fast 503;
        // after it, the request starts the slow login and gives up.
        let answer = impatient.get(&url).send().await;
        assert!(
            answer.is_err() || answer.is_ok_and(|r| r.status() == 503),
            "the slow login cannot answer in 100ms"
        );
        fake.login_requests() == 2
    })
    .await;
    fake.set_login_delay(None);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(
        fake.login_requests(),
        2,
        "one failed start-up login, then exactly one more"
    );
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.live_sessions(EMAIL).len(), 1);
}
