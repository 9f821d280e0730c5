//! The admin listener (docs/design.md#observability): probes, `/status`. Answers from the proxy's
//! state; never shows a secret or a token, and never triggers a login.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::metrics::Format;
use crate::proxy::Proxy;

/// The admin endpoints and what each answers, listed at `/` so that a person who opens the admin
/// address finds the rest.
const ENDPOINTS: &[(&str, &str)] = &[
    (
        "/livez",
        "200 while the process serves HTTP (never tied to Contentstack)",
    ),
    (
        "/startupz",
        "200 once every login profile has logged in once",
    ),
    (
        "/readyz",
        "200 while every profile can serve; 503 after SIGTERM or without a usable token",
    ),
    (
        "/status",
        "JSON: per profile token age, last login, last error, backoff; config version; fleet store",
    ),
    (
        "/metrics",
        "Prometheus metrics (OpenMetrics when the scraper accepts it, else text 0.0.4)",
    ),
];

pub struct Admin {
    proxy: Arc<Proxy>,
}

impl Admin {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }

    /// Answers one request on the admin listener.
    pub async fn respond(&self, req: &Request<Incoming>) -> Response<Bytes> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/" => text(StatusCode::OK, &endpoint_list()),
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/startupz" => {
                let profiles = self.proxy.tokens().snapshot();
                match profiles.iter().find(|p| !p.ever_logged_in) {
                    None => text(StatusCode::OK, "ok\n"),
                    Some(p) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("profile {} has not logged in yet\n", p.name),
                    ),
                }
            }
            "/readyz" => {
                if self.proxy.is_draining() {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
                }
                let profiles = self.proxy.tokens().snapshot();
                match profiles.iter().find(|p| !p.ready()) {
                    None => text(StatusCode::OK, "ok\n"),
                    Some(p) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("profile {} has no usable token\n", p.name),
                    ),
                }
            }
            "/status" => self.status().await,
            "/metrics" => {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                self.metrics(Format::accepted(accept)).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                &format!("not found\n\n{}", endpoint_list()),
            ),
        }
    }

    async fn metrics(&self, format: Format) -> Response<Bytes> {
        let metrics = self.proxy.metrics();
        let snapshot = self.proxy.tokens().snapshot();
        // Token ages are read at scrape time; a profile without a token has no series.
        for p in &snapshot {
            metrics.token_age(&p.name, p.token_age);
        }
        let config = self.proxy.config();
        let management = config.profiles.iter().filter(|p| !p.has_session());
        metrics.profile_states(
            snapshot
                .iter()
                .map(|p| (&*p.name, p.ready(), p.retry_in))
                .chain(management.map(|p| (&*p.name, true, None))),
        );
        let mut response = Response::new(Bytes::from(metrics.encode(format)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        response
    }

    async fn status(&self) -> Response<Bytes> {
        let config = self.proxy.config();
        let snapshot = self.proxy.tokens().snapshot();
        let login_profiles = config.profiles.iter().filter(|p| p.has_session()).count();
        let mut profiles = serde_json::Map::new();
        for p in &snapshot {
            let mut profile = serde_json::json!({
                "mode": p.mode,
                "ready": p.ready(),
                "token_age_seconds": p.token_age.map(|d| d.as_secs()),
                "last_login_at": p.last_attempt.map(|(at, _)| unix(at)),
                "last_login_at_rfc3339": p.last_attempt.map(|(at, _)| rfc3339(at)),
                "last_login_outcome": p.last_attempt.map(|(_, o)| o.as_str()),
                "last_error": p.last_error,
                "backoff_remaining_seconds": p.retry_in.map(secs),
            });
            if p.mode == "oauth" {
                profile["token_expires_in_seconds"] =
                    p.token_expires_in.map(|d| d.as_secs()).into();
                profile["refresh_token_saved"] = (!p.refresh_token_unsaved).into();
            }
            profiles.insert(p.name.to_string(), profile);
        }
        for p in config.profiles.iter().filter(|p| !p.has_session()) {
            profiles.insert(
                p.name.to_string(),
                serde_json::json!({ "mode": "management_token", "ready": true }),
            );
        }
        debug_assert_eq!(snapshot.len(), login_profiles);
        for (name, (_, limiter)) in self.proxy.limiters().iter() {
            if let Some(profile) = profiles.get_mut(&**name) {
                profile["rate_limit"] = budget_status(limiter);
            }
        }
        let token_store = self.proxy.tokens().store_status().map(|s| {
            serde_json::json!({
                "state": s.state.as_str(),
                "since": unix(s.since),
                "since_rfc3339": rfc3339(s.since),
                "last_error": s.last_error,
                "next_probe_in_seconds": s.next_probe_in.map(secs),
            })
        });
        let body = serde_json::json!({
            // The build's, as `--version` prints it; the configuration's is `config.version`.
            "version": env!("CARGO_PKG_VERSION"),
            "draining": self.proxy.is_draining(),
            "config": {
                "version": config.version,
                "loaded_at": unix(config.loaded_at),
                "loaded_at_rfc3339": rfc3339(config.loaded_at),
            },
            "profiles": profiles,
            "token_store": token_store,
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A profile's request budgets: per kind, the rate and where it came from (`configured`, `plan`,
/// `default`), and the organization whose plan was learned.
fn budget_status(limiter: &crate::ratelimit::RateLimiter) -> serde_json::Value {
    let (budgets, organization) = limiter.status();
    let mut out = serde_json::Map::new();
    for b in budgets {
        out.insert(
            b.kind.as_str().to_owned(),
            serde_json::json!({ "per_second": b.per_second, "source": b.source.as_str() }),
        );
    }
    out.insert("organization_uid".into(), organization.into());
    out.into()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The same second as [`unix`], for people: `2026-11-29T13:38:17Z` (UTC).
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn endpoint_list() -> String {
    let mut list = String::from("cma-auth-proxy admin endpoints:\n");
    for (path, what) in ENDPOINTS {
        list.push_str(&format!("  {path:<10} {what}\n"));
    }
    list
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).ceil() / 10.0
}

fn text(status: StatusCode, body: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::copy_from_slice(body.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
