//! The request path (SPEC §4), read top to bottom in [`Proxy::forward`]: admission, hop-by-hop
//! removal, judging the target (normalized method, path and query: what the policy checks is what is
//! sent, see [`target`]), policy, header screening, profile, client credentials, token, forward, and
//! the one replay after a token eviction.
//!
//! This module never buffers more than `replay_body_limit` of a request or [`ERROR_PEEK_LIMIT`] of a
//! 401 response, and never logs a header value or a body.
pub mod error;
pub mod headers;
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

use crate::body::{self, Relay, RequestBody};
use crate::config::{Config, Credentials, ProfileConfig, RateLimitConfig};
use crate::metrics::{Metrics, ReplayOutcome, Trigger};
use crate::policy::Denial;
use crate::ratelimit::{self, Decision, RateLimiter};
use crate::token::{Token, TokenLease, TokenManager, Validity, session};
use error::{BadRequest, ProxyError};
use headers::PROFILE_HEADER;
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
        let profile = select_profile(&parts.headers, target.api_key.as_deref(), &config)?;
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
                let body = match body {
                    RequestBody::Replayable(bytes) => Relay::full(bytes),
                    RequestBody::Streaming(relay) => relay,
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
        body: RequestBody,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        let token = self.token(profile).await?;
        let (first_body, replay) = match body {
            RequestBody::Replayable(bytes) => (Relay::full(bytes.clone()), Some(bytes)),
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
        let Some(bytes) = replay else {
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
        match decode(headers, &raw) {
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

/// Profile routing (SPEC §3): `x-cma-profile`, else the profile listing the request's `api_key`,
/// else `default`, else the only profile. A profile with `stacks` serves only those stacks.
/// `query_api_key` is the target's `api_key` query parameter.
fn select_profile<'c>(
    headers: &HeaderMap,
    query_api_key: Option<&str>,
    config: &'c Config,
) -> Result<&'c Arc<ProfileConfig>, ProxyError> {
    let api_key = stack_key(headers, query_api_key)?;
    let serves = |p: &ProfileConfig, key: &str| p.stacks.iter().any(|s| s == key);
    let profile = if let Some(value) = headers.get(PROFILE_HEADER) {
        let name = value.to_str().map_err(|_| BadRequest::BadProfileHeader)?;
        config
            .profile(name)
            .ok_or_else(|| BadRequest::UnknownProfile(name.to_owned()))?
    } else if let Some(p) = api_key.and_then(|key| config.profiles.iter().find(|p| serves(p, key)))
    {
        p
    } else if let Some(p) = config.profile("default") {
        p
    } else if let [only] = config.profiles.as_slice() {
        only
    } else if api_key.is_some() && config.profiles.iter().all(|p| !p.stacks.is_empty()) {
        return Err(ProxyError::PolicyDenied(Denial::StackNotServed));
    } else {
        return Err(BadRequest::NoProfile.into());
    };
    if let Some(key) = api_key
        && !profile.stacks.is_empty()
        && !serves(profile, key)
    {
        return Err(ProxyError::PolicyDenied(Denial::StackNotServed));
    }
    Ok(profile)
}

/// The request's stack key: the `api_key` header, or the `api_key` query parameter, which the
/// upstream reads too. Ambiguous forms are refused rather than guessed at: two `api_key` headers,
/// a value that is not text, or a header and a query parameter that disagree. (Other spellings of
/// the name are refused earlier, by [`headers::screen_request`] and [`target::judge`].)
fn stack_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, BadRequest> {
    let mut values = headers.get_all("api_key").iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            value
                .to_str()
                .map_err(|_| BadRequest::Malformed("the api_key header is not valid text"))?,
        ),
        (Some(_), Some(_)) => return Err(BadRequest::Malformed("more than one api_key header")),
    };
    match (header, query) {
        (Some(header), Some(query)) if header != query => Err(BadRequest::Malformed(
            "the api_key header and the api_key query parameter name different stacks",
        )),
        (header, query) => Ok(header.or(query)),
    }
}

/// The body of a small upstream response, decoded; `None` when its encoding is not one the proxy
/// reads (then the caller asks Contentstack instead of guessing).
fn decode(headers: &HeaderMap, raw: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let limit = ERROR_PEEK_LIMIT as u64;
    let ok = match encoding.as_str() {
        "identity" | "" => return Some(raw.to_vec()),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        "deflate" => flate2::read::ZlibDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        "br" => brotli_decompressor::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        _ => false,
    };
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn config(profiles: &str) -> Config {
        Config::from_toml(profiles, Vec::new(), None).unwrap()
    }

    fn route(config: &Config, pairs: &[(&str, &str)]) -> Result<String, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        route_with_query(config, &headers, None)
    }

    fn route_with_query(
        config: &Config,
        headers: &HeaderMap,
        query_api_key: Option<&str>,
    ) -> Result<String, String> {
        headers::screen_request(headers, config.policy.client_credentials)
            .and_then(|_| select_profile(headers, query_api_key, config))
            .map(|p| p.name.to_string())
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn profile_routing_order() {
        let c = config(
            r#"
            [profiles.default]
            email = "a@x" 
            password = "p"
            [profiles.blog]
            email = "b@x"
            password = "p"
            stacks = ["blt_blog"]
            "#,
        );
        assert_eq!(route(&c, &[]).unwrap(), "default");
        assert_eq!(route(&c, &[("api_key", "blt_blog")]).unwrap(), "blog");
        assert_eq!(route(&c, &[("api_key", "blt_other")]).unwrap(), "default");
        assert_eq!(route(&c, &[("x-cma-profile", "blog")]).unwrap(), "blog");
        assert_eq!(
            route(&c, &[("x-cma-profile", "blog"), ("api_key", "blt_other")]).unwrap_err(),
            "policy_denied"
        );
        assert_eq!(
            route(&c, &[("x-cma-profile", "nope")]).unwrap_err(),
            "bad_request"
        );
        assert_eq!(
            route(&c, &[("api-key", "blt_blog")]).unwrap_err(),
            "bad_request"
        );
        let mut two = HeaderMap::new();
        two.append("api_key", HeaderValue::from_static("blt_other"));
        two.append("api_key", HeaderValue::from_static("blt_blog"));
        assert_eq!(route_with_query(&c, &two, None).unwrap_err(), "bad_request");
        let mut binary = HeaderMap::new();
        binary.insert("api_key", HeaderValue::from_bytes(b"blt\xff").unwrap());
        assert_eq!(
            route_with_query(&c, &binary, None).unwrap_err(),
            "bad_request"
        );
        // The query's api_key routes like the header; the two must agree.
        let none = HeaderMap::new();
        assert_eq!(
            route_with_query(&c, &none, Some("blt_blog")).unwrap(),
            "blog"
        );
        let mut blog = HeaderMap::new();
        blog.insert("api_key", HeaderValue::from_static("blt_blog"));
        assert_eq!(
            route_with_query(&c, &blog, Some("blt_blog")).unwrap(),
            "blog"
        );
        assert_eq!(
            route_with_query(&c, &blog, Some("blt_other")).unwrap_err(),
            "bad_request"
        );
    }

    #[test]
    fn profiles_that_all_list_stacks_refuse_other_stacks() {
        let c = config(
            r#"
            [profiles.a]
            email = "a@x"
            password = "p"
            stacks = ["blt_a"]
            [profiles.b]
            email = "b@x"
            password = "p"
            stacks = ["blt_b"]
            "#,
        );
        assert_eq!(route(&c, &[("api_key", "blt_a")]).unwrap(), "a");
        assert_eq!(route(&c, &[("api_key", "blt_b")]).unwrap(), "b");
        assert_eq!(
            route(&c, &[("api_key", "blt_c")]).unwrap_err(),
            "policy_denied"
        );
        assert_eq!(route(&c, &[]).unwrap_err(), "bad_request");
    }

    #[test]
    fn single_profile_is_used_without_default_name() {
        let c = config("[profiles.svc]\nemail = \"a@x\"\npassword = \"p\"\n");
        assert_eq!(route(&c, &[]).unwrap(), "svc");
    }

    /// The URI the upstream would be sent, or the reason for refusing.
    fn admit_uri(target: &str, version: Version, method: Method) -> Result<String, String> {
        let c = config(
            "[upstream]\nurl = \"https://eu-api.contentstack.com\"\n[profiles.default]\nemail = \"a@x\"\npassword = \"p\"\n",
        );
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.uri = target.parse().unwrap();
        parts.version = version;
        parts.method = method;
        target::judge(&parts.method, &parts.uri, c.policy.client_credentials)
            .and_then(|t| admit(&parts, &c).map(|()| t))
            .and_then(|t| upstream_uri(&t, &c))
            .map(|u| u.to_string())
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn admission() {
        let v1 = Version::HTTP_11;
        assert_eq!(
            admit_uri("/v3/user?x=1", v1, Method::GET).unwrap(),
            "https://eu-api.contentstack.com/v3/user?x=1"
        );
        assert_eq!(
            admit_uri("//x/v3/./user/?x=1", v1, Method::GET).unwrap(),
            "https://eu-api.contentstack.com/x/v3/user?x=1"
        );
        assert_eq!(
            admit_uri("https://eu-api.contentstack.com/v3/user", v1, Method::GET).unwrap(),
            "https://eu-api.contentstack.com/v3/user"
        );
        assert_eq!(
            admit_uri("http://evil.example/v3/user", v1, Method::GET).unwrap_err(),
            "bad_request"
        );
        assert_eq!(
            admit_uri("http://eu-api.contentstack.com/v3/user", v1, Method::GET).unwrap_err(),
            "bad_request",
            "port 80 is not the upstream's 443"
        );
        assert_eq!(
            admit_uri("eu-api.contentstack.com:443", v1, Method::CONNECT).unwrap_err(),
            "method_not_allowed"
        );
        for method in ["TRACE", "trace", "TRACK", "Track"] {
            assert_eq!(
                admit_uri(
                    "/v3/user",
                    v1,
                    Method::from_bytes(method.as_bytes()).unwrap()
                )
                .unwrap_err(),
                "method_not_allowed",
                "{method}"
            );
        }
        // HTTP/2 always carries :authority; it is the Host, and never picks the destination.
        assert_eq!(
            admit_uri(
                "http://127.0.0.1:8080/v3/user",
                Version::HTTP_2,
                Method::GET
            )
            .unwrap(),
            "https://eu-api.contentstack.com/v3/user"
        );
    }

    #[test]
    fn decodes_error_bodies() {
        use std::io::Write;
        let json = br#"{"error_code":105}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode(&headers, &gz.finish().unwrap()).unwrap(), json);
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(decode(&headers, json), None);
        assert_eq!(decode(&HeaderMap::new(), json).unwrap(), json);
    }
}
