//! Local shaping of a profile's request budget (`[profiles.NAME.rate_limit]`): Contentstack allows
//! an organization 10 reads/s and 10 writes/s and answers the excess with 429. Requests wait for a
//! slot instead (at most `max_wait`), or get 429 `rate_limited` at once when the wait would be
//! longer. An upstream 429 pushes the budget back, so one 429 does not turn into many.
//!
//! GCRA (a token bucket kept as one "theoretical arrival time" per bucket): O(1), no timers.
//! With a fleet store the buckets live in Redis and every replica draws on the same budget; if the
//! store fails, or is skipped after a failure, the replica uses its own buckets at once.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimitConfig;
use crate::store::{RateCall, RedisStore};

/// How far an upstream 429 pushes the budget back: Contentstack's window is one second.
const PUSHBACK: Duration = Duration::from_secs(1);

/// Which of the organization's two budgets a request draws on: `GET` and `HEAD` are reads,
/// everything else writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrWrite {
    Read,
    Write,
}

impl ReadOrWrite {
    fn as_str(self) -> &'static str {
        match self {
            ReadOrWrite::Read => "read",
            ReadOrWrite::Write => "write",
        }
    }

    pub fn of(method: &http::Method) -> ReadOrWrite {
        if matches!(*method, http::Method::GET | http::Method::HEAD) {
            ReadOrWrite::Read
        } else {
            ReadOrWrite::Write
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go now.
    Now,
    /// A slot is reserved this far ahead: wait, then go.
    After(Duration),
    /// The wait would exceed `max_wait`: refuse, retry after this long.
    Refuse(Duration),
}

pub struct RateLimiter {
    reads: Bucket,
    writes: Bucket,
    max_wait: Duration,
    /// The fleet's shared budget (store and account key), when configured.
    shared: Option<(Arc<RedisStore>, String)>,
}

struct Bucket {
    /// Time per request.
    interval: Duration,
    /// How far the arrival time may run ahead of now: (burst - 1) intervals.
    tolerance: Duration,
    /// The theoretical arrival time of the next request.
    tat: Mutex<Instant>,
}

impl Bucket {
    fn new(per_second: f64, burst: u32) -> Bucket {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Bucket {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            tat: Mutex::new(Instant::now()),
        }
    }

    fn take(&self, now: Instant, max_wait: Duration) -> Decision {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*tat).max(now);
        // The earliest moment this request conforms.
        let allowed_at = start.checked_sub(self.tolerance).unwrap_or(now).max(now);
        let wait = allowed_at - now;
        if wait > max_wait {
            return Decision::Refuse(wait);
        }
        *tat = start + self.interval;
        if wait.is_zero() {
            Decision::Now
        } else {
            Decision::After(wait)
        }
    }

    /// Nothing of this class goes before `now + PUSHBACK`, however large the burst.
    fn push_back(&self, now: Instant) {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        *tat = (*tat).max(now + PUSHBACK + self.tolerance);
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, shared: Option<(Arc<RedisStore>, String)>) -> RateLimiter {
        RateLimiter {
            reads: Bucket::new(config.reads_per_second, config.burst),
            writes: Bucket::new(config.writes_per_second, config.burst),
            max_wait: config.max_wait,
            shared,
        }
    }

    /// Decides for one request: on the fleet's budget if there is one, else (or if the store
    /// fails) on this process's.
    pub async fn acquire(&self, class: ReadOrWrite) -> Decision {
        if let Some((store, account)) = &self.shared {
            let call = self.shared_call(class, Duration::ZERO);
            match store.rate(account, class.as_str(), &call).await {
                Ok(Ok(wait)) if wait.is_zero() => return Decision::Now,
                Ok(Ok(wait)) => return Decision::After(wait),
                Ok(Err(wait)) => return Decision::Refuse(wait),
                Err(e) => {
                    tracing::debug!("shared rate limit unavailable, using the local one: {e}")
                }
            }
        }
        self.decide(class, Instant::now())
    }

    /// A call to the shared bucket of `class`. Its reach, the furthest ahead any call reserves (a
    /// wait up to `max_wait` plus the slot, or a pushback), bounds what is read back from Redis,
    /// where anyone with write access could have put a time years ahead.
    fn shared_call(&self, class: ReadOrWrite, pushback: Duration) -> RateCall {
        let bucket = self.bucket(class);
        RateCall {
            interval: if pushback.is_zero() {
                bucket.interval
            } else {
                Duration::ZERO
            },
            tolerance: bucket.tolerance,
            max_wait: if pushback.is_zero() {
                self.max_wait
            } else {
                Duration::ZERO
            },
            pushback,
            reach: bucket.tolerance + bucket.interval + self.max_wait.max(PUSHBACK),
        }
    }

    fn bucket(&self, class: ReadOrWrite) -> &Bucket {
        match class {
            ReadOrWrite::Read => &self.reads,
            ReadOrWrite::Write => &self.writes,
        }
    }

    pub fn decide(&self, class: ReadOrWrite, now: Instant) -> Decision {
        self.bucket(class).take(now, self.max_wait)
    }

    /// Contentstack answered 429: spend the next second of this class's budget.
    pub async fn upstream_limited(&self, class: ReadOrWrite) {
        let bucket = self.bucket(class);
        bucket.push_back(Instant::now());
        if let Some((store, account)) = &self.shared {
            let call = self.shared_call(class, PUSHBACK);
            let _ = store.rate(account, class.as_str(), &call).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_wait_ms: u64) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig {
                reads_per_second: per_second,
                writes_per_second: per_second,
                burst,
                max_wait: Duration::from_millis(max_wait_ms),
            },
            None,
        )
    }

    #[test]
    fn burst_goes_now_then_requests_are_spaced() {
        let l = limiter(10.0, 3, 1000);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.decide(ReadOrWrite::Read, t0), Decision::Now);
        }
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0),
            Decision::After(Duration::from_millis(200))
        );
        // Writes have their own budget.
        assert_eq!(l.decide(ReadOrWrite::Write, t0), Decision::Now);
        // After the reserved slots pass, the budget refills at the rate.
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0 + Duration::from_secs(2)),
            Decision::Now
        );
    }

    #[test]
    fn a_wait_beyond_max_wait_is_refused_without_spending_budget() {
        let l = limiter(10.0, 1, 150);
        let t0 = Instant::now();
        assert_eq!(l.decide(ReadOrWrite::Read, t0), Decision::Now);
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
        assert_eq!(
            l.decide(ReadOrWrite::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
    }

    #[tokio::test]
    async fn an_upstream_429_pushes_the_budget_back() {
        let l = limiter(10.0, 10, 5000);
        let t0 = Instant::now();
        l.upstream_limited(ReadOrWrite::Write).await;
        match l.decide(ReadOrWrite::Write, t0) {
            Decision::After(wait) => assert!(wait >= PUSHBACK, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.decide(ReadOrWrite::Read, t0), Decision::Now);
    }

    #[test]
    fn kinds() {
        assert_eq!(ReadOrWrite::of(&http::Method::GET), ReadOrWrite::Read);
        assert_eq!(ReadOrWrite::of(&http::Method::HEAD), ReadOrWrite::Read);
        assert_eq!(ReadOrWrite::of(&http::Method::POST), ReadOrWrite::Write);
        assert_eq!(ReadOrWrite::of(&http::Method::DELETE), ReadOrWrite::Write);
    }
}
