// Minimal hyper 1.x static-token proxy, thread-per-core: N current_thread runtimes with
// SO_REUSEPORT listeners, one upstream hyper::client::conn::http1 connection per inbound
// connection (no shared pool, no channels between threads).
// Usage: floor-tpc LISTEN_ADDR UPSTREAM_ADDR [THREADS [CA_FILE SERVER_NAME]]
// With CA_FILE, the upstream connection is TLS (rustls on ring, verified against CA_FILE for
// SERVER_NAME, ALPN http/1.1 only, sessions resumed through one shared client config).
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Clone)]
struct Upstream {
    addr: std::net::SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: std::net::SocketAddr = args[1].parse().unwrap();
    let addr: std::net::SocketAddr = args[2].parse().unwrap();
    let threads: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2);
    let tls = args.get(4).map(|ca_file| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(args[5].clone()).unwrap();
        (tokio_rustls::TlsConnector::from(Arc::new(config)), name)
    });
    let upstream = Upstream { addr, tls };
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let upstream = upstream.clone();
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

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

async fn connect(upstream: &Upstream) -> hyper::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(upstream.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    match &upstream.tls {
        None => {
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::task::spawn_local(conn);
            Ok(s)
        }
        Some((connector, name)) => {
            let tls = connector.connect(name.clone(), tcp).await.unwrap();
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::task::spawn_local(conn);
            Ok(s)
        }
    }
}

async fn serve(listen: std::net::SocketAddr, upstream: Upstream) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseport(true).unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind(listen).unwrap();
    let listener = sock.listen(1024).unwrap();
    let upstream = Rc::new(upstream);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let upstream = upstream.clone();
        tokio::task::spawn_local(async move {
            let sender: Rc<RefCell<Option<Sender>>> = Rc::new(RefCell::new(None));
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let sender = sender.clone();
                let upstream = upstream.clone();
                async move {
                    let existing = sender.borrow_mut().take();
                    let mut s = match existing {
                        Some(s) if !s.is_closed() => s,
                        _ => connect(&upstream).await?,
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
