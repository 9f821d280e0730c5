//! The connection to Contentstack: per worker, the pooled hyper client that carries forwarded
//! requests over the TLS configuration of [`crate::tls::client_config`], and, per client
//! connection, the upstream connection pinned to it (docs/design.md#upstream-connections).
use std::cell::Cell;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::Relay;
use crate::config::UpstreamConfig;
use crate::one_task::Beside;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Relay>;

thread_local! {
    /// Which worker runtime this thread runs: each has its own connection pool.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index` (called once, when the worker starts).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Why a request did not reach Contentstack (nothing of it was answered).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Pinned(#[from] hyper::Error),
}

/// What the pooled connections of all workers have spoken so far: pinning is for an upstream
/// that speaks HTTP/1.1; over HTTP/2 the pool already multiplexes every client on one connection.
const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// One pooled client per worker runtime: a request, its upstream connection and that connection's
/// task all stay on one thread, with no cross-thread wake-ups or shared pool lock on the hot path.
pub struct UpstreamClients {
    pooled: Vec<UpstreamClient>,
    /// Where pooled requests go: the pool takes absolute-form targets, and picks its connections
    /// by them.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// For connections of our own (pinned ones): where, and how.
    target: PinTarget,
    /// [`UNKNOWN`], [`HTTP1`] or [`HTTP2`], from the pool's responses ([`HTTP2`] from the start
    /// where nothing may be pinned).
    spoken: std::sync::atomic::AtomicU8,
}

/// Where pinned connections go: the upstream's address, and TLS (offering only HTTP/1.1) if its
/// scheme is `https`.
struct PinTarget {
    /// Without the brackets of an IPv6 address.
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    /// The `Host` header of a pinned request, as the pool writes it for HTTP/1.
    host_header: HeaderValue,
}

impl UpstreamClients {
    pub fn new(upstream: &UpstreamConfig, tls: &rustls::ClientConfig, workers: usize) -> Self {
        let host = upstream.authority.host().to_owned();
        // An IPv6 address without its URI brackets, as sockets and certificates name it.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = upstream.scheme == http::uri::Scheme::HTTPS;
        let port = upstream
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        // A host rustls cannot verify a certificate for is one the pool cannot reach either;
        // such a proxy pins nothing rather than fail to start.
        let name = ServerName::try_from(bare.as_str()).map(|n| n.to_owned());
        let (tls_pinned, pinning) = match (https, name) {
            (false, _) => (None, true),
            (true, Ok(name)) => {
                let mut config = tls.clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                (Some((connector, name)), true)
            }
            (true, Err(_)) => (None, false),
        };
        // As hyper's pool would write it: the port only when it is not the scheme's default.
        let default_port = upstream.authority.port_u16() == Some(if https { 443 } else { 80 });
        let host_header = HeaderValue::from_str(if default_port {
            &host
        } else {
            upstream.authority.as_str()
        })
        .expect("a URI authority is a valid header value");
        Self {
            pooled: (0..workers.max(1))
                .map(|_| client(upstream, tls.clone()))
                .collect(),
            scheme: upstream.scheme.clone(),
            authority: upstream.authority.clone(),
            target: PinTarget {
                host: bare,
                port,
                tls: tls_pinned,
                connect_timeout: upstream.connect_timeout,
                host_header,
            },
            spoken: std::sync::atomic::AtomicU8::new(if pinning { UNKNOWN } else { HTTP2 }),
        }
    }

    /// The current worker's client.
    fn current(&self) -> &UpstreamClient {
        &self.pooled[WORKER.with(|w| w.get()) % self.pooled.len()]
    }

    /// Sends `request` (origin-form target: the path and query as judged) over the connection
    /// pinned to its client connection when there is one, else over the worker's pool; a client
    /// connection's second request to an HTTP/1.1 upstream opens its pinned connection
    /// (docs/design.md#upstream-connections).
    ///
    /// The request is handed to its connection when this is called; the future only waits for
    /// the answer. So it holds no copy of the request, and is small (docs/design.md#performance).
    pub fn send<'a>(
        &'a self,
        mut request: Request<Relay>,
        pin: Option<&'a Pinned>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + 'a {
        // (A client connection's first request always takes the pool, and tells what it speaks.)
        let pin = pin.filter(|_| self.spoken.load(std::sync::atomic::Ordering::Relaxed) != HTTP2);
        let way = match pin.map(Pinned::take) {
            Some(Taken::Ready(held, mut sender)) => {
                self.add_host(&mut request);
                // Boxed: hyper's future keeps room for the request it may give back, and the
                // futures around it would copy that room each time they move.
                let answer = Box::pin(sender.try_send_request(request));
                Way::Pinned(held, sender, answer)
            }
            // Boxed: connecting (TCP, TLS, the HTTP/1 handshake) is a large future, taken once per
            // client connection; inline it would be copied with every request's future.
            Some(Taken::Open(held)) => {
                Way::Connecting(Box::pin(self.connect_pinned(request, held)))
            }
            // The first request of a connection takes the pool: a client that sends one request
            // per connection never costs Contentstack a connection of its own.
            Some(Taken::FirstRequest | Taken::Busy | Taken::Failed) | None => {
                Way::Pooled(self.pooled(request))
            }
        };
        async move {
            match way {
                Way::Pinned(held, sender, answer) => {
                    // The request given back is handed on before the wait: the future keeps no
                    // room for it.
                    let again = match self.pinned_answer(held, sender, answer.await) {
                        Sent::Answered(result) => return result,
                        Sent::NotSent(request) => self.pooled(request),
                    };
                    again.await
                }
                Way::Connecting(connecting) => connecting.await,
                Way::Pooled(answer) => answer.await,
            }
        }
    }

    /// What the pool writes for HTTP/1 by itself (and, over HTTP/2, must not: `:authority` says it,
    /// and servers refuse both).
    fn add_host(&self, request: &mut Request<Relay>) {
        request
            .headers_mut()
            .insert(header::HOST, self.target.host_header.clone());
    }

    /// Sends `request` over the worker's pool, which takes absolute-form targets.
    fn pooled(
        &self,
        mut request: Request<Relay>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + '_ {
        let target = request.uri().path_and_query().cloned();
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(target.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        *request.uri_mut() =
            Uri::from_parts(parts).expect("a scheme, an authority and a judged target make a URI");
        let answer = self.current().request(request);
        async move {
            let response = answer.await?;
            let spoken = if response.version() == Version::HTTP_2 {
                HTTP2
            } else {
                HTTP1
            };
            // Written when it changes, read by every request: no shared cache line bounced per
            // request.
            if self.spoken.load(std::sync::atomic::Ordering::Relaxed) != spoken {
                self.spoken
                    .store(spoken, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(response)
        }
    }

    /// A client connection's first pinned request: opens the connection and sends over it, or,
    /// when it cannot be opened, over the pool from now on.
    async fn connect_pinned(
        &self,
        mut request: Request<Relay>,
        held: Held<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.target.connect(&held.pin.beside).await {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!("no pinned upstream connection, using the pool: {e}");
                held.end(PinState::Failed);
                return self.pooled(request).await;
            }
        };
        self.add_host(&mut request);
        let answer = sender.try_send_request(request).await;
        match self.pinned_answer(held, sender, answer) {
            Sent::Answered(result) => result,
            Sent::NotSent(request) => self.pooled(request).await,
        }
    }

    /// What became of a request sent over the pinned connection: the connection goes back to its
    /// client connection once answered; a request it did not send (the connection closed while
    /// idle) goes to the pool, as a pooled connection's request would be retried on another.
    fn pinned_answer(
        &self,
        held: Held<'_>,
        sender: http1::SendRequest<Relay>,
        answer: Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Relay>>>,
    ) -> Sent {
        match answer {
            Ok(response) => {
                held.end(PinState::Idle(sender));
                Sent::Answered(Ok(response))
            }
            Err(mut e) => match e.take_message() {
                Some(mut request) => {
                    held.end(PinState::Open);
                    request.headers_mut().remove(header::HOST);
                    Sent::NotSent(request)
                }
                None => Sent::Answered(Err(e.into_error().into())),
            },
        }
    }
}

/// The way [`UpstreamClients::send`] sent a request: over the pinned connection (its answer to
/// come), opening that connection first, or over the pool.
enum Way<'a, A, C, P> {
    Pinned(Held<'a>, http1::SendRequest<Relay>, Pin<Box<A>>),
    Connecting(Pin<Box<C>>),
    Pooled(P),
}

enum Sent {
    Answered(Result<Response<Incoming>, SendError>),
    NotSent(Request<Relay>),
}

impl PinTarget {
    /// A new HTTP/1.1 connection to the upstream, run by `beside` (in its HTTP/1 client
    /// connection's task; an HTTP/2 stream's makes it a task of its own), within `connect_timeout`
    /// (TCP and TLS together: a request that cannot have it soon takes the pool).
    async fn connect(&self, beside: &Beside) -> std::io::Result<http1::SendRequest<Relay>> {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => handshake(tcp, beside).await,
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await?;
                    handshake(tls, beside).await
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

async fn handshake<I>(io: I, beside: &Beside) -> std::io::Result<http1::SendRequest<Relay>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    beside.run(async move {
        if let Err(e) = connection.await {
            tracing::debug!("pinned upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// The upstream connection pinned to one client connection
/// (docs/design.md#upstream-connections): made at the client connection's second request, used
/// by every later one while it is free, run in an HTTP/1 client connection's task, and closed
/// once the client connection is gone.
pub struct Pinned {
    state: Mutex<PinState>,
    /// Runs the connection in its client connection's task
    /// (docs/design.md#one-task-per-client-connection).
    beside: Beside,
}

#[derive(Default)]
enum PinState {
    /// No request yet.
    #[default]
    New,
    /// One request went by the pool; the next opens a pinned connection.
    Open,
    /// The pinned connection, when not in use.
    Idle(http1::SendRequest<Relay>),
    /// In use by a request ([`Held`]; another, on an HTTP/2 client connection, takes the pool).
    InUse,
    /// Connecting failed: this client connection keeps to the pool.
    Failed,
}

enum Taken<'a> {
    FirstRequest,
    Open(Held<'a>),
    Ready(Held<'a>, http1::SendRequest<Relay>),
    Busy,
    Failed,
}

/// A request's use of its client connection's pinned connection, while the pin is
/// [`PinState::InUse`]. The request ends it with what it leaves: the connection, idle again; a
/// connection to open (it turned out closed); or none to be had. Otherwise the connection is
/// gone with the request: it failed after the request went out, or the request was dropped (its
/// deadline, an HTTP/2 reset, its client gone) in the middle of the exchange, and hyper closes a
/// connection whose request was given up on. So a use not ended leaves [`PinState::Open`], and
/// the client connection's next request opens another (docs/design.md#upstream-connections).
struct Held<'a> {
    pin: &'a Pinned,
}

impl Held<'_> {
    fn end(self, state: PinState) {
        self.pin.set(state);
        // Ended: not again as dropped.
        std::mem::forget(self);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.pin.set(PinState::Open);
    }
}

impl Pinned {
    pub fn new(beside: Beside) -> Pinned {
        Pinned {
            state: Mutex::default(),
            beside,
        }
    }

    fn take(&self) -> Taken<'_> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, PinState::InUse) {
            PinState::New => {
                *state = PinState::Open;
                Taken::FirstRequest
            }
            PinState::Open => Taken::Open(Held { pin: self }),
            PinState::Idle(sender) if sender.is_ready() => Taken::Ready(Held { pin: self }, sender),
            // Closed by the upstream: the next request opens another.
            PinState::Idle(sender) if sender.is_closed() => {
                *state = PinState::Open;
                Taken::FirstRequest
            }
            // Its previous response is still being read.
            PinState::Idle(sender) => {
                *state = PinState::Idle(sender);
                Taken::Busy
            }
            PinState::InUse => Taken::Busy,
            PinState::Failed => {
                *state = PinState::Failed;
                Taken::Failed
            }
        }
    }

    fn set(&self, state: PinState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// Idle upstream connections are closed after this long; Contentstack's edge closes them anyway.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections each worker's pool keeps. A burst (an HTTP/2 client alone can send 100
/// requests at once) opens as many connections as it has requests; afterwards only this many stay
/// open, enough for the steady traffic Contentstack's rate limit allows (ten or so requests a
/// second per organization). Over HTTP/1.1 a client connection's later requests use its pinned
/// connection, so the pool carries first requests: every idle connection beyond these few is
/// memory held for a minute for nothing (at 64 client connections, 32 per worker cost about 2 MiB
/// of RSS; `BENCHMARKS.md`).
const POOL_MAX_IDLE: usize = 8;

fn client(upstream: &UpstreamConfig, tls: rustls::ClientConfig) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(upstream.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}
