//! Prometheus metrics (SPEC §7), prefix `cma_auth_proxy_`. Label values are bounded: profile names
//! come from the configuration, methods are folded to the standard set, statuses are numbers;
//! never a path, a token or an e-mail.
use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A profile name as a label value: an `Arc` clone per request instead of a `String` allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Profile(pub Arc<str>);

impl EncodeLabelValue for Profile {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        (&*self.0).encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub profile: Profile,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub profile: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReauthLabels {
    pub profile: String,
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

/// Why a token was replaced (`reauth_total{trigger}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A forwarded request got 401/105.
    Unauthorized,
    /// The background `GET /v3/user` got 401/105.
    Validate,
    /// `max_token_age` passed.
    MaxAge,
    /// The credentials changed on reload.
    Rotate,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Unauthorized => "401",
            Trigger::Validate => "validate",
            Trigger::MaxAge => "max_age",
            Trigger::Rotate => "rotate",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub logins: Family<LoginLabels, Counter>,
    pub logouts: Family<ProfileLabels, Counter>,
    pub token_age: Family<ProfileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub reauth: Family<ReauthLabels, Counter>,
    pub reauth_backoffs: Family<ReauthLabels, Counter>,
    pub replays: Family<OutcomeLabels, Counter>,
    pub denied: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub in_flight: Gauge,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub rate_limit_waits: Family<ProfileLabels, Counter>,
    pub store_events: Family<EventLabels, Counter>,
    pub store_state: Family<StateLabels, Gauge>,
    pub connection_limits: Family<ReasonLabels, Counter>,
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
        let replays = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "replays",
            "Requests that met an evicted token: replayed, not_replayable, login_failed",
            replays.clone(),
        );
        let denied = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "denied",
            "Requests the proxy refused itself, by reason",
            denied.clone(),
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
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
        let connection_limits = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connection_limits",
            "Connections refused or closed by a limit: too_many_connections, header_read_timeout, headers_too_large, malformed_request, idle_timeout, tls_handshake_failed",
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

    pub fn reauth(&self, profile: &str, trigger: Trigger) {
        self.reauth
            .get_or_create(&ReauthLabels {
                profile: profile.to_owned(),
                trigger: trigger.as_str(),
            })
            .inc();
    }

    /// The re-login after a `trigger` was held back (see `token::backoff::RejectionStreak`).
    pub fn reauth_backoff(&self, profile: &str, trigger: Trigger) {
        self.reauth_backoffs
            .get_or_create(&ReauthLabels {
                profile: profile.to_owned(),
                trigger: trigger.as_str(),
            })
            .inc();
    }

    pub fn login(&self, profile: &str, outcome: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                profile: profile.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn logout(&self, profile: &str) {
        self.logouts
            .get_or_create(&ProfileLabels {
                profile: profile.to_owned(),
            })
            .inc();
    }

    pub fn replay(&self, outcome: &'static str) {
        self.replays.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn connection_limit(&self, reason: &'static str) {
        self.connection_limits
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn store_event(&self, event: &'static str) {
        self.store_events
            .get_or_create(&EventLabels { event })
            .inc();
    }

    /// The fleet store is now in `current` state (one of `connecting`, `up`, `down`, `probing`).
    pub fn store_state(&self, current: &'static str) {
        for state in ["connecting", "up", "down", "probing"] {
            self.store_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == current));
        }
    }

    pub fn config_reload(&self, outcome: &'static str) {
        self.config_reloads
            .get_or_create(&OutcomeLabels { outcome })
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
pub fn method_label(method: &Method) -> &'static str {
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
        m.requests
            .get_or_create(&RequestLabels {
                profile: Profile("default".into()),
                method: "GET",
                status: 200,
            })
            .inc();
        m.login("default", "success");
        m.logout("default");
        m.reauth("default", Trigger::Unauthorized);
        m.reauth_backoff("default", Trigger::Validate);
        m.replay("replayed");
        m.denied
            .get_or_create(&ReasonLabels {
                reason: "policy_denied",
            })
            .inc();
        m.config_reload("success");
        m.token_age
            .get_or_create(&ProfileLabels {
                profile: "default".into(),
            })
            .set(1.5);
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
