//! Listeners and connections: TCP (optionally TLS) or Unix sockets, HTTP/1.1 and HTTP/2 on one port,
//! the per-connection limits (connection count, header size and count, header-read, idle and send
//! timeouts, HTTP/2 streams and windows), inbound TLS and its reload, and draining at shutdown. Knows nothing of CMA semantics:
//! what serves a listener's requests is a [`Handler`] given to it (`lib.rs` adapts the proxy and
//! the admin endpoints); the proxy's error type is used only to render the refusal of a connection
//! over `max_connections`, so that every error answer has one shape.
//!
//! Each address is bound once ([`bind`]); an [`Acceptor`] accepts on it and hands connections to
//! workers, each serving its [`Inbox`] with [`serve`] on its own runtime.
mod accept;
mod activity;
mod bind;
pub mod cpus;
mod inbound_tls;
mod room;
mod send;
mod when_woken;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

pub use accept::{Acceptor, Inbox, WorkerLink, worker_channel};
pub use bind::{BindError, Bound, SocketFile, StdListener, bind};
pub use inbound_tls::InboundTls;
pub use room::Room;

use crate::body::Relay;
use crate::config::ConnectionLimits;
use crate::metrics::{ConnectionLimit, Metrics};
use crate::one_task::{Beside, OneTask};
pub use activity::ReceivingBody;
use activity::{Activity, Busy, Lapse, Watched};
use send::{Sending, StallTimer, StreamExecutor};
use when_woken::{WakeFlag, WhenWoken};

/// What serves requests on a listener.
pub trait Handler: Send + Sync + 'static {
    /// What the handler keeps for the life of one connection (the proxy: the upstream
    /// connection pinned to it).
    type Connection: Send + Sync + 'static;

    /// A new connection's; `beside` runs futures inside the connection's own task
    /// (docs/design.md#one-task-per-client-connection).
    fn connection(&self, beside: Beside) -> Self::Connection;

    fn call(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        connection: &Arc<Self::Connection>,
    ) -> impl Future<Output = Response<Relay>> + Send;
}

/// How a listener serves its connections.
#[derive(Clone)]
pub struct ServeOptions {
    pub limits: ConnectionLimits,
    /// Inbound TLS, swapped on reload when the certificate files change.
    pub tls: Option<Arc<InboundTls>>,
    pub metrics: Arc<Metrics>,
    /// `max_connections` slots, taken by the acceptor, held by each connection until it ends.
    pub slots: Arc<Semaphore>,
    /// The listener's name in metrics: `proxy` or `admin`.
    pub name: &'static str,
    /// When full, close the longest idle connection to admit a new one (the admin listener, for
    /// its probes).
    pub room: Option<Arc<Room>>,
    /// This listener's `open_connections` series, created with the listener so that it reads 0
    /// (rather than being absent) before the first connection.
    open: prometheus_client::metrics::gauge::Gauge,
}

impl ServeOptions {
    pub fn new(
        name: &'static str,
        limits: ConnectionLimits,
        tls: Option<Arc<InboundTls>>,
        metrics: Arc<Metrics>,
    ) -> ServeOptions {
        let open = metrics.open_connections(name);
        ServeOptions {
            limits,
            tls,
            metrics,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            name,
            room: None,
            open,
        }
    }

    /// When full, the listener closes its longest idle connection to admit a new one, so that
    /// keep-alive connections cannot lock probes out (docs/design.md#listeners-and-limits).
    pub fn making_room(mut self) -> ServeOptions {
        self.room = Some(Arc::default());
        self
    }

    fn open_connections(&self) -> &prometheus_client::metrics::gauge::Gauge {
        &self.open
    }
}

/// What ended one turn of a connection's loop: the connection itself (`None`: its writes waited
/// for the client too long), or one of its timers and signals.
enum Turn {
    Served(Option<Result<(), Box<dyn std::error::Error + Send + Sync>>>),
    Control(Control),
}

enum Control {
    /// The connection was chosen to make room (`max_connections`).
    Evicted,
    /// Shutdown.
    Stop,
    /// A deadline between requests may have passed: a request head's (`header_read_timeout`) or
    /// idleness (`idle_timeout`).
    CheckDue,
    /// An idle connection asked to finish is still open.
    CloseDue,
}

/// The connections a listener has open, for draining.
pub struct Connections(TaskTracker);

fn builder(limits: &ConnectionLimits, metrics: &Arc<Metrics>) -> auto::Builder<StreamExecutor> {
    let executor = StreamExecutor::new(limits.send_timeout, metrics.clone());
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by the connection's loop, from their first bytes (server/activity.rs);
        // hyper's timer would run from the response before, and close idle connections.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    builder
}

/// HTTP/2 streams one connection may have open at once. Each is a request in flight, with its body
/// and its upstream connection; hyper's default (200) would let one client connection hold that
/// many (docs/design.md#listeners-and-limits).
const H2_MAX_STREAMS: u32 = 100;
/// How much of a request body a client may send on one stream before the proxy reads it, and on
/// the connection as a whole. A stream the proxy is not reading yet (its request waits for a login
/// or a slow upstream) holds its window's worth unread; with the connection's window four streams
/// wide, such streams do not stall the bodies of the others, and the proxy holds at most 1 MiB of
/// unread body per connection.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes queued per stream ahead of the client's reading (hyper's default is 400 KB): with
/// [`H2_MAX_STREAMS`], what one connection can make the proxy queue stays a few MiB.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Serves the connections handed to `inbox` on the current runtime until the acceptor stops, then
/// returns those still open, for the caller to drain under its deadline. Each connection is told
/// to finish gracefully at `stop`.
pub async fn serve<H: Handler>(
    mut inbox: Inbox,
    handler: Arc<H>,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
) -> Connections {
    let tracker = TaskTracker::new();
    let builder = Arc::new(builder(&options.limits, &options.metrics));
    while let Some(accepted) = inbox.0.recv().await {
        let connection = Connection {
            handler: handler.clone(),
            peer: accepted.peer,
            accepted_at: accepted.accepted_at,
            builder: builder.clone(),
            options: options.clone(),
            stop: stop.clone(),
        };
        tracker.spawn(connection.run(accepted));
    }
    Connections(tracker)
}

/// A listener served entirely on the current runtime, acceptor and connections (the admin
/// listener, the simulator). The task ends with the connections still open after `stop`.
pub fn serve_here<H: Handler>(
    listener: StdListener,
    handler: Arc<H>,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<Connections>> {
    let acceptor = Acceptor::new(listener)?;
    let (link, inbox) = worker_channel(0, None);
    tokio::spawn(acceptor.run(vec![link], options.clone(), stop.clone()));
    Ok(tokio::spawn(serve(inbox, handler, options, stop)))
}

/// Waits for open connections to finish, at most `grace`. Returns whether they all finished.
pub async fn drain(connections: Connections, grace: Duration) -> bool {
    connections.0.close();
    tokio::time::timeout(grace, connections.0.wait())
        .await
        .is_ok()
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

struct Connection<H> {
    handler: Arc<H>,
    peer: Option<IpAddr>,
    accepted_at: Instant,
    builder: Arc<auto::Builder<StreamExecutor>>,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
}

impl<H: Handler> Connection<H> {
    async fn run(self, accepted: accept::Accepted) {
        // Held until the connection ends: its `max_connections` slot and its worker's count.
        let _held = (accepted.slot, accepted.load);
        let io = match accepted.stream.register() {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!("cannot serve an accepted connection: {e}");
                return;
            }
        };
        self.options.open_connections().inc();
        match io {
            Io::Unix(stream) => self.serve(stream).await,
            Io::Tcp(stream) => match self.options.tls.clone() {
                None => self.serve(stream).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let handshake =
                        tokio::time::timeout_at(self.first_request_by(), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => self.serve(stream).await,
                        _ => {
                            self.options
                                .metrics
                                .connection_limit(ConnectionLimit::TlsHandshakeFailed);
                            self.options.open_connections().dec();
                        }
                    }
                }
            },
        }
    }

    /// A connection must begin its first request (after its TLS handshake, if any) within
    /// `header_read_timeout` of being accepted, HTTP/1 and HTTP/2 alike: the handshake is bounded
    /// here, the first head by [`Activity`], which counts it due from acceptance.
    fn first_request_by(&self) -> Instant {
        self.accepted_at + self.options.limits.header_read_timeout
    }

    /// Serves one connection until it ends; closes it when a request head (the first one counted
    /// from acceptance) has not arrived whole within `header_read_timeout`; asks it to finish
    /// gracefully at shutdown, or when it has had no request in flight for `idle_timeout` (a
    /// response still streaming is not cut).
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            handler,
            peer,
            accepted_at,
            builder,
            options,
            mut stop,
        } = self;
        let activity = Arc::new(Activity::new(accepted_at));
        let _in_room = options
            .room
            .as_ref()
            .map(|room| room.register(activity.clone()));
        // The connection and what its handler runs beside it, in this task.
        let (mut one_task, beside) = OneTask::new();
        let service = {
            let activity = activity.clone();
            let state = Arc::new(handler.connection(beside));
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let handler = handler.clone();
                let state = state.clone();
                // In flight until its response has been sent (or given up on), not only until
                // the response's head is ready: a response still streaming is not idleness.
                let busy = activity.begin(req.version());
                // And until its body has ended, which may be after the response.
                if !hyper::body::Body::is_end_stream(req.body()) {
                    req.extensions_mut().insert(activity.receiving_body());
                }
                async move {
                    let response = handler.call(req, peer, &state).await;
                    Ok::<_, Infallible>(response.map(|body| Sending::new(body, busy)))
                }
            })
        };
        let io = TokioIo::new(Watched::new(io, activity.clone()));
        let connection = builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stalled_writes = StallTimer::default();
        let limits = &options.limits;
        let (idle_timeout, send_timeout, header_read_timeout) = (
            limits.idle_timeout,
            limits.send_timeout,
            limits.header_read_timeout,
        );
        let mut finishing = *stop.borrow();
        if finishing {
            connection.as_mut().graceful_shutdown();
            one_task.wake_main();
        }
        // When an idle connection asked to finish must be gone (see below).
        let mut close_by: Option<Instant> = None;
        // The connection's timers and signals are polled when they wake the task, not each time
        // its socket or its requests do (docs/design.md#performance).
        let flag = Arc::new(WakeFlag::default());
        let result = loop {
            let check_at = activity.next_check(idle_timeout, header_read_timeout, finishing);
            let evictable = options.room.is_some();
            let turn = {
                // The connection, and whether its writes have waited for the client too long: a
                // client that stops reading is cut off, not waited for (a graceful shutdown would
                // wait).
                let served = std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = one_task.poll(connection.as_mut(), cx) {
                        return Poll::Ready(Some(result));
                    }
                    stalled_writes
                        .poll_writes(&activity.writes, send_timeout, cx)
                        .map(|()| None)
                });
                let (stop, evicted) = (&mut stop, &activity.evicted);
                let control = std::pin::pin!(async move {
                    tokio::select! {
                        _ = evicted.notified(), if evictable => Control::Evicted,
                        _ = stop.changed(), if !finishing => Control::Stop,
                        _ = tokio::time::sleep_until(check_at) => Control::CheckDue,
                        _ = tokio::time::sleep_until(close_by.unwrap_or(check_at)), if close_by.is_some() => Control::CloseDue,
                        else => std::future::pending().await,
                    }
                });
                tokio::select! {
                    biased;
                    served = served => Turn::Served(served),
                    control = WhenWoken::new(control, &flag) => Turn::Control(control),
                }
            };
            match turn {
                Turn::Served(Some(result)) => break result,
                Turn::Served(None) => {
                    closed_by(&options.metrics, ConnectionLimit::SendTimeout);
                    break Ok(());
                }
                Turn::Control(Control::Evicted) => {
                    closed_by(&options.metrics, ConnectionLimit::Evicted);
                    break Ok(());
                }
                Turn::Control(Control::Stop) => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                    one_task.wake_main();
                }
                Turn::Control(Control::CheckDue) => {
                    match activity.lapsed(idle_timeout, header_read_timeout, finishing) {
                        Some(Lapse::HeadRead) => {
                            closed_by(&options.metrics, ConnectionLimit::HeaderReadTimeout);
                            break Ok(());
                        }
                        Some(Lapse::Idle) => {
                            options
                                .metrics
                                .connection_limit(ConnectionLimit::IdleTimeout);
                            finishing = true;
                            connection.as_mut().graceful_shutdown();
                            one_task.wake_main();
                            // Nothing is in flight, so all that is left is HTTP/2's goodbye
                            // (GOAWAY, and a PING the client must answer); a client that never
                            // answers must not hold the connection by it.
                            close_by = Some(Instant::now() + header_read_timeout);
                        }
                        None => {}
                    }
                }
                Turn::Control(Control::CloseDue) => {
                    if !activity.is_busy() {
                        tracing::debug!("an idle connection did not finish when asked: closed");
                        break Ok(());
                    }
                    close_by = Some(Instant::now() + header_read_timeout);
                }
            }
        };
        if let Err(e) = result {
            let limit = e.downcast_ref::<hyper::Error>().and_then(|e| {
                if e.is_timeout() {
                    Some(ConnectionLimit::HeaderReadTimeout)
                } else if e.is_parse_too_large() {
                    Some(ConnectionLimit::HeadersTooLarge)
                } else if e.is_parse() {
                    Some(ConnectionLimit::MalformedRequest)
                } else {
                    None
                }
            });
            match limit {
                Some(limit) => closed_by(&options.metrics, limit),
                None => tracing::debug!("connection ended: {e}"),
            }
        }
        options.open_connections().dec();
    }
}

/// Counts and logs a connection closed by `limit`.
fn closed_by(metrics: &Metrics, limit: ConnectionLimit) {
    metrics.connection_limit(limit);
    tracing::debug!(reason = limit.as_str(), "connection closed by a limit");
}
