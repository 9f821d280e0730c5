//! Upstream connections (docs/design.md#upstream-connections): a client connection's first request
//! takes the worker's pool; from its second on, it has an HTTP/1.1 upstream connection of its own,
//! closed with it.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

mod common;
use common::eventually;

/// What the upstream saw of one request: the connection it came on (numbered in accept order),
/// its target and its `Host`.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    target: String,
    host: String,
    version: http::Version,
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
    accepted: Mutex<usize>,
    open: Mutex<usize>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
    fn open(&self) -> usize {
        *self.open.lock().unwrap()
    }
}

/// How the test upstream is reached.
enum Serve {
    Plain,
    /// TLS offering these protocols by ALPN; the CA file that trusts it is written to `ca`.
    Tls {
        alpn: &'static [&'static [u8]],
        ca: std::path::PathBuf,
    },
}

/// An HTTP/1.1 upstream that records each request; a request with `x-close: 1` is answered with
/// `connection: close`, and one with `x-stall` never.
async fn upstream() -> (std::net::SocketAddr, Arc<Upstream>) {
    upstream_serving(Serve::Plain).await
}

/// An upstream as `serve` says, HTTP/1.1 or HTTP/2 as ALPN chose, recording each request.
async fn upstream_serving(serve: Serve) -> (std::net::SocketAddr, Arc<Upstream>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Upstream::default());
    let shared = state.clone();
    let acceptor = match serve {
        Serve::Plain => None,
        Serve::Tls { alpn, ca } => {
            let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
            std::fs::write(&ca, key.cert.pem()).unwrap();
            let mut tls = cma_auth_proxy::tls::server_config(
                key.cert.pem().as_bytes(),
                key.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap();
            tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
        }
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let connection = {
                let mut accepted = shared.accepted.lock().unwrap();
                *accepted += 1;
                *accepted
            };
            *shared.open.lock().unwrap() += 1;
            let state = shared.clone();
            tokio::spawn(async move {
                let service_state = state.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = service_state.clone();
                    async move {
                        state.seen.lock().unwrap().push(Seen {
                            connection,
                            version: req.version(),
                            target: req.uri().to_string(),
                            host: req
                                .headers()
                                .get(http::header::HOST)
                                .map(|h| h.to_str().unwrap().to_owned())
                                .unwrap_or_default(),
                        });
                        // A request that asks for `x-answer-bytes` is read whole, and answered
                        // with that many bytes and how many it sent.
                        // `x-stall` is never answered.
                        if req.headers().contains_key("x-stall") {
                            std::future::pending::<()>().await;
                        }
                        let answer_bytes = req
                            .headers()
                            .get("x-answer-bytes")
                            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
                        let mut response = match answer_bytes {
                            None => Response::new(Full::new(Bytes::from_static(b"{}"))),
                            Some(n) => {
                                let received = req.into_body().collect().await.unwrap().to_bytes();
                                let mut response =
                                    Response::new(Full::new(Bytes::from(vec![b'a'; n])));
                                response
                                    .headers_mut()
                                    .insert("x-received", http::HeaderValue::from(received.len()));
                                return Ok(response);
                            }
                        };
                        if req.headers().contains_key("x-close") {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let auto = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = match acceptor {
                    None => auto.serve_connection(TokioIo::new(stream), service).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => auto.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => Ok(()),
                    },
                };
                *state.open.lock().unwrap() -= 1;
            });
        }
    });
    (addr, state)
}

async fn proxy_to(upstream: std::net::SocketAddr) -> cma_auth_proxy::Running {
    proxy_to_url(&format!("http://{upstream}"), "").await
}

/// One worker (so that every connection shares one pool) and a management-token profile whose
/// reads are not coalesced: each client request is an upstream request of its own.
fn one_worker_toml(url: &str, server: &str, upstream_extra: &str) -> String {
    common::config_toml(
        url,
        &format!("workers = 1\n{server}"),
        &format!(
            "{upstream_extra}\n[profiles.mt]\nmanagement_token = \"cs-management-token-1\"\n\
             coalesce_reads = false\n"
        ),
    )
}

async fn proxy_to_url(url: &str, upstream_extra: &str) -> cma_auth_proxy::Running {
    let config = cma_auth_proxy::Config::from_toml(
        &one_worker_toml(url, "", upstream_extra),
        Vec::new(),
        None,
    )
    .unwrap();
    cma_auth_proxy::start(config).await.unwrap()
}

/// One client connection to the proxy, requests sent one after another.
struct Client(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Client {
    async fn connect(proxy: &cma_auth_proxy::Running) -> Client {
        let stream = tokio::net::TcpStream::connect(proxy.proxy_addr().tcp().unwrap())
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client(sender)
    }

    async fn get(&mut self, target: &str, close: bool) -> u16 {
        self.get_with(target, close.then_some("x-close")).await
    }

    /// A GET with `header` (set to `1`), if any.
    async fn get_with(&mut self, target: &str, header: Option<&str>) -> u16 {
        let mut request = Request::get(target).header("host", "localhost");
        if let Some(header) = header {
            request = request.header(header, "1");
        }
        self.0.ready().await.unwrap();
        let response = self
            .0
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

/// What the three ways of losing a pinned connection mid-exchange have in common: request 1 of a
/// client connection took the pool, 2 and 3 its pinned connection, 3 was given up on or failed
/// there, and 4 to 6 went over one new pinned connection, neither the pool's nor the old one.
/// `connections` are the upstream connections requests 1 to 6 came on.
fn assert_pinned_anew_after_the_third(connections: [usize; 6], seen: &dyn std::fmt::Debug) {
    let connection = |n: usize| connections[n - 1];
    assert_ne!(connection(2), connection(1), "pinned: {seen:?}");
    assert_eq!(connection(3), connection(2), "{seen:?}");
    assert!(
        connection(4) != connection(1) && connection(4) != connection(2),
        "the next request opens a pinned connection, not the pool's: {seen:?}"
    );
    assert_eq!(connection(5), connection(4), "{seen:?}");
    assert_eq!(connection(6), connection(4), "{seen:?}");
}

/// One HTTP/2 client connection to the proxy.
struct H2Client(hyper::client::conn::http2::SendRequest<Empty<Bytes>>);

impl H2Client {
    async fn connect(proxy: &cma_auth_proxy::Running) -> H2Client {
        let stream = tokio::net::TcpStream::connect(proxy.proxy_addr().tcp().unwrap())
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        H2Client(sender)
    }

    /// Sends GET `/v3/content_types?n=N`, with `header` (set to `1`) if any; the answer's future.
    async fn send(
        &mut self,
        n: usize,
        header: Option<&str>,
    ) -> impl Future<Output = hyper::Result<Response<Incoming>>> + use<> {
        let mut request = Request::get(format!("http://localhost/v3/content_types?n={n}"));
        if let Some(header) = header {
            request = request.header(header, "1");
        }
        self.0.ready().await.unwrap();
        self.0.send_request(request.body(Empty::new()).unwrap())
    }

    /// GET `/v3/content_types?n=N`, its body read; its status.
    async fn get(&mut self, n: usize) -> u16 {
        let response = self.send(n, None).await.await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

#[tokio::test]
async fn a_client_connection_gets_an_upstream_connection_of_its_own_from_its_second_request() {
    let (addr, upstream) = upstream().await;
    let proxy = proxy_to(addr).await;
    let mut a = Client::connect(&proxy).await;
    let mut b = Client::connect(&proxy).await;
    // First requests take the pool: one upstream connection between them.
    assert_eq!(a.get("/v3/content_types", false).await, 200);
    assert_eq!(b.get("/v3/content_types", false).await, 200);
    assert_eq!(upstream.accepted(), 1, "{:?}", upstream.seen());
    for _ in 0..3 {
        assert_eq!(a.get("/v3/content_types?of=a", false).await, 200);
        assert_eq!(b.get("/v3/content_types?of=b", false).await, 200);
    }
    let seen = upstream.seen();
    let on = |of: &str| -> Vec<usize> {
        seen.iter()
            .filter(|s| s.target.ends_with(of))
            .map(|s| s.connection)
            .collect()
    };
    let (of_a, of_b) = (on("?of=a"), on("?of=b"));
    assert!(of_a.iter().all(|c| *c == of_a[0]), "{seen:?}");
    assert!(of_b.iter().all(|c| *c == of_b[0]), "{seen:?}");
    assert!(
        of_a[0] != of_b[0] && of_a[0] != 1 && of_b[0] != 1,
        "each client connection has its own, not the pool's: {seen:?}"
    );
    // What went over a pinned connection is what the pool would send: origin-form target, the
    // upstream's own Host.
    for s in &seen {
        assert!(s.target.starts_with("/v3/content_types"), "{s:?}");
        assert_eq!(s.host, addr.to_string(), "{s:?}");
    }
    // Gone with its client connection.
    assert_eq!(upstream.open(), 3);
    drop(a);
    eventually(
        5,
        "the pinned connection of a closed client connection closes",
        || {
            let open = upstream.open();
            async move { open == 2 }
        },
    )
    .await;
    assert_eq!(b.get("/v3/content_types?of=b", false).await, 200);
    assert_eq!(upstream.seen().last().unwrap().connection, of_b[0]);
    assert!(
        proxy.shutdown().await,
        "idle client connections with pinned ones drain"
    );
}

/// A body streamed both ways over the pinned connection, which runs in its client connection's
/// task (docs/design.md#one-task-per-client-connection): the request's body reaches the upstream
/// whole while the client is still sending it, and the answer's reaches the client whole; the
/// connection then carries the next request.
#[tokio::test]
async fn a_pinned_connection_streams_bodies_both_ways() {
    const SIZE: usize = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let (addr, upstream) = upstream().await;
    let proxy = proxy_to(addr).await;
    let stream = tokio::net::TcpStream::connect(proxy.proxy_addr().tcp().unwrap())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::StreamBody<
            futures_util::stream::Iter<
                std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::io::Error>>,
            >,
        >,
    >(TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(connection);
    let body = |chunks: usize| {
        let frames: Vec<_> = (0..chunks)
            .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'b'; CHUNK]))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    };
    let mut send = async |method: &str, target: &str, chunks: usize| {
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("content-length", chunks * CHUNK)
            .header("x-answer-bytes", SIZE)
            .body(body(chunks))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let received = response
            .headers()
            .get("x-received")
            .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        (status, received, answer.len())
    };
    // The first request takes the pool; the second and third the pinned connection.
    assert_eq!(
        send("GET", "/v3/content_types", 0).await,
        (200, Some(0), SIZE)
    );
    let put = send("PUT", "/v3/content_types/blog", SIZE / CHUNK).await;
    assert_eq!(put, (200, Some(SIZE), SIZE));
    assert_eq!(
        send("GET", "/v3/content_types", 0).await,
        (200, Some(0), SIZE)
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_ne!(seen[1].connection, seen[0].connection, "pinned: {seen:?}");
    assert_eq!(seen[2].connection, seen[1].connection, "{seen:?}");
    // Idle between requests, the client connection and its pinned connection finish when asked.
    assert!(proxy.shutdown().await, "drained");
}

/// An HTTP/2 client's requests, one after another, over an HTTP/1.1 upstream: from its second
/// request on, one upstream connection of its own; its streams are tasks of their own, and so is
/// that connection (docs/design.md#one-task-per-client-connection). The client connection and the
/// pinned one drain at shutdown.
#[tokio::test]
async fn an_http2_client_connection_gets_a_pinned_connection_and_drains() {
    let (addr, upstream) = upstream().await;
    let proxy = proxy_to(addr).await;
    let mut client = H2Client::connect(&proxy).await;
    for n in 1..=4 {
        assert_eq!(client.get(n).await, 200);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_11),
        "{seen:?}"
    );
    assert_ne!(seen[1].connection, seen[0].connection, "pinned: {seen:?}");
    assert!(
        seen[1..].iter().all(|s| s.connection == seen[1].connection),
        "{seen:?}"
    );
    assert!(proxy.shutdown().await, "drained");
}

/// An HTTP/2 client that resets the stream whose request has its connection's pinned upstream
/// connection gives that request up as a deadline would: the pinned connection closes, and the
/// client connection's next request opens another.
#[tokio::test]
async fn a_stream_reset_on_its_pinned_connection_leaves_the_next_request_one() {
    let (addr, upstream) = upstream().await;
    let proxy = proxy_to(addr).await;
    let mut client = H2Client::connect(&proxy).await;
    for n in 1..=2 {
        assert_eq!(client.get(n).await, 200);
    }
    let stalled = tokio::spawn(client.send(3, Some("x-stall")).await);
    eventually(5, "the stalled request reaches the upstream", || {
        let seen = upstream.seen().len();
        async move { seen == 3 }
    })
    .await;
    // Dropping the answer's future resets the stream.
    stalled.abort();
    eventually(
        5,
        "the pinned connection of the reset request closes",
        || {
            let open = upstream.open();
            async move { open == 1 }
        },
    )
    .await;
    for n in 4..=6 {
        assert_eq!(client.get(n).await, 200);
    }
    let seen = upstream.seen();
    assert_pinned_anew_after_the_third(std::array::from_fn(|i| seen[i].connection), &seen);
    assert!(proxy.shutdown().await, "drained");
}

/// A pinned connection that fails after the request went out (the upstream closes it without an
/// answer) is gone with that request: the request is answered 502, and the client connection's
/// next request opens another pinned connection.
#[tokio::test]
async fn a_pinned_connection_that_fails_mid_exchange_is_replaced() {
    // An HTTP/1.1 upstream that answers each request head at once, except one with `x-fail`,
    // whose connection it closes instead; it records the connection each head came on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut accepted = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted += 1;
            let (connection, seen) = (accepted, recorded.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                    buffer.drain(..end + 4);
                    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    seen.lock().unwrap().push((connection, target));
                    if head.contains("\r\nx-fail:") {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = proxy_to(addr).await;
    let mut client = Client::connect(&proxy).await;
    assert_eq!(client.get("/v3/content_types?n=1", false).await, 200);
    assert_eq!(client.get("/v3/content_types?n=2", false).await, 200);
    assert_eq!(
        client
            .get_with("/v3/content_types?n=3", Some("x-fail"))
            .await,
        502
    );
    for n in 4..=6 {
        assert_eq!(
            client.get(&format!("/v3/content_types?n={n}"), false).await,
            200
        );
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_pinned_anew_after_the_third(std::array::from_fn(|i| seen[i].0), &seen);
    assert!(proxy.shutdown().await, "drained");
}

#[tokio::test]
async fn a_pinned_connection_the_upstream_closes_is_replaced() {
    let (addr, upstream) = upstream().await;
    let proxy = proxy_to(addr).await;
    let mut client = Client::connect(&proxy).await;
    assert_eq!(client.get("/v3/content_types?n=1", false).await, 200);
    // Pinned, and closed by the upstream after answering.
    assert_eq!(client.get("/v3/content_types?n=2", true).await, 200);
    eventually(5, "the upstream closed the pinned connection", || {
        let open = upstream.open();
        async move { open == 1 }
    })
    .await;
    for n in 3..=5 {
        assert_eq!(
            client.get(&format!("/v3/content_types?n={n}"), false).await,
            200
        );
    }
    let seen = upstream.seen();
    let connection = |n: usize| seen[n - 1].connection;
    assert_ne!(connection(2), connection(1), "{seen:?}");
    // The request after the close went by the pool; the next one opened a new pinned connection.
    assert_eq!(connection(3), connection(1), "{seen:?}");
    assert!(
        connection(4) != connection(2) && connection(4) != connection(1),
        "{seen:?}"
    );
    assert_eq!(connection(5), connection(4), "{seen:?}");
    assert!(
        proxy.shutdown().await,
        "idle client connections with pinned ones drain"
    );
}

/// A request given up on while it has its client connection's pinned upstream connection (its
/// deadline here; an HTTP/2 reset or its client leaving alike) closes that connection, and the
/// client connection's next request opens another: the client connection is not left on the pool
/// for good.
#[tokio::test]
async fn a_request_given_up_on_its_pinned_connection_leaves_the_next_request_one() {
    let (addr, upstream) = upstream().await;
    let config = cma_auth_proxy::Config::from_toml(
        &one_worker_toml(&format!("http://{addr}"), "request_timeout = \"300ms\"", ""),
        Vec::new(),
        None,
    )
    .unwrap();
    let proxy = cma_auth_proxy::start(config).await.unwrap();
    let mut client = Client::connect(&proxy).await;
    assert_eq!(client.get("/v3/content_types?n=1", false).await, 200);
    assert_eq!(client.get("/v3/content_types?n=2", false).await, 200);
    assert_eq!(
        client
            .get_with("/v3/content_types?n=3", Some("x-stall"))
            .await,
        504
    );
    eventually(
        5,
        "the pinned connection of the request given up on closes",
        || {
            let open = upstream.open();
            async move { open == 1 }
        },
    )
    .await;
    for n in 4..=6 {
        assert_eq!(
            client.get(&format!("/v3/content_types?n={n}"), false).await,
            200
        );
    }
    let seen = upstream.seen();
    assert_pinned_anew_after_the_third(std::array::from_fn(|i| seen[i].connection), &seen);
    assert!(
        proxy.shutdown().await,
        "idle client connections with pinned ones drain"
    );
}

#[tokio::test]
async fn over_tls_a_pinned_connection_speaks_http1_and_an_http2_upstream_pins_nothing() {
    // An upstream offering only HTTP/1.1: pinned connections, over TLS, verified like the pool's.
    let ca_dir = common::tempdir();
    let ca = ca_dir.join("ca.pem");
    let (addr, upstream) = upstream_serving(Serve::Tls {
        alpn: &[b"http/1.1"],
        ca: ca.clone(),
    })
    .await;
    let extra = format!("ca_file = \"{}\"", ca.display());
    let proxy = proxy_to_url(&format!("https://{addr}"), &extra).await;
    let mut client = Client::connect(&proxy).await;
    for n in 1..=4 {
        assert_eq!(
            client.get(&format!("/v3/content_types?n={n}"), false).await,
            200
        );
    }
    let seen = upstream.seen();
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_11),
        "{seen:?}"
    );
    assert!(seen[1].connection != seen[0].connection, "{seen:?}");
    assert!(
        seen[1..].iter().all(|s| s.connection == seen[1].connection),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.host == addr.to_string()), "{seen:?}");
    assert!(
        proxy.shutdown().await,
        "idle client connections with pinned ones drain"
    );

    // Contentstack's edge offers HTTP/2: the pool's one connection carries everything, and no
    // request carries a `host` header beside `:authority` (nginx refuses such a request with 400).
    let ca_dir = common::tempdir();
    let ca = ca_dir.join("ca.pem");
    let (addr, upstream) = upstream_serving(Serve::Tls {
        alpn: &[b"h2", b"http/1.1"],
        ca: ca.clone(),
    })
    .await;
    let extra = format!("ca_file = \"{}\"", ca.display());
    let proxy = proxy_to_url(&format!("https://{addr}"), &extra).await;
    let mut client = Client::connect(&proxy).await;
    for n in 1..=4 {
        assert_eq!(
            client.get(&format!("/v3/content_types?n={n}"), false).await,
            200
        );
    }
    let seen = upstream.seen();
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.connection == 1), "{seen:?}");
    assert!(seen.iter().all(|s| s.host.is_empty()), "{seen:?}");
    assert_eq!(upstream.accepted(), 1);
    proxy.shutdown().await;
}

/// A request whose client goes away while its answer is awaited is no longer counted as in flight
/// (`cma_auth_proxy_in_flight_requests`), though no answer was ever made for it.
#[tokio::test]
async fn a_request_whose_client_goes_away_is_no_longer_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads a request and never answers; it says when a request arrived and
    // when the proxy closed the connection it came on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (arrived, closed) = (arrived_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                    let _ = arrived.send(());
                }
                let _ = closed.send(());
            });
        }
    });
    let proxy = proxy_to(upstream).await;
    let admin = format!("http://{}", proxy.admin_addr());
    let in_flight = || common::metric(&admin, "cma_auth_proxy_in_flight_requests");

    let mut client = tokio::net::TcpStream::connect(proxy.proxy_addr().tcp().unwrap())
        .await
        .unwrap();
    client
        .write_all(b"GET /v3/content_types HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .unwrap();
    arrived
        .recv()
        .await
        .expect("the request reached the upstream");
    assert_eq!(in_flight().await, 1.0);
    drop(client);
    // The proxy gives up the upstream request once it has dropped the client's.
    closed
        .recv()
        .await
        .expect("the proxy closed the upstream connection");
    assert_eq!(in_flight().await, 0.0);
}

/// An upstream answer that does not come within `request_timeout` is a 504, on each request of a
/// client connection (over the pool and over its pinned connection), and no sooner; the
/// connection's later requests that are answered in time are not cut short.
#[tokio::test]
async fn each_request_of_a_connection_keeps_its_own_upstream_deadline() {
    // An upstream that answers at once, except `/v3/slow`, which it never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/v3/slow" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{}"))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let config = cma_auth_proxy::Config::from_toml(
        &one_worker_toml(
            &format!("http://{upstream}"),
            "request_timeout = \"300ms\"",
            "",
        ),
        Vec::new(),
        None,
    )
    .unwrap();
    let proxy = cma_auth_proxy::start(config).await.unwrap();
    let mut client = Client::connect(&proxy).await;
    // The pool, then the connection's pinned upstream connection; a request given up on closes
    // its pinned connection, and the next request opens another.
    for _ in 0..3 {
        assert_eq!(client.get("/v3/content_types", false).await, 200);
        let started = std::time::Instant::now();
        assert_eq!(client.get("/v3/slow", false).await, 504);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(300),
            "a 504 before request_timeout: {:?}",
            started.elapsed()
        );
    }
}
