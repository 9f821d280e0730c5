//! A token evicted upstream (the 21st login elsewhere) is replaced by exactly one re-login, and no
//! client sees the 401 when its request can be replayed (docs/design.md#replay-after-an-eviction).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_load_causes_one_relogin_and_no_client_401() {
    let fake = Arc::new(fake().await);
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(fake.logins(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    // docs/design.md#performance: an eviction under 200 concurrent clients → exactly 1 re-login, 0
    // client 401s.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (client, url) = (proxy.client.clone(), proxy.url.clone());
            let (stop, done, progress) = (stop.clone(), done.clone(), progress.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // Reads and small writes alike: both are replayable.
                    let request = if i % 2 == 0 {
                        client.get(format!("{url}/v3/user"))
                    } else {
                        client
                            .request(Method::POST, format!("{url}/v3/_sim/upload"))
                            .body(vec![i as u8; 2048])
                    };
                    statuses.push(request.send().await.unwrap().status().as_u16());
                    done.fetch_add(1, Ordering::Relaxed);
                    progress.notify_waiters();
                }
                statuses
            })
        })
        .collect();

    let wait_for = |target: usize| {
        let (done, progress) = (done.clone(), progress.clone());
        async move {
            while done.load(Ordering::Relaxed) < target {
                let notified = progress.notified();
                if done.load(Ordering::Relaxed) >= target {
                    break;
                }
                notified.await;
            }
        }
    };
    wait_for(300).await;
    assert_eq!(
        fake.evict_sessions(EMAIL),
        1,
        "the proxy's one session dies"
    );
    let after = done.load(Ordering::Relaxed);
    wait_for(after + 1000).await;
    stop.store(true, Ordering::Relaxed);

    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    let not_ok: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(not_ok.is_empty(), "clients saw {not_ok:?}");
    assert_eq!(
        fake.logins(),
        2,
        "one start-up login and exactly one re-login"
    );
    let rejected_with_dead_token = fake
        .requests()
        .iter()
        .filter(|r| r.path != "/v3/user-session")
        .filter(|r| {
            !fake
                .live_sessions(EMAIL)
                .iter()
                .any(|t| r.headers["authtoken"] == t.as_str())
        })
        .count();
    assert!(
        rejected_with_dead_token > 0,
        "the eviction hit requests in flight"
    );
}

#[tokio::test]
async fn streamed_upload_after_eviction_gets_the_401_intact_and_the_next_request_succeeds() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "replay_body_limit = \"64KiB\"",
        &profile(PASSWORD, ""),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.evict_sessions(EMAIL);

    // 8 MiB, streamed: larger than replay_body_limit, so it cannot be replayed.
    let response = proxy
        .request(Method::POST, "/v3/_sim/upload")
        .body(streamed(bytes::Bytes::from(vec![7u8; 8 << 20])))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(
        headers.get("x-cma-auth-proxy-error").is_none(),
        "upstream's own 401"
    );
    assert_eq!(body["error_code"], 105);
    assert_eq!(body["errors"]["authtoken"][0], "is not valid.");

    // The dead token was dropped: the next request logs in again and succeeds.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn gzip_encoded_105_is_recognised() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.evict_sessions(EMAIL);
    // SDKs ask for gzip; the CMA then compresses its 401 too.
    let response = proxy
        .get("/v3/user")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fake.logins(), 2);
}

#[tokio::test]
async fn other_401s_pass_through_and_keep_the_token() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        "[profiles.mt]\nmanagement_token = \"not-a-session\"\n",
    )
    .await;
    // The simulator answers 401/105 to anything without a live authtoken; for a management-token
    // profile that 401 is the CMA's answer and passes through untouched, with no login attempt.
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("x-cma-auth-proxy-error").is_none());
    assert!(fake.login_attempts().is_empty());
}

#[tokio::test]
async fn tokens_rejected_right_after_their_login_back_off_instead_of_a_login_per_request() {
    let fake = fake().await;
    // Every token is refused at once: something else is wrong, and each login would evict one of
    // the account's 20 sessions.
    fake.set_reject_tokens(true);
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, "min_backoff = \"1m\"\nmax_backoff = \"5m\""),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let response = proxy.get("/v3/user").send().await.unwrap();
        let status = response.status().as_u16();
        if status == 503 {
            assert_eq!(
                response.headers()["x-cma-auth-proxy-error"],
                "login_unavailable"
            );
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
        }
        statuses.push(status);
    }
    // The first rejection could be a one-off eviction: one immediate re-login (its replay meets the
    // 401 again). The second token rejected at once starts the backoff; the rest wait it out.
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(fake.logins(), 2, "{:?}", fake.login_attempts());

    let status = proxy.status_json().await;
    let profile = &status["profiles"]["default"];
    assert_eq!(profile["ready"], false, "{status}");
    assert!(profile["backoff_remaining_seconds"].as_f64().unwrap() > 1.0);
    let cause = profile["last_error"].as_str().unwrap();
    assert!(cause.contains("error_code 105"), "{cause}");
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="401"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn background_validation_that_finds_fresh_tokens_dead_backs_off_too() {
    let fake = fake().await;
    fake.set_reject_tokens(true);
    let proxy = proxy(
        &fake,
        "",
        &profile(
            PASSWORD,
            "validate_interval = \"50ms\"\nmin_backoff = \"1m\"\nmax_backoff = \"5m\"",
        ),
    )
    .await;
    eventually(10, "validation backs off", || async {
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="validate"}"#,
        )
        .await
            == 1.0
    })
    .await;
    assert_eq!(fake.logins(), 2, "{:?}", fake.login_attempts());
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(fake.logins(), 2);
}

/// An upstream that logs anyone in, and answers `GET /v3/stall` with a 401 whose body stops after
/// its first bytes: a CMA (or something in front of it) that hangs mid-answer.
async fn stalling_401_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let mut length = 0;
                    let mut header = String::new();
                    while stream.read_line(&mut header).await.unwrap_or(0) > 2 {
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap();
                        }
                        header.clear();
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let answer = if line.starts_with("GET /v3/stall") {
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                         content-length: 100\r\n\r\n{\"error_code\":105"
                            .to_owned()
                    } else {
                        let user = r#"{"user":{"uid":"blt1","authtoken":"blt-token-1"}}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{user}",
                            user.len()
                        )
                    };
                    stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
                    line.clear();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_401_whose_body_stalls_is_answered_within_request_timeout() {
    let upstream = stalling_401_upstream().await;
    let mut proxy = proxy_at(
        &format!("http://{upstream}"),
        "request_timeout = \"1s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        proxy.get("/v3/stall").send(),
    )
    .await
    .expect("answered, not held by the stalled 401 body")
    .unwrap();
    assert_proxy_answer(&answer, 504, "upstream_timeout");
    proxy.shutdown().await;
}
