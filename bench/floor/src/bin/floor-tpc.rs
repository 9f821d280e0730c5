// Minimal hyper 1.x static-token proxy, thread-per-core: N current_thread runtimes with
// SO_REUSEPORT listeners, one upstream hyper::client::conn::http1 connection per inbound
// connection (no shared pool, no channels between threads).
// Usage: floor-tpc LISTEN_ADDR UPSTREAM_ADDR [THREADS]
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::rc::Rc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: std::net::SocketAddr = args[1].parse().unwrap();
    let upstream: std::net::SocketAddr = args[2].parse().unwrap();
    let threads: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, serve(listen, upstream));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

async fn serve(listen: std::net::SocketAddr, upstream: std::net::SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseport(true).unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind(listen).unwrap();
    let listener = sock.listen(1024).unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        tokio::task::spawn_local(async move {
            let sender: Rc<RefCell<Option<hyper::client::conn::http1::SendRequest<Incoming>>>> =
                Rc::new(RefCell::new(None));
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let existing = sender.borrow_mut().take();
                    let mut s = match existing {
                        Some(s) if !s.is_closed() => s,
                        _ => {
                            let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                            up.set_nodelay(true).unwrap();
                            let (s, conn) =
                                hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
                            tokio::task::spawn_local(conn);
                            s
                        }
                    };
                    req.headers_mut().insert(
                        "authtoken",
                        http::HeaderValue::from_static("bench-token-0123456789"),
                    );
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or("/".into());
                    *req.uri_mut() = pq.parse().unwrap();
                    let resp = s.send_request(req).await;
                    *sender.borrow_mut() = Some(s);
                    resp
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
