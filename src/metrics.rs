//! Prometheus metrics (docs/design.md#observability), prefix `cma_auth_proxy_`. Label values are
//! bounded: profile names come from the configuration, methods are folded to the standard set,
//! statuses are numbers; never a path, a token or an e-mail.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod exposition;
mod labels;
mod per_thread;

pub use exposition::Format;
pub use labels::NO_PROFILE;
use labels::Profile;
pub use labels::{
    CacheResult, ConnectionLimit, LoginOutcome, ReloadOutcome, ReplayOutcome, RequestOutcome,
    SessionAction, StoreEvent, StoreState, Trigger,
};
use per_thread::{Count, Latency, LatencyShard, Level, Line};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    profile: Profile,
    method: &'static str,
    status: u16,
}

/// `request_duration_seconds{profile,outcome}`: profiles × 3 outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    profile: Profile,
    outcome: RequestOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    profile: Profile,
    outcome: LoginOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabels {
    profile: Profile,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReauthLabels {
    profile: Profile,
    trigger: Trigger,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    profile: Profile,
    action: SessionAction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplayLabels {
    outcome: ReplayOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

/// `denied_total{reason}`: the reason of the proxy's error answer (`ProxyError::reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    reason: ConnectionLimit,
}

/// `open_connections{listener}`: the listener's name (`proxy`, `admin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: StoreEvent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: StoreState,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    profile: Profile,
    result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Every metric of the proxy. Updated only through the methods below, which take typed label
/// values: no call site spells a label.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Count>,
    request_duration: Family<DurationLabels, Latency>,
    upstream_duration: Family<ProfileLabels, Latency>,
    logins: Family<LoginLabels, Counter>,
    logouts: Family<ProfileLabels, Counter>,
    token_age: Family<ProfileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    profile_ready: Family<ProfileLabels, Gauge>,
    login_backoff: Family<ProfileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reauth: Family<ReauthLabels, Counter>,
    reauth_backoffs: Family<ReauthLabels, Counter>,
    replays: Family<ReplayLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    in_flight: Level,
    open_connections: Family<ListenerLabels, Gauge>,
    rate_limit_waits: Family<ProfileLabels, Counter>,
    store_events: Family<EventLabels, Counter>,
    store_state: Family<StateLabels, Gauge>,
    connection_limits: Family<LimitLabels, Counter>,
    emulated_sessions: Family<SessionLabels, Counter>,
    reads_coalesced: Family<ProfileLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    /// Tells this registry's series from another's in [`REQUEST_SERIES`] (tests run several).
    id: u64,
}

static NEXT_METRICS_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This thread's shards of the series a kind of request updates, as [`Metrics::request`] last
/// found them: a request then costs no hashing of its labels, no lock of the families, and no
/// write to a cache line another worker writes (docs/design.md#performance).
/// Families never drop these series, nor a series its shards, so a kept shard is always counted.
struct RequestSeries {
    metrics: u64,
    profile: Arc<str>,
    method: &'static str,
    status: u16,
    outcome: RequestOutcome,
    count: Arc<Line<AtomicU64>>,
    duration: Arc<Line<LatencyShard>>,
    /// Made at the first such request that went upstream, as the family would.
    upstream: Option<Arc<Line<LatencyShard>>>,
}

/// How many kinds of request each thread keeps the series of; a new kind takes the oldest's place.
const REQUEST_SERIES_KEPT: usize = 16;

thread_local! {
    static REQUEST_SERIES: std::cell::RefCell<Vec<RequestSeries>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// This thread's shard of `in_flight_requests`, and the registry it belongs to.
    static IN_FLIGHT: std::cell::RefCell<Option<(u64, Arc<Line<AtomicI64>>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Latency buckets from 1 ms to 2 min: loopback hits are milliseconds, big uploads are minutes.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A latency histogram over [`DURATION_BUCKETS`], kept per thread.
fn durations() -> Latency {
    Latency::with_bounds(|| LatencyShard::new(&DURATION_BUCKETS))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("cma_auth_proxy");
        let requests = Family::<RequestLabels, Count>::default();
        registry.register(
            "requests",
            "Requests answered, by profile, method and status",
            requests.clone(),
        );
        let request_duration =
            Family::<DurationLabels, Latency>::new_with_constructor(durations as fn() -> Latency);
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, as seen by the client, by profile and outcome (ok, upstream_error, proxy_error)",
            request_duration.clone(),
        );
        let upstream_duration =
            Family::<ProfileLabels, Latency>::new_with_constructor(durations as fn() -> Latency);
        registry.register(
            "upstream_duration_seconds",
            "Time Contentstack took to answer a forwarded request (headers), by profile",
            upstream_duration.clone(),
        );
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "logins",
            "Login attempts by outcome (success, rejected, transient)",
            logins.clone(),
        );
        let logouts = Family::<ProfileLabels, Counter>::default();
        registry.register("logouts", "Sessions logged out", logouts.clone());
        let token_age = Family::default();
        registry.register(
            "token_age_seconds",
            "Age of the cached token (absent without one)",
            token_age.clone(),
        );
        let profile_ready = Family::<ProfileLabels, Gauge>::default();
        registry.register(
            "profile_ready",
            "1 when the profile can serve (a token, or a re-login one request away), else 0",
            profile_ready.clone(),
        );
        let login_backoff = Family::default();
        registry.register(
            "login_backoff_seconds",
            "Seconds until the profile may try to log in again (0 when not backing off)",
            login_backoff.clone(),
        );
        let reauth = Family::<ReauthLabels, Counter>::default();
        registry.register(
            "reauth",
            "Tokens replaced, by trigger (401, validate, max_age, rotate)",
            reauth.clone(),
        );
        let reauth_backoffs = Family::<ReauthLabels, Counter>::default();
        registry.register(
            "reauth_backoffs",
            "Re-logins held back because fresh tokens kept being rejected, by trigger (401, validate)",
            reauth_backoffs.clone(),
        );
        let replays = Family::<ReplayLabels, Counter>::default();
        registry.register(
            "replays",
            "Requests that met an evicted token: replayed, not_replayable, login_failed",
            replays.clone(),
        );
        let denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "denied",
            "Requests the proxy refused itself, by reason",
            denied.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome (success, error)",
            config_reloads.clone(),
        );
        let in_flight = Level::default();
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Client connections open, by listener (proxy, admin)",
            open_connections.clone(),
        );
        let connection_limits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "connection_limits",
            "Connections refused or closed by a limit: too_many_connections, header_read_timeout, headers_too_large, malformed_request, idle_timeout, tls_handshake_failed, send_timeout (an HTTP/2 stream reset), evicted (idle, to admit a probe)",
            connection_limits.clone(),
        );
        let rate_limit_waits = Family::<ProfileLabels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Requests that waited for a slot of the profile's rate_limit budget",
            rate_limit_waits.clone(),
        );
        let reads_coalesced = Family::<ProfileLabels, Counter>::default();
        registry.register(
            "reads_coalesced",
            "Reads answered with an identical read's answer instead of a request of their own",
            reads_coalesced.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache",
            "Read cache events by profile: hit, miss, store, invalidate",
            cache.clone(),
        );
        let store_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "token_store",
            "Fleet store events: hit, miss, lock_wait, fleet_login, adopt, publish, error, invalid",
            store_events.clone(),
        );
        let store_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "token_store_state",
            "Fleet store state, 1 for the current one: connecting, up, down (skipped after a failure), probing",
            store_state.clone(),
        );
        let emulated_sessions = Family::<SessionLabels, Counter>::default();
        registry.register(
            "emulated_sessions",
            "Client logins and logouts the proxy answered itself (policy.session_endpoint = \"emulate\"), by action",
            emulated_sessions.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Version of this build", build_info);
        let metrics = Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            logins,
            logouts,
            token_age,
            profile_ready,
            login_backoff,
            reauth,
            reauth_backoffs,
            replays,
            denied,
            config_reloads,
            in_flight,
            open_connections,
            rate_limit_waits,
            store_events,
            store_state,
            connection_limits,
            emulated_sessions,
            reads_coalesced,
            cache,
            id: NEXT_METRICS_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        // Series an alert's increase() needs from its first event on exist from the start.
        for &outcome in ReloadOutcome::ALL {
            metrics
                .config_reloads
                .get_or_create_owned(&ReloadLabels { outcome });
        }
        for &outcome in ReplayOutcome::ALL {
            metrics
                .replays
                .get_or_create_owned(&ReplayLabels { outcome });
        }
        for &reason in ConnectionLimit::ALL {
            metrics
                .connection_limits
                .get_or_create_owned(&LimitLabels { reason });
        }
        Arc::new(metrics)
    }

    /// Creates, at 0, the series of every reason a refusal can have (`denied_total{reason}`).
    pub fn denied_reasons(&self, reasons: &[&'static str]) {
        for &reason in reasons {
            self.denied.get_or_create_owned(&DeniedLabels { reason });
        }
    }

    /// Creates, at 0, the per-profile series of `profile`: at start, and for a profile a reload
    /// adds. A login profile gets its logins, re-logins and logouts; a profile with a budget its
    /// waits.
    pub fn profile(&self, profile: &str, logs_in: bool, rate_limited: bool) {
        let name = Profile::from(profile);
        let profile = || name.clone();
        if logs_in {
            for &outcome in LoginOutcome::ALL {
                self.logins.get_or_create_owned(&LoginLabels {
                    profile: profile(),
                    outcome,
                });
            }
            for &trigger in Trigger::ALL {
                self.reauth.get_or_create_owned(&ReauthLabels {
                    profile: profile(),
                    trigger,
                });
            }
            // Only a request's 401 and the background validation are held back.
            for trigger in [Trigger::Unauthorized, Trigger::Validate] {
                self.reauth_backoffs.get_or_create_owned(&ReauthLabels {
                    profile: profile(),
                    trigger,
                });
            }
            self.logouts
                .get_or_create_owned(&ProfileLabels { profile: profile() });
        }
        if rate_limited {
            self.rate_limit_waits
                .get_or_create_owned(&ProfileLabels { profile: profile() });
        }
    }

    /// The profiles' readiness and remaining login backoff, set at scrape time for the profiles
    /// there are now (a profile a reload removed loses its series).
    pub fn profile_states<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a str, bool, Option<Duration>)>,
    ) {
        self.profile_ready.clear();
        self.login_backoff.clear();
        for (profile, ready, backoff) in states {
            let labels = ProfileLabels {
                profile: profile.into(),
            };
            self.profile_ready
                .get_or_create(&labels)
                .set(i64::from(ready));
            self.login_backoff
                .get_or_create(&labels)
                .set(backoff.unwrap_or_default().as_secs_f64());
        }
    }

    /// Creates the read series of `profile` at 0, so that a rate over them exists before the
    /// first event; `cached` when the profile has a cache.
    pub fn reads_of(&self, profile: &str, cached: bool) {
        let _ = self.reads_coalesced.get_or_create(&ProfileLabels {
            profile: profile.into(),
        });
        if cached {
            for &result in CacheResult::ALL {
                let _ = self.cache.get_or_create(&CacheLabels {
                    profile: profile.into(),
                    result,
                });
            }
        }
    }

    /// A read got another's answer.
    pub fn read_coalesced(&self, profile: &str) {
        self.reads_coalesced
            .get_or_create(&ProfileLabels {
                profile: profile.into(),
            })
            .inc();
    }

    pub fn cache(&self, profile: &str, result: CacheResult) {
        self.cache
            .get_or_create(&CacheLabels {
                profile: profile.into(),
                result,
            })
            .inc();
    }

    /// A request answered: counted by profile (`none` when refused before one was chosen),
    /// method and status, with its durations by profile and outcome (`proxy_answer`: the proxy
    /// answered itself).
    pub fn request(
        &self,
        profile: Option<Arc<str>>,
        method: &Method,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
        proxy_answer: bool,
    ) {
        let profile = profile.unwrap_or_else(|| NO_PROFILE.clone());
        let outcome = RequestOutcome::of(status, proxy_answer);
        let method = method_label(method);
        REQUEST_SERIES.with_borrow_mut(|kept| {
            let found = kept.iter().position(|s| {
                s.metrics == self.id
                    && s.status == status
                    && s.outcome == outcome
                    && s.method == method
                    && s.profile == profile
            });
            let i = found.unwrap_or_else(|| {
                if kept.len() == REQUEST_SERIES_KEPT {
                    kept.remove(0);
                }
                kept.push(self.request_series(&profile, method, status, outcome));
                kept.len() - 1
            });
            let series = &mut kept[i];
            series.duration.observe(elapsed.as_secs_f64());
            if let Some(upstream) = upstream {
                series
                    .upstream
                    .get_or_insert_with(|| {
                        let labels = ProfileLabels {
                            profile: Profile(profile.clone()),
                        };
                        self.upstream_duration.get_or_create(&labels).shard()
                    })
                    .observe(upstream.as_secs_f64());
            }
            series.count.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// The series of one kind of request, from the families (see [`RequestSeries`]).
    fn request_series(
        &self,
        profile: &Arc<str>,
        method: &'static str,
        status: u16,
        outcome: RequestOutcome,
    ) -> RequestSeries {
        let count = self
            .requests
            .get_or_create(&RequestLabels {
                profile: Profile(profile.clone()),
                method,
                status,
            })
            .shard();
        let duration = self
            .request_duration
            .get_or_create(&DurationLabels {
                profile: Profile(profile.clone()),
                outcome,
            })
            .shard();
        RequestSeries {
            metrics: self.id,
            profile: profile.clone(),
            method,
            status,
            outcome,
            count,
            duration,
            upstream: None,
        }
    }

    /// A request starts being served; it ends when the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight_shard(|n| n.fetch_add(1, Ordering::Relaxed));
        InFlight(self)
    }

    /// Updates this thread's shard of `in_flight_requests`.
    fn in_flight_shard(&self, update: impl FnOnce(&AtomicI64) -> i64) {
        IN_FLIGHT.with_borrow_mut(|kept| {
            if !matches!(kept, Some((id, _)) if *id == self.id) {
                *kept = Some((self.id, self.in_flight.shard()));
            }
            if let Some((_, shard)) = kept {
                update(shard);
            }
        });
    }

    /// The proxy refused a request itself; `reason` is its error's stable reason.
    pub fn denied(&self, reason: &'static str) {
        self.denied.get_or_create(&DeniedLabels { reason }).inc();
    }

    pub fn reauth(&self, profile: &str, trigger: Trigger) {
        self.reauth
            .get_or_create(&ReauthLabels {
                profile: profile.into(),
                trigger,
            })
            .inc();
    }

    /// The re-login after a `trigger` was held back (see `token::backoff::RejectionStreak`).
    pub fn reauth_backoff(&self, profile: &str, trigger: Trigger) {
        self.reauth_backoffs
            .get_or_create(&ReauthLabels {
                profile: profile.into(),
                trigger,
            })
            .inc();
    }

    pub fn login(&self, profile: &str, outcome: LoginOutcome) {
        self.logins
            .get_or_create(&LoginLabels {
                profile: profile.into(),
                outcome,
            })
            .inc();
    }

    pub fn logout(&self, profile: &str) {
        self.logouts
            .get_or_create(&ProfileLabels {
                profile: profile.into(),
            })
            .inc();
    }

    /// The age of the profile's token at scrape time; `None` removes the series (no token).
    pub fn token_age(&self, profile: &str, age: Option<Duration>) {
        let labels = ProfileLabels {
            profile: profile.into(),
        };
        match age {
            Some(age) => {
                self.token_age.get_or_create(&labels).set(age.as_secs_f64());
            }
            None => {
                self.token_age.remove(&labels);
            }
        }
    }

    pub fn rate_limit_wait(&self, profile: &str) {
        self.rate_limit_waits
            .get_or_create(&ProfileLabels {
                profile: profile.into(),
            })
            .inc();
    }

    /// A client's login or logout answered by the proxy itself.
    pub fn emulated_session(&self, profile: &str, action: SessionAction) {
        self.emulated_sessions
            .get_or_create(&SessionLabels {
                profile: profile.into(),
                action,
            })
            .inc();
    }

    /// Creates every profile's `emulated_sessions_total` series at 0, so that a rate over them
    /// exists before the first emulated login.
    pub fn emulated_sessions_known<'p>(&self, profiles: impl Iterator<Item = &'p str>) {
        for profile in profiles {
            for &action in SessionAction::ALL {
                drop(self.emulated_sessions.get_or_create(&SessionLabels {
                    profile: profile.into(),
                    action,
                }));
            }
        }
    }

    pub fn replay(&self, outcome: ReplayOutcome) {
        self.replays.get_or_create(&ReplayLabels { outcome }).inc();
    }

    pub fn connection_limit(&self, reason: ConnectionLimit) {
        self.connection_limits
            .get_or_create(&LimitLabels { reason })
            .inc();
    }

    /// The gauge of the connections open on the listener named `listener`, created (at 0) with
    /// the listener so that it is there before the first connection.
    pub fn open_connections(&self, listener: &'static str) -> Gauge {
        self.open_connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    pub fn store_event(&self, event: StoreEvent) {
        self.store_events
            .get_or_create(&EventLabels { event })
            .inc();
    }

    /// The fleet store is now in state `current`.
    pub fn store_state(&self, current: StoreState) {
        for &state in StoreState::ALL {
            self.store_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == current));
        }
    }

    pub fn config_reload(&self, outcome: ReloadOutcome) {
        self.config_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => out,
            Format::Text => exposition::to_text(&out),
        }
    }
}

/// Methods as a bounded label: the standard ones by name, anything else as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A request counted in `in_flight_requests` until this is dropped: when it is answered, and
/// also when its client goes away and its future is dropped unfinished. Dropped on another thread
/// than it was made on, it takes the count from that thread's shard: the sum is the same.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight_shard(|n| n.fetch_sub(1, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_series_kept_per_thread_count_into_their_own_registry() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let ms = Duration::from_millis(1);
        let get = |m: &Metrics, status, upstream| {
            m.request(Some("p".into()), &Method::GET, status, ms, upstream, false)
        };
        // More kinds of request than a thread keeps: the first ones are found again in the family.
        for round in 0..2 {
            for status in 200..200 + REQUEST_SERIES_KEPT as u16 + 4 {
                get(&a, status, (round == 1).then_some(ms));
            }
        }
        get(&b, 200, None);
        let a = a.encode(Format::OpenMetrics);
        let b = b.encode(Format::OpenMetrics);
        for status in [200, 219] {
            let line = format!(
                r#"cma_auth_proxy_requests_total{{profile="p",method="GET",status="{status}"}} 2"#
            );
            assert!(a.contains(&line), "{line} in\n{a}");
        }
        assert!(
            a.contains(r#"cma_auth_proxy_upstream_duration_seconds_count{profile="p"} 20"#),
            "{a}"
        );
        assert!(
            a.contains(
                r#"cma_auth_proxy_request_duration_seconds_count{profile="p",outcome="ok"} 40"#
            ),
            "{a}"
        );
        assert!(
            b.contains(r#"cma_auth_proxy_requests_total{profile="p",method="GET",status="200"} 1"#),
            "{b}"
        );
        // A request that never went upstream makes no upstream series.
        assert!(!b.contains("upstream_duration_seconds_count{"), "{b}");
    }

    /// Workers count into shards of their own; a scrape sees the sums, and a request that ends on
    /// another thread than it started on leaves `in_flight_requests` where it was.
    #[test]
    fn requests_of_several_workers_are_summed() {
        let m = Metrics::new();
        let ms = Duration::from_millis(2);
        let held = m.in_flight();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let _serving = m.in_flight();
                    for _ in 0..5 {
                        m.request(Some("p".into()), &Method::GET, 200, ms, Some(ms), false);
                    }
                });
            }
            s.spawn(move || drop(held));
        });
        let open = m.in_flight();
        let text = m.encode(Format::OpenMetrics);
        for line in [
            r#"cma_auth_proxy_requests_total{profile="p",method="GET",status="200"} 15"#,
            r#"cma_auth_proxy_request_duration_seconds_bucket{le="0.0025",profile="p",outcome="ok"} 15"#,
            r#"cma_auth_proxy_request_duration_seconds_bucket{le="0.001",profile="p",outcome="ok"} 0"#,
            r#"cma_auth_proxy_request_duration_seconds_sum{profile="p",outcome="ok"} 0.03"#,
            r#"cma_auth_proxy_upstream_duration_seconds_count{profile="p"} 15"#,
            "cma_auth_proxy_in_flight_requests 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(open);
        let text = m.encode(Format::OpenMetrics);
        assert!(
            text.contains("cma_auth_proxy_in_flight_requests 0"),
            "{text}"
        );
    }

    #[test]
    fn exposes_every_spec_metric_name() {
        let m = Metrics::new();
        m.request(
            Some("default".into()),
            &Method::GET,
            200,
            Duration::from_millis(1),
            Some(Duration::from_millis(1)),
            false,
        );
        m.login("default", LoginOutcome::Success);
        m.logout("default");
        m.reauth("default", Trigger::Unauthorized);
        m.reauth_backoff("default", Trigger::Validate);
        m.replay(ReplayOutcome::Replayed);
        m.denied("policy_denied");
        m.config_reload(ReloadOutcome::Success);
        m.token_age("default", Some(Duration::from_millis(1500)));
        m.emulated_sessions_known(["default"].into_iter());
        m.emulated_session("default", SessionAction::Login);
        m.reads_of("default", true);
        m.read_coalesced("default");
        m.cache("default", CacheResult::Store);
        let text = m.encode(Format::OpenMetrics);
        for needle in [
            r#"cma_auth_proxy_requests_total{profile="default",method="GET",status="200"} 1"#,
            r#"cma_auth_proxy_request_duration_seconds_bucket{le="0.001",profile="default",outcome="ok"}"#,
            r#"cma_auth_proxy_upstream_duration_seconds_bucket{le="0.001",profile="default"}"#,
            r#"cma_auth_proxy_logins_total{profile="default",outcome="success"} 1"#,
            r#"cma_auth_proxy_logouts_total{profile="default"} 1"#,
            r#"cma_auth_proxy_token_age_seconds{profile="default"} 1.5"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"} 1"#,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="validate"} 1"#,
            r#"cma_auth_proxy_replays_total{outcome="replayed"} 1"#,
            r#"cma_auth_proxy_denied_total{reason="policy_denied"} 1"#,
            r#"cma_auth_proxy_config_reloads_total{outcome="success"} 1"#,
            r#"cma_auth_proxy_emulated_sessions_total{profile="default",action="login"} 1"#,
            r#"cma_auth_proxy_emulated_sessions_total{profile="default",action="logout"} 0"#,
            "cma_auth_proxy_in_flight_requests 0",
            r#"cma_auth_proxy_reads_coalesced_total{profile="default"} 1"#,
            r#"cma_auth_proxy_cache_total{profile="default",result="store"} 1"#,
            r#"cma_auth_proxy_cache_total{profile="default",result="hit"} 0"#,
            r#"cma_auth_proxy_build_info{version=""#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    /// A series an alert computes `increase()` over must exist before its first event, or the
    /// first event is missed: every known label value starts at 0.
    #[test]
    fn known_label_values_start_at_zero() {
        let m = Metrics::new();
        m.denied_reasons(&["policy_denied", "bad_request"]);
        m.profile("default", true, true);
        m.profile("token", false, false);
        m.profile_states([("default", false, Some(Duration::from_millis(1500)))]);
        let text = m.encode(Format::Text);
        for needle in [
            r#"cma_auth_proxy_logins_total{profile="default",outcome="success"} 0"#,
            r#"cma_auth_proxy_logins_total{profile="default",outcome="rejected"} 0"#,
            r#"cma_auth_proxy_logins_total{profile="default",outcome="transient"} 0"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"} 0"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="validate"} 0"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="max_age"} 0"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="rotate"} 0"#,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="401"} 0"#,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="validate"} 0"#,
            r#"cma_auth_proxy_logouts_total{profile="default"} 0"#,
            r#"cma_auth_proxy_rate_limit_waits_total{profile="default"} 0"#,
            r#"cma_auth_proxy_config_reloads_total{outcome="success"} 0"#,
            r#"cma_auth_proxy_config_reloads_total{outcome="error"} 0"#,
            r#"cma_auth_proxy_replays_total{outcome="replayed"} 0"#,
            r#"cma_auth_proxy_replays_total{outcome="not_replayable"} 0"#,
            r#"cma_auth_proxy_replays_total{outcome="login_failed"} 0"#,
            r#"cma_auth_proxy_denied_total{reason="policy_denied"} 0"#,
            r#"cma_auth_proxy_denied_total{reason="bad_request"} 0"#,
            r#"cma_auth_proxy_profile_ready{profile="default"} 0"#,
            r#"cma_auth_proxy_login_backoff_seconds{profile="default"} 1.5"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        // A management-token profile never logs in.
        assert!(!text.contains(r#"profile="token""#), "{text}");
    }

    #[test]
    fn unusual_methods_fold_to_other() {
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap()),
            "OTHER"
        );
        assert_eq!(method_label(&Method::DELETE), "DELETE");
    }
}
