//! Prometheus metrics (docs/design.md#observability), prefix `cma_auth_proxy_`. Label values are
//! bounded: profile names come from the configuration, methods are folded to the standard set,
//! statuses are numbers; never a path, a token or an e-mail.
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod labels;

pub use labels::{
    ConnectionLimit, LoginOutcome, ReloadOutcome, ReplayOutcome, StoreEvent, StoreState, Trigger,
};
use labels::{NO_PROFILE, Profile};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    profile: Profile,
    method: &'static str,
    status: u16,
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
struct VersionLabels {
    version: &'static str,
}

/// Every metric of the proxy. Updated only through the methods below, which take typed label
/// values: no call site spells a label.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    logins: Family<LoginLabels, Counter>,
    logouts: Family<ProfileLabels, Counter>,
    token_age: Family<ProfileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reauth: Family<ReauthLabels, Counter>,
    reauth_backoffs: Family<ReauthLabels, Counter>,
    replays: Family<ReplayLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    in_flight: Gauge,
    open_connections: Family<ListenerLabels, Gauge>,
    rate_limit_waits: Family<ProfileLabels, Counter>,
    store_events: Family<EventLabels, Counter>,
    store_state: Family<StateLabels, Gauge>,
    connection_limits: Family<LimitLabels, Counter>,
}

/// Latency buckets from 1 ms to 2 min: loopback hits are milliseconds, big uploads are minutes.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("cma_auth_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by profile, method and status",
            requests.clone(),
        );
        let request_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, as seen by the client",
            request_duration.clone(),
        );
        let upstream_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "upstream_duration_seconds",
            "Time Contentstack took to answer a forwarded request (headers)",
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
        let in_flight = Gauge::default();
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
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Version of this build", build_info);
        Arc::new(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            logins,
            logouts,
            token_age,
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
        })
    }

    /// A request answered: counted by profile (`none` when refused before one was chosen),
    /// method and status, with its durations.
    pub fn request(
        &self,
        profile: Option<Arc<str>>,
        method: &Method,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
    ) {
        self.request_duration.observe(elapsed.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream_duration.observe(upstream.as_secs_f64());
        }
        self.requests
            .get_or_create(&RequestLabels {
                profile: Profile(profile.unwrap_or_else(|| NO_PROFILE.clone())),
                method: method_label(method),
                status,
            })
            .inc();
    }

    /// A request starts (`true`) or ends (`false`) being served.
    pub fn in_flight(&self, started: bool) {
        if started {
            self.in_flight.inc();
        } else {
            self.in_flight.dec();
        }
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

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_spec_metric_name() {
        let m = Metrics::new();
        m.request(
            Some("default".into()),
            &Method::GET,
            200,
            Duration::from_millis(1),
            None,
        );
        m.login("default", LoginOutcome::Success);
        m.logout("default");
        m.reauth("default", Trigger::Unauthorized);
        m.reauth_backoff("default", Trigger::Validate);
        m.replay(ReplayOutcome::Replayed);
        m.denied("policy_denied");
        m.config_reload(ReloadOutcome::Success);
        m.token_age("default", Some(Duration::from_millis(1500)));
        let text = m.encode();
        for needle in [
            r#"cma_auth_proxy_requests_total{profile="default",method="GET",status="200"} 1"#,
            "cma_auth_proxy_request_duration_seconds_bucket",
            "cma_auth_proxy_upstream_duration_seconds_bucket",
            r#"cma_auth_proxy_logins_total{profile="default",outcome="success"} 1"#,
            r#"cma_auth_proxy_logouts_total{profile="default"} 1"#,
            r#"cma_auth_proxy_token_age_seconds{profile="default"} 1.5"#,
            r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"} 1"#,
            r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="validate"} 1"#,
            r#"cma_auth_proxy_replays_total{outcome="replayed"} 1"#,
            r#"cma_auth_proxy_denied_total{reason="policy_denied"} 1"#,
            r#"cma_auth_proxy_config_reloads_total{outcome="success"} 1"#,
            "cma_auth_proxy_in_flight_requests 0",
            r#"cma_auth_proxy_build_info{version=""#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
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
