//! What a connection is doing, for the deadlines its loop keeps between requests
//! (docs/design.md#listeners-and-limits): whether a request is in flight and since when none has
//! been, since when the next HTTP/1 request head has been arriving, and whether the connection's
//! writes wait for the client. [`Watched`] wraps the client's socket and notes its reads and writes
//! here; the service notes each request's begin and end ([`Activity::begin`], [`Busy`]), and a
//! request body's end ([`ReceivingBody`]).
//!
//! The head's deadline (`header_read_timeout`) runs from the first bytes of a head, not from the
//! end of the response before it: a keep-alive connection that is silent between requests is idle
//! (`idle_timeout`), not slow. The first head is due from the connection's acceptance, HTTP/1 or
//! HTTP/2, bytes or none. It costs a clock read per request and no timer: the connection's
//! loop looks at these notes at least once every `header_read_timeout` ([`Activity::next_check`])
//! and closes the connection when one has lapsed ([`Activity::lapsed`]).
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::send::WriteBlocked;

/// Whether a connection has a request in flight, and since when it has had none.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `born` of the last request's end.
    last_ms: AtomicU64,
    /// Milliseconds after `born` of the first bytes read since the last request began, while no
    /// request was in flight: the next head's first bytes ([`NO_HEAD`] when none have come). 0 until
    /// the first request begins: a connection's first head is due from its acceptance, whether any
    /// bytes come or not.
    head_ms: AtomicU64,
    /// Whether request heads are timed: HTTP/1. Cleared at the first HTTP/2 request, whose
    /// connection's bytes between requests are frames of its own (pings, window updates).
    heads_timed: AtomicBool,
    /// When the connection was accepted.
    born: Instant,
    /// Asked to close to make room for a new connection (see [`super::Room`]).
    evicting: AtomicBool,
    pub(super) evicted: tokio::sync::Notify,
    /// Since when the connection's writes wait for the client (`send_timeout`).
    pub(super) writes: WriteBlocked,
}

const NO_HEAD: u64 = u64::MAX;

/// A deadline of the connection's that has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lapse {
    /// A request head has been arriving for `header_read_timeout`.
    HeadRead,
    /// No request has been in flight for `idle_timeout`.
    Idle,
}

/// A request in flight on its connection, until dropped.
pub(super) struct Busy(Arc<Activity>);

/// A request body still arriving on its connection: until it is dropped (the body has ended, or
/// has been given up), the connection is busy, and the bytes that come are the body's, not the
/// next request's head. It goes with the body where the body goes, to its drain after an early
/// answer included (`body::linger`), so a body that keeps coming after its answer neither counts as
/// idleness nor starts a head's deadline.
pub struct ReceivingBody {
    busy: Busy,
}

/// A request's extensions must be `Clone`: a clone is one more hold on the connection, released
/// when it is dropped.
impl Clone for ReceivingBody {
    fn clone(&self) -> Self {
        self.busy.0.receiving_body()
    }
}

impl Activity {
    /// A connection accepted at `accepted`.
    pub(super) fn new(accepted: Instant) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            head_ms: AtomicU64::new(0),
            heads_timed: AtomicBool::new(true),
            born: accepted,
            evicting: AtomicBool::new(false),
            evicted: tokio::sync::Notify::new(),
            writes: WriteBlocked::new(),
        }
    }

    pub(super) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    pub(super) fn is_evicted(&self) -> bool {
        self.evicting.load(Ordering::Relaxed)
    }

    /// Asks the connection to close.
    pub(super) fn evict(&self) {
        self.evicting.store(true, Ordering::Relaxed);
        // Stored if the connection is not waiting right now: it sees it on its next wait.
        self.evicted.notify_one();
    }

    /// A request of `version` has begun: its head has arrived whole.
    pub(super) fn begin(self: &Arc<Self>, version: http::Version) -> Busy {
        if version == http::Version::HTTP_2 {
            self.heads_timed.store(false, Ordering::Relaxed);
        }
        self.head_ms.store(NO_HEAD, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// The body of a request that has begun is still arriving.
    pub(super) fn receiving_body(self: &Arc<Self>) -> ReceivingBody {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ReceivingBody {
            busy: Busy(self.clone()),
        }
    }

    /// Bytes came from the client. With nothing in flight, on HTTP/1, the first are the next
    /// request's head.
    fn read(&self) {
        if self.head_ms.load(Ordering::Relaxed) == NO_HEAD
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.heads_timed.load(Ordering::Relaxed)
        {
            self.head_ms.store(self.ms_since_born(), Ordering::Relaxed);
        }
    }

    pub(super) fn idle_for(&self) -> Duration {
        if self.is_busy() {
            return Duration::ZERO;
        }
        let last = self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }

    /// When the head arriving now must have arrived whole, and when the connection is idle for
    /// `idle_timeout` if nothing happens (none while a request is in flight).
    fn deadlines(
        &self,
        idle_timeout: Duration,
        header_read_timeout: Duration,
    ) -> [Option<Instant>; 2] {
        let at = |ms: u64| self.born + Duration::from_millis(ms);
        let head = match self.head_ms.load(Ordering::Relaxed) {
            NO_HEAD => None,
            ms => Some(at(ms) + header_read_timeout),
        };
        let idle =
            (!self.is_busy()).then(|| at(self.last_ms.load(Ordering::Relaxed)) + idle_timeout);
        [head, idle]
    }

    /// When the connection's loop must look at [`Self::lapsed`] next. Never later than
    /// `header_read_timeout` from now: a head that begins after this call has its deadline no
    /// earlier than that, and the look then finds it and returns its exact deadline. Idleness is
    /// not looked at while `finishing` (the connection was asked to finish already).
    pub(super) fn next_check(
        &self,
        idle_timeout: Duration,
        header_read_timeout: Duration,
        finishing: bool,
    ) -> Instant {
        let [head, idle] = self.deadlines(idle_timeout, header_read_timeout);
        let idle = idle.filter(|_| !finishing);
        [head, idle]
            .into_iter()
            .flatten()
            .fold(Instant::now() + header_read_timeout, Instant::min)
    }

    /// The deadline that has passed, if one has: a head's first, then idleness (not looked at
    /// while `finishing`).
    pub(super) fn lapsed(
        &self,
        idle_timeout: Duration,
        header_read_timeout: Duration,
        finishing: bool,
    ) -> Option<Lapse> {
        let now = Instant::now();
        let [head, idle] = self.deadlines(idle_timeout, header_read_timeout);
        if head.is_some_and(|at| at <= now) {
            Some(Lapse::HeadRead)
        } else if !finishing && idle.is_some_and(|at| at <= now) {
            Some(Lapse::Idle)
        } else {
            None
        }
    }

    fn ms_since_born(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .last_ms
            .store(activity.ms_since_born(), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client's socket, noting in its connection's [`Activity`] the bytes that come (the next head's
/// first) and whether a write is waiting for the client ([`WriteBlocked`]).
pub(super) struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.writes.note(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.writes.note(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.activity.writes.note(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.activity.writes.note(&poll);
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_due_from_acceptance_with_or_without_bytes() {
        for bytes in [false, true] {
            let accepted = Instant::now();
            let activity = Arc::new(Activity::new(accepted));
            tokio::time::advance(HEAD / 2).await;
            if bytes {
                activity.read();
            }
            assert_eq!(activity.next_check(IDLE, HEAD, false), accepted + HEAD);
            tokio::time::advance(HEAD / 2).await;
            assert_eq!(activity.lapsed(IDLE, HEAD, false), Some(Lapse::HeadRead));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_timed_from_its_first_bytes_and_silence_is_idleness() {
        let activity = Arc::new(Activity::new(Instant::now()));
        drop(activity.begin(http::Version::HTTP_11));
        // Silent after a response: idle, looked at again within header_read_timeout.
        tokio::time::advance(HEAD * 2).await;
        assert_eq!(activity.lapsed(IDLE, HEAD, false), None);
        assert_eq!(
            activity.next_check(IDLE, HEAD, false),
            Instant::now() + HEAD
        );
        // The next head's first bytes: its deadline is header_read_timeout from them, however
        // many more bytes come.
        activity.read();
        let head_due = Instant::now() + HEAD;
        tokio::time::advance(HEAD / 2).await;
        activity.read();
        assert_eq!(activity.next_check(IDLE, HEAD, false), head_due);
        tokio::time::advance(HEAD / 2).await;
        assert_eq!(activity.lapsed(IDLE, HEAD, false), Some(Lapse::HeadRead));
        // A head that arrives whole in time clears it.
        drop(activity.begin(http::Version::HTTP_11));
        assert_eq!(activity.lapsed(IDLE, HEAD, false), None);
        tokio::time::advance(IDLE).await;
        assert_eq!(activity.lapsed(IDLE, HEAD, false), Some(Lapse::Idle));
        assert_eq!(activity.lapsed(IDLE, HEAD, true), None, "finishing");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_during_a_request_or_on_http2_start_no_head() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let busy = activity.begin(http::Version::HTTP_11);
        activity.read();
        tokio::time::advance(HEAD * 2).await;
        assert_eq!(activity.lapsed(IDLE, HEAD, false), None, "a request body");
        drop(busy);
        drop(activity.begin(http::Version::HTTP_2));
        activity.read();
        tokio::time::advance(HEAD * 2).await;
        assert_eq!(activity.lapsed(IDLE, HEAD, false), None, "an HTTP/2 frame");
    }
}
