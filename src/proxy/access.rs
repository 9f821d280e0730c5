//! The access line of a request (docs/design.md#observability): what the proxy learns about it as
//! it goes ([`AccessRecord`]), and, once it has its answer or its future is dropped without one
//! ([`Serving`]), its metrics and its one `request` line.
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Method, Response, header};

use super::Proxy;
use super::error::ProxyError;
use crate::body::Relay;

/// The access-log record of a request: what the log line and the metrics learn about it besides
/// its response, filled in as the request goes.
#[derive(Default)]
pub struct AccessRecord {
    /// The target of the access line: as judged (and, if the request goes on, forwarded), or as
    /// received when it could not be judged.
    pub path: Option<PathAndQuery>,
    pub profile: Option<Arc<str>>,
    pub upstream: Option<Duration>,
    pub error: Option<&'static str>,
}

impl AccessRecord {
    /// Adds one send's time upstream (`None`: it never went upstream) to the request's, and
    /// passes its answer on.
    pub(super) fn upstream_took<T>(&mut self, (result, took): (T, Option<Duration>)) -> T {
        if let Some(took) = took {
            self.upstream = Some(self.upstream.unwrap_or_default() + took);
        }
        result
    }
}

impl Proxy {
    /// The response to a forwarded request, or to its error; the request's metrics and access
    /// line.
    pub(super) fn answered(
        &self,
        result: Result<Response<Relay>, ProxyError>,
        mut record: AccessRecord,
        method: Method,
        started: Instant,
        in_flight: crate::metrics::InFlight<'_>,
    ) -> Response<Relay> {
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                record.error = Some(e.reason());
                if e.status().is_client_error() {
                    self.metrics.denied(e.reason());
                }
                if e.status().is_server_error() {
                    let path = logged_path(&record);
                    tracing::warn!(method = %method, path = %path, reason = e.reason(), "{}", crate::error_text::error_chain_text(&e));
                }
                // A response to HEAD has no body. hyper leaves it out over HTTP/1 by itself, but
                // sends it over HTTP/2, where clients take it as a protocol error.
                let head = method.as_str().eq_ignore_ascii_case("HEAD");
                e.to_response().map(|body| {
                    if head {
                        Relay::empty()
                    } else {
                        Relay::full(body)
                    }
                })
            }
        };
        drop(in_flight);
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        self.served(&record, &method, response.status().as_u16(), started, bytes);
        response
    }

    /// A request's metrics and its access line.
    pub(super) fn served(
        &self,
        record: &AccessRecord,
        method: &Method,
        status: u16,
        started: Instant,
        bytes: Option<u64>,
    ) {
        let elapsed = started.elapsed();
        self.metrics.request(
            record.profile.clone(),
            method,
            status,
            elapsed,
            record.upstream,
            record.error.is_some(),
        );
        tracing::info!(
            method = %crate::error_text::escape(method.as_str()),
            path = %logged_path(record),
            status,
            profile = record.profile.as_deref().unwrap_or(&crate::metrics::NO_PROFILE),
            duration_ms = millis(elapsed),
            upstream_ms = record.upstream.map(millis),
            bytes,
            error = record.error,
            "request"
        );
    }
}

/// The access record of a request being served. A request whose future is dropped before its
/// answer still gets its metrics and its access line, when this is dropped unfinished: status 499
/// and `client_gone` when its client went away (hyper then drops the future), as nginx logs it,
/// during a drain too; 503 and `shutting_down` when shutdown gave up on it after `shutdown_grace`.
pub(super) struct Serving<'p> {
    proxy: &'p Proxy,
    pub(super) record: AccessRecord,
    method: Method,
    started: Instant,
    done: bool,
}

impl<'p> Serving<'p> {
    pub(super) fn new(
        proxy: &'p Proxy,
        record: AccessRecord,
        method: &Method,
        started: Instant,
    ) -> Self {
        Serving {
            proxy,
            record,
            method: method.clone(),
            started,
            done: false,
        }
    }

    /// The request has its answer: the record goes to [`Proxy::answered`], which logs it.
    pub(super) fn done(&mut self) -> AccessRecord {
        self.done = true;
        std::mem::take(&mut self.record)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if !self.done {
            let proxy = self.proxy;
            let (status, reason) = if proxy.is_cutting() {
                let e = ProxyError::ShuttingDown;
                (e.status().as_u16(), e.reason())
            } else {
                (499, CLIENT_GONE)
            };
            self.record.error = Some(reason);
            proxy.served(&self.record, &self.method, status, self.started, None);
        }
    }
}

/// The access line's `error` for a request whose client went away before its answer.
const CLIENT_GONE: &str = "client_gone";

/// The path of the access log and of error lines: the one judged and forwarded (`//x/v3/…` went
/// upstream as `/x/v3/…`, and is logged so), or as received when it could not be judged; escaped
/// either way, since it is what a client sent.
fn logged_path(record: &AccessRecord) -> std::borrow::Cow<'_, str> {
    let path = record.path.as_ref().map_or("", PathAndQuery::path);
    crate::error_text::escape(path)
}

/// Milliseconds to the microsecond: `0.897`, not `0.8971790000000001`.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
