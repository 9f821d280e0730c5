//! The simulator's listener: HTTP/1.1 and HTTP/2 (by prior knowledge) on one port, as Contentstack
//! and the proxy serve both. It serves tests and `cma-auth-proxy dev` on loopback, so it has none
//! of the proxy's connection limits; it only makes sure that nothing it holds outlives a stop.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::session::Sim;

/// A client that opens a connection and sends no request head is closed after this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop, how long open connections may take to finish what they are answering; what is
/// left then is cut.
const DRAIN: Duration = Duration::from_secs(1);
/// A failed accept (out of file descriptors, say) is retried after this pause rather than at once.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Serves `sim` on `listener` until `stop` turns true (or its sender is gone), then drains.
pub(crate) async fn serve(listener: TcpListener, sim: Arc<Sim>, mut stop: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        // Reap what has ended, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(ACCEPT_PAUSE).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, sim, mut stop) = (builder.clone(), sim.clone(), stop.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(sim.call(req).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN, drained).await;
    // Dropping the set aborts the connections still open.
}
