//! Listeners and connections: TCP or Unix sockets, HTTP/1.1 and HTTP/2 (prior knowledge) on one port,
//! each connection watched so that shutdown can drain it. Knows nothing of CMA semantics.
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::config::ListenAddr;
use crate::proxy::body::Relay;

/// A slow client gets this long to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What serves requests on a listener.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
    ) -> impl Future<Output = Response<Relay>> + Send;
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// The address a listener really got (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddr::Tcp(addr) => write!(f, "{addr}"),
            BoundAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl BoundAddr {
    /// The TCP address, for tests and printing URLs.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            BoundAddr::Tcp(addr) => Some(*addr),
            BoundAddr::Unix(_) => None,
        }
    }
}

pub async fn bind(addr: &ListenAddr) -> std::io::Result<(Listener, BoundAddr)> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            Ok((Listener::Tcp(listener), BoundAddr::Tcp(bound)))
        }
        ListenAddr::Unix(path) => {
            // A socket file left by a previous run would make bind fail; only sockets are removed.
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            Ok((Listener::Unix(listener), BoundAddr::Unix(path.clone())))
        }
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts connections until `stop` turns true, then returns the watcher of the connections still
/// open, for the caller to drain under its deadline.
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = builder();
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (io, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: do not spin, do not die.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.call(req, peer).await) }
        });
        // Each arm has its own connection type; both are drained alike.
        match io {
            Io::Tcp(stream) => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(graceful.watch(conn.into_owned()));
            }
            Io::Unix(stream) => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(graceful.watch(conn.into_owned()));
            }
        }
    }
    graceful
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Io, Option<IpAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Io::Tcp(stream), Some(peer.ip())))
        }
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            Ok((Io::Unix(stream), None))
        }
    }
}

/// Waits for open connections to finish, at most `grace`. Returns whether they all finished.
pub async fn drain(graceful: GracefulShutdown, grace: Duration) -> bool {
    tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok()
}
