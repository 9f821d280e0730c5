// Minimal hyper 1.x static-token proxy, pooled: hyper-util legacy Client on the default
// multi-thread runtime. Usage: floor-pooled LISTEN_ADDR http://UPSTREAM_ADDR
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = &args[1];
    let upstream: Arc<str> = args[2].clone().into();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let upstream = upstream.clone();
                async move {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    *req.uri_mut() = format!("{upstream}{pq}").parse().unwrap();
                    req.headers_mut().insert(
                        "authtoken",
                        http::HeaderValue::from_static("bench-token-0123456789"),
                    );
                    req.headers_mut().remove(http::header::HOST);
                    let resp: Result<Response<Incoming>, _> = client.request(req).await;
                    resp
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
