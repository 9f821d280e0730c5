//! The connection to Redis, behind a circuit breaker.
//!
//! A replica must work on its own the moment Redis fails, so no request ever waits for a connection
//! attempt (except the very first, for at most `timeout`, so that a fleet starting together shares
//! one login), and no request waits on a lock another request holds. After a failure every call
//! fails at once ("the store is skipped") while one background task probes Redis: at once, then
//! after a pause that grows from [`PROBE_MIN`] to [`PROBE_MAX`]; the first probe that connects puts
//! the store back in use.
//!
//! ```text
//! connecting ──ok──▶ up ──a call fails──▶ probing ──ok──▶ up
//!     └──fails──▶ down ◀──────fails──────────┘  ▲
//!                   └───────────pause───────────┘
//! ```
//!
//! A call made while the store is up waits at most `timeout`; calls do not queue behind each other
//! (one multiplexed connection carries them all). Error text kept here never holds the URL's
//! password. The socket is opened here ([`Connector`]), not by the redis crate, so that every reply
//! passes a bound before the crate's parser buffers it (see `resp.rs`).
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::StoreError;
use super::resp::BoundedResp;
use crate::config::RedisConfig;
use crate::metrics::{Metrics, StoreEvent, StoreState};

/// The pause before the first probe after a failure; it doubles after each failed probe.
const PROBE_MIN: Duration = Duration::from_secs(1);
/// The longest pause between probes: how late, at worst, a replica notices that Redis is back.
pub const PROBE_MAX: Duration = Duration::from_secs(15);
/// Error text kept for `/status` and the log is cut to this many characters.
const ERROR_TEXT_MAX: usize = 300;
/// Failed calls that leave the connection usable (a Redis error reply) are logged at most this
/// often; they are all counted.
const CALL_ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Phase {
    /// Nothing tried yet: the first call starts connecting.
    Idle,
    /// The first connection attempt: calls wait for it, at most `timeout`.
    Connecting,
    /// Calls go to Redis on this connection.
    Up {
        conn: MultiplexedConnection,
        generation: u64,
    },
    /// A call or a probe failed: calls fail at once until a probe connects.
    Down { probe_at: Instant },
    /// One probe in flight: calls still fail at once.
    Probing,
}

impl Phase {
    fn state(&self) -> StoreState {
        match self {
            Phase::Idle | Phase::Connecting => StoreState::Connecting,
            Phase::Up { .. } => StoreState::Up,
            Phase::Down { .. } => StoreState::Down,
            Phase::Probing => StoreState::Probing,
        }
    }

    fn is_up(&self) -> bool {
        matches!(self, Phase::Up { .. })
    }
}

struct State {
    phase: Phase,
    /// When the store last came up or went down (probes do not move it).
    since: SystemTime,
    last_error: Option<String>,
    generation: u64,
}

/// The store's state as `/status` shows it.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub state: StoreState,
    pub since: SystemTime,
    /// The last failure, without secrets.
    pub last_error: Option<String>,
    /// While down: how long until the next probe.
    pub next_probe_in: Option<Duration>,
}

/// Opens connections to the store: TCP, TLS for `rediss://` (trusting `ca_file`'s roots instead of
/// the public ones when given), or a unix socket.
pub(super) struct Connector {
    /// The parsed URL; holds the password, so never printed.
    info: ConnectionInfo,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A connection to the store, whichever kind.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

impl Connector {
    pub fn new(config: &RedisConfig) -> Result<Connector, StoreError> {
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(StoreError::Redis)?;
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { .. } => {
                let roots = match &config.roots_pem {
                    None => rustls::RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    },
                    Some(pem) => {
                        let mut roots = rustls::RootCertStore::empty();
                        for cert in crate::tls::certificates(pem).map_err(io_error)? {
                            roots.add(cert).map_err(tls_error)?;
                        }
                        roots
                    }
                };
                let config = crate::tls::client_config_trusting(roots).map_err(tls_error)?;
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
            _ => None,
        };
        Ok(Connector { info, tls })
    }

    async fn open(&self) -> Result<Box<dyn Stream>, StoreError> {
        let connect = io_error;
        Ok(match (self.info.addr(), &self.tls) {
            (ConnectionAddr::Tcp(host, port), _) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                tcp.set_nodelay(true).map_err(connect)?;
                Box::new(tcp)
            }
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let name = rustls::pki_types::ServerName::try_from(host.as_str())
                    .map_err(|e| connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?
                    .to_owned();
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                tcp.set_nodelay(true).map_err(connect)?;
                Box::new(tls.connect(name, tcp).await.map_err(connect)?)
            }
            (ConnectionAddr::Unix(path), _) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?,
            ),
            (ConnectionAddr::TcpTls { .. }, None) | (_, _) => {
                return Err(io_error(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "a kind of address this build does not connect to",
                )));
            }
        })
    }
}

/// A failure to connect, as the redis crate's own connection errors are.
fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Redis(redis::RedisError::from(e))
}

fn tls_error(e: rustls::Error) -> StoreError {
    io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub(super) struct Link {
    connector: Connector,
    timeout: Duration,
    state: watch::Sender<State>,
    /// The runtime the store was made on: probes and the connection's driver live there, not on
    /// whichever worker runtime happened to make a call.
    runtime: Option<tokio::runtime::Handle>,
    metrics: Arc<Metrics>,
    /// Scrubbed from every error text, should a library ever print the URL.
    url_secret: Option<String>,
    last_call_error_log: std::sync::Mutex<Option<Instant>>,
}

impl Link {
    pub fn new(
        connector: Connector,
        url: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Link> {
        metrics.store_state(StoreState::Connecting);
        Arc::new(Link {
            connector,
            timeout,
            state: watch::Sender::new(State {
                phase: Phase::Idle,
                since: SystemTime::now(),
                last_error: None,
                generation: 0,
            }),
            runtime: tokio::runtime::Handle::try_current().ok(),
            metrics,
            url_secret: url_secret(url),
            last_call_error_log: std::sync::Mutex::new(None),
        })
    }

    /// The connection to call on and its generation (for [`Link::outcome`]), or
    /// [`StoreError::Unavailable`] at once while the store is skipped.
    pub async fn conn(self: &Arc<Self>) -> Result<(MultiplexedConnection, u64), StoreError> {
        let deadline = Instant::now() + self.timeout;
        let mut changes = self.state.subscribe();
        loop {
            let idle = match &changes.borrow_and_update().phase {
                Phase::Up { conn, generation } => return Ok((conn.clone(), *generation)),
                Phase::Down { .. } | Phase::Probing => return Err(StoreError::Unavailable),
                Phase::Connecting => false,
                Phase::Idle => true,
            };
            if idle {
                let first = self.state.send_if_modified(|s| {
                    let idle = matches!(s.phase, Phase::Idle);
                    if idle {
                        s.phase = Phase::Connecting;
                    }
                    idle
                });
                if first {
                    self.spawn(reconnect(Arc::downgrade(self)));
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`.
                Ok(Err(_)) => return Err(StoreError::Unavailable),
                Err(_) => return Err(StoreError::Timeout(self.timeout)),
            }
        }
    }

    /// Passes on the result of a call made on connection `generation`, taking the store out of use
    /// if the call shows the connection broken.
    pub fn outcome<T>(
        self: &Arc<Self>,
        generation: u64,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.call_failed(generation, error);
        }
        result
    }

    pub fn status(&self) -> LinkStatus {
        let state = self.state.borrow();
        LinkStatus {
            state: state.phase.state(),
            since: state.since,
            last_error: state.last_error.clone(),
            next_probe_in: match state.phase {
                Phase::Down { probe_at } => {
                    Some(probe_at.saturating_duration_since(Instant::now()))
                }
                _ => None,
            },
        }
    }

    fn call_failed(self: &Arc<Self>, generation: u64, error: &StoreError) {
        self.metrics.store_event(StoreEvent::Error);
        let text = self.describe(error);
        if !breaks_link(error) {
            let mut last = self
                .last_call_error_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= CALL_ERROR_LOG_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!("a fleet token store call failed: {text}");
            }
            return;
        }
        // Out of use at once; the first probe starts at once too, so that a dropped connection (a
        // Redis restart, a failover) costs only the calls made while it reconnects.
        let tripped = self.state.send_if_modified(|s| match s.phase {
            Phase::Up { generation: g, .. } if g == generation => {
                s.phase = Phase::Probing;
                s.since = SystemTime::now();
                s.last_error = Some(text.clone());
                true
            }
            // Another call already took the store out of use, or this was an older connection.
            _ => false,
        });
        if tripped {
            self.metrics.store_state(StoreState::Probing);
            tracing::warn!(
                "fleet token store unavailable, skipping it and working with this replica's own session and budget until it answers again: {text}"
            );
            self.spawn(reconnect(Arc::downgrade(self)));
        }
    }

    /// One connection attempt: connect and see Redis answer, all within `timeout`.
    async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let attempt = async {
            let stream = BoundedResp::new(self.connector.open().await?);
            let (mut conn, driver) = MultiplexedConnection::new_with_config(
                self.connector.info.redis_settings(),
                stream,
                config,
            )
            .await
            .map_err(StoreError::Redis)?;
            // The connection's reader and writer; it ends when the connection is dropped.
            self.spawn(driver);
            // A port that accepts connections is not yet a Redis that answers.
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(StoreError::Redis)?;
            Ok(conn)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }

    fn connected(&self, conn: MultiplexedConnection) {
        let mut previous = StoreState::Connecting;
        self.state.send_modify(|s| {
            previous = s.phase.state();
            s.generation += 1;
            if !s.phase.is_up() {
                s.since = SystemTime::now();
            }
            s.phase = Phase::Up {
                conn,
                generation: s.generation,
            };
        });
        self.metrics.store_state(StoreState::Up);
        if previous == StoreState::Connecting {
            tracing::debug!("connected to the fleet token store");
        } else {
            tracing::info!(
                "fleet token store reachable again: sharing the session and budget with the fleet"
            );
        }
    }

    /// A connection attempt failed: down until `probe_at`.
    fn attempt_failed(&self, error: &StoreError, pause: Duration) {
        self.metrics.store_event(StoreEvent::Error);
        let text = self.describe(error);
        let mut first = false;
        self.state.send_modify(|s| {
            first = matches!(s.phase, Phase::Connecting);
            if first {
                s.since = SystemTime::now();
            }
            s.phase = Phase::Down {
                probe_at: Instant::now() + pause,
            };
            s.last_error = Some(text.clone());
        });
        self.metrics.store_state(StoreState::Down);
        if first {
            tracing::warn!(
                "cannot reach the fleet token store, working with this replica's own session and budget until it answers (next probe in {} ms): {text}",
                pause.as_millis()
            );
        } else {
            tracing::debug!(
                "fleet token store probe failed (next in {} ms): {text}",
                pause.as_millis()
            );
        }
    }

    fn probing(&self) {
        self.state.send_modify(|s| s.phase = Phase::Probing);
        self.metrics.store_state(StoreState::Probing);
    }

    /// A connection of its own for a subscription (it cannot share the multiplexed one), its
    /// replies bounded like every other's.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let stream = BoundedResp::new(self.connector.open().await?);
        redis::aio::PubSub::new(self.connector.info.redis_settings(), stream)
            .await
            .map_err(StoreError::Redis)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn describe(&self, error: &StoreError) -> String {
        let mut text = crate::error_text::error_chain_text(error);
        if let Some(secret) = &self.url_secret {
            text = text.replace(secret.as_str(), "[REDACTED]");
        }
        if let Some((cut, _)) = text.char_indices().nth(ERROR_TEXT_MAX) {
            text.truncate(cut);
            text.push('…');
        }
        text
    }

    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

/// Connects at once, and after each failure waits and probes again, until connected or the store
/// is gone (the task holds no reference to it while it waits).
async fn reconnect(link: Weak<Link>) {
    let mut backoff = PROBE_MIN;
    loop {
        let Some(this) = link.upgrade() else { return };
        let error = match this.connect().await {
            Ok(conn) => return this.connected(conn),
            Err(error) => error,
        };
        let pause = jittered(backoff);
        this.attempt_failed(&error, pause);
        backoff = (backoff * 2).min(PROBE_MAX);
        drop(this);
        tokio::time::sleep(pause).await;
        let Some(this) = link.upgrade() else { return };
        this.probing();
    }
}

/// Between half and all of `d`, so that a fleet that lost Redis together does not probe together.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Whether a failed call shows the connection unusable (no answer, a broken or garbled stream),
/// rather than Redis answering with an error, after which the connection still works.
fn breaks_link(error: &StoreError) -> bool {
    use redis::ErrorKind;
    match error {
        StoreError::Timeout(_) => true,
        StoreError::Redis(e) => !matches!(
            e.kind(),
            ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
        ),
        StoreError::Unavailable | StoreError::LockHeld(_) => false,
    }
}

/// The password (or lone user name) in a `redis://user:password@host` URL.
fn url_secret(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!secret.is_empty()).then(|| secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_password_is_found_for_scrubbing() {
        assert_eq!(
            url_secret("redis://:hunter2@127.0.0.1:6379/0").as_deref(),
            Some("hunter2")
        );
        assert_eq!(
            url_secret("rediss://app:p@ss@redis.internal").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_secret("redis://127.0.0.1:6379"), None);
        assert_eq!(url_secret("redis://127.0.0.1/?x=a@b"), None);
    }

    fn link(url: &str, timeout: Duration) -> Arc<Link> {
        let connector = Connector {
            info: url.into_connection_info().unwrap(),
            tls: None,
        };
        Link::new(connector, url, timeout, crate::metrics::Metrics::new())
    }

    #[tokio::test]
    async fn error_text_never_holds_the_url_password_and_is_bounded() {
        let url = "redis://:hunter2@127.0.0.1:1";
        let link = link(url, Duration::from_millis(100));
        let error = StoreError::Redis(redis::RedisError::from(std::io::Error::other(format!(
            "cannot connect to {url}{}",
            "x".repeat(1000)
        ))));
        let text = link.describe(&error);
        assert!(
            !text.contains("hunter2") && text.contains("[REDACTED]"),
            "{text}"
        );
        assert!(text.chars().count() <= ERROR_TEXT_MAX + 1, "{}", text.len());
    }

    #[test]
    fn only_a_connection_that_does_not_answer_properly_is_broken() {
        assert!(breaks_link(&StoreError::Timeout(Duration::from_secs(1))));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(breaks_link(&StoreError::Redis(io)));
        let reply =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a string"));
        assert!(!breaks_link(&StoreError::Redis(reply)));
        assert!(!breaks_link(&StoreError::Unavailable));
    }

    #[tokio::test]
    async fn after_a_failure_calls_fail_at_once_until_a_probe_connects() {
        // Nothing listens on port 1: the first attempt fails, and the store is then skipped.
        let url = "redis://127.0.0.1:1";
        let link = link(url, Duration::from_secs(5));
        assert!(link.conn().await.is_err());
        assert_eq!(link.status().state, StoreState::Down);
        assert!(link.status().last_error.is_some());
        // `Unavailable` is answered without waiting for anything.
        for _ in 0..100 {
            assert!(matches!(link.conn().await, Err(StoreError::Unavailable)));
        }
    }
}
