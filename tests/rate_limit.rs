//! Local shaping of the organization's budget (`[profiles.NAME.rate_limit]`): requests wait for a
//! slot instead of drawing Contentstack's 429; past `max_wait` they get 429 `rate_limited` at once;
//! upstream 429s pass through untouched and push the local budget back.
mod common;

use cma_sim::FakeCma;
use common::*;

/// The simulator with Contentstack's 10 reads/s + 10 writes/s per organization.
async fn limited_fake() -> FakeCma {
    fake_with(FakeCma::builder().account(account())).await
}

async fn burst(proxy: &Proxy, n: usize) -> Vec<reqwest::Response> {
    let client = proxy.client.clone();
    let url = format!("{}/v3/user", proxy.url);
    concurrently(n, |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.unwrap() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_wait_for_the_budget_instead_of_drawing_429s() {
    // Control: without shaping, a burst draws Contentstack's 429s.
    let fake = limited_fake().await;
    let unshaped = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let statuses: Vec<u16> = burst(&unshaped, 25)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(fake.rate_limited() > 0);

    let fake = limited_fake().await;
    // A little under the organization's 10/s, as the README advises.
    let shaped = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nreads_per_second = 9\nburst = 1\nmax_wait = \"10s\"",
        ),
    )
    .await;
    for response in burst(&shaped, 25).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(fake.rate_limited(), 0);
    let m = metrics(&shaped.admin).await;
    assert!(m[r#"cma_auth_proxy_rate_limit_waits_total{profile="default"}"#] >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_longer_than_max_wait_is_refused_at_once() {
    let fake = limited_fake().await;
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nreads_per_second = 1\nburst = 2\nmax_wait = \"100ms\"",
        ),
    )
    .await;
    let responses = burst(&proxy, 10).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        ok, 2,
        "the burst of 2 goes, the rest would wait past max_wait"
    );
    let reached = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v3/user")
        .count();
    assert_eq!(reached, 2, "refused requests never reach Contentstack");
    for r in responses.iter().filter(|r| r.status() != 200) {
        assert_proxy_answer(r, 429, "rate_limited");
        assert!(r.headers().contains_key("retry-after"));
    }
}

#[tokio::test]
async fn upstream_429s_pass_through_untouched_and_slow_the_local_budget() {
    let fake = limited_fake().await;
    // A local budget looser than Contentstack's: the upstream 429 decides.
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nreads_per_second = 100\nburst = 100\nmax_wait = \"5s\"",
        ),
    )
    .await;
    let mut first_429 = None;
    for _ in 0..12 {
        let response = proxy.get("/v3/user").send().await.unwrap();
        if response.status() == 429 {
            first_429 = Some(response);
            break;
        }
    }
    let response = first_429.expect("Contentstack's budget is 10 reads/s");
    assert!(
        response.headers().get("x-cma-auth-proxy-error").is_none(),
        "passed through untouched"
    );
    assert_eq!(response.headers()["x-ratelimit-limit"], "10");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    let before = fake.rate_limited();
    // The next request waits out the pushed-back budget rather than drawing another 429.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(fake.rate_limited(), before);
    let m = metrics(&proxy.admin).await;
    assert!(m[r#"cma_auth_proxy_rate_limit_waits_total{profile="default"}"#] >= 1.0);
}
