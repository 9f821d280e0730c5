//! The pace a client's request body must keep ([`BodyPace`]), and the watch that holds it to it
//! ([`BodyWatch`]): every wait for a client's body has a deadline.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A request body that stops coming, or comes too slowly, is abandoned: waiting for it must not
/// hold a connection slot for as long as the client likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the next bytes of a request body.
    pub idle_timeout: Duration,
    /// Bytes per second a body must average, counted from its start, once `idle_timeout` has
    /// passed; 0 = no minimum.
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            min_rate: 1024,
        }
    }
}

/// A client's request body was abandoned because the client kept the proxy waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no bytes of the request body for server.body_idle_timeout ({0:?})")]
    Idle(Duration),
    #[error("the request body came slower than server.body_min_rate ({0} bytes/s)")]
    TooSlow(u64),
}

/// Keeps a client's request body to its [`BodyPace`]. Only time spent waiting for the client counts:
/// while the proxy is busy elsewhere (a login, a slow upstream) the body is not being read, and
/// that is not the client's fault. Each wait may last at most `idle_timeout`; in all, the client
/// may keep the proxy waiting `idle_timeout` plus one second per `min_rate` bytes it delivered, so
/// a byte every few seconds cannot hold a connection for long.
///
/// One timer per body, made on its first wait and moved only when it fires: a body flowing
/// steadily costs a clock read per wait, not a timer update per chunk.
pub struct BodyWatch {
    pace: BodyPace,
    received: u64,
    /// Time spent waiting for the client in waits that have ended.
    waited: Duration,
    /// When the current wait began; `None` while bytes are coming.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl BodyWatch {
    pub fn new(pace: BodyPace) -> Self {
        Self {
            pace,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    pub(super) fn progress(&mut self, bytes: u64) {
        self.received += bytes;
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// When the wait that began at `since` must end, and what to say then. Deadlines only move
    /// later: a new wait starts later, and bytes received earn time.
    fn deadline(&self, since: Instant) -> (Instant, BodyTimeout) {
        let idle = self.pace.idle_timeout;
        if let Some(per_ms) = self
            .received
            .saturating_mul(1000)
            .checked_div(self.pace.min_rate)
        {
            let earned = Duration::from_millis(per_ms);
            let left = (idle + earned).saturating_sub(self.waited);
            if left < idle {
                return (since + left, BodyTimeout::TooSlow(self.pace.min_rate));
            }
        }
        (since + idle, BodyTimeout::Idle(idle))
    }

    /// Called when the body has nothing to read: ready once the client has kept us waiting past
    /// its deadline.
    pub(super) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<BodyTimeout> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let (deadline, timeout) = self.deadline(since);
        if now >= deadline {
            return Poll::Ready(timeout);
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if timer.deadline() >= deadline => return Poll::Ready(timeout),
                // Set for an earlier wait's deadline: move it to this one.
                Poll::Ready(()) => timer.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_waiting_allowance_is_idle_timeout_plus_a_second_per_min_rate_bytes() {
        let mut watch = BodyWatch::new(BodyPace {
            idle_timeout: S(10),
            min_rate: 1000,
        });
        let now = Instant::now();
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
        // A byte after 9 s of waiting earns 1 ms: the next wait may last 1.001 s, not 10 s.
        watch.waited = S(9);
        watch.received = 1;
        assert_eq!(
            watch.deadline(now),
            (
                now + Duration::from_millis(1001),
                BodyTimeout::TooSlow(1000)
            )
        );
        // 20 kB earn 20 s: one wait is again bounded by idle_timeout.
        watch.received = 20_000;
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
        // Past its allowance, a body's next wait ends at once.
        watch.waited = S(60);
        assert_eq!(watch.deadline(now), (now, BodyTimeout::TooSlow(1000)));
    }

    #[test]
    fn without_min_rate_only_each_wait_is_bounded() {
        let mut watch = BodyWatch::new(BodyPace {
            idle_timeout: S(10),
            min_rate: 0,
        });
        watch.waited = S(3600);
        let now = Instant::now();
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
    }
}
