//! Reads that count (docs/design.md#read-coalescing, #the-read-cache): concurrent identical reads
//! share one upstream request, a leader that goes away hands over to a follower, what is too large
//! is not shared; the opt-in cache answers within its TTL, never across profiles, and forgets what
//! a write through any replica may have changed.
mod common;

use cma_sim::DEMO_API_KEY;
use common::*;

const GATE: &str = "/v3/_sim/gate";

fn gate_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

/// Starts `n` reads of `target` with `headers`, each its own task; their answers come once the
/// gate opens.
fn reads(
    proxy: &Proxy,
    n: usize,
    target: &str,
    headers: &[(&'static str, &'static str)],
) -> Vec<tokio::task::JoinHandle<reqwest::Response>> {
    let url = format!("{}{target}", proxy.url);
    (0..n)
        .map(|_| {
            let mut request = proxy.client.get(&url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect()
}

/// Waits until `n` requests are being served by the proxy.
async fn in_flight(proxy: &Proxy, n: f64) {
    let admin = proxy.admin.clone();
    eventually(10, &format!("{n} requests in flight"), || {
        let admin = admin.clone();
        async move { metric(&admin, "cma_auth_proxy_in_flight_requests").await >= n }
    })
    .await;
}

async fn answers(
    tasks: Vec<tokio::task::JoinHandle<reqwest::Response>>,
) -> Vec<(u16, String, String)> {
    let mut out = Vec::new();
    for t in tasks {
        let response = t.await.unwrap();
        let status = response.status().as_u16();
        let from = response
            .headers()
            .get("x-cma-auth-proxy-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        out.push((status, from, response.text().await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_identical_reads_cause_one_upstream_request() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    // Series exist before the first coalesced read.
    let series = r#"cma_auth_proxy_reads_coalesced_total{profile="default"}"#;
    assert!(metrics(&proxy.admin).await.contains_key(series));
    let tasks = reads(
        &proxy,
        100,
        &format!("{GATE}?q=1"),
        &[("api_key", DEMO_API_KEY)],
    );
    in_flight(&proxy, 100.0).await;
    eventually(10, "the leader's read upstream", || async {
        fake.requests_to(GATE) == 1
    })
    .await;
    fake.open_gate();
    let answers = answers(tasks).await;
    assert_eq!(fake.requests_to(GATE), 1);
    let first = &answers[0].2;
    assert!(first.contains(DEMO_API_KEY), "{first}");
    for (status, _, body) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(body, first, "every client got the same answer");
    }
    let from = |what: &str| answers.iter().filter(|a| a.1 == what).count();
    assert_eq!((from("miss"), from("coalesced")), (1, 99));
    assert_eq!(counter_reaching(&proxy.admin, series, 99.0).await, 99.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_for_another_stack_or_branch_are_not_the_same_read() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let target = format!("{GATE}?q=2");
    let groups = [
        &[("api_key", "blt0a")][..],
        &[("api_key", "blt0b")],
        &[("api_key", "blt0a"), ("branch", "dev")],
    ];
    let tasks: Vec<_> = groups
        .iter()
        .map(|headers| reads(&proxy, 10, &target, headers))
        .collect();
    in_flight(&proxy, 30.0).await;
    fake.open_gate();
    for (headers, tasks) in groups.iter().zip(tasks) {
        for (status, _, body) in answers(tasks).await {
            assert_eq!(status, 200);
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            let branch = headers.iter().find(|h| h.0 == "branch").map(|h| h.1);
            assert_eq!(answer["api_key"], headers[0].1, "{body}");
            assert_eq!(answer["branch"].as_str(), branch, "{body}");
        }
    }
    assert_eq!(
        fake.requests_to(GATE),
        3,
        "one upstream read per stack and branch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_client_goes_away_hands_over_to_its_followers() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let target = format!("{}{GATE}?q=3", proxy.url);
    // The leader has a connection of its own, which it drops.
    let leader = tokio::spawn(async move { gate_client().get(&target).send().await });
    eventually(10, "the leader's read upstream", || async {
        fake.requests_to(GATE) == 1
    })
    .await;
    let followers = reads(&proxy, 5, &format!("{GATE}?q=3"), &[]);
    in_flight(&proxy, 6.0).await;
    assert_eq!(
        fake.requests_to(GATE),
        1,
        "the followers wait for the leader"
    );
    leader.abort();
    // One follower leads now: its read goes upstream, the others follow it.
    eventually(10, "a follower's read upstream", || async {
        fake.requests_to(GATE) == 2
    })
    .await;
    fake.open_gate();
    let answers = answers(followers).await;
    for (status, _, _) in &answers {
        assert_eq!(*status, 200);
    }
    assert_eq!(fake.requests_to(GATE), 2);
    let series = r#"cma_auth_proxy_reads_coalesced_total{profile="default"}"#;
    assert_eq!(counter_reaching(&proxy.admin, series, 4.0).await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_over_the_share_limit_is_not_shared() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    // Over 8 MiB of padding.
    let tasks = reads(&proxy, 3, &format!("{GATE}?pad=9000000"), &[]);
    in_flight(&proxy, 3.0).await;
    eventually(10, "the leader's read upstream", || async {
        fake.requests_to(GATE) == 1
    })
    .await;
    fake.open_gate();
    for (status, _, body) in answers(tasks).await {
        assert_eq!(status, 200);
        assert!(body.len() > 9_000_000);
    }
    assert_eq!(fake.requests_to(GATE), 3, "each follower sent its own read");
}

#[tokio::test]
async fn reads_with_headers_the_proxy_does_not_know_are_not_coalesced() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let tasks = reads(
        &proxy,
        3,
        &format!("{GATE}?q=4"),
        &[("x-custom-tenant", "a")],
    );
    let fresh = reads(
        &proxy,
        2,
        &format!("{GATE}?q=4"),
        &[("cache-control", "no-cache")],
    );
    in_flight(&proxy, 5.0).await;
    eventually(10, "every read upstream", || async {
        fake.requests_to(GATE) == 5
    })
    .await;
    fake.open_gate();
    for (status, from, _) in answers(tasks).await.into_iter().chain(answers(fresh).await) {
        assert_eq!(status, 200);
        assert_eq!(from, "", "not a shareable read");
    }
}

#[tokio::test]
async fn a_get_that_frames_a_body_is_not_shared() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let address = proxy.url.trim_start_matches("http://").to_owned();
    // Identical reads but for their bodies: two with a length, two chunked and empty.
    let read = |framing: &'static str| {
        let address = address.clone();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!(
                "GET {GATE}?q=5 HTTP/1.1\r\nhost: x\r\napi_key: {DEMO_API_KEY}\r\n\
                 connection: close\r\n{framing}"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer.to_ascii_lowercase()
        })
    };
    let sized = "content-length: 2\r\n\r\n{}";
    let chunked = "transfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let tasks = [read(sized), read(sized), read(chunked), read(chunked)];
    in_flight(&proxy, 4.0).await;
    eventually(10, "every read upstream", || async {
        fake.requests_to(GATE) == 4
    })
    .await;
    fake.open_gate();
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(
            !answer.contains("x-cma-auth-proxy-cache"),
            "shared: {answer}"
        );
    }
}

#[tokio::test]
async fn a_write_whose_client_goes_away_before_its_answer_still_empties_the_cache() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &format!("{}{CACHED}", profile(PASSWORD, ""))).await;
    let c = &proxy.client;
    create_blog(c, &proxy.url).await;
    assert_eq!(blog(c, &proxy.url, "default").await.0, "miss");
    assert_eq!(blog(c, &proxy.url, "default").await.0, "hit");
    // A write that Contentstack holds; its client gives up before the answer.
    let write = gate_client()
        .post(format!("{}{GATE}", proxy.url))
        .header("api_key", DEMO_API_KEY)
        .json(&serde_json::json!({}));
    let write = tokio::spawn(async move { write.send().await });
    eventually(10, "the write upstream", || async {
        fake.requests_to(GATE) == 1
    })
    .await;
    write.abort();
    let admin = proxy.admin.clone();
    eventually(10, "the write dropped with its client", || {
        let admin = admin.clone();
        async move { metric(&admin, "cma_auth_proxy_in_flight_requests").await == 0.0 }
    })
    .await;
    assert_eq!(
        blog(c, &proxy.url, "default").await.0,
        "miss",
        "the write may have reached Contentstack"
    );
}

const CACHED: &str = "[profiles.default.cache]\nttl = \"60s\"\npaths = [\"GET /v3/content_types\", \"GET /v3/content_types/**\"]\n";

async fn create_blog(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/v3/content_types"))
        .header("api_key", DEMO_API_KEY)
        .json(&serde_json::json!({"content_type": {"uid": "blog", "title": "Blog", "schema": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

/// `GET /v3/content_types/blog` through `url`: where the answer came from and the title.
async fn blog(client: &reqwest::Client, url: &str, profile: &str) -> (String, String) {
    let response = client
        .get(format!("{url}/v3/content_types/blog"))
        .header("api_key", DEMO_API_KEY)
        .header("x-cma-profile", profile)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let from = response.headers()["x-cma-auth-proxy-cache"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        from,
        body["content_type"]["title"].as_str().unwrap().to_owned(),
    )
}

async fn rename_blog(client: &reqwest::Client, url: &str, title: &str) {
    let response = client
        .put(format!("{url}/v3/content_types/blog"))
        .header("api_key", DEMO_API_KEY)
        .json(&serde_json::json!({"content_type": {"title": title}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_cache_answers_within_its_ttl_until_a_write_and_never_across_profiles() {
    let fake = fake().await;
    let profiles = format!(
        "{}{CACHED}[profiles.other]\nemail = \"{EMAIL}\"\npassword = \"{PASSWORD}\"\n",
        profile(PASSWORD, "")
    );
    let proxy = proxy(&fake, "", &profiles).await;
    let hits = r#"cma_auth_proxy_cache_total{profile="default",result="hit"}"#;
    assert_eq!(metrics(&proxy.admin).await.get(hits), Some(&0.0));
    create_blog(&proxy.client, &proxy.url).await;
    let path = "/v3/content_types/blog";
    let c = &proxy.client;
    assert_eq!(
        blog(c, &proxy.url, "default").await,
        ("miss".into(), "Blog".into())
    );
    assert_eq!(
        blog(c, &proxy.url, "default").await,
        ("hit".into(), "Blog".into())
    );
    assert_eq!(fake.requests_to(path), 1, "the hit did not go upstream");
    assert_eq!(metric(&proxy.admin, hits).await, 1.0);
    // Another profile has a cache of its own (here none): its read goes upstream.
    assert_eq!(blog(c, &proxy.url, "other").await.0, "miss");
    assert_eq!(fake.requests_to(path), 2);
    // A write to the content type drops what the cache held of it.
    rename_blog(c, &proxy.url, "Journal").await;
    assert_eq!(
        blog(c, &proxy.url, "default").await,
        ("miss".into(), "Journal".into())
    );
    assert_eq!(
        blog(c, &proxy.url, "default").await,
        ("hit".into(), "Journal".into())
    );
    let invalidations = r#"cma_auth_proxy_cache_total{profile="default",result="invalidate"}"#;
    assert!(metric(&proxy.admin, invalidations).await >= 1.0);
}

/// A replica's configuration: Contentstack at `upstream`, the fleet's Redis at `store` (sealed with
/// the key file `key`), the default profile with its reads cached.
fn replica_toml(upstream: &str, store: &str) -> String {
    config_toml(
        upstream,
        "",
        &format!(
            "[token_store]\nkind = \"redis\"\nurl = \"{store}\"\nencryption_key_file = \"key\"\n{}{CACHED}",
            profile(PASSWORD, "validate_interval = \"0s\""),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_replica_empties_the_others_caches() {
    let fake = fake().await;
    let redis = RedisServer::start();
    let replica = || {
        let dir = tempdir();
        std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, replica_toml(&fake.url(), &redis.url())).unwrap();
        Binary::start(&config, &[]).owning(dir)
    };
    let (a, b) = (replica(), replica());
    let client = reqwest::Client::new();
    create_blog(&client, &a.url).await;
    // A's cache serves once it hears the fleet.
    eventually(10, "a hit on replica A", || async {
        blog(&client, &a.url, "default").await.0 == "hit"
    })
    .await;
    rename_blog(&client, &b.url, "Journal").await;
    eventually(5, "replica A forgets the old title", || async {
        blog(&client, &a.url, "default").await.1 == "Journal"
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_moves_a_profile_to_another_account_starts_its_cache_anew() {
    const OTHER: &str = "other@example.com";
    let fake = fake_with(
        cma_sim::FakeCma::builder()
            .account(account())
            .account(cma_sim::Account::new(OTHER, PASSWORD))
            .without_rate_limit(),
    )
    .await;
    let dir = tempdir();
    let config = dir.join("config.toml");
    let text = |email: &str| {
        config_toml(
            &fake.url(),
            "",
            &format!(
                "[profiles.default]\nemail = \"{email}\"\npassword = \"{PASSWORD}\"\n{CACHED}"
            ),
        )
    };
    std::fs::write(&config, text(EMAIL)).unwrap();
    let proxy = proxy_from_file(&config).await;
    create_blog(&proxy.client, &proxy.url).await;
    let c = &proxy.client;
    assert_eq!(blog(c, &proxy.url, "default").await.0, "miss");
    assert_eq!(blog(c, &proxy.url, "default").await.0, "hit");
    // Same cache settings, another account: what the old one read is not the new one's to see.
    std::fs::write(&config, text(OTHER)).unwrap();
    eventually(15, "the other account is logged in", || async {
        proxy.status_json().await["config"]["version"] == 2
            && fake.login_attempts().iter().any(|a| a.email == OTHER)
    })
    .await;
    assert_eq!(blog(c, &proxy.url, "default").await.0, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_subscription_goes_silent_stops_serving_from_its_cache() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = fake().await;
    let relay = Relay::start(redis.port).await;
    let dir = tempdir();
    std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, replica_toml(&fake.url(), &relay.url)).unwrap();
    let a = Binary::start(&config, &[]);
    let client = reqwest::Client::new();
    create_blog(&client, &a.url).await;
    eventually(10, "a hit on the replica", || async {
        blog(&client, &a.url, "default").await.0 == "hit"
    })
    .await;
    // Redis is still there, but nothing reaches it or comes back: the replica cannot hear the
    // fleet's writes, so its cache must stop answering (long before its 60 s ttl).
    relay.silence(true);
    eventually(20, "the replica stops serving cached reads", || async {
        blog(&client, &a.url, "default").await.0 != "hit"
    })
    .await;
}
