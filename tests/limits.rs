//! Limits on what a client can make the proxy hold (issue 4): body size (before and during the
//! stream), header size and count, slow headers, idle connections, connection count. Each produces
//! its error and its metric, and other clients are not affected.
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(proxy: &Proxy) -> String {
    proxy.url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (or 10 s), returning what arrived.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks `connection_limits_total{reason}` reads `expected`. The proxy counts a limit when the
/// connection ends, which is after the client has read the refusal.
async fn expect_limit_count(proxy: &Proxy, reason: &str, expected: f64) {
    let series = format!(r#"cma_auth_proxy_connection_limits_total{{reason="{reason}"}}"#);
    assert_eq!(
        counter_reaching(&proxy.admin, &series, expected).await,
        expected
    );
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_body_gets_413_mid_stream() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "max_body = \"1MiB\"\nreplay_body_limit = \"64KiB\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // No Content-Length: the proxy finds out while streaming.
    let response = proxy
        .request(reqwest::Method::POST, "/v3/_sim/upload")
        .body(streamed(bytes::Bytes::from(vec![3u8; 32 << 20])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["x-cma-auth-proxy-error"],
        "body_too_large"
    );
    // The upstream saw the upload start but never a complete one.
    assert!(fake.requests().iter().any(|r| r.path == "/v3/_sim/upload"));
    // Other requests are unaffected.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let m = metrics(&proxy.admin).await;
    assert_eq!(
        m[r#"cma_auth_proxy_denied_total{reason="body_too_large"}"#],
        1.0
    );
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "max_header_bytes = \"16KiB\"\nmax_headers = 20",
        &profile(PASSWORD, ""),
    )
    .await;
    let big = "x".repeat(32 * 1024);
    let response = proxy
        .get("/v3/user")
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let mut many = proxy.get("/v3/user");
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.headers.contains_key("x-big"))
    );
    expect_limit_count(&proxy, "headers_too_large", 2.0).await;
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off_while_others_are_served() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "header_read_timeout = \"300ms\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let mut slow = TcpStream::connect(addr(&proxy)).await.unwrap();
    slow.write_all(b"GET /v3/user HTTP/1.1\r\nhost: x\r\nx-partial: ")
        .await
        .unwrap();
    // Meanwhile a normal client is served (without keep-alive: an idle connection would be cut by
    // the same timeout).
    let normal = proxy.get("/v3/user").header("connection", "close").send();
    assert_eq!(normal.await.unwrap().status(), 200);
    let answer = read_to_close(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    expect_limit_count(&proxy, "header_read_timeout", 1.0).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let mut conn = TcpStream::connect(addr(&proxy)).await.unwrap();
    conn.write_all(b"GET /v3/user HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    expect_limit_count(&proxy, "idle_timeout", 1.0).await;
}

#[tokio::test]
async fn connections_over_max_connections_get_a_503_and_others_keep_working() {
    let fake = fake().await;
    let proxy = proxy(&fake, "max_connections = 2", &profile(PASSWORD, "")).await;
    // The series exists from the start, so a dashboard (and the wait below) reads 0, not a gap.
    assert_eq!(
        metrics(&proxy.admin)
            .await
            .get(r#"cma_auth_proxy_open_connections{listener="proxy"}"#),
        Some(&0.0)
    );
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(addr(&proxy)).await.unwrap(),
        TcpStream::connect(addr(&proxy)).await.unwrap(),
    ];
    // Each worker thread accepts on its own; wait until both connections hold their slots.
    eventually(5, "two connections are open", || async {
        metrics(&proxy.admin)
            .await
            .get(r#"cma_auth_proxy_open_connections{listener="proxy"}"#)
            == Some(&2.0)
    })
    .await;
    let mut third = TcpStream::connect(addr(&proxy)).await.unwrap();
    let answer = read_to_close(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("x-cma-auth-proxy-error: too_many_connections"),
        "{answer}"
    );
    assert!(answer.contains(r#""error_code":911"#), "{answer}");
    expect_limit_count(&proxy, "too_many_connections", 1.0).await;
    // A held connection still works, and once one closes a new client gets in.
    let mut first = held.into_iter().next().unwrap();
    first
        .write_all(b"GET /v3/user HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_to_close(&mut first)
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
    eventually(5, "a slot frees up", || async {
        reqwest::Client::new()
            .get(format!("{}/v3/user", proxy.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}
