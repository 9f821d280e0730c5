//! Local shaping of a profile's request budget (`[profiles.NAME.rate_limit]`): Contentstack allows
//! an organization 10 reads/s and 10 writes/s and answers the excess with 429. Requests wait for a
//! slot instead (at most `max_wait`), or get 429 `rate_limited` at once when the wait would be
//! longer. An upstream 429 pushes the budget back, so one 429 does not turn into many.
//!
//! GCRA (a token bucket kept as one "theoretical arrival time" per bucket): O(1), no timers.
//! The budget is per process; several replicas share an organization's budget only with a fleet
//! store (not available yet).
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimitConfig;

/// How far an upstream 429 pushes the budget back: Contentstack's window is one second.
const PUSHBACK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

impl Kind {
    pub fn of(method: &http::Method) -> Kind {
        if matches!(*method, http::Method::GET | http::Method::HEAD) {
            Kind::Read
        } else {
            Kind::Write
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

    /// Nothing of this kind goes before `now + PUSHBACK`, however large the burst.
    fn push_back(&self, now: Instant) {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        *tat = (*tat).max(now + PUSHBACK + self.tolerance);
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            reads: Bucket::new(config.reads_per_second, config.burst),
            writes: Bucket::new(config.writes_per_second, config.burst),
            max_wait: config.max_wait,
        }
    }

    fn bucket(&self, kind: Kind) -> &Bucket {
        match kind {
            Kind::Read => &self.reads,
            Kind::Write => &self.writes,
        }
    }

    pub fn decide(&self, kind: Kind, now: Instant) -> Decision {
        self.bucket(kind).take(now, self.max_wait)
    }

    /// Contentstack answered 429: spend the next second of this kind's budget.
    pub fn upstream_limited(&self, kind: Kind) {
        self.bucket(kind).push_back(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_wait_ms: u64) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            reads_per_second: per_second,
            writes_per_second: per_second,
            burst,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    #[test]
    fn burst_goes_now_then_requests_are_spaced() {
        let l = limiter(10.0, 3, 1000);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.decide(Kind::Read, t0), Decision::Now);
        }
        assert_eq!(
            l.decide(Kind::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(Kind::Read, t0),
            Decision::After(Duration::from_millis(200))
        );
        // Writes have their own budget.
        assert_eq!(l.decide(Kind::Write, t0), Decision::Now);
        // After the reserved slots pass, the budget refills at the rate.
        assert_eq!(
            l.decide(Kind::Read, t0 + Duration::from_secs(2)),
            Decision::Now
        );
    }

    #[test]
    fn a_wait_beyond_max_wait_is_refused_without_spending_budget() {
        let l = limiter(10.0, 1, 150);
        let t0 = Instant::now();
        assert_eq!(l.decide(Kind::Read, t0), Decision::Now);
        assert_eq!(
            l.decide(Kind::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(Kind::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
        assert_eq!(
            l.decide(Kind::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
    }

    #[test]
    fn an_upstream_429_pushes_the_budget_back() {
        let l = limiter(10.0, 10, 5000);
        let t0 = Instant::now();
        l.upstream_limited(Kind::Write);
        match l.decide(Kind::Write, t0) {
            Decision::After(wait) => assert!(wait >= PUSHBACK, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.decide(Kind::Read, t0), Decision::Now);
    }

    #[test]
    fn kinds() {
        assert_eq!(Kind::of(&http::Method::GET), Kind::Read);
        assert_eq!(Kind::of(&http::Method::HEAD), Kind::Read);
        assert_eq!(Kind::of(&http::Method::POST), Kind::Write);
        assert_eq!(Kind::of(&http::Method::DELETE), Kind::Write);
    }
}
