//! The request path end to end: credentials injected and stripped, the session endpoint refused,
//! bodies streamed intact both ways, management-token profiles.
mod common;

use common::*;
use futures_util::StreamExt;
use reqwest::Method;

#[tokio::test]
async fn request_without_credentials_reaches_cma_with_the_session_token() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let user: serde_json::Value = response.json().await.unwrap();
    assert_eq!(user["user"]["email"], EMAIL);

    let seen = fake.requests();
    let forwarded = seen.iter().rfind(|r| r.path == "/v3/user").unwrap();
    let token = forwarded.headers["authtoken"].to_str().unwrap();
    assert_eq!(fake.live_sessions(EMAIL), vec![token.to_owned()]);
    assert_eq!(forwarded.headers["host"], fake.addr().to_string().as_str());
    assert_eq!(forwarded.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn client_credentials_and_profile_header_never_reach_cma() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let response = proxy
        .get("/v3/_sim/echo")
        .header("authtoken", "client-supplied-token")
        .header("authorization", "client-management-token")
        .header("x-cma-profile", "default")
        .header("api_key", "blt123")
        .header("branch", "main")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["authtoken"], fake.live_sessions(EMAIL)[0].as_str());
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert!(headers.get("x-cma-profile").is_none(), "{headers}");
    assert!(headers.get("x-hop").is_none(), "{headers}");
    assert_eq!(headers["api_key"], "blt123");
    assert_eq!(headers["branch"], "main");
    for r in fake.requests() {
        for v in r.headers.get_all("authtoken") {
            assert_ne!(v, "client-supplied-token");
        }
        assert!(r.headers.get("authorization").is_none());
    }
}

#[tokio::test]
async fn reject_mode_refuses_client_credentials_before_forwarding() {
    let fake = fake().await;
    let rest = format!(
        "{}[policy]\nclient_credentials = \"reject\"\n",
        profile(PASSWORD, "")
    );
    let proxy = proxy(&fake, "", &rest).await;
    let response = proxy
        .get("/v3/_sim/echo")
        .header("authtoken", "mine")
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&response, 401, "client_credentials_rejected");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"]["cma_auth_proxy"][0],
        "client_credentials_rejected"
    );
    assert!(!fake.requests().iter().any(|r| r.path == "/v3/_sim/echo"));
}

#[tokio::test]
async fn session_endpoint_is_refused_in_every_spelling_and_method() {
    let fake = fake().await;
    // With emulation off, even the exact login and logout are refused (with it on they are
    // answered by the proxy, and every other spelling is refused: tests/session_emulation.rs).
    let deny = format!(
        "{}[policy]\nsession_endpoint = \"deny\"\n",
        profile(PASSWORD, "")
    );
    let proxy = proxy(&fake, "", &deny).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let logins_before = fake.login_attempts().len();
    for path in [
        "/v3/user-session",
        "/v3/user-session/",
        "/v3//user-session",
        "/v3/./user-session",
        "/v3/x/../user-session",
        "/v3/%75ser-session",
        "/V3/USER-SESSION",
        "/v3/user-session;x=1",
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::PUT] {
            let response = proxy
                .request(method.clone(), path)
                .body(r#"{"user":{"email":"x","password":"y"}}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{method} {path}");
            assert_eq!(
                response.headers()["x-cma-auth-proxy-error"],
                "policy_denied"
            );
        }
    }
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method != Method::POST && r.path.contains("user-session")),
        "a refused request reached the CMA"
    );
    assert_eq!(fake.login_attempts().len(), logins_before);
    assert!(fake.logouts().is_empty());
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn foreign_absolute_form_target_and_connect_are_refused() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    // A client configured to use the sidecar as an HTTP proxy sends absolute-form targets.
    let as_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&proxy.url).unwrap())
        .build()
        .unwrap();
    let response = as_proxy
        .get("http://metadata.example.invalid/latest/meta-data")
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&response, 400, "bad_request");
    let own = as_proxy
        .get(format!("{}/v3/user", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        own.status(),
        200,
        "absolute form naming the upstream itself is accepted"
    );

    let response = proxy.request(Method::CONNECT, "/").send().await.unwrap();
    assert_eq!(response.status(), 405);
}

const MIB: usize = 1 << 20;

#[tokio::test]
async fn hundred_mib_upload_streams_through_intact() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let data = cma_sim::sim_bytes(100 * MIB);
    let expected = cma_sim::sha256_hex(&data);
    let response = proxy
        .request(Method::POST, "/v3/_sim/upload")
        .body(streamed(data))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["bytes"], 100 * MIB);
    assert_eq!(body["sha256"], expected);
}

#[tokio::test]
async fn hundred_mib_download_streams_through_intact() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let n = 100 * MIB;
    let response = proxy
        .get(&format!("/v3/_sim/download?bytes={n}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut received = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, n);
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, cma_sim::sha256_hex(&cma_sim::sim_bytes(n)));
}

#[tokio::test]
async fn body_over_max_body_is_refused_before_streaming() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "max_body = \"1KiB\"\nreplay_body_limit = \"512B\"",
        &profile(PASSWORD, ""),
    )
    .await;
    let response = proxy
        .request(Method::POST, "/v3/_sim/upload")
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&response, 413, "body_too_large");
    assert!(!fake.requests().iter().any(|r| r.path == "/v3/_sim/upload"));
}

#[tokio::test]
async fn management_token_profile_injects_authorization_and_never_logs_in() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        "[profiles.mt]\nmanagement_token = \"cs-management-token-1\"\n",
    )
    .await;
    // The simulator checks only authtokens, so the echo route answers 401 here: what matters is
    // what the proxy sent.
    let _ = proxy
        .get("/v3/_sim/echo")
        .header("authorization", "client")
        .send()
        .await
        .unwrap();
    let sent = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v3/_sim/echo")
        .unwrap();
    assert_eq!(sent.headers["authorization"], "cs-management-token-1");
    assert!(sent.headers.get("authtoken").is_none());
    assert!(fake.login_attempts().is_empty());
}

#[tokio::test]
async fn http2_clients_are_served() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let h2 = h2_client();
    let response = h2
        .get(format!("{}/v3/user", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

/// A profile with a management token: no login, so any upstream will do.
const MANAGEMENT_PROFILE: &str = "[profiles.mt]\nmanagement_token = \"cs-management-token-1\"\n";

/// An upstream that answers every request with `response`, as written; a stand-in for a CMA (or
/// something in front of it) that sends headers the simulator never would.
async fn canned_upstream(response: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                // Requests without a body: each one ends with its head.
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_cannot_pass_its_answer_off_as_the_proxys() {
    let upstream = canned_upstream(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n\
         x-cma-auth-proxy-error: policy_denied\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    let mut proxy = proxy_at(&format!("http://{upstream}"), "", MANAGEMENT_PROFILE).await;
    let response = proxy.get("/v3/content_types").send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        response.headers().get("x-cma-auth-proxy-error").is_none(),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.text().await.unwrap(), "{}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_proxy_error_answering_head_has_no_body_over_http2_and_http1() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let h2 = h2_client();
    for client in [&h2, &proxy.client] {
        let response = client
            .head(format!("{}/v3/user-session", proxy.url))
            .send()
            .await
            .unwrap();
        let version = response.version();
        assert_eq!(response.status(), 403, "{version:?}");
        assert_eq!(
            response.headers()["x-cma-auth-proxy-error"],
            "policy_denied"
        );
        let body = response.bytes().await;
        assert!(
            body.as_ref().is_ok_and(|b| b.is_empty()),
            "{version:?}: {body:?}"
        );
    }
}

#[tokio::test]
async fn an_upstreams_response_trailers_never_reach_the_client() {
    let upstream = canned_upstream(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
         trailer: x-cma-auth-proxy-error\r\n\r\n2\r\n{}\r\n0\r\n\
         x-cma-auth-proxy-error: login_rejected\r\n\r\n",
    )
    .await;
    let mut proxy = proxy_at(&format!("http://{upstream}"), "", MANAGEMENT_PROFILE).await;
    // HTTP/2 carries trailers to the client; the `h2` client shows them.
    let tcp = tokio::net::TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("{}/v3/content_types", proxy.url))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(data, b"{}");
    assert_eq!(body.trailers().await.unwrap(), None);
    proxy.shutdown().await;
}

/// Connections from this process to `port` that are open, read from the kernel's table.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2].rsplit(':').next().unwrap();
            u16::from_str_radix(remote_port, 16) == Ok(port) && fields[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn a_burst_leaves_a_bounded_number_of_idle_upstream_connections() {
    let fake = fake().await;
    let proxy = proxy(&fake, "workers = 1", &profile(PASSWORD, "")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    // 64 requests at once, each holding an upstream connection for a while.
    let statuses = concurrently(64, |_| {
        let request = proxy.get("/v3/_sim/slow?ms=300").send();
        async move { request.await.unwrap().status().as_u16() }
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Idle, the pool keeps at most 32 of them (and the session client one of its own).
    let port = fake.addr().port();
    eventually(5, "the pool lets its surplus go", || async {
        established_to(port) <= 33
    })
    .await;
}

#[tokio::test]
async fn the_user_object_reaches_clients_without_the_session_token() {
    // Contentstack's `GET /v3/user` answer carries the session's `authtoken` (so does the
    // simulator's); a client must get the proxy's placeholder there, compressed or not.
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    for accept_encoding in ["identity", "gzip, br"] {
        let response = proxy
            .get("/v3/user")
            .header("accept-encoding", accept_encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let issued = fake.issued_tokens();
        assert!(!issued.is_empty());
        for token in &issued {
            assert!(!text.contains(token.as_str()), "{text}");
        }
        let user: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(user["user"]["email"], EMAIL);
        let placeholder = user["user"]["authtoken"].as_str().unwrap();
        assert!(placeholder.starts_with("cma-auth-proxy-session-"), "{text}");
    }
    // The upstream was asked for an answer the proxy can read.
    let seen = fake.requests();
    assert!(
        seen.iter().filter(|r| r.path == "/v3/user").all(|r| r
            .headers
            .get("accept-encoding")
            .is_some_and(|v| v == "identity")),
        "{seen:?}"
    );
}
