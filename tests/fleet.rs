//! Fleet mode (`[token_store] kind = "redis"`): several sidecar processes on one Redis share one
//! Contentstack session, log in once per eviction fleet-wide, survive Redis outages and converge
//! again, share one request budget, seal what they store unless told not to, skip a
//! failing Redis at once, and trust nothing they read from it beyond what they can check.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cma_sim::FakeCma;
use common::*;

/// A replica sealing what it stores with the fleet's key (the `key` file written beside its config).
fn replica(fake: &FakeCma, redis: &RedisServer, store_extra: &str, profile_extra: &str) -> Binary {
    replica_at(
        fake,
        &redis.url(),
        &format!("encryption_key_file = \"key\"\n{store_extra}"),
        profile_extra,
    )
}

/// A replica that opted out of sealing.
fn plaintext_replica(fake: &FakeCma, redis: &RedisServer, profile_extra: &str) -> Binary {
    replica_at(fake, &redis.url(), "allow_plaintext = true", profile_extra)
}

/// Writes a replica's config for the store at `url` (with its password and key files) and starts
/// the binary.
fn replica_at(fake: &FakeCma, url: &str, store: &str, profile_extra: &str) -> Binary {
    let dir = tempdir();
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(
            &fake.url(),
            "",
            &format!(
                "[token_store]\nkind = \"redis\"\nurl = \"{url}\"\n{store}\n{}[log]\nlevel = \"info\"\n",
                profile_from_file(
                    "password",
                    &format!("validate_interval = \"0s\"\n{profile_extra}")
                ),
            ),
        ),
    )
    .unwrap();
    Binary::start(&config, &[]).owning(dir)
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
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
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
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
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
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
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
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
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
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
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
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
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
async fn tokens_at_rest_are_sealed() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let r = replica(&fake, &redis, "", "");
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
    assert!(value.contains(":s:"), "sealed: {value}");
    // A second replica with the same key reads it: no second login.
    let second = replica(&fake, &redis, "", "");
    assert_eq!(get(&reqwest::Client::new(), &second.url).await, 200);
    assert_eq!(fake.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_session_over_rediss_with_a_private_ca() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_tls_or_skip() else {
        return;
    };
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
    let Some(redis) = RedisServer::start_tls_or_skip() else {
        return;
    };
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

// ---------------------------------------------------------------------------------------------
// A failing store: skipped at once after the first failure, used again once it answers.
// ---------------------------------------------------------------------------------------------

/// A budget loose enough that no request waits for it, so that every request still asks the store.
const LOOSE_BUDGET: &str =
    "[profiles.default.rate_limit]\nreads_per_second = 1000\nburst = 1000\nmax_wait = \"1s\"";

/// The store `timeout` of the failure tests.
const STORE_TIMEOUT: &str = "timeout = \"3s\"";

/// How long a burst may take once the store is known to fail: a third of [`STORE_TIMEOUT`]. Without
/// the breaker each request paid the timeout (or a reconnect) in turn: 20 requests took seconds.
const UNHELD: Duration = Duration::from_secs(1);

async fn status(admin: &str) -> serde_json::Value {
    reqwest::get(format!("{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `n` concurrent GETs to one replica, which must all be answered within [`UNHELD`].
async fn unheld_burst(replica: &Binary, n: usize) {
    let statuses = tokio::time::timeout(UNHELD, burst(std::slice::from_ref(replica), n))
        .await
        .expect("requests are not held back by a store known to fail");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// A port that takes connections but is no working Redis: it never answers, or it answers
/// every read with bytes that are not RESP. Counts the connections it accepted.
async fn broken_redis(garbage: bool) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0
                        || (garbage
                            && socket
                                .write_all(b"<html>no redis</html>\r\n")
                                .await
                                .is_err())
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// A store that takes connections but does not work costs the first request at most one store
/// `timeout`; after that, requests skip it and use this replica's own budget at once, and the
/// broken server sees no connection per request.
async fn a_broken_store_is_skipped(garbage: bool) {
    let fake = fake().await;
    let (url, accepted) = broken_redis(garbage).await;
    let store = format!("encryption_key_file = \"key\"\n{STORE_TIMEOUT}");
    let replica = replica_at(&fake, &url, &store, LOOSE_BUDGET);
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &replica.url).await, 200);
    let connections = accepted.load(Ordering::SeqCst);
    unheld_burst(&replica, 20).await;
    assert!(
        accepted.load(Ordering::SeqCst) <= connections + 1,
        "no connection attempt per request (one probe at most)"
    );
    let store = &status(&replica.admin).await["token_store"];
    assert_ne!(store["state"], "up", "{store}");
    assert!(
        store["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{store}"
    );
    let m = metrics(&replica.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_token_store_state{state="up"}"#], 0.0,
        "{m:?}"
    );
    assert!(m[r#"cma_auth_proxy_token_store_total{event="error"}"#] >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_store_is_skipped_after_its_first_timeout() {
    a_broken_store_is_skipped(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_answering_garbage_is_skipped() {
    a_broken_store_is_skipped(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_refusing_connections_is_skipped_and_used_again_once_it_is_back() {
    let fake = fake().await;
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    redis.stop();
    let replica = replica(&fake, &redis, STORE_TIMEOUT, LOOSE_BUDGET);
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &replica.url).await, 200);
    unheld_burst(&replica, 20).await;
    let store = &status(&replica.admin).await["token_store"];
    assert_ne!(store["state"], "up", "{store}");
    assert!(
        store["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("refused")),
        "{store}"
    );
    assert!(store["since"].as_u64().is_some(), "{store}");

    redis.restart();
    eventually(30, "the replica uses the store again", || async {
        status(&replica.admin).await["token_store"]["state"] == "up"
    })
    .await;
    // It publishes the session it made alone, so that the fleet converges on it.
    eventually(10, "the replica's session is shared", || async {
        redis
            .cli(&["--scan", "--pattern", "cma-auth-proxy:token:*"])
            .lines()
            .count()
            == 1
    })
    .await;
    assert_eq!(
        metric(
            &replica.admin,
            r#"cma_auth_proxy_token_store_state{state="up"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_stops_answering_is_skipped_until_it_answers_again() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let relay = Relay::start(redis.port).await;
    let store = format!("encryption_key_file = \"key\"\n{STORE_TIMEOUT}");
    let replica = replica_at(&fake, &relay.url, &store, LOOSE_BUDGET);
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &replica.url).await, 200);
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "cma-auth-proxy:token:*"])
            .lines()
            .count(),
        1,
        "the session went through the relay"
    );

    relay.silence(true);
    // The requests in flight when the store falls silent wait for it (at most `timeout`, together).
    let statuses = burst(std::slice::from_ref(&replica), 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Later ones do not wait at all.
    unheld_burst(&replica, 20).await;
    assert_ne!(status(&replica.admin).await["token_store"]["state"], "up");

    relay.silence(false);
    eventually(30, "the replica uses the store again", || async {
        status(&replica.admin).await["token_store"]["state"] == "up"
    })
    .await;
    assert_eq!(get(&client, &replica.url).await, 200);
}

// ---------------------------------------------------------------------------------------------
// What a replica reads from the store: checked, bounded, and never derived from the password.
// ---------------------------------------------------------------------------------------------

/// The values a replica read back from the store and refused.
async fn refused_values(admin: &str) -> f64 {
    metric(
        admin,
        r#"cma_auth_proxy_token_store_total{event="invalid"}"#,
    )
    .await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A key of the account the replicas of these tests log in with.
fn store_key(kind: &str, fake: &FakeCma) -> String {
    let account = cma_auth_proxy::store::account_key(&fake.url(), EMAIL);
    format!("cma-auth-proxy:{kind}:{account}")
}

/// A token as a replica without a key stores it: `{sha256 hex}:{obtained ms}:p:{token}`.
fn plaintext_token(token: &str, obtained_ms: u64) -> String {
    format!(
        "{}:{obtained_ms}:p:{token}",
        cma_sim::sha256_hex(token.as_bytes())
    )
}

/// The unkeyed digest of the credentials that earlier builds stored in the failure record.
fn unkeyed_credentials_digest(email: &str, password: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cma-auth-proxy credentials v1\0");
    h.update(email.as_bytes());
    h.update(b"\0");
    h.update(password.as_bytes());
    h.update(b"\0");
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A failure record as someone with write access to Redis could write it: refused credentials,
/// try again in 73 years.
fn forged_failure() -> String {
    serde_json::json!({
        "rejected": true,
        "http_status": 422,
        "error_code": 104,
        "message": "forged",
        "credentials": unkeyed_credentials_digest(EMAIL, PASSWORD),
        "failed_at_ms": now_ms(),
        "retry_at_ms": now_ms() + 2_306_489_079_000,
    })
    .to_string()
}

/// Everything in the store: every key and, for strings, its value.
fn dump(redis: &RedisServer) -> String {
    let mut out = String::new();
    for key in redis.cli(&["--scan"]).lines() {
        out.push_str(key);
        out.push('\n');
        out.push_str(&redis.cli(&["GET", key]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_planted_in_the_store_are_refused_when_sealed() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let key = store_key("token", &fake);
    let client = reqwest::Client::new();
    // Stored in the clear by someone without the key.
    redis.cli(&["SET", &key, &plaintext_token("blt-planted", now_ms())]);
    let first = replica(&fake, &redis, "", "");
    assert_eq!(get(&client, &first.url).await, 200);
    assert_eq!(fake.logins(), 1, "the replica logged in itself");
    assert!(
        fake.requests().iter().all(|r| r
            .headers
            .get("authtoken")
            .is_none_or(|t| t != "blt-planted")),
        "the planted token went upstream"
    );
    // A sealed token with another date (an old one forces replicas with max_token_age to log in
    // again; a future one keeps them from ever refreshing): the seal covers the date too.
    let sealed = redis.cli(&["GET", &key]).trim().to_owned();
    let mut fields: Vec<String> = sealed.splitn(4, ':').map(str::to_owned).collect();
    assert_eq!(fields.len(), 4, "{sealed}");
    let obtained: u64 = fields[1].parse().unwrap();
    fields[1] = (obtained - 3_600_000).to_string();
    redis.cli(&["SET", &key, &fields.join(":")]);
    let second = replica(&fake, &redis, "", "");
    assert_eq!(get(&client, &second.url).await, 200);
    assert_eq!(fake.logins(), 2, "the redated token was refused");
    for replica in [&first, &second] {
        assert!(refused_values(&replica.admin).await >= 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_key_a_token_dated_in_the_future_is_refused_and_the_opt_out_is_loud() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let tomorrow = now_ms() + 86_400_000;
    redis.cli(&[
        "SET",
        &store_key("token", &fake),
        &plaintext_token("blt-planted", tomorrow),
    ]);
    let replica = plaintext_replica(&fake, &redis, "");
    assert_eq!(get(&reqwest::Client::new(), &replica.url).await, 200);
    assert_eq!(fake.logins(), 1, "the replica logged in itself");
    assert!(
        fake.requests().iter().all(|r| r
            .headers
            .get("authtoken")
            .is_none_or(|t| t != "blt-planted")),
        "the planted token went upstream"
    );
    let log = replica.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("allow_plaintext")),
        "{log}"
    );
}

/// Starts a replica, lets it log in, plants [`forged_failure`], evicts the session and asks
/// again: the re-login reads the forged record.
async fn relogin_after_a_forged_failure(
    sealed: bool,
) -> Option<(FakeCma, Binary, reqwest::Response)> {
    let fake = fake().await;
    let redis = RedisServer::start_or_skip()?;
    let profile = "rejected_retry = \"3s\"";
    let replica = if sealed {
        replica(&fake, &redis, "", profile)
    } else {
        plaintext_replica(&fake, &redis, profile)
    };
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &replica.url).await, 200);
    redis.cli(&["SET", &store_key("fail", &fake), &forged_failure()]);
    fake.evict_sessions(EMAIL);
    let response = client
        .get(format!("{}/v3/user", replica.url))
        .send()
        .await
        .unwrap();
    Some((fake, replica, response))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_failure_record_is_refused_when_sealed() {
    let Some((fake, _replica, response)) = relogin_after_a_forged_failure(true).await else {
        return;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(fake.logins(), 2, "{:?}", fake.login_attempts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_key_a_forged_failure_record_holds_logins_back_no_longer_than_our_settings() {
    let Some((fake, replica, response)) = relogin_after_a_forged_failure(false).await else {
        return;
    };
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after <= 3,
        "Retry-After {retry_after} beyond rejected_retry"
    );
    let client = reqwest::Client::new();
    eventually(10, "the replica logs in again", || async {
        get(&client, &replica.url).await == 200
    })
    .await;
    assert_eq!(fake.logins(), 2, "{:?}", fake.login_attempts());
}

/// A login lock someone planted (`SET` with `extra` expiry arguments) before the replica starts.
async fn a_planted_lock_expires(extra: &[&str]) {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let mut set = vec![
        "SET".to_owned(),
        store_key("lock", &fake),
        "planted".to_owned(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    redis.cli(&set.iter().map(String::as_str).collect::<Vec<_>>());
    let replica = replica(&fake, &redis, "lock_ttl = \"1s\"", "");
    // A live holder may keep the lock for a whole login (about a minute): a planted lock must
    // not get that long.
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        get(&reqwest::Client::new(), &replica.url),
    )
    .await
    .expect("the planted lock expired within lock_ttl");
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &replica.admin,
            r#"cma_auth_proxy_token_store_total{event="fleet_login"}"#
        )
        .await,
        1.0,
        "it logged in for the fleet, under the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_lock_planted_without_expiry_gets_one() {
    a_planted_lock_expires(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_lock_planted_with_a_long_expiry_gets_lock_ttl() {
    a_planted_lock_expires(&["EX", "86400"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_holds_nothing_derived_from_the_password_and_no_upstream_text() {
    for sealed in [true, false] {
        let fake = fake().await;
        let Some(redis) = RedisServer::start_or_skip() else {
            return;
        };
        // The replica's password is refused: its failure is shared through the store.
        fake.set_password(EMAIL, "another password");
        let _replica = if sealed {
            replica(&fake, &redis, "", "")
        } else {
            plaintext_replica(&fake, &redis, "")
        };
        eventually(10, "the refused login is shared", || async {
            redis
                .cli(&["--scan", "--pattern", "cma-auth-proxy:fail:*"])
                .lines()
                .count()
                == 1
        })
        .await;
        let dump = dump(&redis);
        for (what, needle) in [
            (
                "an unkeyed digest of the password",
                unkeyed_credentials_digest(EMAIL, PASSWORD).as_str(),
            ),
            ("the upstream's message", "email or password is invalid"),
            ("the password", PASSWORD),
            ("the e-mail", EMAIL),
        ] {
            assert!(
                !dump.contains(needle),
                "{what} in the store (sealed: {sealed}): {dump}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_value_in_the_store_is_not_read() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    // 64 MiB under the token and the failure key (SETRANGE makes them inside Redis at once).
    for kind in ["token", "fail"] {
        redis.cli(&["SETRANGE", &store_key(kind, &fake), "67108863", "x"]);
    }
    let sent = || {
        let info = redis.cli(&["INFO", "stats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .expect("INFO stats")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = sent();
    let replica = replica(&fake, &redis, "", "");
    assert_eq!(get(&reqwest::Client::new(), &replica.url).await, 200);
    assert_eq!(fake.logins(), 1);
    let read = sent() - before;
    assert!(
        read < 1 << 20,
        "Redis sent {read} bytes: a value was read whole"
    );
    assert!(refused_values(&replica.admin).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_of_another_type_in_the_store_is_replaced_by_the_fleet_login() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let key = store_key("token", &fake);
    redis.cli(&["HSET", &key, "token", "blt-planted"]);
    let replica = replica(&fake, &redis, "", "");
    assert_eq!(get(&reqwest::Client::new(), &replica.url).await, 200);
    assert_eq!(
        redis.cli(&["TYPE", &key]).trim(),
        "string",
        "the fleet shares again"
    );
    assert_eq!(
        metric(
            &replica.admin,
            r#"cma_auth_proxy_token_store_total{event="fleet_login"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_rate_state_does_not_hold_requests_back() {
    let fake = fake().await;
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let account = cma_auth_proxy::store::account_key(&fake.url(), EMAIL);
    // The next slot in 30 years.
    redis.cli(&[
        "SET",
        &format!("cma-auth-proxy:rate:read:{account}"),
        &(now_ms() + 1_000_000_000_000).to_string(),
    ]);
    let replica = replica(
        &fake,
        &redis,
        "",
        "[profiles.default.rate_limit]\nreads_per_second = 9\nburst = 1\nmax_wait = \"2s\"",
    );
    assert_eq!(get(&reqwest::Client::new(), &replica.url).await, 200);
}

/// A "Redis" that answers the first command with a bulk string announced as 1.9 GB and then
/// streams it as fast as it is read. Returns its URL and the most bytes it got to send on one
/// connection.
async fn redis_with_a_huge_reply() -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let most = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = most.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut sent = 0u64;
                let chunk = vec![b'a'; 1 << 20];
                if socket.write_all(b"$1900000000\r\n").await.is_err() {
                    return;
                }
                while socket.write_all(&chunk).await.is_ok() {
                    sent += chunk.len() as u64;
                    counter.fetch_max(sent, Ordering::SeqCst);
                }
            });
        }
    });
    (url, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_announcing_a_huge_reply_is_cut_off_before_it_is_read() {
    let fake = fake().await;
    let (url, most_sent) = redis_with_a_huge_reply().await;
    // A generous timeout: the bound, not the clock, must stop the read.
    let replica = replica_at(
        &fake,
        &url,
        "encryption_key_file = \"key\"\ntimeout = \"2s\"",
        "",
    );
    eventually(10, "the store is found broken", || async {
        status(&replica.admin).await["token_store"]["last_error"].is_string()
    })
    .await;
    let error = status(&replica.admin).await["token_store"]["last_error"].clone();
    assert!(
        error.as_str().is_some_and(|e| e.contains("larger than")),
        "{error}"
    );
    // What the proxy read of it is no more than what the sockets' buffers took.
    let sent = most_sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 << 20,
        "{} MiB were sent before the proxy hung up",
        sent >> 20
    );
    assert_eq!(get(&reqwest::Client::new(), &replica.url).await, 200);
}
