//! An upstream whose answers do not end: every request gets the given status and a chunked body that
//! goes on until `limit` bytes (so that a client without a read cap still finishes), counting what it
//! wrote. Tests use it to show that the session client reads only a bounded part of an answer.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Body bytes per chunk written.
const CHUNK: usize = 64 << 10;
/// The most read of a request head before answering anyway.
const MAX_HEAD: usize = 64 << 10;

pub struct EndlessUpstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    finished: AtomicUsize,
}

impl EndlessUpstream {
    /// Serves on `127.0.0.1:0`.
    pub async fn start(status: u16, limit: u64) -> std::io::Result<EndlessUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counters = shared.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, status, limit, &counters).await;
                    counters.finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(EndlessUpstream {
            addr,
            counters,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT`, the value for `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Body bytes written so far, over all connections: what clients read plus what the socket
    /// buffers hold.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::SeqCst)
    }

    /// Answers that have ended, because the client went away or `limit` was reached.
    pub fn finished(&self) -> usize {
        self.counters.finished.load(Ordering::SeqCst)
    }
}

impl Drop for EndlessUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    status: u16,
    limit: u64,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream
        .write_all(
            format!(
                "HTTP/1.1 {status} Endless\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let chunk = [b' '; CHUNK];
    let mut sent = 0u64;
    while sent < limit {
        let n = CHUNK.min((limit - sent) as usize);
        stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
        stream.write_all(&chunk[..n]).await?;
        stream.write_all(b"\r\n").await?;
        sent += n as u64;
        counters.written.fetch_add(n as u64, Ordering::SeqCst);
    }
    stream.write_all(b"0\r\n\r\n").await
}
