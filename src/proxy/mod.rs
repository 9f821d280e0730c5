//! The request path (docs/design.md#the-request-path), read top to bottom in [`Proxy::judge`]
//! (admission, hop-by-hop removal, judging the target (normalized method, path and query: what the
//! policy checks is what is sent, see [`target`]), policy, header screening, profile, client
//! credentials) and then [`Proxy::forward`] (token, forward, and the one replay after a token
//! eviction). A read that may be shared takes [`reads`] (cache, coalescing) around the forward; a
//! write drops what it may have changed.
//!
//! This module never buffers more than `replay_body_limit` of a request or [`ERROR_PEEK_LIMIT`] of a
//! 401 response (and [`reads`] no more than its share limits), and never logs a header value or a
//! body.
mod budget;
mod cache;
mod coalesce;
pub mod error;
mod error_body;
pub mod headers;
mod placeholder;
mod profile;
pub mod reads;
mod scrub;
mod session;
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
use crate::ratelimit::{Decision, RateLimiter, RequestKind};
use crate::token::{Token, TokenLease, TokenManager, Validity, Verdict};
use error::{BadRequest, ProxyError};
use upstream::UpstreamClients;

/// How much of an upstream 401 is read to look for `error_code` 105; CMA error bodies are tiny.
pub const ERROR_PEEK_LIMIT: usize = 64 * 1024;

/// The access-log record of a request: what the log line and the metrics learn about it besides
/// its response, filled in as the request goes.
#[derive(Default)]
pub struct AccessRecord {
    /// The target as judged (and, if the request goes on, forwarded); `None` when it was refused
    /// before it could be judged.
    pub judged: Option<http::uri::PathAndQuery>,
    pub profile: Option<Arc<str>>,
    pub upstream: Option<Duration>,
    pub error: Option<&'static str>,
}

impl AccessRecord {
    /// Adds one send's time upstream (`None`: it never went upstream) to the request's, and
    /// passes its answer on.
    fn upstream_took<T>(&mut self, (result, took): (T, Option<Duration>)) -> T {
        if let Some(took) = took {
            self.upstream = Some(self.upstream.unwrap_or_default() + took);
        }
        result
    }
}

pub struct Proxy {
    config: ArcSwap<Config>,
    tokens: TokenManager,
    clients: UpstreamClients,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    /// Request budgets of the profiles with `rate_limit`, by profile name.
    limiters: ArcSwap<Limiters>,
    /// The placeholder token and the user objects of emulated logins.
    sessions: session::Sessions,
    /// Identical reads in flight, shared by their clients.
    flights: coalesce::Flights,
    /// Each profile's read cache, and its fleet account.
    reads: ArcSwap<reads::Reads>,
    /// In a fleet: whether the other replicas' writes reach this one (see [`reads`]).
    hears_fleet: AtomicBool,
    /// The memory kept request bodies share (`server.replay_memory`).
    replay_budget: Arc<ReplayBudget>,
}

/// Keyed by profile name with a fast hash, as the token manager's profiles are.
pub type Limiters = std::collections::HashMap<
    Arc<str>,
    (RateLimitConfig, Arc<RateLimiter>),
    foldhash::fast::RandomState,
>;

/// Budgets for `config`, keeping the state of those whose settings did not change.
fn limiters(config: &Config, tokens: &TokenManager, previous: &Limiters) -> Limiters {
    config
        .profiles
        .iter()
        .filter_map(|p| {
            let settings = p.rate_limit.clone()?;
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
        metrics.denied_reasons(error::DENIED_REASONS);
        declare_profiles(&metrics, &config);
        Self {
            limiters: ArcSwap::from_pointee(limiters(&config, &tokens, &Limiters::default())),
            flights: coalesce::Flights::default(),
            reads: ArcSwap::from_pointee(reads::reads(
                &config,
                &tokens,
                &metrics,
                &Default::default(),
            )),
            replay_budget: ReplayBudget::new(config.server.replay_memory),
            config: ArcSwap::new(config),
            tokens,
            clients,
            hears_fleet: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            metrics,
            sessions: session::Sessions::default(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves new requests with `config` from now on; requests in flight keep the one they started
    /// with.
    pub fn replace_config(&self, config: Arc<Config>) {
        declare_profiles(&self.metrics, &config);
        self.limiters.store(Arc::new(limiters(
            &config,
            &self.tokens,
            &self.limiters.load(),
        )));
        self.reads.store(Arc::new(reads::reads(
            &config,
            &self.tokens,
            &self.metrics,
            &self.reads.load(),
        )));
        // A cache made by this reload must not serve while the fleet's writes do not reach it.
        if !self.hears_fleet.load(Ordering::Acquire) {
            self.fleet_invalidations(false);
        }
        self.replay_budget.set_limit(config.server.replay_memory);
        self.config.store(config);
        // The budget learner looks at new or changed budgets now rather than after its next pause.
        self.tokens.token_changes().notify_waiters();
    }

    /// The request budgets in force, by profile (for `/status` and the budget learner).
    pub fn limiters(&self) -> Arc<Limiters> {
        self.limiters.load_full()
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
    ///
    /// A plain function: the request goes into the boxed forward here, and the future returned
    /// keeps only what the access line needs, not a request of its own
    /// (docs/design.md#performance).
    pub fn handle(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        pinned: Option<&Arc<upstream::Pinned>>,
    ) -> impl Future<Output = Response<Relay>> + Send {
        let started = Instant::now();
        let in_flight = self.metrics.in_flight();
        let method = req.method().clone();
        // A `Uri` clone shares its bytes: no allocation on the hot path for the access log.
        let uri = req.uri().clone();
        // The request path's future is large (kilobytes: every step's state, the send, the
        // replay); boxed once here, it is not copied again each time a caller's future moves
        // (docs/design.md#performance).
        let forward = Box::pin(self.forward(req, peer, pinned));
        async move {
            let (result, record) = forward.await;
            self.answered(result, record, method, uri, started, in_flight)
        }
    }

    /// The response to a forwarded request, or to its error; the request's metrics and access
    /// line.
    fn answered(
        &self,
        result: Result<Response<Relay>, ProxyError>,
        mut record: AccessRecord,
        method: Method,
        uri: Uri,
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
                    let path = logged_path(&record, &uri);
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
        let elapsed = started.elapsed();
        self.metrics.request(
            record.profile.clone(),
            &method,
            response.status().as_u16(),
            elapsed,
            record.upstream,
            record.error.is_some(),
        );
        tracing::info!(
            method = %crate::error_text::escape(method.as_str()),
            path = %logged_path(&record, &uri),
            status = response.status().as_u16(),
            profile = record.profile.as_deref().unwrap_or(&crate::metrics::NO_PROFILE),
            duration_ms = millis(elapsed),
            upstream_ms = record.upstream.map(millis),
            bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()),
            error = record.error,
            "request"
        );
        response
    }

    /// The request forwarded (or answered by the proxy itself), with its access record.
    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        pinned: Option<&Arc<upstream::Pinned>>,
    ) -> (Result<Response<Relay>, ProxyError>, AccessRecord) {
        let mut record = AccessRecord::default();
        let config = self.config.load_full();
        let (profile, mut outbound, body) =
            match self.judge(req, peer, pinned, &config, &mut record).await {
                Ok(Judged::Forward(profile, outbound, body)) => (profile, outbound, body),
                Ok(Judged::Answered(response)) => return (Ok(response), record),
                Err(e) => return (Err(e), record),
            };
        // The steps below borrow the outbound request rather than move it: it is kept once, here,
        // not once more in the future of each step (docs/design.md#performance).
        if let Some(read) = self.shareable_read(profile, &outbound, &body) {
            let response = self
                .forward_read(profile, &mut outbound, read, &mut record)
                .await;
            return (response, record);
        }
        // Whatever became of a write, it may have changed what reads answer.
        let written = (!matches!(outbound.method, Method::GET | Method::HEAD))
            .then(|| outbound.uri.path().to_owned());
        let response = self
            .dispatch(profile, &mut outbound, body, &mut record)
            .await;
        if let Some(path) = written {
            self.written(profile, &path).await;
        }
        (response, record)
    }

    /// Steps 1–4 (docs/design.md#the-request-path): admission, hop-by-hop removal, the target
    /// judged, policy, header screening, the profile, and the body taken; what is left is the
    /// request as it will go upstream. A step of its own so that its state and the sending's
    /// share one place in the request's future rather than adding up.
    async fn judge<'c>(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        pinned: Option<&Arc<upstream::Pinned>>,
        config: &'c Config,
        record: &mut AccessRecord,
    ) -> Result<Judged<'c, '_>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // Goes with the body (none for a request without one): see `server::ReceivingBody`.
        let receiving = parts.extensions.remove::<crate::server::ReceivingBody>();
        // The placeholder of an emulated login is the proxy's own, not a client credential: it
        // goes before anything reads the request.
        self.sessions.placeholder().remove_from(&mut parts);
        let mode = config.policy.client_credentials;
        let target = target::judge(&parts.method, &parts.uri, mode)?;
        let judged = target.path_and_query()?;
        record.judged = Some(judged.clone());
        admit(&parts, config)?;
        // Before anything reads a header: what is not forwarded must not decide anything either.
        headers::remove_hop_by_hop(&mut parts.headers);
        if let Some(action) = session::emulated(&parts, &config.policy) {
            let api_key = target.api_key.as_deref();
            // Boxed: rare, and as large as a forward of its own.
            let response = Box::pin(self.emulate_session(
                action,
                &mut parts.headers,
                api_key,
                (body, receiving),
                config,
                record,
            ))
            .await?;
            return Ok(Judged::Answered(response));
        }
        let admitted = config
            .policy
            .admit(&target.method, &target.path)
            .map_err(ProxyError::PolicyDenied)?;
        let screened = headers::screen_request(&parts.headers, mode)?;
        let profile =
            profile::select_profile(&parts.headers, &screened, target.api_key.as_deref(), config)?;
        record.profile = Some(profile.name.clone());
        headers::strip_request(&mut parts.headers, screened);
        // Room for what the proxy adds: `x-forwarded-for`, the token and, on a pinned upstream
        // connection, `host`; made once rather than grown at each.
        parts.headers.reserve(3);
        if let Some(peer) = peer {
            headers::append_forwarded_for(&mut parts.headers, peer);
        }
        // Contentstack's user object carries the token: that answer is read whole to take it out,
        // and so must come uncompressed.
        let carries_token = admitted.user_endpoint;
        if carries_token {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
        }
        // In origin form: the upstream connection adds where it goes (docs/design.md#upstream-connections).
        let uri = Uri::from(judged);
        let content_length = content_length(&parts.headers)?;
        let body = body::take_request_body(
            body,
            receiving,
            content_length,
            config.server.replay_body_limit,
            config.server.max_body,
            config.server.body_pace,
            &self.replay_budget,
        )
        .await?;
        let outbound = Outbound {
            kind: RequestKind::of(&target.method, &target.path),
            method: target.method,
            uri,
            headers: parts.headers,
            timeout: config.server.request_timeout,
            limiter: self.limiter(profile),
            profile: profile.name.clone(),
            pinned: pinned.cloned(),
            carries_token,
            token_header: None,
        };
        Ok(Judged::Forward(profile, outbound, body))
    }

    /// The budget of `profile`, which has one only if its settings say so: most set none, and
    /// then the budgets are not even looked at.
    fn limiter(&self, profile: &ProfileConfig) -> Option<Arc<RateLimiter>> {
        profile.rate_limit.as_ref()?;
        let limiters = self.limiters.load();
        limiters
            .get(&profile.name)
            .map(|(_, limiter)| limiter.clone())
    }

    /// Sends with the profile's credentials: a management token as it is, a session token with
    /// the replay after an eviction.
    async fn dispatch(
        &self,
        profile: &ProfileConfig,
        outbound: &mut Outbound,
        body: RequestBody<'_>,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        match &profile.credentials {
            Credentials::ManagementToken(token) => {
                outbound
                    .headers
                    .insert(header::AUTHORIZATION, token.0.clone());
                // Held until the answer comes, like a body that may be replayed.
                let (body, _held) = match body {
                    RequestBody::Replayable(bytes, held) => (Relay::full(bytes), Some(held)),
                    RequestBody::Streaming(relay) => (relay, None),
                };
                let headers = outbound.headers_to_send(false);
                let response = self.send(outbound, headers, body, record).await?;
                self.answer(response, outbound, &token.0).await
            }
            Credentials::Login(_) | Credentials::OAuth(_) => {
                self.forward_with_session(profile, outbound, body, record)
                    .await
            }
        }
    }

    /// Steps 5–7: send with the profile's token; on a 401 that says the token is dead, drop that
    /// token (only if still current), log in (or refresh) once, and replay a kept body once.
    async fn forward_with_session(
        &self,
        profile: &ProfileConfig,
        outbound: &mut Outbound,
        body: RequestBody<'_>,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        // The usual case needs no future: the session's token is there and usable. Else the
        // login (or the refresh) is awaited, boxed as every rarely taken step that awaits much.
        let token = match self.tokens.cached(&profile.name) {
            Some(token) => token,
            None => Box::pin(self.token(profile)).await?,
        };
        // A kept body holds its share of the replay budget until this request is done with it.
        let (first_body, replay) = match body {
            RequestBody::Replayable(bytes, held) => {
                (Relay::full(bytes.clone()), Some((bytes, held)))
            }
            RequestBody::Streaming(relay) => (relay, None),
        };
        outbound.set_token(&token);
        let headers = outbound.headers_to_send(replay.is_some());
        let response = self.send(outbound, headers, first_body, record).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return self.answer(response, outbound, token.header()).await;
        }
        let (mut parts, mut rest) = response.into_parts();
        scrub::drop_headers_carrying(&mut parts.headers, scrub::secret(token.header()));
        let (chunks, complete) = body::read_up_to(&mut rest, ERROR_PEEK_LIMIT as u64)
            .await
            .map_err(|e| ProxyError::UpstreamBroken(e.into()))?;
        // Boxed, as every rarely taken step that awaits much (docs/design.md#performance).
        if !(complete && Box::pin(self.token_is_dead(&parts.headers, &chunks, &token)).await) {
            return Ok(upstream_response(parts, Relay::response(chunks, rest)));
        }
        Box::pin(
            self.tokens
                .invalidate(&profile.name, &token, Trigger::Unauthorized),
        )
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
        outbound.set_token(&token);
        let headers = outbound.headers_to_send(false);
        let response = self
            .send(outbound, headers, Relay::full(bytes), record)
            .await?;
        self.answer(response, outbound, token.header()).await
    }

    /// The upstream's answer as the client gets it: no header that carries the credential sent,
    /// and, for an answer that carries the token in its body, the placeholder in its place
    /// (docs/design.md#answers-that-carry-the-token).
    async fn answer(
        &self,
        response: Response<Incoming>,
        outbound: &Outbound,
        credential: &http::HeaderValue,
    ) -> Result<Response<Relay>, ProxyError> {
        let secret = scrub::secret(credential);
        let (mut parts, body) = response.into_parts();
        scrub::drop_headers_carrying(&mut parts.headers, secret);
        if !outbound.carries_token {
            return Ok(upstream_response(
                parts,
                Relay::response(Default::default(), body),
            ));
        }
        let placeholder = self.sessions.placeholder().as_str();
        // Boxed, like every rarely taken large future on the request path: inline, it would be
        // copied with every request's future.
        let body = Box::pin(scrub::body(
            &parts.headers,
            body,
            secret,
            placeholder,
            outbound.timeout,
        ))
        .await?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, body.len().into());
        Ok(upstream_response(parts, Relay::full(body)))
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

    /// Whether an upstream 401 means "this token is dead" (`error_code` 105, or an OAuth access
    /// token's invalid-or-expired answer, see [`session::verdict`]). A body in an encoding the
    /// proxy cannot read, or one that does not say, is settled by asking Contentstack about the
    /// token directly.
    async fn token_is_dead(
        &self,
        headers: &HeaderMap,
        chunks: &std::collections::VecDeque<Bytes>,
        token: &Token,
    ) -> bool {
        let raw = body::concat(chunks.clone());
        let verdict = error_body::decode(headers, &raw).map_or(Verdict::Unsure, |decoded| {
            crate::token::session::verdict(token.kind(), &decoded)
        });
        match verdict {
            Verdict::Dead => true,
            Verdict::NotTheToken => false,
            Verdict::Unsure => {
                matches!(self.tokens.auth().validate(token).await, Ok(Validity::Dead))
            }
        }
    }

    /// Sends one request upstream within the profile's budget. A read Contentstack answers with
    /// 429 is sent again once the budget allows, within `max_wait` of that first 429 (reads are
    /// idempotent); anything else it answers is the answer.
    ///
    /// A plain function: the send starts here and is boxed, and the future returned keeps only
    /// what the answer needs, not the headers and body it was given (docs/design.md#performance).
    fn send<'a>(
        &'a self,
        outbound: &'a Outbound,
        headers: HeaderMap,
        body: Relay,
        record: &'a mut AccessRecord,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'a {
        let retry = outbound.kind == RequestKind::Read && hyper::body::Body::is_end_stream(&body);
        // Boxed: the sending future would otherwise be copied into each future above it.
        let first = Box::pin(self.send_once(outbound, headers, body, false));
        async move {
            let response = record.upstream_took(first.await)?;
            match &outbound.limiter {
                Some(limiter) if retry && response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    // Boxed: rare, and as large as a send of its own.
                    Box::pin(self.send_again(outbound, limiter, response, record)).await
                }
                _ => Ok(response),
            }
        }
    }

    /// Sends a read Contentstack answered with 429 again once the budget allows, within `max_wait`
    /// of that first 429, with the headers [`Outbound::headers_to_send`] kept for it.
    async fn send_again(
        &self,
        outbound: &Outbound,
        limiter: &RateLimiter,
        response: Response<Incoming>,
        record: &mut AccessRecord,
    ) -> Result<Response<Incoming>, ProxyError> {
        let deadline = Instant::now() + limiter.max_wait();
        let mut response = response;
        while response.status() == StatusCode::TOO_MANY_REQUESTS {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let wait = match limiter.acquire_within(outbound.kind, left).await {
                Decision::Now => Duration::ZERO,
                Decision::After(wait) => wait,
                Decision::Refuse(_) => break,
            };
            self.metrics.rate_limit_wait(&outbound.profile);
            tokio::time::sleep(wait).await;
            let headers = outbound.headers.clone();
            let again = self.send_once(outbound, headers, Relay::empty(), true);
            response = record.upstream_took(again.await)?;
        }
        Ok(response)
    }

    /// One request upstream, and how long the upstream took with it (`None` when the budget
    /// refused it before it went); `slot_taken` when the caller already waited for its slot of the
    /// budget.
    async fn send_once(
        &self,
        outbound: &Outbound,
        headers: HeaderMap,
        body: Relay,
        slot_taken: bool,
    ) -> (Result<Response<Incoming>, ProxyError>, Option<Duration>) {
        if let (Some(limiter), false) = (&outbound.limiter, slot_taken) {
            // Boxed, like the calls to the budget below: with a fleet store each is a Redis call,
            // large, and only for profiles with a budget (docs/design.md#performance).
            if let Err(e) = Box::pin(self.take_slot(outbound, limiter)).await {
                return (Err(e), None);
            }
        }
        let fault = body.fault();
        let started = Instant::now();
        // The request goes to its connection here; the future keeps no room for it
        // (docs/design.md#performance).
        let sent = self
            .clients
            .send(outbound.request(headers, body), outbound.pinned.as_deref());
        let result = tokio::time::timeout(outbound.timeout, sent).await;
        let took = Some(started.elapsed());
        let response = match result {
            Err(_) => return (Err(ProxyError::UpstreamTimeout(outbound.timeout)), took),
            // The client's body failing (too large, stalled) is the client's error, not Contentstack's.
            Ok(Err(e)) => {
                let error = fault
                    .and_then(|fault| fault.error())
                    .map_or(ProxyError::UpstreamUnreachable(e), ProxyError::from);
                return (Err(error), took);
            }
            Ok(Ok(response)) => response,
        };
        if let Some(limiter) = &outbound.limiter {
            let kind = outbound.kind;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                Box::pin(limiter.upstream_limited(kind)).await;
            } else if response
                .headers()
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes() == b"0")
            {
                Box::pin(limiter.upstream_full(kind)).await;
            }
        }
        (Ok(response), took)
    }

    /// Waits for the request's slot of its profile's budget, or refuses it (429).
    async fn take_slot(
        &self,
        outbound: &Outbound,
        limiter: &RateLimiter,
    ) -> Result<(), ProxyError> {
        match limiter.acquire(outbound.kind).await {
            Decision::Now => Ok(()),
            Decision::After(wait) => {
                self.metrics.rate_limit_wait(&outbound.profile);
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Decision::Refuse(wait) => Err(ProxyError::RateLimited(wait)),
        }
    }
}

/// The path of the access log and of error lines: the one judged and forwarded (`//x/v3/…` went
/// upstream as `/x/v3/…`, and is logged so), or as received when it could not be judged; escaped
/// either way, since it is what a client sent.
fn logged_path<'a>(record: &'a AccessRecord, received: &'a Uri) -> std::borrow::Cow<'a, str> {
    let path = record
        .judged
        .as_ref()
        .map_or(received.path(), |judged| judged.path());
    crate::error_text::escape(path)
}

/// Milliseconds to the microsecond: `0.897`, not `0.8971790000000001`.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Every profile's series, at 0, in the metrics (again after a reload: new profiles get theirs).
fn declare_profiles(metrics: &Metrics, config: &Config) {
    for p in &config.profiles {
        metrics.profile(&p.name, p.has_session(), p.rate_limit.is_some());
    }
    metrics.emulated_sessions_known(config.profiles.iter().map(|p| &*p.name));
}

/// What [`Proxy::judge`] made of a request: one to forward with its profile, or one the proxy
/// answered itself (an emulated login or logout).
enum Judged<'c, 'b> {
    Forward(&'c Arc<ProfileConfig>, Outbound, RequestBody<'b>),
    Answered(Response<Relay>),
}

/// A request ready to go upstream, kept so it can be sent a second time.
struct Outbound {
    /// Which budget the request draws on.
    kind: RequestKind,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    profile: Arc<str>,
    /// The upstream connection of the client connection the request came on.
    pinned: Option<Arc<upstream::Pinned>>,
    /// Whether the answer may carry the token (the user object).
    carries_token: bool,
    /// The header [`Outbound::set_token`] put the session's token in.
    token_header: Option<http::HeaderName>,
}

impl Outbound {
    /// Puts the profile's token in the headers: `authtoken`, or an OAuth profile's
    /// `authorization: Bearer …` (client-sent credentials are gone by now); a replay's new token
    /// takes the place of the old.
    fn set_token(&mut self, token: &Token) {
        let name = token.header_name();
        // A reload that turned the profile from a login into an OAuth app (or back) between the
        // first send and the replay: the old token's header goes too.
        if let Some(old) = self.token_header.replace(name.clone())
            && old != name
        {
            self.headers.remove(old);
        }
        self.headers.insert(name, token.header().clone());
    }

    /// The request for one send: the judged method and target, over HTTP/1.1 (the upstream
    /// connection speaks what it speaks), with `headers` and `body`.
    fn request(&self, headers: HeaderMap, body: Relay) -> Request<Relay> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }

    /// The headers for one send. A copy when they may be sent again: a replay after a token
    /// eviction (`replayable`), or a read retried after a 429 (with a budget); otherwise the
    /// headers themselves, with no copy (docs/design.md#performance).
    fn headers_to_send(&mut self, replayable: bool) -> HeaderMap {
        if replayable || self.limiter.is_some() {
            // The copy is kept and the headers go: they have the room made for them in
            // [`Proxy::judge`], the copy none.
            let copy = self.headers.clone();
            std::mem::replace(&mut self.headers, copy)
        } else {
            std::mem::take(&mut self.headers)
        }
    }
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
