//! Fleet mode (`[token_store] kind = "redis"`): several sidecar processes on one Redis share one
//! Contentstack session, log in once per eviction fleet-wide, survive Redis outages and converge
//! again, share one request budget, and never store a plaintext token when encryption is on.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cma_auth_proxy::dev::FakeCma;
use common::*;

/// Writes a replica's config (with its password file) and starts the binary.
fn replica(fake: &FakeCma, redis: &RedisServer, store_extra: &str, profile_extra: &str) -> Binary {
    let dir = tempdir();
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n\
             [token_store]\nkind = \"redis\"\nurl = \"{}\"\n{store_extra}\n\
             [profiles.default]\nemail = \"{EMAIL}\"\npassword_file = \"password\"\nvalidate_interval = \"0s\"\n{profile_extra}\n\
             [log]\nlevel = \"info\"\n",
            fake.url(),
            redis.url()
        ),
    )
    .unwrap();
    Binary::start(&config, &[])
}

/// `n` concurrent GETs spread over `replicas` in turn; their statuses.
async fn burst(replicas: &[Binary], n: usize) -> Vec<u16> {
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let client = reqwest::Client::new();
    concurrently(n, |i| {
        let (client, url) = (client.clone(), urls[i % urls.len()].clone());
        async move { get(&client, &url).await }
    })
    .await
}

async fn get(client: &reqwest::Client, replica: &str) -> u16 {
    client
        .get(format!("{replica}/v3/user"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_burst_across_eight_replicas_causes_one_login() {
    let fake = fake().await;
    let redis = RedisServer::start();
    let replicas: Vec<Binary> = (0..8).map(|_| replica(&fake, &redis, "", "")).collect();
    let statuses = burst(&replicas, 400).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.logins(), 1, "{:?}", fake.login_attempts());
    let tokens: std::collections::HashSet<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v3/user")
        .map(|r| r.headers["authtoken"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 1, "every replica used the one shared session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eviction_under_load_causes_one_relogin_fleet_wide_and_no_client_401() {
    let fake = Arc::new(fake().await);
    let redis = RedisServer::start();
    let replicas: Vec<Binary> = (0..8).map(|_| replica(&fake, &redis, "", "")).collect();
    let client = reqwest::Client::new();
    for r in &replicas {
        assert_eq!(get(&client, &r.url).await, 200);
    }
    assert_eq!(fake.logins(), 1);
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..40)
        .map(|i| {
            let (client, url, stop) = (client.clone(), replicas[i % 8].url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(get(&client, &url).await);
                }
                statuses
            })
        })
        .collect();
    eventually(10, "load is running", || async {
        fake.requests().len() > 300
    })
    .await;
    fake.evict_sessions(EMAIL);
    let evicted_at = fake.requests().len();
    eventually(20, "load continues after the eviction", || async {
        fake.requests().len() > evicted_at + 600
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for l in loops {
        statuses.extend(l.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "clients saw {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    assert_eq!(
        fake.logins(),
        2,
        "one re-login for the whole fleet: {:?}",
        fake.login_attempts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_slower_than_the_lock_ttl_keeps_the_lock_and_stays_the_only_one() {
    // A TOTP step wait or a slow Contentstack can outlast `lock_ttl`: the holder renews its lock,
    // so the waiting replicas keep waiting for its token instead of logging in themselves.
    let fake = fake().await;
    let redis = RedisServer::start();
    fake.set_login_delay(Some(std::time::Duration::from_secs(3)));
    let replicas: Vec<Binary> = (0..3)
        .map(|_| replica(&fake, &redis, "lock_ttl = \"1s\"", ""))
        .collect();
    let statuses = burst(&replicas, 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fake.login_requests(), 1, "{:?}", fake.login_attempts());
    let mut fleet_logins = 0.0;
    for replica in &replicas {
        fleet_logins += metric(
            &replica.admin,
            r#"cma_auth_proxy_token_store_total{event="fleet_login"}"#,
        )
        .await;
    }
    assert_eq!(fleet_logins, 1.0, "one replica logged in for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_holder_killed_mid_login_lets_another_replica_log_in() {
    let fake = fake().await;
    let redis = RedisServer::start();
    fake.set_login_delay(Some(std::time::Duration::from_secs(30)));
    let mut holder = replica(&fake, &redis, "lock_ttl = \"1s\"", "");
    eventually(10, "the holder's login is in flight", || async {
        fake.login_requests() == 1
    })
    .await;
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "cma-auth-proxy:lock:*"])
            .lines()
            .count(),
        1
    );
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    fake.set_login_delay(None);

    let other = replica(&fake, &redis, "lock_ttl = \"1s\"", "");
    let client = reqwest::Client::new();
    eventually(15, "the other replica serves", || async {
        get(&client, &other.url).await == 200
    })
    .await;
    let m = metrics(&other.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_token_store_total{event="fleet_login"}"#],
        1.0
    );
    assert!(
        m[r#"cma_auth_proxy_token_store_total{event="lock_wait"}"#] >= 1.0,
        "it waited for the dead holder's lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_keeps_replicas_serving_and_they_converge_when_it_returns() {
    let fake = fake().await;
    let mut redis = RedisServer::start();
    let replicas: Vec<Binary> = (0..3)
        .map(|_| replica(&fake, &redis, "timeout = \"100ms\"", ""))
        .collect();
    let client = reqwest::Client::new();
    for r in &replicas {
        assert_eq!(get(&client, &r.url).await, 200);
    }
    assert_eq!(fake.logins(), 1);

    redis.stop();
    // Sessions die while Redis is away: each replica logs in on its own and keeps serving.
    fake.evict_sessions(EMAIL);
    for _ in 0..3 {
        for r in &replicas {
            assert_eq!(get(&client, &r.url).await, 200);
        }
    }
    assert_eq!(fake.logins(), 4, "one local login per replica");
    for r in &replicas {
        assert_eq!(
            reqwest::get(format!("{}/readyz", r.admin))
                .await
                .unwrap()
                .status(),
            200
        );
    }

    redis.restart();
    // Back together: one replica publishes its session, the others adopt it and log theirs out.
    eventually(30, "the replicas converge on one session", || async {
        let before = fake.requests().len();
        for r in &replicas {
            get(&client, &r.url).await;
        }
        let used: std::collections::HashSet<String> = fake.requests()[before..]
            .iter()
            .filter(|r| r.path == "/v3/user")
            .map(|r| r.headers["authtoken"].to_str().unwrap().to_owned())
            .collect();
        used.len() == 1
    })
    .await;
    eventually(30, "the two abandoned sessions are logged out", || async {
        fake.logouts().len() == 2
    })
    .await;
    assert_eq!(fake.live_sessions(EMAIL).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_replicas_share_the_organization_budget_and_draw_no_429() {
    let fake = fake_with(FakeCma::builder().account(account())).await;
    let redis = RedisServer::start();
    let replicas: Vec<Binary> = (0..8)
        .map(|_| {
            replica(
                &fake,
                &redis,
                "",
                "[profiles.default.rate_limit]\nreads_per_second = 9\nburst = 1\nmax_wait = \"30s\"",
            )
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let client = reqwest::Client::new();
    // 48 requests offered at about 50/s across the fleet: far over the 10/s the organization has.
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (client, url) = (client.clone(), urls[i % 8].clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20 * i as u64)).await;
                get(&client, &url).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(fake.rate_limited(), 0, "no request drew Contentstack's 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_at_rest_are_sealed_when_encryption_is_on() {
    let fake = fake().await;
    let redis = RedisServer::start();
    let r = replica(&fake, &redis, "encryption_key_file = \"key\"", "");
    assert_eq!(get(&reqwest::Client::new(), &r.url).await, 200);
    let keys = redis.cli(&["--scan", "--pattern", "cma-auth-proxy:token:*"]);
    let key = keys.lines().next().expect("the shared token is stored");
    let value = redis.cli(&["GET", key]);
    let dump = redis.cli(&["--scan"]) + &value;
    let token = &fake.issued_tokens()[0];
    assert!(
        !dump.contains(token.as_str()),
        "plaintext token in Redis: {dump}"
    );
    assert!(!dump.contains(EMAIL), "no e-mail in key names");
    assert!(value.contains(":x:"), "sealed: {value}");
    // A second replica with the same key reads it: no second login.
    let second = replica(&fake, &redis, "encryption_key_file = \"key\"", "");
    assert_eq!(get(&reqwest::Client::new(), &second.url).await, 200);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_session_over_rediss_with_a_private_ca() {
    let fake = fake().await;
    let redis = RedisServer::start_tls();
    let ca = redis.tls.as_ref().unwrap().join("ca.pem");
    let store = format!("ca_file = \"{}\"", ca.display());
    let replicas: Vec<Binary> = (0..2).map(|_| replica(&fake, &redis, &store, "")).collect();
    let client = reqwest::Client::new();
    for replica in &replicas {
        assert_eq!(get(&client, &replica.url).await, 200);
    }
    assert_eq!(fake.logins(), 1, "{:?}", fake.login_attempts());
    // The session went through the TLS server: its token is there (and the fleet never fell
    // back to working alone).
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "cma-auth-proxy:token:*"])
            .lines()
            .count(),
        1
    );
    for replica in &replicas {
        assert_eq!(
            metric(
                &replica.admin,
                r#"cma_auth_proxy_token_store_total{event="error"}"#
            )
            .await,
            0.0
        );
    }
}

#[tokio::test]
async fn a_rediss_server_the_ca_file_does_not_vouch_for_is_not_trusted() {
    // Without `ca_file` the public roots apply, and a private CA's server is refused: the replica
    // works alone (and says so) rather than talking to a server it cannot verify.
    let fake = fake().await;
    let redis = RedisServer::start_tls();
    let replica = replica(&fake, &redis, "", "");
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &replica.url).await, 200);
    assert!(
        metric(
            &replica.admin,
            r#"cma_auth_proxy_token_store_total{event="error"}"#
        )
        .await
            >= 1.0
    );
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "cma-auth-proxy:*"])
            .lines()
            .count(),
        0
    );
}
