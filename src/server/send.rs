//! The write side's deadline (`server.send_timeout`): a response that makes no progress towards its
//! client for that long ends, so a client that stops reading cannot hold a connection slot, a
//! request and its upstream connection for ever (docs/design.md#listeners-and-limits).
//!
//! Two ways a client can stop a response, each watched where it shows:
//! - It stops reading the socket. Then the connection's writes stay blocked: the socket's wrapper
//!   (`server/activity.rs`) notes in [`WriteBlocked`] since when a write has been waiting, and the
//!   connection's task closes the connection once that passes `send_timeout` (an HTTP/1 response,
//!   or every stream of an HTTP/2 connection).
//! - An HTTP/2 client reads the socket but grants a stream no flow-control window (or stops
//!   granting it). The stream's task then waits for window with its body unpolled. [`Sending`]
//!   wraps each response body and notes whether it is waiting for the client (handed over and not
//!   asked for more) or for the upstream; [`StreamExecutor`] runs each stream's task inside
//!   [`stream_deadline`], which ends the task, and so resets the stream, once the body has waited
//!   for the client for `send_timeout`.
//!
//! Time spent waiting for the upstream never counts. Nothing here allocates or takes a lock per
//! request; a timer is made only when a response is already waiting for its client.
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::Busy;
use crate::metrics::{ConnectionLimit, Metrics};

/// When a connection's writes began to wait, as milliseconds since the connection was made;
/// [`NOT_BLOCKED`] while they are not waiting.
pub(super) struct WriteBlocked {
    since_ms: AtomicU64,
    born: Instant,
}

const NOT_BLOCKED: u64 = u64::MAX;

impl WriteBlocked {
    pub(super) fn new() -> Self {
        Self {
            since_ms: AtomicU64::new(NOT_BLOCKED),
            born: Instant::now(),
        }
    }

    /// Notes whether the socket's write or flush `poll` waits for the client.
    pub(super) fn note<T>(&self, poll: &Poll<T>) {
        let blocked = self.since_ms.load(Ordering::Relaxed) != NOT_BLOCKED;
        match (poll.is_pending(), blocked) {
            (true, false) => self
                .since_ms
                .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed),
            (false, true) => self.since_ms.store(NOT_BLOCKED, Ordering::Relaxed),
            _ => {}
        }
    }

    /// When the connection's writes began to wait, if they are waiting.
    pub(super) fn since(&self) -> Option<Instant> {
        match self.since_ms.load(Ordering::Relaxed) {
            NOT_BLOCKED => None,
            ms => Some(self.born + Duration::from_millis(ms)),
        }
    }
}

/// A timer that fires `timeout` after something began to wait, re-armed when the wait is a new
/// one. Made on the first wait only.
#[derive(Default)]
pub(super) struct StallTimer {
    timer: Option<Pin<Box<Sleep>>>,
    /// The wait the timer is armed for.
    armed_for: Option<WaitId>,
}

/// Tells one wait from the next: when it began (socket writes) or how many times the body had been
/// polled when it began (a response body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitId {
    Since(Instant),
    Polls(u32),
}

impl StallTimer {
    /// Ready once the wait `id` has lasted `timeout` from `began` (asked for only when the timer
    /// is armed for this wait).
    fn poll_wait(
        &mut self,
        id: WaitId,
        began: impl FnOnce() -> Instant,
        timeout: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.armed_for != Some(id) {
            let deadline = began() + timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed_for = Some(id);
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Ready once the connection's writes have waited for the client for `timeout`.
    pub(super) fn poll_writes(
        &mut self,
        blocked: &WriteBlocked,
        timeout: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match blocked.since() {
            Some(since) => self.poll_wait(WaitId::Since(since), || since, timeout, cx),
            None => Poll::Pending,
        }
    }
}

/// Where a response body that is being sent notes whether it waits for its client, for the
/// [`stream_deadline`] of the task it is sent from (an HTTP/2 stream's). Set only while that task is
/// being polled; an HTTP/1 response is watched at its socket instead and finds none.
#[derive(Debug, Clone, Copy, Default)]
struct BodyState {
    /// Handed to hyper and not asked for more: hyper waits for the client before it asks.
    waiting: bool,
    /// How many times the body has been polled: a change is progress.
    polls: u32,
}

tokio::task_local! {
    static BODY_STATE: Cell<BodyState>;
}

fn note_body(update: impl FnOnce(&mut BodyState)) {
    let _ = BODY_STATE.try_with(|cell| {
        let mut state = cell.get();
        update(&mut state);
        cell.set(state);
    });
}

/// A response body, noting whether it waits for its client (see [`stream_deadline`]), and keeping
/// its request in flight until it is done.
pub(super) struct Sending<B> {
    body: B,
    _in_flight: Busy,
}

impl<B: Body> Sending<B> {
    /// A body just handed over with its response head: until hyper first asks for data, it waits
    /// for the client (an HTTP/2 stream without window is never asked).
    pub(super) fn new(body: B, in_flight: Busy) -> Self {
        if !body.is_end_stream() {
            note_body(|s| s.waiting = true);
        }
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        note_body(|s| {
            s.waiting = false;
            s.polls = s.polls.wrapping_add(1);
        });
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &poll
            && !self.body.is_end_stream()
        {
            note_body(|s| s.waiting = true);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        note_body(|s| s.waiting = false);
    }
}

/// Runs the tasks hyper spawns for a connection (one per HTTP/2 stream) on the current runtime,
/// each inside [`stream_deadline`].
#[derive(Clone)]
pub(super) struct StreamExecutor {
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExecutor {
    pub(super) fn new(send_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            send_timeout,
            metrics,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        let (send_timeout, metrics) = (self.send_timeout, self.metrics.clone());
        tokio::spawn(async move {
            if stream_deadline(task, send_timeout).await.is_err() {
                metrics.connection_limit(ConnectionLimit::SendTimeout);
                tracing::debug!(
                    reason = ConnectionLimit::SendTimeout.as_str(),
                    "HTTP/2 stream reset by a limit"
                );
            }
        });
    }
}

/// The response of an HTTP/2 stream waited for its client for `send_timeout`.
struct Stalled;

/// Runs an HTTP/2 stream's task until it ends, or until its response body has waited for the
/// client for `send_timeout`: then the task is dropped, which resets the stream and drops its
/// upstream request.
async fn stream_deadline<F: Future<Output = ()>>(
    task: F,
    send_timeout: Duration,
) -> Result<(), Stalled> {
    let mut task = std::pin::pin!(task);
    let mut state = BodyState::default();
    let mut timer = StallTimer::default();
    std::future::poll_fn(|cx| {
        let (done, now) = BODY_STATE.sync_scope(Cell::new(state), || {
            let done = task.as_mut().poll(cx).is_ready();
            (done, BODY_STATE.with(Cell::get))
        });
        state = now;
        if done {
            return Poll::Ready(Ok(()));
        }
        if !state.waiting {
            return Poll::Pending;
        }
        // One wait lasts from a poll of the body (or its handing over) to the next; its time
        // counts from when the task was first seen pending in it.
        timer
            .poll_wait(WaitId::Polls(state.polls), Instant::now, send_timeout, cx)
            .map(|()| Err(Stalled))
    })
    .await
}
