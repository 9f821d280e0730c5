//! The acceptor: one task accepts on a listener's only socket, enforces `max_connections`, and hands
//! each connection, as a plain std socket, to a worker ([`choose`]: a handful on one worker, many
//! spread evenly), which registers it with its own runtime. One socket per address is what keeps
//! a second process off the port (see `bind`); choosing the worker here, rather than letting the
//! kernel hash connections over per-worker sockets, is what lets the placement follow the load.
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::bind::StdListener;
use super::cpus::Placement;
use super::{Io, ServeOptions};
use crate::metrics::ConnectionLimit;
use crate::proxy::error::ProxyError;

/// An accepted socket, not yet registered with a runtime (already in non-blocking mode).
pub(super) enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl StdStream {
    /// Registers the socket with the current runtime.
    pub(super) fn register(self) -> std::io::Result<Io> {
        Ok(match self {
            StdStream::Tcp(stream) => {
                stream.set_nodelay(true)?;
                Io::Tcp(tokio::net::TcpStream::from_std(stream)?)
            }
            StdStream::Unix(stream) => Io::Unix(tokio::net::UnixStream::from_std(stream)?),
        })
    }
}

/// A connection on its way from the acceptor to a worker. It holds its `max_connections` slot and
/// counts in its worker's load until the connection ends.
pub(super) struct Accepted {
    pub(super) stream: StdStream,
    pub(super) peer: Option<IpAddr>,
    pub(super) accepted_at: Instant,
    pub(super) slot: OwnedSemaphorePermit,
    pub(super) load: Option<Load>,
}

/// One open connection counted in a worker's load. A worker's first and last connections also
/// tell the workers' [`Placement`], where there is one.
pub(super) struct Load {
    open: Arc<AtomicUsize>,
    placement: Option<Arc<Placement>>,
}

impl Load {
    fn on(worker: &WorkerLink) -> Load {
        if worker.open.fetch_add(1, Ordering::Relaxed) == 0
            && let Some(placement) = &worker.placement
        {
            placement.opened();
        }
        Load {
            open: worker.open.clone(),
            placement: worker.placement.clone(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if self.open.fetch_sub(1, Ordering::Relaxed) == 1
            && let Some(placement) = &self.placement
        {
            placement.emptied();
        }
    }
}

/// The acceptor's end of a worker: where its connections go, and how many it has open.
pub struct WorkerLink {
    index: usize,
    sender: mpsc::UnboundedSender<Accepted>,
    open: Arc<AtomicUsize>,
    placement: Option<Arc<Placement>>,
}

/// A worker's end: the connections handed to it. It ends when the acceptor has stopped. (Unbounded,
/// yet bounded: every connection in it holds one of the listener's `max_connections` slots.)
pub struct Inbox(pub(super) mpsc::UnboundedReceiver<Accepted>);

/// The two ends for worker `index`, which keeps to a CPU as `placement` decides (or where the
/// kernel puts it, without one).
pub fn worker_channel(index: usize, placement: Option<Arc<Placement>>) -> (WorkerLink, Inbox) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let link = WorkerLink {
        index,
        sender,
        open: Arc::new(AtomicUsize::new(0)),
        placement,
    };
    (link, Inbox(receiver))
}

/// A listening socket registered with the runtime that accepts on it.
pub enum Acceptor {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Acceptor {
    /// Registers `listener` with the current runtime, which must be the one that runs
    /// [`Acceptor::run`].
    pub fn new(listener: StdListener) -> std::io::Result<Acceptor> {
        Ok(match listener {
            StdListener::Tcp(l) => Acceptor::Tcp(tokio::net::TcpListener::from_std(l)?),
            StdListener::Unix(l) => Acceptor::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }

    /// Accepts until `stop` turns true, then closes the socket and lets go of the workers, whose
    /// inboxes then end. Over `max_connections` a connection is refused here.
    pub async fn run(
        self,
        mut workers: Vec<WorkerLink>,
        options: ServeOptions,
        mut stop: watch::Receiver<bool>,
    ) {
        let refusals = TaskTracker::new();
        let mut next = 0;
        while !workers.is_empty() {
            let accepted = tokio::select! {
                accepted = self.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and similar: do not spin, do not die.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match options.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => make_room(&options).await,
            };
            let Some(slot) = slot else {
                options
                    .metrics
                    .connection_limit(ConnectionLimit::TooManyConnections);
                refusals.spawn(refuse(stream, options.tls.is_some()));
                continue;
            };
            let accepted = Accepted {
                stream,
                peer,
                accepted_at: Instant::now(),
                slot,
                load: None,
            };
            hand_off(&mut workers, &mut next, accepted, options.name);
        }
        drop(self);
        drop(workers);
        refusals.close();
        refusals.wait().await;
    }

    /// The accepted socket leaves this runtime at once (`into_std`): its worker registers it with
    /// its own. (Two `epoll_ctl` calls per connection; tokio offers no safe way to accept without
    /// registering.)
    async fn accept(&self) -> std::io::Result<(StdStream, Option<IpAddr>)> {
        match self {
            Acceptor::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((StdStream::Tcp(stream.into_std()?), Some(peer.ip())))
            }
            Acceptor::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok((StdStream::Unix(stream.into_std()?), None))
            }
        }
    }
}

/// How long a full listener that makes room waits for the connection it asked to close.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// On a full listener that makes room for new connections: closes the longest idle one and takes
/// its slot. `None` when the listener does not make room, or every connection is busy.
async fn make_room(options: &ServeOptions) -> Option<OwnedSemaphorePermit> {
    if !options.room.as_ref()?.evict_longest_idle() {
        return None;
    }
    let slot = tokio::time::timeout(EVICTION_WAIT, options.slots.clone().acquire_owned());
    slot.await.ok()?.ok()
}

/// Gives `accepted` to the first worker with fewer than [`FILL`] open connections, else to the one
/// with the fewest. A worker that has stopped (its thread died) is dropped from the list, and the
/// connection goes to the next one.
fn hand_off(workers: &mut Vec<WorkerLink>, next: &mut usize, mut accepted: Accepted, name: &str) {
    while !workers.is_empty() {
        let i = choose(workers.len(), *next, |i| {
            workers[i].open.load(Ordering::Relaxed)
        });
        *next = (i + 1) % workers.len();
        let worker = &workers[i];
        accepted.load = Some(Load::on(worker));
        match worker.sender.send(accepted) {
            Ok(()) => {
                tracing::debug!(
                    listener = name,
                    worker = worker.index,
                    open = worker.open.load(Ordering::Relaxed),
                    "connection handed to worker"
                );
                return;
            }
            Err(mpsc::error::SendError(back)) => {
                tracing::error!(
                    listener = name,
                    worker = worker.index,
                    "worker has stopped; its share of connections goes to the others"
                );
                workers.remove(i);
                accepted = back;
            }
        }
    }
}

/// How many connections a worker takes before the next one gets any
/// (docs/design.md#listeners-and-limits). A sidecar's application holds a handful of connections;
/// spread over two workers they make two threads that each sleep and wake every few requests, and
/// each wake-up can wait behind another process for a CPU: measured, that multiplied the p99 at 8
/// connections by 2 to 5, for no throughput (one worker forwards tens of thousands of requests a
/// second, far beyond what Contentstack's rate limits let through). Past this many, connections
/// spread evenly.
const FILL: usize = 16;

/// The worker for a new connection: the first, from index 0, with fewer than [`FILL`] open; when
/// every one has as many, the least loaded.
fn choose(n: usize, start: usize, load: impl Fn(usize) -> usize) -> usize {
    (0..n)
        .find(|&i| load(i) < FILL)
        .unwrap_or_else(|| least_loaded(n, start, load))
}

/// The index below `n` with the smallest `load`; ties go to the first from `start` on, so that
/// workers with equal loads take connections in turn.
fn least_loaded(n: usize, start: usize, load: impl Fn(usize) -> usize) -> usize {
    (0..n)
        .map(|k| (start + k) % n)
        .min_by_key(|&i| load(i))
        .unwrap_or(0)
}

/// Over `max_connections`: a plain-HTTP client gets the proxy's `too_many_connections` answer,
/// then the connection closes without reading the request. (A TLS client just sees the close.)
async fn refuse(stream: StdStream, tls: bool) {
    let Ok(Io::Tcp(mut stream)) = stream.register() else {
        return;
    };
    if !tls {
        let response = http1_closing(ProxyError::TooManyConnections.to_response());
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&response)).await;
    }
    let _ = stream.shutdown().await;
}

/// `response` as HTTP/1.1 bytes, announcing that the connection closes after it. No connection is
/// served for it, so it is written by hand rather than through hyper.
fn http1_closing(response: Response<Bytes>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_fills_up_to_a_handful_of_connections_before_the_next_gets_any() {
        let mut loads = [0; 2];
        for _ in 0..8 {
            loads[choose(2, 0, |i| loads[i])] += 1;
        }
        assert_eq!(loads, [8, 0], "a handful stays on one worker");
        for _ in 8..64 {
            loads[choose(2, 0, |i| loads[i])] += 1;
        }
        assert_eq!(loads, [32, 32], "many spread evenly");
        loads = [FILL + 3, FILL - 1];
        assert_eq!(choose(2, 0, |i| loads[i]), 1, "below the fill first");
    }

    #[test]
    fn the_least_loaded_worker_gets_the_connection_and_ties_take_turns() {
        let loads = [3, 1, 2, 1];
        assert_eq!(least_loaded(4, 0, |i| loads[i]), 1);
        assert_eq!(least_loaded(4, 2, |i| loads[i]), 3);
        let even = [0; 3];
        let mut next = 0;
        let order: Vec<_> = (0..4)
            .map(|_| {
                let i = least_loaded(3, next, |i| even[i]);
                next = (i + 1) % 3;
                i
            })
            .collect();
        assert_eq!(order, [0, 1, 2, 0]);
    }
}
