//! The connection to Contentstack: the pooled hyper client that carries forwarded requests, one
//! per worker, over the TLS configuration of [`crate::tls::client_config`].
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Relay;
use crate::config::UpstreamConfig;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Relay>;

thread_local! {
    /// Which worker runtime this thread runs: each has its own connection pool.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index` (called once, when the worker starts).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// One pooled client per worker runtime: a request, its upstream connection and that connection's
/// task all stay on one thread, with no cross-thread wake-ups or shared pool lock on the hot path.
pub struct UpstreamClients(Vec<UpstreamClient>);

impl UpstreamClients {
    pub fn new(upstream: &UpstreamConfig, tls: &rustls::ClientConfig, workers: usize) -> Self {
        Self(
            (0..workers.max(1))
                .map(|_| client(upstream, tls.clone()))
                .collect(),
        )
    }

    /// The current worker's client.
    pub fn current(&self) -> &UpstreamClient {
        &self.0[WORKER.with(|w| w.get()) % self.0.len()]
    }
}

/// Idle upstream connections are closed after this long; Contentstack's edge closes them anyway.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections each worker keeps. A burst (an HTTP/2 client alone can send 100
/// requests at once) opens as many connections as it has requests; afterwards only this many stay
/// open, enough for the steady traffic Contentstack's rate limit allows.
const POOL_MAX_IDLE: usize = 32;

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
