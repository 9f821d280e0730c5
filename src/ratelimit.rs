//! Local shaping of a profile's request budget (`[profiles.NAME.rate_limit]`): Contentstack allows
//! an organization a number of reads, writes and bulk calls per second (10, 10 and 1 by default,
//! more on bigger plans) and answers the excess with 429. Requests wait for a slot instead (at most
//! `max_wait`), or get 429 `rate_limited` at once when the wait would be longer. An upstream 429
//! pushes the budget back, so one 429 does not turn into many, and an answer saying the upstream's
//! window is full (`X-RateLimit-Remaining: 0`) spends whatever burst is left.
//!
//! Rates the configuration does not write are learned: [`RateLimiter::learn`] takes the
//! organization's plan once a login succeeds (docs/design.md#rate-budget); until then, and when the
//! plan cannot be read, Contentstack's defaults apply.
//!
//! GCRA (a token bucket kept as one "theoretical arrival time" per bucket): O(1), no timers.
//! Contentstack counts any sliding second, and GCRA admits `burst + rate - 1` requests into one,
//! which is why `burst` defaults to 1. With a fleet store the buckets live in Redis and every
//! replica draws on the same budget; if the store fails, or is skipped after a failure, the replica
//! uses its own buckets at once.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimitConfig;
use crate::store::{RateCall, RedisStore};

/// How far an upstream 429 pushes the budget back: Contentstack's window is one second.
const PUSHBACK: Duration = Duration::from_secs(1);

/// Which of the organization's budgets a request draws on: bulk calls (`/v3/bulk/…`) have their
/// own, smaller one; otherwise `GET` and `HEAD` are reads, everything else writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Bulk,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] = [RequestKind::Read, RequestKind::Write, RequestKind::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Bulk => "bulk",
        }
    }

    /// `path` is the normalized path that is sent. Bulk is told as a server may read the path: in
    /// any case, its second segment with `;params` or a format suffix (`/v3/Bulk;x/publish`).
    /// Byte scans rather than `split`: this runs for every request (docs/design.md#performance).
    pub fn of(method: &http::Method, path: &str) -> RequestKind {
        /// The first segment of `rest`, and what follows its `/` (nothing if none does).
        fn segment(rest: &[u8]) -> (&[u8], &[u8]) {
            match rest.iter().position(|&b| b == b'/') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[]),
            }
        }
        // What comes before the first `/` (nothing, in a normalized path) is not a segment.
        let (_, rest) = segment(path.as_bytes());
        let (version, rest) = segment(rest);
        // The second segment is `bulk` when it begins so and ends there, or its `;params` or
        // format suffix begins there: only its first five bytes are read.
        let bulk = rest
            .get(..4)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"bulk"))
            && matches!(rest.get(4), None | Some(b'/' | b';' | b'.'));
        if bulk && version.eq_ignore_ascii_case(b"v3") {
            RequestKind::Bulk
        } else if matches!(*method, http::Method::GET | http::Method::HEAD) {
            RequestKind::Read
        } else {
            RequestKind::Write
        }
    }

    /// Contentstack's documented default for an organization whose plan is not known.
    fn default_rate(self) -> f64 {
        match self {
            RequestKind::Read | RequestKind::Write => 10.0,
            RequestKind::Bulk => 1.0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where a budget's rate comes from, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Written in `rate_limit`.
    Configured,
    /// Read from the organization's plan after a login.
    Plan,
    /// Contentstack's documented default: not learned (yet), or the plan could not be read.
    Default,
}

impl RateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateSource::Configured => "configured",
            RateSource::Plan => "plan",
            RateSource::Default => "default",
        }
    }
}

/// The organization's plan limits, per second (`getLimit`, `limit`, `bulkLimit`); a `None` is a
/// limit the plan does not have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanLimits {
    pub organization_uid: String,
    pub reads: Option<u32>,
    pub writes: Option<u32>,
    pub bulk: Option<u32>,
}

/// One budget as `/status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    pub kind: RequestKind,
    pub per_second: f64,
    pub source: RateSource,
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
    buckets: [Bucket; 3],
    burst: u32,
    max_wait: Duration,
    /// The organization whose plan was learned, for `/status`.
    organization: Mutex<Option<String>>,
    /// The fleet's shared budget (store and account key), when configured.
    shared: Option<(Arc<RedisStore>, String)>,
}

struct Bucket {
    /// The rate written in the configuration, which nothing learned overrides.
    configured: Option<f64>,
    state: Mutex<BucketState>,
}

struct BucketState {
    /// Time per request.
    interval: Duration,
    /// How far the arrival time may run ahead of now: (burst - 1) intervals.
    tolerance: Duration,
    /// The theoretical arrival time of the next request.
    tat: Instant,
    per_second: f64,
    source: RateSource,
}

impl BucketState {
    fn new(per_second: f64, burst: u32, source: RateSource, tat: Instant) -> BucketState {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        BucketState {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            tat,
            per_second,
            source,
        }
    }

    fn take(&mut self, now: Instant, max_wait: Duration) -> Decision {
        let start = self.tat.max(now);
        // The earliest moment this request conforms.
        let allowed_at = start.checked_sub(self.tolerance).unwrap_or(now).max(now);
        let wait = allowed_at - now;
        if wait > max_wait {
            return Decision::Refuse(wait);
        }
        self.tat = start + self.interval;
        if wait.is_zero() {
            Decision::Now
        } else {
            Decision::After(wait)
        }
    }

    /// Nothing of this kind goes before `now + by`, however large the burst.
    fn push_back(&mut self, now: Instant, by: Duration) {
        self.tat = self.tat.max(now + by + self.tolerance);
    }
}

impl Bucket {
    fn new(configured: Option<f64>, kind: RequestKind, burst: u32) -> Bucket {
        let (rate, source) = match configured {
            Some(rate) => (rate, RateSource::Configured),
            None => (kind.default_rate(), RateSource::Default),
        };
        Bucket {
            configured,
            state: Mutex::new(BucketState::new(rate, burst, source, Instant::now())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `learned` (or the default, when `None`) unless the rate is configured; the bucket's
    /// place in time is kept.
    fn learn(&self, kind: RequestKind, learned: Option<u32>, burst: u32) {
        if self.configured.is_some() {
            return;
        }
        let (rate, source) = match learned.filter(|n| *n > 0) {
            Some(n) => (f64::from(n), RateSource::Plan),
            None => (kind.default_rate(), RateSource::Default),
        };
        let mut state = self.state();
        *state = BucketState::new(rate, burst, source, state.tat);
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, shared: Option<(Arc<RedisStore>, String)>) -> RateLimiter {
        let burst = config.burst;
        RateLimiter {
            buckets: [
                Bucket::new(config.reads_per_second, RequestKind::Read, burst),
                Bucket::new(config.writes_per_second, RequestKind::Write, burst),
                Bucket::new(config.bulk_per_second, RequestKind::Bulk, burst),
            ],
            burst,
            max_wait: config.max_wait,
            organization: Mutex::new(None),
            shared,
        }
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Whether some rate is left to learn from the organization's plan.
    pub fn learns(&self) -> bool {
        self.buckets.iter().any(|b| b.configured.is_none())
    }

    /// Uses the organization's plan for every rate the configuration leaves open; `None` (the plan
    /// could not be read) falls back to Contentstack's defaults.
    pub fn learn(&self, plan: Option<&PlanLimits>) {
        let limit = |kind| {
            let plan = plan?;
            match kind {
                RequestKind::Read => plan.reads,
                RequestKind::Write => plan.writes,
                RequestKind::Bulk => plan.bulk,
            }
        };
        for kind in RequestKind::ALL {
            self.bucket(kind).learn(kind, limit(kind), self.burst);
        }
        *self.organization.lock().unwrap_or_else(|e| e.into_inner()) =
            plan.map(|p| p.organization_uid.clone());
    }

    /// The budgets in force, and the organization whose plan they came from.
    pub fn status(&self) -> (Vec<BudgetStatus>, Option<String>) {
        let budgets = RequestKind::ALL
            .iter()
            .map(|&kind| {
                let state = self.bucket(kind).state();
                BudgetStatus {
                    kind,
                    per_second: state.per_second,
                    source: state.source,
                }
            })
            .collect();
        let organization = self
            .organization
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (budgets, organization)
    }

    /// Decides for one request, waiting at most `max_wait`: on the fleet's budget if there is
    /// one, else (or if the store fails) on this process's.
    pub async fn acquire(&self, kind: RequestKind) -> Decision {
        self.acquire_within(kind, self.max_wait).await
    }

    /// [`RateLimiter::acquire`] with a wait of at most `max_wait` (a retry that has already
    /// waited part of it).
    pub async fn acquire_within(&self, kind: RequestKind, max_wait: Duration) -> Decision {
        if let Some((store, account)) = &self.shared {
            let call = self.shared_call(kind, max_wait, Duration::ZERO);
            match store.rate(account, kind.as_str(), &call).await {
                Ok(Ok(wait)) if wait.is_zero() => return Decision::Now,
                Ok(Ok(wait)) => return Decision::After(wait),
                Ok(Err(wait)) => return Decision::Refuse(wait),
                Err(e) => {
                    tracing::debug!("shared rate limit unavailable, using the local one: {e}")
                }
            }
        }
        self.bucket(kind).state().take(Instant::now(), max_wait)
    }

    /// A call to the shared bucket of `kind`. Its reach, the furthest ahead any call reserves (a
    /// wait up to `max_wait` plus the slot, or a pushback), bounds what is read back from Redis,
    /// where anyone with write access could have put a time years ahead.
    fn shared_call(&self, kind: RequestKind, max_wait: Duration, pushback: Duration) -> RateCall {
        let (interval, tolerance) = {
            let state = self.bucket(kind).state();
            (state.interval, state.tolerance)
        };
        RateCall {
            interval: if pushback.is_zero() {
                interval
            } else {
                Duration::ZERO
            },
            tolerance,
            max_wait: if pushback.is_zero() {
                max_wait
            } else {
                Duration::ZERO
            },
            pushback,
            reach: tolerance + interval + self.max_wait.max(PUSHBACK),
        }
    }

    fn bucket(&self, kind: RequestKind) -> &Bucket {
        &self.buckets[kind.index()]
    }

    pub fn decide(&self, kind: RequestKind, now: Instant) -> Decision {
        self.bucket(kind).state().take(now, self.max_wait)
    }

    /// Contentstack answered 429: spend the next second of this kind's budget.
    pub async fn upstream_limited(&self, kind: RequestKind) {
        self.push_back(kind, PUSHBACK).await;
    }

    /// Contentstack said its window for this kind is full (`X-RateLimit-Remaining: 0`): whatever
    /// burst is left is spent, and the next request waits at least one interval. A client using
    /// the whole budget at an even pace sees a full window on every other answer, so holding a
    /// whole second here would halve its rate; a window that others fill shows as a 429, which
    /// holds the budget for the second.
    pub async fn upstream_full(&self, kind: RequestKind) {
        let interval = self.bucket(kind).state().interval;
        self.push_back(kind, interval).await;
    }

    async fn push_back(&self, kind: RequestKind, by: Duration) {
        self.bucket(kind).state().push_back(Instant::now(), by);
        if let Some((store, account)) = &self.shared {
            let call = self.shared_call(kind, Duration::ZERO, by);
            let _ = store.rate(account, kind.as_str(), &call).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max_wait_ms: u64) -> RateLimiter {
        RateLimiter::new(
            &RateLimitConfig {
                reads_per_second: Some(per_second),
                writes_per_second: Some(per_second),
                bulk_per_second: Some(per_second),
                organization_uid: None,
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
            assert_eq!(l.decide(RequestKind::Read, t0), Decision::Now);
        }
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::After(Duration::from_millis(200))
        );
        // Writes have their own budget.
        assert_eq!(l.decide(RequestKind::Write, t0), Decision::Now);
        // After the reserved slots pass, the budget refills at the rate.
        assert_eq!(
            l.decide(RequestKind::Read, t0 + Duration::from_secs(2)),
            Decision::Now
        );
    }

    #[test]
    fn a_wait_beyond_max_wait_is_refused_without_spending_budget() {
        let l = limiter(10.0, 1, 150);
        let t0 = Instant::now();
        assert_eq!(l.decide(RequestKind::Read, t0), Decision::Now);
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::After(Duration::from_millis(100))
        );
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::Refuse(Duration::from_millis(200))
        );
    }

    #[tokio::test]
    async fn an_upstream_429_pushes_the_budget_back() {
        let l = limiter(10.0, 10, 5000);
        let t0 = Instant::now();
        l.upstream_limited(RequestKind::Write).await;
        match l.decide(RequestKind::Write, t0) {
            Decision::After(wait) => assert!(wait >= PUSHBACK, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.decide(RequestKind::Read, t0), Decision::Now);
    }

    #[test]
    fn kinds() {
        use http::Method;
        assert_eq!(RequestKind::of(&Method::GET, "/v3/x"), RequestKind::Read);
        assert_eq!(RequestKind::of(&Method::HEAD, "/v3/x"), RequestKind::Read);
        assert_eq!(RequestKind::of(&Method::POST, "/v3/x"), RequestKind::Write);
        assert_eq!(
            RequestKind::of(&Method::DELETE, "/v3/x"),
            RequestKind::Write
        );
        // Bulk calls have their own budget, whatever the method.
        assert_eq!(
            RequestKind::of(&Method::POST, "/v3/bulk/publish"),
            RequestKind::Bulk
        );
        assert_eq!(
            RequestKind::of(&Method::GET, "/v3/bulk/jobs/j1"),
            RequestKind::Bulk
        );
        assert_eq!(
            RequestKind::of(&Method::POST, "/v3/bulkish"),
            RequestKind::Write
        );
        // In every spelling a server may read as bulk.
        for path in [
            "/v3/Bulk/publish",
            "/v3/bulk;x/publish",
            "/V3/BULK",
            "/v3/bulk.json",
        ] {
            assert_eq!(
                RequestKind::of(&Method::POST, path),
                RequestKind::Bulk,
                "{path}"
            );
        }
    }

    /// [`RequestKind::of`] agrees with its definition, written with `split`, on paths built from
    /// the pieces that matter: slashes, `;`, `.`, case, and segments around `bulk`.
    #[test]
    fn kinds_agree_with_their_definition() {
        use http::Method;
        fn by_definition(method: &Method, path: &str) -> RequestKind {
            let mut segments = path.split('/').skip(1);
            let version = segments.next().unwrap_or_default();
            let second = segments.next().unwrap_or_default();
            let second = second.split([';', '.']).next().unwrap_or_default();
            if version.eq_ignore_ascii_case("v3") && second.eq_ignore_ascii_case("bulk") {
                RequestKind::Bulk
            } else if matches!(*method, Method::GET | Method::HEAD) {
                RequestKind::Read
            } else {
                RequestKind::Write
            }
        }
        let pieces = [
            "", "/", "v3", "V3", "bulk", "BuLk", "bulkx", ";", ".", ";p", ".json",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        for e in pieces {
                            let path = format!("{a}/{b}{c}/{d}{e}");
                            for method in [Method::GET, Method::POST] {
                                assert_eq!(
                                    RequestKind::of(&method, &path),
                                    by_definition(&method, &path),
                                    "{method} {path}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * pieces.len().pow(5));
    }

    fn unset() -> RateLimitConfig {
        RateLimitConfig {
            reads_per_second: None,
            writes_per_second: Some(4.0),
            bulk_per_second: None,
            organization_uid: None,
            burst: 1,
            max_wait: Duration::from_secs(5),
        }
    }

    fn rates(l: &RateLimiter) -> Vec<(f64, &'static str)> {
        l.status()
            .0
            .iter()
            .map(|b| (b.per_second, b.source.as_str()))
            .collect()
    }

    #[test]
    fn rates_not_written_are_learned_from_the_plan_and_fall_back_to_the_defaults() {
        let l = RateLimiter::new(&unset(), None);
        assert!(l.learns());
        assert_eq!(
            rates(&l),
            [(10.0, "default"), (4.0, "configured"), (1.0, "default")]
        );
        let plan = PlanLimits {
            organization_uid: "blt0org".into(),
            reads: Some(40),
            writes: Some(30),
            bulk: None,
        };
        l.learn(Some(&plan));
        assert_eq!(
            rates(&l),
            [(40.0, "plan"), (4.0, "configured"), (1.0, "default")]
        );
        assert_eq!(l.status().1.as_deref(), Some("blt0org"));
        // A learned rate is used: 40/s spaces reads 25 ms apart.
        let t0 = Instant::now() + Duration::from_secs(1);
        assert_eq!(l.decide(RequestKind::Read, t0), Decision::Now);
        assert_eq!(
            l.decide(RequestKind::Read, t0),
            Decision::After(Duration::from_millis(25))
        );
        // The plan cannot be read after the next login: the defaults again.
        l.learn(None);
        assert_eq!(
            rates(&l),
            [(10.0, "default"), (4.0, "configured"), (1.0, "default")]
        );
        let all_written = RateLimitConfig {
            reads_per_second: Some(1.0),
            bulk_per_second: Some(1.0),
            ..unset()
        };
        assert!(!RateLimiter::new(&all_written, None).learns());
    }

    #[tokio::test]
    async fn a_full_upstream_window_spends_the_burst() {
        let l = limiter(10.0, 5, 5000);
        l.upstream_full(RequestKind::Read).await;
        let now = Instant::now();
        match l.decide(RequestKind::Read, now) {
            Decision::After(wait) => {
                assert!(
                    wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
                    "{wait:?}"
                )
            }
            other => panic!("the burst of 5 should be spent: {other:?}"),
        }
        assert_eq!(l.decide(RequestKind::Write, now), Decision::Now);
    }
}
