//! Limits on what a client can make the proxy hold (issue 4): body size (before and during the
//! stream), header size and count, slow headers, idle connections, connection count; and (issue 10)
//! request bodies that stall or trickle, connections that never begin a request. Each produces its
//! error and its metric, and other clients are not affected.
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
    assert_proxy_answer(&response, 413, "body_too_large");
    // The upstream saw the upload start (the simulator records it on the test's runtime, possibly
    // after the client has its answer) but never a complete one.
    eventually(5, "the upstream saw the upload start", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/upload")
    })
    .await;
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
    // Meanwhile a normal client is served.
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
    // The acceptor hands each to a worker thread; wait until both connections hold their slots.
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

/// A client connection that has sent a request head announcing a body, and part of that body.
async fn body_then_silence(proxy: &Proxy, head: &str, body: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr(proxy)).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn
}

/// Whether the proxy closes `stream` within `secs` (reading and discarding what it sends).
async fn closed_within(stream: &mut TcpStream, secs: u64) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(secs), stream.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

fn assert_body_timeout(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-cma-auth-proxy-error: body_timeout"),
        "{answer}"
    );
    assert!(answer.contains(r#""error_code":913"#), "{answer}");
}

#[tokio::test]
async fn stalled_request_bodies_get_408_and_give_their_connections_back() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "max_connections = 4\nreplay_body_limit = \"64KiB\"\nbody_idle_timeout = \"300ms\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let head =
        |length: &str| format!("POST /v3/_sim/upload HTTP/1.1\r\nhost: x\r\n{length}\r\n\r\n");
    let mut chunk = b"19000\r\n".to_vec();
    chunk.extend(vec![b'x'; 0x19000]);
    // Every connection slot is taken by a client that stops sending its body: one the proxy buffers
    // (within replay_body_limit), one it streams from the start (Content-Length above it), one it
    // starts buffering and then streams (chunked, past replay_body_limit), one that never starts.
    let mut stalled = vec![
        body_then_silence(&proxy, &head("content-length: 1000"), b"{\"partial\":").await,
        body_then_silence(&proxy, &head("content-length: 104857600"), &[b'x'; 4096]).await,
        body_then_silence(&proxy, &head("transfer-encoding: chunked"), &chunk).await,
        body_then_silence(&proxy, &head("content-length: 1000"), b"").await,
    ];
    for conn in &mut stalled {
        let answer = closed_within(conn, 5)
            .await
            .expect("the stalled connection is answered and closed");
        assert_body_timeout(&answer);
    }
    eventually(
        5,
        "the stalled connections give their slots back",
        || async {
            metrics(&proxy.admin)
                .await
                .get(r#"cma_auth_proxy_open_connections{listener="proxy"}"#)
                == Some(&0.0)
        },
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_denied_total{reason="body_timeout"}"#
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn a_body_trickling_below_body_min_rate_is_cut_off() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "body_idle_timeout = \"500ms\"\nbody_min_rate = \"1KiB\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let mut conn = body_then_silence(
        &proxy,
        "POST /v3/_sim/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n",
        b"",
    )
    .await;
    // A byte every 100 ms: never silent for body_idle_timeout, but far below 1 KiB/s.
    let (mut reader, mut writer) = conn.split();
    let mut first = [0u8; 1];
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                read = reader.read(&mut first) => break read.unwrap() == 1,
                _ = pace.tick() => {
                    if writer.write_all(b"x").await.is_err() {
                        break false;
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(answered, Ok(true), "the trickling body is answered");
    let rest = closed_within(&mut conn, 5).await.expect("closed");
    let answer = format!("{}{rest}", first[0] as char);
    assert_body_timeout(&answer);
    assert!(answer.contains("body_min_rate"), "{answer}");
}

#[tokio::test]
async fn an_early_answer_reads_the_rest_of_a_body_only_while_it_keeps_coming() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "max_body = \"64KiB\"\nreplay_body_limit = \"1KiB\"\nbody_idle_timeout = \"300ms\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // A chunked body that grows past max_body (the proxy answers 413 mid-stream and goes on reading
    // so that the client sees the answer), and then stops without ending.
    let mut chunk = b"20000\r\n".to_vec();
    chunk.extend(vec![b'x'; 0x20000]);
    let mut conn = body_then_silence(
        &proxy,
        "POST /v3/_sim/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        &chunk,
    )
    .await;
    // Well within the 10 s that the drain allows a body that keeps coming.
    let answer = closed_within(&mut conn, 5)
        .await
        .expect("the drain stops when the body stalls");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    eventually(5, "the connection gives its slot back", || async {
        metrics(&proxy.admin)
            .await
            .get(r#"cma_auth_proxy_open_connections{listener="proxy"}"#)
            == Some(&0.0)
    })
    .await;
}

#[tokio::test]
async fn an_http2_stream_whose_body_stalls_gets_408_and_the_connection_serves_on() {
    use futures_util::StreamExt;
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "replay_body_limit = \"64KiB\"\nbody_idle_timeout = \"300ms\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let h2 = h2_client();
    let stalled = || {
        let start = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"{\"partial\":"),
        )]);
        reqwest::Body::wrap_stream(start.chain(futures_util::stream::pending()))
    };
    let url = format!("{}/v3/_sim/upload", proxy.url);
    // Buffered (no length, so the proxy reads up to replay_body_limit), then streamed.
    for request in [
        h2.post(&url).body(stalled()),
        h2.post(&url)
            .header("content-length", "1000000")
            .body(stalled()),
    ] {
        let response = tokio::time::timeout(Duration::from_secs(5), request.send())
            .await
            .expect("the stalled stream is answered")
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_proxy_answer(&response, 408, "body_timeout");
    }
    // The connection's other streams carry on.
    let response = h2
        .get(format!("{}/v3/user", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_open_connections{listener="proxy"}"#
        )
        .await,
        1.0,
        "one HTTP/2 connection served all three streams"
    );
}

#[tokio::test]
async fn a_connection_that_never_begins_a_request_is_closed_after_header_read_timeout() {
    let fake = fake().await;
    let proxy = proxy(&fake, FAST_HEADS, &profile(PASSWORD, "")).await;
    let mut silent = TcpStream::connect(addr(&proxy)).await.unwrap();
    // An HTTP/2 client that sends the connection preface and its SETTINGS, but never a request.
    let mut h2 = TcpStream::connect(addr(&proxy)).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for conn in [&mut silent, &mut h2] {
        // Long before idle_timeout.
        closed_within(conn, 5)
            .await
            .expect("the connection is closed");
    }
    expect_limit_count(&proxy, "header_read_timeout", 2.0).await;
}

/// An upstream that speaks HTTP/2 over TLS (chosen by ALPN, as Contentstack's edge does) and reads
/// each request body to its end before answering. Returns its URL, the directory of the CA file
/// that trusts it (`upstream-ca.pem`), and whether it has seen an HTTP/2 request.
async fn http2_upstream() -> (
    String,
    TempDir,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use http_body_util::BodyExt;
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca_dir = tempdir();
    let ca = ca_dir.join("upstream-ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let tls = cma_auth_proxy::tls::server_config(
        key.cert.pem().as_bytes(),
        key.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let saw_http2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = saw_http2.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        if req.version() == http::Version::HTTP_2 {
                            seen.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (url, ca_dir, saw_http2)
}

#[tokio::test]
async fn a_streamed_body_that_stalls_or_grows_too_large_is_the_clients_fault_over_an_http2_upstream()
 {
    let (url, ca_dir, saw_http2) = http2_upstream().await;
    let ca = ca_dir.join("upstream-ca.pem");
    let toml = config_toml(
        &url,
        "replay_body_limit = \"1KiB\"\nmax_body = \"64KiB\"\nbody_idle_timeout = \"300ms\"",
        &format!(
            "ca_file = \"{}\"\n[profiles.default]\nmanagement_token = \"cs-management-token\"\n",
            ca.display()
        ),
    );
    let config = cma_auth_proxy::Config::from_toml(&toml, Vec::new(), None).unwrap();
    let running = cma_auth_proxy::start(config).await.unwrap();
    let proxy = running.proxy_addr().tcp().unwrap();
    let head = "POST /v3/assets HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    // Past replay_body_limit (so it streams), then silence.
    let mut stalled = TcpStream::connect(proxy).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"800\r\n").await.unwrap();
    stalled.write_all(&[b'x'; 0x800]).await.unwrap();
    stalled.write_all(b"\r\n").await.unwrap();
    let answer = closed_within(&mut stalled, 5).await.expect("answered");
    assert!(
        saw_http2.load(std::sync::atomic::Ordering::SeqCst),
        "the upstream spoke HTTP/2"
    );
    assert_body_timeout(&answer);
    // Past max_body while streaming.
    let mut large = TcpStream::connect(proxy).await.unwrap();
    large.write_all(head.as_bytes()).await.unwrap();
    large.write_all(b"20000\r\n").await.unwrap();
    let _ = large.write_all(&[b'x'; 0x20000]).await;
    let answer = closed_within(&mut large, 5).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    running.shutdown().await;
}

/// A request body sent up to its first `sent` bytes of `length`, then a byte every 100 ms: the
/// connection, and whether the proxy answered it within `secs` seconds (and what).
async fn front_load_then_trickle(
    proxy: &Proxy,
    length: usize,
    sent: usize,
    secs: u64,
) -> Option<String> {
    let head =
        format!("POST /v3/_sim/upload HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
    let mut conn = body_then_silence(proxy, &head, &vec![b'x'; sent]).await;
    let (mut reader, mut writer) = conn.split();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(secs), async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = pace.tick() => {
                    if writer.write_all(b"x").await.is_err() {
                        break;
                    }
                }
            }
        }
    })
    .await;
    answered
        .ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_front_loaded_body_banks_no_time_for_trickling_later() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "body_idle_timeout = \"500ms\"\nbody_min_rate = \"1KiB\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // 512 KiB at once would once have earned 512 s of waiting; now at most body_idle_timeout of it
    // carries over, and a byte every 100 ms is far below 1 KiB/s.
    let answer = front_load_then_trickle(&proxy, 1 << 20, 512 << 10, 10)
        .await
        .expect("the trickle is cut off well within 10 s");
    assert_body_timeout(&answer);
    assert!(answer.contains("body_min_rate"), "{answer}");
}

#[tokio::test]
async fn kept_bodies_share_a_memory_budget_and_bodies_past_it_stream() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "replay_body_limit = \"64KiB\"\nreplay_memory = \"100KiB\"\nbody_idle_timeout = \"30s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let seen = |n: u32| {
        let query = format!("n={n}");
        fake.requests()
            .iter()
            .any(|r| r.query.as_deref() == Some(query.as_str()))
    };
    // With a Content-Length (counted up front), then chunked (counted as the chunks come).
    for (first, framing) in [
        (1, "content-length: 40000"),
        (4, "transfer-encoding: chunked"),
    ] {
        let chunked = framing.contains("chunked");
        let head = |n: u32| {
            format!(
                "POST /v3/_sim/upload?n={n} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{framing}\r\n\r\n"
            )
        };
        let part = |len: usize| -> Vec<u8> {
            let mut out = if chunked {
                format!("{len:x}\r\n").into_bytes()
            } else {
                Vec::new()
            };
            out.extend(vec![b'x'; len]);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            out
        };
        // Three bodies of 40 kB, incomplete: two fit the budget and are kept (nothing goes upstream
        // before a kept body ends); the one that would take them past 100 KiB streams, so the
        // upstream sees it start while its body is still coming. Which one that is depends on the
        // order the proxy reads them in. Counted chunk by chunk, as chunked bodies are, bodies read
        // side by side may each find the budget spent by the others' first chunks, and all stream:
        // only the bound is certain then.
        let mut conns = Vec::new();
        for n in first..first + 3 {
            conns.push(body_then_silence(&proxy, &head(n), &part(39000)).await);
        }
        let streamed = || (first..first + 3).filter(|n| seen(*n)).count();
        eventually(
            5,
            &format!("one request goes upstream before its body ends ({framing})"),
            || async { streamed() > 0 },
        )
        .await;
        if !chunked {
            assert_eq!(streamed(), 1, "the other two are kept, read whole first");
        }
        for conn in &mut conns {
            let mut rest = part(1000);
            if chunked {
                rest.extend_from_slice(b"0\r\n\r\n");
            }
            conn.write_all(&rest).await.unwrap();
            let answer = closed_within(conn, 5).await.expect("answered");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
}

/// An HTTP/2 connection to the proxy, made with the `h2` crate, whose settings and flow control
/// the test can see. Returns it once the proxy's SETTINGS and window updates are in (a request the
/// proxy answers itself has gone back and forth).
async fn h2_connection(
    proxy: &Proxy,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<TcpStream, bytes::Bytes>,
) {
    let tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    let (mut send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::builder()
        .method("TRACE")
        .uri(format!("{}/v3", proxy.url))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.unwrap(),
        _ = &mut connection => panic!("the connection ended"),
    };
    assert_eq!(response.status(), 405);
    (send, connection)
}

fn h2_post(proxy: &Proxy, path: &str, length: usize) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", proxy.url))
        .header("content-length", length)
        .body(())
        .unwrap()
}

/// What the proxy's HTTP/2 server announces: its SETTINGS (`id -> value`) and the window of the
/// connection as a whole, read frame by frame from a raw connection.
async fn h2_announced(proxy: &Proxy) -> (std::collections::HashMap<u16, u32>, u32) {
    let mut tcp = TcpStream::connect(addr(proxy)).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut settings = std::collections::HashMap::new();
    // The spec's initial window of every connection, until a WINDOW_UPDATE on stream 0 raises it.
    let mut connection_window = 65_535u32;
    let (mut saw_settings, mut saw_update) = (false, false);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !(saw_settings && saw_update) {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await.unwrap();
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; length];
            tcp.read_exact(&mut payload).await.unwrap();
            match kind {
                4 if flags & 1 == 0 => {
                    for entry in payload.chunks(6) {
                        let id = u16::from_be_bytes([entry[0], entry[1]]);
                        let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                        settings.insert(id, value);
                    }
                    saw_settings = true;
                }
                8 if stream == 0 => {
                    connection_window += u32::from_be_bytes(payload[..4].try_into().unwrap());
                    saw_update = true;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the proxy announces its settings and raises the connection window");
    (settings, connection_window)
}

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;

#[tokio::test]
async fn an_http2_connection_takes_a_bounded_number_of_streams_with_room_between_them() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let (settings, connection_window) = h2_announced(&proxy).await;
    assert_eq!(settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS), Some(&100));
    let stream_window = settings[&SETTINGS_INITIAL_WINDOW_SIZE];
    assert!(
        connection_window >= 4 * stream_window,
        "a few unread streams cannot fill the connection's window: {stream_window} per stream, {connection_window} in all"
    );
}

#[tokio::test]
async fn a_stream_the_proxy_is_not_reading_yet_leaves_room_for_another_streams_body() {
    let fake = fake().await;
    // The first login takes a while: the proxy does not read a streamed body before it has a token.
    fake.set_login_delay(Some(Duration::from_secs(3)));
    let proxy = proxy(
        &fake,
        "replay_body_limit = \"64KiB\"\nbody_idle_timeout = \"1s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let stream_window = h2_announced(&proxy).await.0[&SETTINGS_INITIAL_WINDOW_SIZE] as usize;
    let (mut send, connection) = h2_connection(&proxy).await;
    tokio::spawn(connection);
    // Stream 1 announces more than replay_body_limit, so it streams and waits for the login unread;
    // it sends its whole window.
    let (_upload, mut first) = send
        .send_request(h2_post(&proxy, "/v3/_sim/upload", 8 << 20), false)
        .unwrap();
    first.reserve_capacity(stream_window);
    let mut sent = 0;
    while sent < stream_window {
        let granted = std::future::poll_fn(|cx| first.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        first
            .send_data(bytes::Bytes::from(vec![b'x'; granted]), false)
            .unwrap();
        sent += granted;
    }
    // Stream 3, a small POST: its body must still find room in the connection's window.
    let (response, mut second) = send
        .send_request(h2_post(&proxy, "/v3/_sim/upload", 1000), false)
        .unwrap();
    second.reserve_capacity(1000);
    tokio::spawn(async move {
        while second.capacity() < 1000 {
            match std::future::poll_fn(|cx| second.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => return,
            }
        }
        let _ = second.send_data(bytes::Bytes::from(vec![b'y'; 1000]), true);
    });
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "{:?}",
        response.headers().get("x-cma-auth-proxy-error")
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off_after_send_timeout() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "send_timeout = \"500ms\"\nidle_timeout = \"60s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // A small receive buffer, and nothing read: the 50 MB answer soon has nowhere to go.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr(&proxy).parse().unwrap()).await.unwrap();
    stalled
        .write_all(b"GET /v3/_sim/download?bytes=50000000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    expect_limit_count(&proxy, "send_timeout", 1.0).await;
    eventually(5, "the stalled connection gives its slot back", || async {
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_open_connections{listener="proxy"}"#,
        )
        .await
            == 0.0
    })
    .await;
    // Others are served meanwhile and after.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_http2_stream_whose_client_opens_no_window_is_reset_after_send_timeout() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "send_timeout = \"500ms\"\nidle_timeout = \"60s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // A client that gives every stream a window of 0 bytes and never opens it: no response body can
    // be sent.
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("{}/v3/_sim/download?bytes=100000", proxy.url))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let end = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the stream ends within 5 s");
    assert!(matches!(end, Some(Err(_))), "reset, not finished: {end:?}");
    expect_limit_count(&proxy, "send_timeout", 1.0).await;
    // The stream was reset; the connection serves on.
    let request = http::Request::builder()
        .method("TRACE")
        .uri(format!("{}/v3", proxy.url))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 405);
}

#[tokio::test]
async fn an_idle_http2_connection_that_ignores_its_goaway_is_closed() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"500ms\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // One request answered, then the client goes silent: it never polls its connection again, so
    // the proxy's GOAWAY and PING at idle_timeout go unanswered.
    let (_send, _silent) = h2_connection(&proxy).await;
    expect_limit_count(&proxy, "idle_timeout", 1.0).await;
    eventually(5, "the silent connection is closed", || async {
        metric(
            &proxy.admin,
            r#"cma_auth_proxy_open_connections{listener="proxy"}"#,
        )
        .await
            == 0.0
    })
    .await;
}

#[tokio::test]
async fn kept_bodies_filling_their_budget_do_not_refuse_a_login() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "replay_body_limit = \"64KiB\"\nreplay_memory = \"100KiB\"\nbody_idle_timeout = \"30s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    // Two incomplete 50 KiB bodies take the whole 100 KiB; a third streams, and so is seen
    // upstream: by then the first two are kept.
    let head = |n: u32| {
        format!(
            "POST /v3/_sim/upload?n={n} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 51200\r\n\r\n"
        )
    };
    let mut held = Vec::new();
    for n in 1..=3 {
        held.push(body_then_silence(&proxy, &head(n), &[b'x'; 1000]).await);
    }
    eventually(5, "the body past the budget streams upstream", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/upload")
    })
    .await;
    // A 60-byte emulated login is not "larger than 64 KiB" because uploads hold the budget.
    let login = proxy
        .request(reqwest::Method::POST, "/v3/user-session")
        .json(&serde_json::json!({"user": {"email": "me@example.com", "password": "x"}}))
        .send()
        .await
        .unwrap();
    let status = login.status();
    assert_eq!(status, 200, "{}", login.text().await.unwrap());
    drop(held);
}

/// `header_read_timeout` short, `idle_timeout` far: which of the two closes a connection shows.
const FAST_HEADS: &str = "header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"";

/// Sends a `GET /v3/user` on `conn` and checks it is answered 200, leaving the connection open.
async fn served(conn: &mut TcpStream) {
    conn.write_all(b"GET /v3/user HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_one_response(conn).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

/// Reads one response with a `content-length` from `stream`, leaving the connection open.
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_header_read_timeout() {
    let fake = fake().await;
    let proxy = proxy(&fake, FAST_HEADS, &profile(PASSWORD, "")).await;
    let mut conn = TcpStream::connect(addr(&proxy)).await.unwrap();
    served(&mut conn).await;
    // Silent between requests for three times header_read_timeout, far from idle_timeout: the
    // connection is idle, not slow to send a head, and stays open.
    assert_eq!(
        closed_within(&mut conn, 1).await,
        None,
        "an idle connection was closed before idle_timeout"
    );
    served(&mut conn).await;
    expect_limit_count(&proxy, "header_read_timeout", 0.0).await;
}

#[tokio::test]
async fn a_later_request_head_that_trickles_is_cut_off_after_header_read_timeout() {
    let fake = fake().await;
    let proxy = proxy(&fake, FAST_HEADS, &profile(PASSWORD, "")).await;
    let mut conn = TcpStream::connect(addr(&proxy)).await.unwrap();
    served(&mut conn).await;
    // The next head begins, then comes a byte at a time, never silent for long and never ending.
    conn.write_all(b"GET /v3/user HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = conn.into_split();
    let trickle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..200 {
            ticks.tick().await;
            if write.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "a trickling head held its connection past header_read_timeout"
    );
    trickle.abort();
    expect_limit_count(&proxy, "header_read_timeout", 1.0).await;
}

#[tokio::test]
async fn a_body_that_keeps_coming_after_its_early_answer_is_not_taken_for_a_slow_head() {
    let fake = fake().await;
    let limits = format!("{FAST_HEADS}\nmax_body = \"64KiB\"\nreplay_body_limit = \"1KiB\"");
    let proxy = proxy(&fake, &limits, &profile(PASSWORD, "")).await;
    let mut conn = TcpStream::connect(addr(&proxy)).await.unwrap();
    // A chunked upload past max_body gets its 413 before it ends.
    conn.write_all(
        b"POST /v3/_sim/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = [b"8000\r\n".as_slice(), &[b'x'; 0x8000], b"\r\n"].concat();
    for _ in 0..4 {
        conn.write_all(&chunk).await.unwrap();
    }
    let answer = read_one_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // The client goes on sending its body for three times header_read_timeout (the proxy drains
    // it), ends it, and is silent between requests for as long again: none of that is a head.
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..45 {
        ticks.tick().await;
        conn.write_all(&chunk).await.unwrap();
    }
    conn.write_all(b"0\r\n\r\n").await.unwrap();
    assert_eq!(
        closed_within(&mut conn, 1).await,
        None,
        "a connection draining a body, then idle, was closed"
    );
    served(&mut conn).await;
    expect_limit_count(&proxy, "header_read_timeout", 0.0).await;
}

#[tokio::test]
async fn a_head_begun_behind_a_request_in_flight_is_held_no_longer_than_idleness() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "header_read_timeout = \"300ms\"\nidle_timeout = \"1s\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let mut conn = TcpStream::connect(addr(&proxy)).await.unwrap();
    // A request and, in the same write, the start of the next one's head, which never ends. Its
    // first bytes came with the request before it: the connection is idle once that is answered,
    // and closed as an idle one is.
    conn.write_all(
        b"GET /v3/user HTTP/1.1\r\nhost: x\r\n\r\nGET /v3/user HTTP/1.1\r\nhost: x\r\nx-partial: ",
    )
    .await
    .unwrap();
    assert!(
        read_one_response(&mut conn)
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
    assert!(
        closed_within(&mut conn, 5).await.is_some(),
        "held past idle_timeout"
    );
    expect_limit_count(&proxy, "idle_timeout", 1.0).await;
}
