//! Local shaping of the organization's budget (`[profiles.NAME.rate_limit]`): requests wait for a
//! slot instead of drawing Contentstack's 429; past `max_wait` they get 429 `rate_limited` at once;
//! a read's upstream 429 is retried within `max_wait`, a write's passes through untouched, and both
//! push the local budget back. Rates not written are learned from the organization's plan, and bulk
//! calls have a budget of their own.
mod common;

use cma_sim::{DEMO_ORG, FakeCma, Plan};
use common::*;

/// The simulator with Contentstack's 10 reads/s + 10 writes/s per organization.
async fn limited_fake() -> FakeCma {
    fake_with(FakeCma::builder().account(account())).await
}

/// `n` concurrent reads, each of its own target so that none is coalesced with another.
async fn burst(proxy: &Proxy, n: usize) -> Vec<reqwest::Response> {
    let client = proxy.client.clone();
    let url = format!("{}/v3/user", proxy.url);
    concurrently(n, |i| {
        let (client, url) = (client.clone(), format!("{url}?n={i}"));
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
            // Every rate written: nothing is learned, so no look at the plan draws on the budget.
            "[profiles.default.rate_limit]\nreads_per_second = 1\nwrites_per_second = 1\nbulk_per_second = 1\nburst = 2\nmax_wait = \"100ms\"",
        ),
    )
    .await;
    let responses = burst(&proxy, 10).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        ok, 2,
        "the burst of 2 goes, the rest would wait past max_wait"
    );
    // The burst's reads (the budget's own look at the plan reads `/v3/user` without a query).
    let reached = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v3/user" && r.query.is_some())
        .count();
    assert_eq!(reached, 2, "refused requests never reach Contentstack");
    for r in responses.iter().filter(|r| r.status() != 200) {
        assert_proxy_answer(r, 429, "rate_limited");
        assert!(r.headers().contains_key("retry-after"));
    }
    // Nor do they count as time spent upstream.
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_upstream_duration_seconds_count{profile="default"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reads_upstream_429_is_retried_and_a_writes_passes_through() {
    let fake = limited_fake().await;
    // A local budget looser than Contentstack's: the upstream's 429s decide.
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nreads_per_second = 100\nwrites_per_second = 100\nburst = 100\nmax_wait = \"5s\"",
        ),
    )
    .await;
    for response in burst(&proxy, 25).await {
        assert_eq!(response.status(), 200, "reads are retried, not passed on");
    }
    assert!(fake.rate_limited() > 0, "Contentstack did answer 429");
    let client = proxy.client.clone();
    let url = format!("{}/v3/_sim/upload", proxy.url);
    let writes = concurrently(25, |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.post(&url).body("x").send().await.unwrap() }
    })
    .await;
    let limited: Vec<_> = writes.iter().filter(|r| r.status() == 429).collect();
    assert!(!limited.is_empty(), "a write's 429 reaches its client");
    for response in limited {
        assert!(
            response.headers().get("x-cma-auth-proxy-error").is_none(),
            "passed through untouched"
        );
        assert_eq!(response.headers()["x-ratelimit-limit"], "10");
        assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    }
}

/// The simulator with a plan of `plan` for the test account's organization.
async fn planned_fake(plan: Plan) -> FakeCma {
    fake_with(FakeCma::builder().account(account()).plan(DEMO_ORG, plan)).await
}

/// The budgets `/status` shows for the default profile, once they came from `source`.
async fn budgets_from(proxy: &Proxy, source: &str) -> serde_json::Value {
    eventually(10, &format!("budgets from {source}"), || async {
        proxy.status_json().await["profiles"]["default"]["rate_limit"]["read"]["source"] == source
    })
    .await;
    proxy.status_json().await["profiles"]["default"]["rate_limit"].clone()
}

#[tokio::test]
async fn rates_not_written_are_learned_from_the_organizations_plan() {
    let fake = planned_fake(Plan {
        reads: 40,
        writes: 20,
        bulk: 2,
    })
    .await;
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nwrites_per_second = 7",
        ),
    )
    .await;
    let budgets = budgets_from(&proxy, "plan").await;
    assert_eq!(budgets["read"]["per_second"], 40.0);
    assert_eq!(budgets["write"]["per_second"], 7.0, "{budgets}");
    assert_eq!(budgets["write"]["source"], "configured");
    assert_eq!(budgets["bulk"]["per_second"], 2.0);
    assert_eq!(budgets["bulk"]["source"], "plan");
    assert_eq!(budgets["organization_uid"], DEMO_ORG);
}

#[tokio::test]
async fn a_plan_that_cannot_be_read_leaves_the_defaults() {
    let fake = planned_fake(Plan {
        reads: 40,
        writes: 20,
        bulk: 2,
    })
    .await;
    fake.set_plan_hidden(true);
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "[profiles.default.rate_limit]"),
    )
    .await;
    let org = format!("/v3/organizations/{DEMO_ORG}");
    eventually(10, "the plan asked for", || async {
        fake.requests_to(&org) >= 1
    })
    .await;
    let budgets = budgets_from(&proxy, "default").await;
    assert_eq!(budgets["read"]["per_second"], 10.0);
    assert_eq!(budgets["write"]["per_second"], 10.0);
    assert_eq!(budgets["bulk"]["per_second"], 1.0);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
}

/// 300 reads over 8 targets, 32 at a time, against Contentstack's sliding second: no client sees
/// a 429, and the whole takes about what the learned budget requires for the reads that went
/// upstream (the rest were coalesced), not what the default 10/s would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_reads_within_the_learned_budget_draws_no_client_429() {
    const READS_PER_SECOND: u32 = 40;
    let fake = planned_fake(Plan {
        reads: READS_PER_SECOND,
        writes: 10,
        bulk: 1,
    })
    .await;
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "[profiles.default.rate_limit]\nmax_wait = \"30s\"",
        ),
    )
    .await;
    budgets_from(&proxy, "plan").await;
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let started = std::time::Instant::now();
    let statuses = concurrently(300, |i| {
        let (client, semaphore) = (proxy.client.clone(), semaphore.clone());
        let url = format!("{}/v3/_sim/echo?target={}", proxy.url, i % 8);
        async move {
            let _slot = semaphore.acquire().await.unwrap();
            client.get(&url).send().await.unwrap().status().as_u16()
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let upstream = fake.requests_to("/v3/_sim/echo") as f64;
    // What the budget requires for the reads that went upstream, and a generous allowance.
    let required = upstream / f64::from(READS_PER_SECOND);
    assert!(
        elapsed.as_secs_f64() <= required * 1.5 + 3.0,
        "{elapsed:?} for {upstream} upstream reads at {READS_PER_SECOND}/s"
    );
}

#[tokio::test]
async fn bulk_calls_have_their_own_smaller_budget() {
    let fake = planned_fake(Plan {
        reads: 10,
        writes: 10,
        bulk: 1,
    })
    .await;
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "[profiles.default.rate_limit]\nmax_wait = \"5s\""),
    )
    .await;
    budgets_from(&proxy, "plan").await;
    for _ in 0..3 {
        let response = proxy
            .request(reqwest::Method::POST, "/v3/bulk/publish")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "waited for the bulk budget");
    }
    assert_eq!(
        fake.rate_limited(),
        0,
        "no bulk call drew Contentstack's 429"
    );
    let waits = r#"cma_auth_proxy_rate_limit_waits_total{profile="default"}"#;
    assert!(metric(&proxy.admin, waits).await >= 2.0);
}
