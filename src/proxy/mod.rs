//! The request path (docs/design.md#the-request-path), read top to bottom in [`Proxy::forward`]:
//! admission, hop-by-hop removal, judging the target (normalized method, path and query: what the
//! policy checks is what is sent, see [`target`]), policy, header screening, profile, client
//! credentials, token, forward, and the one replay after a token eviction.
//!
//! This module never buffers more than `replay_body_limit` of a request or [`ERROR_PEEK_LIMIT`] of a
//! 401 response, and never logs a header value or a body.
pub mod error;
mod error_body;
pub mod headers;
mod profile;
pub mod target;
pub mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;

use crate::body::{self, Relay, ReplayBudget, RequestBody};
use crate::config::{Config, Credentials, ProfileConfig, RateLimitConfig};
use crate::metrics::{Metrics, ReplayOutcome, Trigger};
use crate::ratelimit::{self, Decision, RateLimiter};
use crate::token::{Token, TokenLease, TokenManager, Validity, session};
use error::{BadRequest, ProxyError};
use target::Target;
use upstream::UpstreamClients;

/// How much of an upstream 401 is read to look for `error_code` 105; CMA error bodies are tiny.
pub const ERROR_PEEK_LIMIT: usize = 64 * 1024;

/// The access-log record of a request: what the log line and the metrics learn about it besides
/// its response, filled in as the request goes.
#[derive(Default)]
pub struct AccessRecord {
    pub profile: Option<Arc<str>>,
    pub upstream: Option<Duration>,
    pub error: Option<&'static str>,
}

pub struct Proxy {
    config: ArcSwap<Config>,
    tokens: TokenManager,
    clients: UpstreamClients,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    /// Request budgets of the profiles with `rate_limit`, by profile name.
    limiters: ArcSwap<Limiters>,
    /// The memory kept request bodies share (`server.replay_memory`).
    replay_budget: Arc<ReplayBudget>,
}

type Limiters = std::collections::HashMap<Arc<str>, (RateLimitConfig, Arc<RateLimiter>)>;

/// Budgets for `config`, keeping the state of those whose settings did not change.
fn limiters(config: &Config, tokens: &TokenManager, previous: &Limiters) -> Limiters {
    config
        .profiles
        .iter()
        .filter_map(|p| {
            let settings = p.rate_limit?;
            let limiter = match previous.get(&p.name) {
                Some((old, limiter)) if *old == settings => limiter.clone(),
                _ => Arc::new(RateLimiter::new(&settings, tokens.shared_budget(p))),
            };
            Some((p.name.clone(), (settings, limiter)))
        })
        .collect()
}

impl Proxy {
    pub fn new(
        config: Arc<Config>,
        tokens: TokenManager,
        clients: UpstreamClients,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limiters: ArcSwap::from_pointee(limiters(&config, &tokens, &Limiters::new())),
            replay_budget: ReplayBudget::new(config.server.replay_memory),
            config: ArcSwap::new(config),
            tokens,
            clients,
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves new requests with `config` from now on; requests in flight keep the one they started
    /// with.
    pub fn replace_config(&self, config: Arc<Config>) {
        self.limiters.store(Arc::new(limiters(
            &config,
            &self.tokens,
            &self.limiters.load(),
        )));
        self.replay_budget.set_limit(config.server.replay_memory);
        self.config.store(config);
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    /// From now on no new session is started: a request that would need a login gets `shutting_down`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Serves one request; never fails (errors become responses), logs one access line.
    pub async fn handle(&self, req: Request<Incoming>, peer: Option<IpAddr>) -> Response<Relay> {
        let started = Instant::now();
        self.metrics.in_flight(true);
        let method = req.method().clone();
        // A `Uri` clone shares its bytes: no allocation on the hot path for the access log.
        let uri = req.uri().clone();
        let path = uri.path();
        let mut record = AccessRecord::default();
        let response = match self.forward(req, peer, &mut record).await {
            Ok(response) => response,
            Err(e) => {
                record.error = Some(e.reason());
                if e.status().is_client_error() {
                    self.metrics.denied(e.reason());
                }
                if e.status().is_server_error() {
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
        self.metrics.in_flight(false);
        let elapsed = started.elapsed();
        self.metrics.request(
            record.profile.clone(),
            &method,
            response.status().as_u16(),
            elapsed,
            record.upstream,
        );
        tracing::info!(
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            profile = record.profile.as_deref().unwrap_or("-"),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = record.upstream.map(|d| d.as_secs_f64() * 1000.0),
            bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()),
            error = record.error,
            "request"
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        let config = self.config.load_full();
        let (mut parts, body) = req.into_parts();
        let mode = config.policy.client_credentials;
        let target = target::judge(&parts.method, &parts.uri, mode)?;
        admit(&parts, &config)?;
        // Before anything reads a header: what is not forwarded must not decide anything either.
        headers::remove_hop_by_hop(&mut parts.headers);
        config
            .policy
            .check(&target.method, &target.path)
            .map_err(ProxyError::PolicyDenied)?;
        let removals = headers::screen_request(&parts.headers, mode)?;
        let profile = profile::select_profile(&parts.headers, target.api_key.as_deref(), &config)?;
        record.profile = Some(profile.name.clone());
        headers::strip_request(&mut parts.headers, removals);
        if let Some(peer) = peer {
            headers::append_forwarded_for(&mut parts.headers, peer);
        }
        let uri = upstream_uri(&target, &config)?;
        let content_length = content_length(&parts.headers)?;
        let body = body::take_request_body(
            body,
            content_length,
            config.server.replay_body_limit,
            config.server.max_body,
            config.server.body_pace,
            &self.replay_budget,
        )
        .await?;
        let outbound = Outbound {
            method: target.method,
            uri,
            headers: parts.headers,
            timeout: config.server.request_timeout,
            limiter: self
                .limiters
                .load()
                .get(&profile.name)
                .map(|(_, limiter)| limiter.clone()),
            profile: profile.name.clone(),
        };
        match &profile.credentials {
            Credentials::ManagementToken(token) => {
                let mut headers = outbound.headers.clone();
                headers.insert(header::AUTHORIZATION, token.0.clone());
                // Held until the answer comes, like a body that may be replayed.
                let (body, _held) = match body {
                    RequestBody::Replayable(bytes, held) => (Relay::full(bytes), Some(held)),
                    RequestBody::Streaming(relay) => (relay, None),
                };
                let response = self.send(&outbound, headers, body, record).await?;
                Ok(relay_response(response))
            }
            Credentials::Login(_) => {
                self.forward_with_session(profile, outbound, body, record)
                    .await
            }
        }
    }

    /// Steps 5–7: send with the profile's token; on a 401 that says the token is dead, drop that
    /// token (only if still current), log in once, and replay a kept body once.
    async fn forward_with_session(
        &self,
        profile: &ProfileConfig,
        outbound: Outbound,
        body: RequestBody<'_>,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        let token = self.token(profile).await?;
        // A kept body holds its share of the replay budget until this request is done with it.
        let (first_body, replay) = match body {
            RequestBody::Replayable(bytes, held) => {
                (Relay::full(bytes.clone()), Some((bytes, held)))
            }
            RequestBody::Streaming(relay) => (relay, None),
        };
        let response = self
            .send(
                &outbound,
                with_token(&outbound.headers, &token),
                first_body,
                record,
            )
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(relay_response(response));
        }
        let (parts, mut rest) = response.into_parts();
        let (chunks, complete) = body::read_up_to(&mut rest, ERROR_PEEK_LIMIT as u64)
            .await
            .map_err(ProxyError::UpstreamBroken)?;
        if !(complete && self.token_is_dead(&parts.headers, &chunks, &token).await) {
            return Ok(upstream_response(parts, Relay::response(chunks, rest)));
        }
        self.tokens
            .invalidate(&profile.name, &token, Trigger::Unauthorized)
            .await;
        let Some((bytes, _held)) = replay else {
            self.metrics.replay(ReplayOutcome::NotReplayable);
            return Ok(upstream_response(parts, Relay::full(body::concat(chunks))));
        };
        let token = match self.token(profile).await {
            Ok(token) => token,
            Err(e) => {
                self.metrics.replay(ReplayOutcome::LoginFailed);
                return Err(e);
            }
        };
        self.metrics.replay(ReplayOutcome::Replayed);
        let response = self
            .send(
                &outbound,
                with_token(&outbound.headers, &token),
                Relay::full(bytes),
                record,
            )
            .await?;
        Ok(relay_response(response))
    }

    async fn token(&self, profile: &ProfileConfig) -> Result<TokenLease, ProxyError> {
        if !self.draining.load(Ordering::Relaxed) {
            return Ok(self.tokens.token(&profile.name).await?);
        }
        // Draining: serve with the session we have, but start none that shutdown would log out.
        self.tokens
            .cached(&profile.name)
            .ok_or(ProxyError::ShuttingDown)
    }

    /// Whether an upstream 401 means "this token is dead" (`error_code` 105). A body in an encoding
    /// the proxy cannot read is settled by asking Contentstack about the token directly.
    async fn token_is_dead(
        &self,
        headers: &HeaderMap,
        chunks: &std::collections::VecDeque<Bytes>,
        token: &Token,
    ) -> bool {
        let raw = body::concat(chunks.clone());
        match error_body::decode(headers, &raw) {
            Some(decoded) => session::error_code(&decoded) == Some(session::TOKEN_INVALID),
            None => matches!(self.tokens.auth().validate(token).await, Ok(Validity::Dead)),
        }
    }

    async fn send(
        &self,
        outbound: &Outbound,
        headers: HeaderMap,
        body: Relay,
        record: &mut AccessRecord,
    ) -> Result<Response<Incoming>, ProxyError> {
        let class = ratelimit::ReadOrWrite::of(&outbound.method);
        if let Some(limiter) = &outbound.limiter {
            match limiter.acquire(class).await {
                Decision::Now => {}
                Decision::After(wait) => {
                    self.metrics.rate_limit_wait(&outbound.profile);
                    tokio::time::sleep(wait).await;
                }
                Decision::Refuse(wait) => return Err(ProxyError::RateLimited(wait)),
            }
        }
        let fault = body.fault();
        let mut request = Request::new(body);
        *request.method_mut() = outbound.method.clone();
        *request.uri_mut() = outbound.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        let started = Instant::now();
        let result =
            tokio::time::timeout(outbound.timeout, self.clients.current().request(request)).await;
        record.upstream = Some(record.upstream.unwrap_or_default() + started.elapsed());
        match result {
            Err(_) => Err(ProxyError::UpstreamTimeout(outbound.timeout)),
            // The client's body failing (too large, stalled) is the client's error, not Contentstack's.
            Ok(Err(e)) => Err(fault
                .and_then(|fault| fault.error())
                .map_or(ProxyError::UpstreamUnreachable(e), ProxyError::from)),
            Ok(Ok(response)) => {
                if response.status() == StatusCode::TOO_MANY_REQUESTS
                    && let Some(limiter) = &outbound.limiter
                {
                    limiter.upstream_limited(class).await;
                }
                Ok(response)
            }
        }
    }
}

/// A request ready to go upstream, kept so it can be sent a second time.
struct Outbound {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    profile: Arc<str>,
}

fn with_token(headers: &HeaderMap, token: &Token) -> HeaderMap {
    let mut headers = headers.clone();
    headers.insert(headers::AUTHTOKEN, token.header().clone());
    headers
}

fn relay_response(response: Response<Incoming>) -> Response<Relay> {
    let (parts, body) = response.into_parts();
    upstream_response(parts, Relay::response(Default::default(), body))
}

fn upstream_response(mut parts: http::response::Parts, body: Relay) -> Response<Relay> {
    headers::prepare_response(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// Origin-form targets go to the upstream; an HTTP/1 absolute-form target only when it names the
/// upstream itself. The `Host` header and HTTP/2 `:authority` never choose where a request goes.
fn admit(parts: &Parts, config: &Config) -> Result<(), ProxyError> {
    let upstream = &config.upstream;
    if parts.version < Version::HTTP_2
        && let Some(authority) = parts.uri.authority()
    {
        let same = authority
            .host()
            .eq_ignore_ascii_case(upstream.authority.host())
            && authority
                .port_u16()
                .or(default_port(parts.uri.scheme_str()))
                == upstream
                    .authority
                    .port_u16()
                    .or(default_port(Some(upstream.scheme.as_str())));
        if !same {
            return Err(BadRequest::ForeignAuthority(authority.to_string()).into());
        }
    }
    Ok(())
}

/// The upstream's address with the target as it was judged.
fn upstream_uri(target: &Target<'_>, config: &Config) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(config.upstream.scheme.clone())
        .authority(config.upstream.authority.clone())
        .path_and_query(target.path_and_query()?)
        .build()
        .map_err(|_| BadRequest::Malformed("the request target is not a valid URI").into())
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("https") => Some(443),
        Some("http") | None => Some(80),
        Some(_) => None,
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(BadRequest::Malformed("invalid content-length").into())
        })
        .transpose()
}

#[cfg(test)]
mod tests;
