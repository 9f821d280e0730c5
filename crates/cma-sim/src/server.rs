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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{Request, StatusCode, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;

    use crate::FakeCma;

    /// `GET /v3/user` without an authtoken: answered 401/105 by the session layer.
    fn request(fake: &FakeCma) -> Request<Empty<Bytes>> {
        Request::get(format!("{}/v3/user", fake.url()))
            .body(Empty::new())
            .unwrap()
    }

    async fn error_code(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error_code"].clone()
    }

    /// One port serves HTTP/1.1 and HTTP/2 with prior knowledge, as the proxy's listener does, so
    /// the proxy's upstream client may use either.
    #[tokio::test]
    async fn one_port_serves_http1_and_http2_with_prior_knowledge() {
        let fake = FakeCma::builder().start().await.unwrap();

        let io = TokioIo::new(TcpStream::connect(fake.addr()).await.unwrap());
        let (mut h1, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let response = h1.send_request(request(&fake)).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(response).await, 105);

        let io = TokioIo::new(TcpStream::connect(fake.addr()).await.unwrap());
        let (mut h2, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = h2.send_request(request(&fake)).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(response).await, 105);
    }
}
