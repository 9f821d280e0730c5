//! OAuth profiles (docs/design.md#oauth-profiles): access tokens obtained by refresh under the same
//! single flight as logins, renewed ahead of their expiry, replaced after a 401 with one refresh
//! and one replay; the rotating refresh token kept before the access token is used, so that a
//! killed process restarts with it; one refresh per expiry across a fleet; a revoked app refused
//! fast, tried once per window.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cma_sim::{FakeCma, OAuthApp};
use common::*;

const APP: &str = "app0demo";
const CLIENT: &str = "client0demo";
const REDIRECT: &str = "http://127.0.0.1:8184/callback";

async fn oauth_fake(ttl: Duration) -> FakeCma {
    FakeCma::builder()
        .account(account())
        .oauth_app(OAuthApp::new(APP, CLIENT, REDIRECT, EMAIL))
        .access_token_ttl(ttl)
        .without_rate_limit()
        .start()
        .await
        .unwrap()
}

/// A directory with the bootstrap refresh token (`refresh-token`) and a state directory.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new(bootstrap: &str) -> Files {
        let dir = tempdir();
        std::fs::write(dir.join("refresh-token"), format!("{bootstrap}\n")).unwrap();
        std::fs::create_dir(dir.join("state")).unwrap();
        Files { dir }
    }

    /// The `[profiles.default.oauth]` table, with `extra` lines.
    fn profile(&self, extra: &str) -> String {
        format!(
            "[profiles.default]\nmin_backoff = \"100ms\"\nmax_backoff = \"1s\"\n\
             [profiles.default.oauth]\napp_id = \"{APP}\"\nclient_id = \"{CLIENT}\"\n\
             redirect_uri = \"{REDIRECT}\"\nrefresh_token_file = \"{}\"\nstate_dir = \"{}\"\n{extra}\n",
            self.dir.join("refresh-token").display(),
            self.dir.join("state").display(),
        )
    }

    fn state_file(&self) -> std::path::PathBuf {
        self.dir.join("state").join("default.json")
    }
}

/// The files of a fleet of replicas: the bootstrap refresh token and the store's key, and each
/// replica's configuration (the OAuth profile `default`, the Redis store at a URL of its own).
struct Fleet {
    dir: TempDir,
}

/// The simulator with an OAuth app whose access tokens live `ttl`, a Redis of the test's own, and
/// the files of a fleet holding a fresh authorization's refresh token.
async fn oauth_fleet(ttl: Duration) -> (FakeCma, RedisServer, Fleet) {
    let fake = oauth_fake(ttl).await;
    let redis = RedisServer::start();
    let fleet = Fleet::new(&fake.authorize_oauth_app().unwrap());
    (fake, redis, fleet)
}

impl Fleet {
    fn new(bootstrap: &str) -> Fleet {
        let dir = tempdir();
        std::fs::write(dir.join("refresh-token"), bootstrap).unwrap();
        std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
        Fleet { dir }
    }

    /// Writes the configuration `name` of a replica that forwards to `upstream` and reaches Redis
    /// at `store`.
    fn config(&self, name: &str, upstream: &str, store: &str) -> std::path::PathBuf {
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            config_toml(
                upstream,
                "",
                &format!(
                    "[token_store]\nkind = \"redis\"\nurl = \"{store}\"\nencryption_key_file = \"key\"\n\
                     [profiles.default]\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
                     [profiles.default.oauth]\napp_id = \"{APP}\"\nclient_id = \"{CLIENT}\"\n\
                     redirect_uri = \"{REDIRECT}\"\nrefresh_token_file = \"refresh-token\"\n",
                ),
            ),
        )
        .unwrap();
        path
    }
}

/// The refresh tokens the token endpoint was sent, in order, with the status it answered.
fn refreshes(fake: &FakeCma) -> Vec<(String, u16)> {
    fake.refresh_attempts()
        .into_iter()
        .map(|a| (a.refresh_token, a.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_cold_requests_cause_one_refresh_with_the_token_as_bearer() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let proxy = proxy(&fake, "", &files.profile("")).await;
    let (client, url) = (proxy.client.clone(), format!("{}/v3/user", proxy.url));
    // Distinct queries: identical concurrent reads would be coalesced into one upstream request.
    let statuses = concurrently(500, |i| {
        let (client, url) = (client.clone(), format!("{url}?n={i}"));
        async move { client.get(&url).send().await.unwrap().status().as_u16() }
    })
    .await;
    assert_all_ok(&statuses);
    assert_eq!(refreshes(&fake), vec![(bootstrap.clone(), 200)]);
    let requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v3/user")
        .collect();
    assert_eq!(requests.len(), 500);
    for r in &requests {
        assert!(r.headers.get("authtoken").is_none());
        let authorization = r.headers["authorization"].to_str().unwrap();
        assert!(authorization.starts_with("Bearer at"), "{authorization}");
    }
    // The rotated refresh token was kept, in a file only the proxy can read.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(files.state_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let status = proxy.status_json().await;
    let profile = &status["profiles"]["default"];
    assert_eq!(profile["mode"], "oauth", "{status}");
    assert_eq!(profile["ready"], true, "{status}");
    let expires_in = profile["token_expires_in_seconds"].as_u64().unwrap();
    assert!((3500..=3600).contains(&expires_in), "{status}");
}

/// Every status is 200; else how many of each there were.
#[track_caller]
fn assert_all_ok(statuses: &[u16]) {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(*s).or_insert(0) += 1;
    }
    assert!(
        counts.keys().all(|s| *s == 200),
        "statuses seen, with their counts: {counts:?}"
    );
}

/// Runs `n` clients that each send GET /v3/user in a loop until `stop`; their statuses.
fn busy_clients(
    proxy: &Proxy,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<u16>>> {
    (0..n)
        .map(|_| {
            let (client, url, stop) = (
                proxy.client.clone(),
                format!("{}/v3/user", proxy.url),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(client.get(&url).send().await.unwrap().status().as_u16());
                }
                statuses
            })
        })
        .collect()
}

async fn statuses_of(clients: Vec<tokio::task::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_token_that_expires_under_a_hundred_busy_clients_causes_one_refresh_and_no_401() {
    let fake = Arc::new(oauth_fake(Duration::from_secs(3600)).await);
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = busy_clients(&proxy, 100, &stop);
    // Upstream requests, of which there are a few dozen a second: the clients' identical reads
    // are coalesced, one upstream request per flight.
    eventually(10, "load is running", || async {
        fake.requests().len() > 100
    })
    .await;
    // The CMA stops accepting the access token before the proxy expects it to (a clock ahead, a
    // shortened lifetime): requests in flight meet the 401.
    fake.expire_access_tokens();
    let expired_at = fake.requests().len();
    eventually(20, "load continues after the expiry", || async {
        fake.requests().len() > expired_at + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let statuses = statuses_of(clients).await;
    assert_all_ok(&statuses);
    assert_eq!(
        fake.refreshes(),
        2,
        "start-up, then exactly one: {:?}",
        refreshes(&fake)
    );
    let refused = fake
        .requests()
        .iter()
        .skip(expired_at)
        .filter(|r| r.path == "/v3/user")
        .count();
    assert!(refused > 0, "the expiry hit requests in flight");
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_is_renewed_ahead_of_its_expiry_while_clients_are_busy() {
    // Eight seconds: renewed after about four, usable until 7.2.
    let fake = Arc::new(oauth_fake(Duration::from_secs(8)).await);
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let first = fake.refresh_attempts()[0].at;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = busy_clients(&proxy, 100, &stop);
    eventually(15, "the renewal", || async { fake.refreshes() == 2 }).await;
    let renewed = fake.refresh_attempts()[1].at;
    let after = fake.requests().len();
    // A few upstream requests, not hundreds: the clients' identical reads are coalesced, so the
    // upstream sees one per flight (a few dozen a second on a busy two-core machine), and the
    // next renewal is due about four seconds after this one.
    eventually(10, "load continues after the renewal", || async {
        fake.requests().len() > after + 30
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let statuses = statuses_of(clients).await;
    assert_all_ok(&statuses);
    assert_eq!(fake.refreshes(), 2, "{:?}", refreshes(&fake));
    // Ahead: the old token still had a while to go, so no request ever waited for the renewal.
    assert!(
        renewed.duration_since(first) < Duration::from_secs(7),
        "renewed {:?} after the first refresh",
        renewed.duration_since(first)
    );
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="expiry"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_token_endpoint_keeps_the_valid_access_token_in_use() {
    let fake = oauth_fake(Duration::from_secs(6)).await;
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.set_token_outage(Some(http::StatusCode::SERVICE_UNAVAILABLE));
    eventually(10, "the renewal fails", || async {
        fake.refresh_attempts().iter().any(|a| a.status == 503)
    })
    .await;
    // Still within the token's life: served, and ready.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let ready = reqwest::get(format!("{}/readyz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Once it is past its use, requests fail fast until the endpoint is back.
    eventually(10, "the token is past its use", || async {
        let response = proxy.get("/v3/user").send().await.unwrap();
        response.status() == 503
            && response.headers()["x-cma-auth-proxy-error"] == "login_unavailable"
    })
    .await;
    let attempts = fake.refresh_attempts().len();
    assert!(attempts < 20, "backed off: {attempts} attempts");
    fake.set_token_outage(None);
    eventually(10, "served again", || async {
        proxy.get("/v3/user").send().await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_app_gets_a_fast_login_rejected_and_one_attempt_per_window() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.revoke_oauth();
    for _ in 0..20 {
        let response = proxy.get("/v3/user").send().await.unwrap();
        assert_proxy_answer(&response, 503, "login_rejected");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((290..=300).contains(&retry_after), "{retry_after}");
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error_message"].as_str().unwrap();
        assert!(
            message.contains("invalid_grant") && message.contains("oauth login"),
            "{message}"
        );
    }
    let attempts = refreshes(&fake);
    assert_eq!(attempts.len(), 2, "one success, one refusal: {attempts:?}");
    assert_eq!(attempts[1].1, 400);
    let ready = reqwest::get(format!("{}/readyz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_logins_total{profile="default",outcome="rejected"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_refresh_token_is_not_the_end_while_a_newer_one_is_kept() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let first = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&first);
    let mut running = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(running.get("/v3/user").send().await.unwrap().status(), 200);
    running.shutdown().await;
    // A second authorization, revoked, handed in later than the kept token was obtained: by date
    // the newest, yet refused.
    let second = fake.authorize_oauth_app().unwrap();
    assert!(fake.revoke_oauth_of(&second));
    std::fs::write(files.dir.join("refresh-token"), &second).unwrap();
    // The kernel stamps a write with a coarse clock (a few milliseconds behind the time the kept
    // token was stamped with, when the two come that close): stamp the file with the precise one,
    // as a write made a moment later would be.
    std::fs::File::options()
        .write(true)
        .open(files.dir.join("refresh-token"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let attempts = refreshes(&fake);
    let statuses: Vec<u16> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(statuses, vec![200, 400, 200], "{attempts:?}");
    assert_eq!(attempts[1].0, second);
    assert_ne!(
        attempts[2].0, first,
        "the kept successor of the first, not the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_restarts_with_the_kept_refresh_token() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    let config = files.dir.join("config.toml");
    std::fs::write(&config, config_toml(&fake.url(), "", &files.profile(""))).unwrap();
    let client = reqwest::Client::new();
    let mut first = Binary::start(&config, &[]);
    // Served with the refreshed access token: the refresh token that came with it is kept.
    eventually(10, "the first process serves", || async {
        client
            .get(format!("{}/v3/user", first.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    first.signal("KILL");
    first.child.wait().unwrap();
    assert_eq!(fake.refreshes(), 1);
    let second = Binary::start(&config, &[]);
    eventually(10, "the restarted process serves", || async {
        client
            .get(format!("{}/v3/user", second.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let attempts = refreshes(&fake);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.1 == 200), "{attempts:?}");
    assert_ne!(
        attempts[1].0, bootstrap,
        "the kept token, not the bootstrap"
    );
    assert!(
        !fake.is_refresh_token_live(&bootstrap),
        "its successor was used: the bootstrap token is dead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_use_each_refresh_token_once_across_expiries() {
    let (fake, redis, fleet) = oauth_fleet(Duration::from_secs(3)).await;
    let fake = Arc::new(fake);
    let config = fleet.config("config.toml", &fake.url(), &redis.url());
    let replicas = [Binary::start(&config, &[]), Binary::start(&config, &[])];
    let client = reqwest::Client::new();
    new_fleet_serves(&client, &[&replicas[0], &replicas[1]]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..20)
        .map(|i| {
            let (client, url, stop) = (
                client.clone(),
                format!("{}/v3/user", replicas[i % 2].url),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(client.get(&url).send().await.unwrap().status().as_u16());
                }
                statuses
            })
        })
        .collect();
    eventually(30, "several expiries", || async { fake.refreshes() >= 6 }).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = statuses_of(loops).await;
    assert_all_ok(&statuses);
    let attempts = refreshes(&fake);
    assert!(attempts.iter().all(|a| a.1 == 200), "{attempts:?}");
    let used: std::collections::HashSet<&String> = attempts.iter().map(|a| &a.0).collect();
    assert_eq!(
        used.len(),
        attempts.len(),
        "a refresh token used twice: {attempts:?}"
    );
    // Nothing readable in Redis: the refresh and access tokens are sealed.
    let dump = redis.cli(&["--scan", "--pattern", "cma-auth-proxy:*"]);
    for key in dump.lines() {
        let value = redis.cli(&["GET", key]);
        for token in fake.issued_oauth_tokens() {
            assert!(!value.contains(&token), "{key} holds a token in the clear");
        }
    }
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_refresh_token_file_ends_the_refused_window_at_once() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let first = fake.authorize_oauth_app().unwrap();
    let mut volume = SecretVolume::new(&[("refresh-token", &first)]);
    let files = Files::new("unused");
    let config = files.dir.join("config.toml");
    let write_config = || {
        std::fs::write(
            &config,
            config_toml(
                &fake.url(),
                "",
                &files.profile("").replace(
                    &files.dir.join("refresh-token").display().to_string(),
                    &volume.path("refresh-token").display().to_string(),
                ),
            ),
        )
        .unwrap()
    };
    write_config();
    let proxy = proxy_from_file(&config).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.revoke_oauth();
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_proxy_answer(&response, 503, "login_rejected");
    // The operator authorizes the app again and updates the Secret.
    let second = fake.authorize_oauth_app().unwrap();
    volume.update(&[("refresh-token", &second)]);
    eventually(10, "served with the new authorization", || async {
        proxy.get("/v3/user").send().await.unwrap().status() == 200
    })
    .await;
    let attempts = refreshes(&fake);
    assert_eq!(
        attempts.last().unwrap(),
        &(second.clone(), 200),
        "{attempts:?}"
    );
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="rotate"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_whose_redis_restarts_empty_never_refreshes_alone_and_recovers() {
    let (fake, mut redis, fleet) = oauth_fleet(Duration::from_secs(4)).await;
    let fake = Arc::new(fake);
    let config = fleet.config("config.toml", &fake.url(), &redis.url());
    let replicas = [Binary::start(&config, &[]), Binary::start(&config, &[])];
    let client = reqwest::Client::new();
    let get = |i: usize| {
        let url = format!("{}/v3/user", replicas[i].url);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    new_fleet_serves(&client, &[&replicas[0], &replicas[1]]).await;
    eventually(
        10,
        "the second replica learnt the refresh token",
        || async { fake.refreshes() >= 2 },
    )
    .await;
    redis.stop();
    let refreshes_before = fake.refresh_attempts().len();
    // Without the store no replica refreshes: once the token is past its use, requests fail fast.
    eventually(15, "the token is past its use", || async {
        let response = get(0).await;
        response.status() == 503
            && response.headers()["x-cma-auth-proxy-error"] == "login_unavailable"
    })
    .await;
    assert_eq!(fake.refresh_attempts().len(), refreshes_before);
    redis.restart();
    // The first replica back puts its refresh token back, and the fleet settles before refreshing.
    eventually(60, "both replicas serve again", || async {
        get(0).await.status() == 200 && get(1).await.status() == 200
    })
    .await;
    assert_each_refresh_token_used_once(&fake);
    drop(replicas);
}

/// A settling window someone planted without an expiry holds refreshes back no longer than one a
/// replica starts (about 20 s), and the 503 says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settling_window_planted_in_the_store_lasts_no_longer_than_a_real_one() {
    let (fake, redis, fleet) = oauth_fleet(Duration::from_secs(3600)).await;
    let config = fleet.config("config.toml", &fake.url(), &redis.url());
    let replica = Binary::start(&config, &[]);
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/v3/user", replica.url)).send();
    new_fleet_serves(&client, &[&replica]).await;
    let grant = redis.cli(&["--scan", "--pattern", "cma-auth-proxy:grant:*"]);
    let settle = grant.trim().replace(":grant:", ":settle:");
    redis.cli(&["SET", &settle, "planted"]);
    fake.expire_access_tokens();
    let response = get().await.unwrap();
    assert!(is_settling(response).await, "a 503 while the fleet settles");
    let left: u64 = redis.cli(&["PTTL", &settle]).trim().parse().unwrap();
    // 20 s and the store's timeout (250 ms).
    assert!((1..=20_250).contains(&left), "{left}");
    assert_eq!(fake.refreshes(), 1, "no refresh while the fleet settles");
    drop(replica);
}

/// A replica started while Redis is empty after a restart, before the replica holding the newest
/// refresh token has reached it again, holds only its handed-in token: it must not refresh with
/// it (the fleet has used it already), but wait until the others have put theirs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_the_store_is_empty_waits_for_the_fleet_s_newest_token() {
    let (fake, mut redis, fleet) = oauth_fleet(Duration::from_secs(3600)).await;
    let relay = Relay::start(redis.port).await;
    let client = reqwest::Client::new();
    let first = Binary::start(&fleet.config("first.toml", &fake.url(), &relay.url), &[]);
    new_fleet_serves(&client, &[&first]).await;
    assert_eq!(fake.refreshes(), 1);
    // Redis restarts empty while the first replica cannot reach it; a second starts meanwhile.
    relay.cut(true);
    redis.stop();
    redis.restart();
    let second = Binary::start(&fleet.config("second.toml", &fake.url(), &redis.url()), &[]);
    let url = format!("{}/v3/user", second.url);
    let response = client.get(&url).send().await.unwrap();
    assert!(is_settling(response).await, "a 503 while the fleet settles");
    relay.cut(false);
    new_fleet_serves(&client, &[&first, &second]).await;
    assert_each_refresh_token_used_once(&fake);
    assert_eq!(fake.refreshes(), 2, "{:?}", refreshes(&fake));
    drop((first, second));
}

/// A `refresh_token_file` dated in the future (copied from a machine whose clock runs ahead)
/// dates no refresh token after it: a stored token dated ahead of the replicas' clocks would be
/// refused by every one of them, and refreshes would stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_file_dated_in_the_future_does_not_stop_refreshes() {
    let (fake, redis, fleet) = oauth_fleet(Duration::from_secs(3600)).await;
    std::fs::File::options()
        .write(true)
        .open(fleet.dir.join("refresh-token"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(600))
        .unwrap();
    let replica = Binary::start(&fleet.config("config.toml", &fake.url(), &redis.url()), &[]);
    let client = reqwest::Client::new();
    new_fleet_serves(&client, &[&replica]).await;
    fake.expire_access_tokens();
    eventually(15, "refreshed again", || async {
        let url = format!("{}/v3/user", replica.url);
        client.get(url).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(fake.refreshes(), 2);
}

/// Waits until every replica of a new fleet serves. Its store holds no refresh token, which no
/// replica can tell from a store that lost its data: the first refresh waits out the settling
/// window (about 20 s).
async fn new_fleet_serves(client: &reqwest::Client, replicas: &[&Binary]) {
    eventually(45, "the new fleet serves", || async {
        for replica in replicas {
            let url = format!("{}/v3/user", replica.url);
            if client.get(url).send().await.unwrap().status() != 200 {
                return false;
            }
        }
        true
    })
    .await;
}

/// Whether `response` is the 503 a replica answers while the fleet settles, with no refresh token
/// it may use yet.
async fn is_settling(response: reqwest::Response) -> bool {
    response.status() == 503
        && response
            .text()
            .await
            .unwrap()
            .contains("had no refresh token")
}

fn assert_each_refresh_token_used_once(fake: &FakeCma) {
    let attempts = refreshes(fake);
    assert!(attempts.iter().all(|a| a.1 == 200), "{attempts:?}");
    let used: std::collections::HashSet<&String> = attempts.iter().map(|a| &a.0).collect();
    assert_eq!(
        used.len(),
        attempts.len(),
        "a refresh token used twice: {attempts:?}"
    );
}

/// Redis restarts empty just after a refresh that one replica did not see, and that replica is
/// the first to reach the store again: the refresh token it puts back is one the fleet has already
/// used. No replica refreshes before every one had the time to put back its own, so the next
/// refresh uses the newest, and no refresh token is used twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_store_restarts_empty_the_fleet_refreshes_with_its_newest_refresh_token() {
    let (fake, mut redis, fleet) = oauth_fleet(Duration::from_secs(4)).await;
    let relays = [
        Relay::start(redis.port).await,
        Relay::start(redis.port).await,
    ];
    let client = reqwest::Client::new();
    let get = |replica: &Binary| {
        let url = format!("{}/v3/user", replica.url);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    // The first replica refreshes the handed-in token; the second takes the result from the store.
    let first = Binary::start(
        &fleet.config("first.toml", &fake.url(), &relays[0].url),
        &[],
    );
    new_fleet_serves(&client, &[&first]).await;
    let second = Binary::start(
        &fleet.config("second.toml", &fake.url(), &relays[1].url),
        &[],
    );
    eventually(10, "the second replica serves", || async {
        get(&second).await.status() == 200
    })
    .await;
    assert_eq!(fake.refreshes(), 1);
    // The first loses the store; the second makes the next refresh, which the first never sees.
    relays[0].cut(true);
    eventually(15, "the second replica refreshed", || async {
        fake.refreshes() == 2
    })
    .await;
    // Redis restarts empty, and the first replica is the first to reach it again.
    relays[1].cut(true);
    redis.stop();
    redis.restart();
    relays[0].cut(false);
    eventually(30, "the first replica's token is past its use", || async {
        is_settling(get(&first).await).await || fake.refresh_attempts().len() > 2
    })
    .await;
    relays[1].cut(false);
    eventually(60, "both replicas serve again", || async {
        get(&first).await.status() == 200 && get(&second).await.status() == 200
    })
    .await;
    assert_each_refresh_token_used_once(&fake);
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oauth_secret_reaches_the_log_the_status_or_the_metrics() {
    const SECRET: &str = "client-secret-7c1e55";
    let fake = FakeCma::builder()
        .account(account())
        .oauth_app(OAuthApp::new(APP, CLIENT, REDIRECT, EMAIL).with_secret(SECRET))
        .without_rate_limit()
        .start()
        .await
        .unwrap();
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    std::fs::write(files.dir.join("client-secret"), SECRET).unwrap();
    let config = files.dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(
            &fake.url(),
            "",
            &format!(
                "{}\nclient_secret_file = \"client-secret\"\n[log]\nlevel = \"trace\"\n",
                files.profile("").replace(
                    "max_backoff = \"1s\"\n",
                    "max_backoff = \"1s\"\nvalidate_interval = \"100ms\"\n"
                ),
            ),
        ),
    )
    .unwrap();
    let binary = Binary::start(&config, &[("RUST_LOG", "trace")]);
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/v3/user", binary.url)).send();
    eventually(10, "served", || async {
        get().await.unwrap().status() == 200
    })
    .await;
    fake.expire_access_tokens();
    assert_eq!(get().await.unwrap().status(), 200);
    fake.revoke_oauth();
    eventually(10, "refused", || async {
        get().await.unwrap().status() == 503
    })
    .await;
    let status = text(&format!("{}/status", binary.admin)).await;
    let metrics = text(&format!("{}/metrics", binary.admin)).await;
    let log = binary.log_text();
    assert!(log.contains("refreshed the OAuth access token"), "{log}");
    let issued = fake.issued_oauth_tokens();
    assert!(issued.len() >= 4, "{issued:?}");
    for secret in issued.iter().map(String::as_str).chain([SECRET]) {
        for (what, text) in [("log", &log), ("status", &status), ("metrics", &metrics)] {
            assert!(!text.contains(secret), "the {what} holds a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_store_that_lost_the_refresh_token_gets_it_back_before_anyone_needs_it() {
    let (fake, redis, fleet) = oauth_fleet(Duration::from_secs(3600)).await;
    let config = fleet.config("config.toml", &fake.url(), &redis.url());
    let replica = Binary::start(&config, &[]);
    let grant_keys = || redis.cli(&["--scan", "--pattern", "cma-auth-proxy:grant:*"]);
    new_fleet_serves(&reqwest::Client::new(), &[&replica]).await;
    eventually(10, "the refreshed token is kept in the store", || async {
        fake.refreshes() == 1 && grant_keys().lines().count() == 1
    })
    .await;
    // Redis restarted without persistence, or was flushed: the replica still holds the token.
    redis.cli(&["FLUSHALL"]);
    eventually(10, "the replica put it back", || async {
        grant_keys().lines().count() == 1
    })
    .await;
    assert_eq!(fake.refreshes(), 1, "put back, not refreshed");
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_that_cannot_be_kept_is_used_shown_and_kept_once_possible() {
    let fake = oauth_fake(Duration::from_secs(3600)).await;
    let bootstrap = fake.authorize_oauth_app().unwrap();
    let files = Files::new(&bootstrap);
    // A directory where the state file goes: no write can replace it, not even root's.
    std::fs::create_dir(files.state_file()).unwrap();
    let proxy = proxy(&fake, "", &files.profile("")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let status = proxy.status_json().await;
    assert_eq!(
        status["profiles"]["default"]["refresh_token_saved"], false,
        "{status}"
    );
    std::fs::remove_dir(files.state_file()).unwrap();
    eventually(10, "kept at last", || async {
        proxy.status_json().await["profiles"]["default"]["refresh_token_saved"] == true
    })
    .await;
    let kept = std::fs::read_to_string(files.state_file()).unwrap();
    let issued = fake.issued_oauth_tokens();
    assert!(
        kept.contains(&issued[1]),
        "the rotated refresh token, not the bootstrap"
    );
    assert_eq!(fake.refreshes(), 1);
}
