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
    /// Bytes per second a body must keep up, judged over the recent past (see [`BodyWatch`]);
    /// 0 = no minimum.
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
/// that is not the client's fault. Each wait may last at most `idle_timeout`; and in any stretch
/// of the upload the client may keep the proxy waiting at most `idle_timeout` plus one second per
/// `min_rate` bytes it delivered in that stretch. Bytes sent early earn no time for later: a body
/// that sends most of itself at once and then a byte every few seconds is cut as soon as one that
/// trickled from the start.
///
/// That is a bucket of waiting time: it starts full at `idle_timeout`, waiting drains it, bytes
/// refill it (a second per `min_rate` bytes) up to `idle_timeout` again, and an empty bucket ends
/// the body. One timer per body, made on its first wait and moved only when it fires: a body
/// flowing steadily costs a clock read per wait, not a timer update per chunk.
pub struct BodyWatch {
    pace: BodyPace,
    /// How long the client may still keep the proxy waiting, at most `idle_timeout`.
    credit: Duration,
    /// When the current wait began; `None` while bytes are coming.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl BodyWatch {
    pub fn new(pace: BodyPace) -> Self {
        Self {
            pace,
            credit: pace.idle_timeout,
            waiting_since: None,
            timer: None,
        }
    }

    pub(super) fn progress(&mut self, bytes: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.credit = self.credit.saturating_sub(since.elapsed());
        }
        if let Some(per_ms) = bytes.saturating_mul(1000).checked_div(self.pace.min_rate) {
            self.credit = self
                .credit
                .saturating_add(Duration::from_millis(per_ms))
                .min(self.pace.idle_timeout);
        }
    }

    /// When the wait that began at `since` must end, and what to say then.
    fn deadline(&self, since: Instant) -> (Instant, BodyTimeout) {
        let idle = self.pace.idle_timeout;
        if self.pace.min_rate > 0 && self.credit < idle {
            return (
                since + self.credit,
                BodyTimeout::TooSlow(self.pace.min_rate),
            );
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

    /// A wait of `d` that ends with `bytes` arriving.
    fn waited(watch: &mut BodyWatch, d: Duration, bytes: u64) {
        match Instant::now().checked_sub(d) {
            Some(since) => watch.waiting_since = Some(since),
            // A clock younger than `d` (a freshly booted machine): drain as the wait would.
            None => watch.credit = watch.credit.saturating_sub(d),
        }
        watch.progress(bytes);
    }

    #[test]
    fn waiting_drains_a_bucket_that_bytes_refill_up_to_idle_timeout() {
        let mut watch = BodyWatch::new(BodyPace {
            idle_timeout: S(10),
            min_rate: 1000,
        });
        let now = Instant::now();
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
        // A byte after 9 s of waiting earns 1 ms: the next wait may last about 1 s, not 10 s.
        waited(&mut watch, S(9), 1);
        let (deadline, timeout) = watch.deadline(now);
        assert_eq!(timeout, BodyTimeout::TooSlow(1000));
        assert!(
            deadline > now + Duration::from_millis(950)
                && deadline <= now + Duration::from_millis(1001)
        );
        // 20 kB earn 20 s, but the bucket holds only idle_timeout: one wait is again bounded by it.
        waited(&mut watch, Duration::ZERO, 20_000);
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
        // Past its allowance, a body's next wait ends at once.
        waited(&mut watch, S(60), 0);
        assert_eq!(watch.deadline(now), (now, BodyTimeout::TooSlow(1000)));
    }

    #[test]
    fn a_body_sent_mostly_at_once_banks_no_time() {
        let mut watch = BodyWatch::new(BodyPace {
            idle_timeout: S(10),
            min_rate: 1024,
        });
        // A MiB at once once earned 1024 s; now it fills the bucket to idle_timeout and no more.
        waited(&mut watch, Duration::ZERO, 1 << 20);
        // Then a byte every 2 s: five such waits empty the bucket.
        for _ in 0..5 {
            waited(&mut watch, S(2), 1);
        }
        let now = Instant::now();
        let (deadline, timeout) = watch.deadline(now);
        assert_eq!(timeout, BodyTimeout::TooSlow(1024));
        assert!(
            deadline < now + Duration::from_millis(50),
            "{:?}",
            deadline - now
        );
    }

    #[test]
    fn without_min_rate_only_each_wait_is_bounded() {
        let mut watch = BodyWatch::new(BodyPace {
            idle_timeout: S(10),
            min_rate: 0,
        });
        waited(&mut watch, S(3600), 0);
        let now = Instant::now();
        assert_eq!(watch.deadline(now), (now + S(10), BodyTimeout::Idle(S(10))));
    }
}
