//! The request path (docs/design.md#the-request-path), read top to bottom in [`Proxy::judge`]
//! (admission, hop-by-hop removal, judging the target (normalized method, path and query: what the
//! policy checks is what is sent, see [`target`]), policy, header screening, profile, client
//! credentials) and then [`Proxy::forward`] (the body, the token, the send, and the one replay after
//! a token eviction; a write then drops what it may have changed). A read that may be shared takes
//! [`Proxy::forward_read`] instead, with [`reads`] (cache, coalescing) around the send.
//!
//! This module never buffers more than `replay_body_limit` of a request or [`ERROR_PEEK_LIMIT`] of a
//! 401 response (and [`reads`] no more than its share limits), and never logs a header value or a
//! body.
mod access;
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
mod send;
mod session;
pub mod target;
pub mod upstream;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;

use crate::body::{self, Relay, ReplayBudget, RequestBody};
use crate::config::{Config, Credentials, ProfileConfig, RateLimitConfig};
use crate::metrics::{Metrics, ReplayOutcome, Trigger};
use crate::ratelimit::{RateLimiter, RequestKind};
use crate::token::{Token, TokenKind, TokenLease, TokenManager, Validity, Verdict};
pub use access::AccessRecord;
use access::Serving;
use error::{BadRequest, ProxyError};
use send::Budget;
use upstream::UpstreamClients;

/// How much of an upstream 401 is read to look for `error_code` 105; CMA error bodies are tiny.
pub const ERROR_PEEK_LIMIT: usize = 64 * 1024;

pub struct Proxy {
    config: ArcSwap<Config>,
    tokens: TokenManager,
    clients: UpstreamClients,
    draining: AtomicBool,
    /// Shutdown's grace has passed: the requests still in flight are being cut off.
    cutting: AtomicBool,
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
            cutting: AtomicBool::new(false),
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

    /// `shutdown_grace` has passed: the requests still in flight are dropped from now on, and each
    /// is logged as `shutting_down` rather than as its client's going away.
    pub fn start_cutting(&self) {
        self.cutting.store(true, Ordering::SeqCst);
    }

    fn is_cutting(&self) -> bool {
        self.cutting.load(Ordering::SeqCst)
    }

    /// Serves one request; never fails (errors become responses), logs one access line.
    ///
    /// A plain function: the request is judged here, before anything is boxed; what goes on is
    /// boxed once, and the future returned keeps only what the access line needs
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
        let mut record = AccessRecord::default();
        let config = self.config.load_full();
        let judged = self.judge(req, peer, pinned, &config, &mut record);
        // What goes on logs its line even if its client goes away first.
        let serving = |record| Serving::new(self, record, &method, started);
        // Boxed once: it is not copied again each time a caller's future moves, and the request
        // it keeps stays where it was put (docs/design.md#performance).
        let forward: Forward<'_> = match judged {
            Ok(Judged::Forward(request, body)) => {
                Box::pin(self.forward(request, body, config, serving(record)))
            }
            Ok(Judged::Read(request, read)) => {
                Box::pin(self.forward_read(request, read, config, serving(record)))
            }
            Ok(Judged::Emulated(emulated)) => {
                Box::pin(self.emulated(emulated, config, serving(record)))
            }
            Err(e) => Box::pin(std::future::ready((Err(e), record))),
        };
        async move {
            let (result, record) = forward.await;
            self.answered(result, record, method, started, in_flight)
        }
    }

    /// Step 4 on, for a judged request: its body taken, then the send with the profile's
    /// credentials (steps 5–7); a write then drops what it may have changed.
    ///
    /// A plain function: the future keeps the judged request, the configuration and the record
    /// where they were put, and its steps borrow them rather than keep copies of their own
    /// (docs/design.md#performance).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (docs/design.md#performance)"
    )]
    fn forward<'p>(
        &'p self,
        mut request: JudgedRequest,
        body: ClientBody,
        config: Arc<Config>,
        mut serving: Serving<'p>,
    ) -> impl Future<Output = (Result<Response<Relay>, ProxyError>, AccessRecord)> + Send + 'p {
        async move {
            let body = match self.request_body(&request, body, &config).await {
                Ok(body) => body,
                Err(e) => return (Err(e.into()), serving.done()),
            };
            let profile = &config.profiles[request.profile];
            let outbound = &mut request.outbound;
            // Whatever becomes of a write, even when its client goes away before the answer, it
            // may have changed what reads answer (see `reads::Write`).
            let write = (!matches!(outbound.method, Method::GET | Method::HEAD))
                .then(|| reads::Write::new(self, profile, outbound.target.clone()));
            let response = self
                .dispatch(profile, outbound, body, &mut serving.record)
                .await;
            // In a fleet, the other replicas are told before the answer goes. (The answer waits
            // inside that step's future, not beside it: docs/design.md#performance.)
            let telling = write.and_then(reads::Write::settle);
            let response = match telling {
                Some(telling) => after(telling, response).await,
                None => response,
            };
            (response, serving.done())
        }
    }

    /// A read that may be shared ([`reads`]): answered from the cache or by another client's
    /// identical read, or sent as the lead of one, its answer then shared.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (docs/design.md#performance)"
    )]
    fn forward_read<'p>(
        &'p self,
        mut request: JudgedRequest,
        read: reads::SharedRead,
        config: Arc<Config>,
        mut serving: Serving<'p>,
    ) -> impl Future<Output = (Result<Response<Relay>, ProxyError>, AccessRecord)> + Send + 'p {
        async move {
            let profile = &config.profiles[request.profile];
            let outbound = &mut request.outbound;
            let lead = match self.join_read(profile, outbound, read).await {
                Ok(reads::Joined::Leads(lead)) => lead,
                Ok(reads::Joined::Answered(response)) => return (Ok(response), serving.done()),
                Err(e) => return (Err(e), serving.done()),
            };
            let no_body =
                RequestBody::Replayable(Bytes::new(), body::Held::none(&*self.replay_budget));
            let reading = match self
                .dispatch(profile, outbound, no_body, &mut serving.record)
                .await
            {
                Ok(response) => match self.share_read(profile, lead, response) {
                    Answer::Ready(response) => return (Ok(response), serving.done()),
                    Answer::Reading(reading) => reading,
                },
                Err(e) => return (Err(e), serving.done()),
            };
            (reading.await, serving.done())
        }
    }

    /// Step 4's body: kept whole to be sent again if it may need to be, else streamed.
    fn request_body<'a>(
        &'a self,
        request: &JudgedRequest,
        (incoming, receiving): ClientBody,
        config: &Config,
    ) -> body::Taking<'a> {
        body::take_request_body(
            incoming,
            receiving,
            request.content_length,
            config.server.replay_body_limit,
            config.server.max_body,
            config.server.body_pace,
            &self.replay_budget,
        )
    }

    /// A login or logout the proxy answers itself (see [`session`]).
    fn emulated<'p>(
        &'p self,
        emulated: Emulated,
        config: Arc<Config>,
        mut serving: Serving<'p>,
    ) -> impl Future<Output = (Result<Response<Relay>, ProxyError>, AccessRecord)> + Send + 'p {
        let Emulated {
            action,
            mut headers,
            api_key,
            body,
        } = emulated;
        async move {
            let result = self
                .emulate_session(
                    action,
                    &mut headers,
                    api_key.as_deref(),
                    body,
                    &config,
                    &mut serving.record,
                )
                .await;
            (result, serving.done())
        }
    }

    /// Steps 1–4 (docs/design.md#the-request-path) but for the body: admission, hop-by-hop
    /// removal, the target judged, policy, header screening and the profile; what is left is the
    /// request as it will go upstream. Synchronous: nothing here waits, so nothing here is kept in
    /// the request's future.
    fn judge(
        &self,
        req: Request<Incoming>,
        peer: Option<IpAddr>,
        pinned: Option<&Arc<upstream::Pinned>>,
        config: &Config,
        record: &mut AccessRecord,
    ) -> Result<Judged, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // Goes with the body (none for a request without one): see `server::ReceivingBody`.
        let receiving = parts.extensions.remove::<crate::server::ReceivingBody>();
        // The placeholder of an emulated login is the proxy's own, not a client credential: it
        // goes before anything reads the request.
        self.sessions.placeholder().remove_from(&mut parts);
        let mode = config.policy.client_credentials;
        let judging = target::judge(&parts.method, &parts.uri, mode)
            .and_then(|target| Ok((target.path_and_query()?, target)));
        let (judged, target) = match judging {
            Ok(judged) => judged,
            Err(e) => {
                // Logged as received: it could not be judged.
                record.path = parts.uri.path_and_query().cloned();
                return Err(e);
            }
        };
        record.path = Some(judged.clone());
        admit(&parts, config)?;
        // Before anything reads a header: what is not forwarded must not decide anything either.
        headers::remove_hop_by_hop(&mut parts.headers);
        if let Some(action) = session::emulated(&parts, &config.policy) {
            return Ok(Judged::Emulated(Emulated {
                action,
                headers: parts.headers,
                api_key: target.api_key.map(std::borrow::Cow::into_owned),
                body: (body, receiving),
            }));
        }
        let admitted = config
            .policy
            .admit(&target.method, &target.path)
            .map_err(ProxyError::PolicyDenied)?;
        let screened = headers::screen_request(&parts.headers, mode)?;
        let index =
            profile::select_profile(&parts.headers, &screened, target.api_key.as_deref(), config)?;
        let profile = &config.profiles[index];
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
        let content_length = content_length(&parts.headers)?;
        let bodiless = hyper::body::Body::is_end_stream(&body);
        let outbound = Outbound {
            kind: RequestKind::of(&target.method, &target.path),
            method: target.method,
            target: judged,
            headers: parts.headers,
            timeout: config.server.request_timeout,
            budget: self.budget(profile),
            pinned: pinned.cloned(),
            carries_token,
            token_kind: None,
        };
        // Whether it is a read to share is decided here, with the rest of where it goes.
        let read = bodiless
            .then(|| self.shareable_read(profile, &outbound))
            .flatten();
        let request = JudgedRequest {
            profile: index,
            outbound,
            content_length,
        };
        Ok(match read {
            Some(read) => Judged::Read(request, read),
            None => Judged::Forward(request, (body, receiving)),
        })
    }

    /// Steps 5–7: sends with the profile's credentials, a management token as it is or the
    /// session's token; after a 401 to a session's token, [`Proxy::after_unauthorized`].
    ///
    /// A plain function: the body is split here, and the future keeps each part where it was put
    /// rather than the body and then its parts (docs/design.md#performance).
    fn dispatch<'a>(
        &'a self,
        profile: &'a ProfileConfig,
        outbound: &'a mut Outbound,
        body: RequestBody<'a>,
        record: &'a mut AccessRecord,
    ) -> impl Future<Output = Result<Response<Relay>, ProxyError>> + Send + 'a {
        // A kept body holds its share of the replay budget until this request is done with it.
        let (first_body, kept) = match body {
            RequestBody::Replayable(bytes, held) => {
                (Relay::full(bytes.clone()), Some((bytes, held)))
            }
            RequestBody::Streaming(relay) => (relay, None),
        };
        async move {
            let credential = match &profile.credentials {
                Credentials::ManagementToken(token) => {
                    outbound
                        .headers
                        .insert(header::AUTHORIZATION, token.0.clone());
                    Credential::Management(&token.0)
                }
                Credentials::Login(_) | Credentials::OAuth(_) => {
                    // The usual case needs no future: the session's token is there and usable. Else
                    // the login (or the refresh) is awaited, boxed as every rarely taken step that
                    // awaits much.
                    let token = match self.tokens.cached(&profile.name) {
                        Some(token) => token,
                        None => Box::pin(self.token(profile)).await?,
                    };
                    outbound.set_token(&token);
                    Credential::Session(token)
                }
            };
            let replayable = matches!(credential, Credential::Session(_)) && kept.is_some();
            let headers = outbound.headers_to_send(replayable);
            // What is left is boxed, and rare: the answer and its credential are not kept
            // beside it (docs/design.md#performance).
            let rest: Pin<Box<AnswerFuture<'_>>> = {
                let response = self.send(outbound, headers, first_body, record).await?;
                match credential {
                    Credential::Session(token) if response.status() == StatusCode::UNAUTHORIZED => {
                        Box::pin(
                            self.after_unauthorized(
                                profile, outbound, response, token, kept, record,
                            ),
                        )
                    }
                    credential => match self.answer(response, outbound, credential) {
                        Answer::Ready(response) => return Ok(response),
                        Answer::Reading(reading) => reading,
                    },
                }
            };
            rest.await
        }
    }

    /// Step 7, after an upstream 401 to a request sent with a session's `token`: if it says the
    /// token is dead, drop that token (only if still current), log in (or refresh) once, and
    /// replay a `kept` body once; otherwise the 401 is the answer.
    async fn after_unauthorized(
        &self,
        profile: &ProfileConfig,
        outbound: &mut Outbound,
        response: Response<Incoming>,
        token: TokenLease,
        kept: Option<(Bytes, body::Held<&ReplayBudget>)>,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        let (mut parts, mut rest) = response.into_parts();
        scrub::drop_headers_carrying(&mut parts.headers, scrub::secret(token.header()));
        // Within the request's timeout, as every read of an upstream body the proxy waits for.
        let peek = body::read_up_to(&mut rest, ERROR_PEEK_LIMIT as u64);
        let (chunks, complete) = tokio::time::timeout(outbound.timeout, peek)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout(outbound.timeout))?
            .map_err(|e| ProxyError::UpstreamBroken(e.into()))?;
        if !(complete && self.token_is_dead(&parts.headers, &chunks, &token).await) {
            return Ok(upstream_response(parts, Relay::response(chunks, rest)));
        }
        self.tokens
            .invalidate(&profile.name, &token, Trigger::Unauthorized)
            .await;
        let Some((bytes, _held)) = kept else {
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
        let reading = match self.answer(response, outbound, Credential::Session(token)) {
            Answer::Ready(response) => return Ok(response),
            Answer::Reading(reading) => reading,
        };
        reading.await
    }

    /// The upstream's answer as the client gets it: no header that carries the credential sent,
    /// and, for an answer that carries the token in its body, the placeholder in its place
    /// (docs/design.md#answers-that-carry-the-token).
    ///
    /// A plain function: the usual answer needs no future; the one that carries the token (a
    /// rare request) is read whole in a boxed future of its own.
    fn answer<'a>(
        &'a self,
        response: Response<Incoming>,
        outbound: &Outbound,
        credential: Credential<'a>,
    ) -> Answer<'a> {
        let (mut parts, body) = response.into_parts();
        scrub::drop_headers_carrying(&mut parts.headers, scrub::secret(credential.header()));
        if !outbound.carries_token {
            return Answer::Ready(upstream_response(
                parts,
                Relay::response(Default::default(), body),
            ));
        }
        let placeholder = self.sessions.placeholder().as_str();
        let timeout = outbound.timeout;
        Answer::Reading(Box::pin(async move {
            let secret = scrub::secret(credential.header());
            let body = scrub::body(&parts.headers, body, secret, placeholder, timeout).await?;
            parts
                .headers
                .insert(header::CONTENT_LENGTH, body.len().into());
            Ok(upstream_response(parts, Relay::full(body)))
        }))
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
}

/// `then`, once `first` is done. A plain function: the future keeps `then` once, where it was
/// put (docs/design.md#performance).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice (docs/design.md#performance)"
)]
fn after<T>(first: impl Future<Output = ()>, then: T) -> impl Future<Output = T> {
    async move {
        first.await;
        then
    }
}

/// Every profile's series, at 0, in the metrics (again after a reload: new profiles get theirs).
fn declare_profiles(metrics: &Metrics, config: &Config) {
    for p in &config.profiles {
        metrics.profile(&p.name, p.has_session(), p.rate_limit.is_some());
    }
    metrics.emulated_sessions_known(config.profiles.iter().map(|p| &*p.name));
}

/// The future of a request past judging, with its access record.
type Forward<'p> =
    Pin<Box<dyn Future<Output = (Result<Response<Relay>, ProxyError>, AccessRecord)> + Send + 'p>>;

/// A client's request body as it comes, and what keeps its connection from being taken for idle
/// while it does (none once it has ended).
type ClientBody = (Incoming, Option<crate::server::ReceivingBody>);

/// What [`Proxy::judge`] made of a request: one to forward, a read that may be shared (it has no
/// body), or a login or logout the proxy answers itself.
enum Judged {
    Forward(JudgedRequest, ClientBody),
    Read(JudgedRequest, reads::SharedRead),
    Emulated(Emulated),
}

/// A request judged fit to go upstream, as it will go, but for its body.
struct JudgedRequest {
    /// Its profile, in the configuration it was judged with.
    profile: usize,
    outbound: Outbound,
    content_length: Option<u64>,
}

/// A login or logout to answer: what [`Proxy::emulate_session`] needs of the request.
struct Emulated {
    action: session::Action,
    headers: HeaderMap,
    api_key: Option<String>,
    body: ClientBody,
}

/// An answer ready now, or one that must first be read (in a boxed future: the rarer case, kept
/// out of the request's future). Awaited where it is matched, so that a ready answer is not kept
/// in a future at all.
enum Answer<'a> {
    Ready(Response<Relay>),
    Reading(Pin<Box<AnswerFuture<'a>>>),
}

/// An answer being read.
type AnswerFuture<'a> = dyn Future<Output = Result<Response<Relay>, ProxyError>> + Send + 'a;

/// What a request is sent with: a profile's management token, or its session's token.
enum Credential<'p> {
    Management(&'p http::HeaderValue),
    Session(TokenLease),
}

impl Credential<'_> {
    /// The header value that carries it.
    fn header(&self) -> &http::HeaderValue {
        match self {
            Credential::Management(value) => value,
            Credential::Session(token) => token.header(),
        }
    }
}

/// A request ready to go upstream, kept so it can be sent a second time.
struct Outbound {
    /// Which budget the request draws on.
    kind: RequestKind,
    method: Method,
    /// In origin form: the upstream connection adds where it goes
    /// (docs/design.md#upstream-connections).
    target: PathAndQuery,
    headers: HeaderMap,
    timeout: Duration,
    /// The profile's request budget, when it has one.
    budget: Option<Budget>,
    /// The upstream connection of the client connection the request came on.
    pinned: Option<Arc<upstream::Pinned>>,
    /// Whether the answer may carry the token (the user object).
    carries_token: bool,
    /// The kind of token [`Outbound::set_token`] put in the headers, and so which header.
    token_kind: Option<TokenKind>,
}

impl Outbound {
    /// Puts the profile's token in the headers: `authtoken`, or an OAuth profile's
    /// `authorization: Bearer …` (client-sent credentials are gone by now); a replay's new token
    /// takes the place of the old.
    fn set_token(&mut self, token: &Token) {
        let kind = token.kind();
        // A reload that turned the profile from a login into an OAuth app (or back) between the
        // first send and the replay: the old token's header goes too.
        if let Some(old) = self.token_kind.replace(kind)
            && old != kind
        {
            self.headers.remove(old.header_name());
        }
        self.headers
            .insert(kind.header_name(), token.header().clone());
    }

    /// The request for one send: the judged method and target, over HTTP/1.1 (the upstream
    /// connection speaks what it speaks), with `headers` and `body`.
    fn request(&self, headers: HeaderMap, body: Relay) -> Request<Relay> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = Uri::from(self.target.clone());
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }

    /// The headers for one send. A copy when they may be sent again: a replay after a token
    /// eviction (`replayable`), or a read retried after a 429 (with a budget); otherwise the
    /// headers themselves, with no copy (docs/design.md#performance).
    fn headers_to_send(&mut self, replayable: bool) -> HeaderMap {
        if replayable || self.budget.is_some() {
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
