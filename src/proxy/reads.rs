//! The read path (docs/design.md#read-coalescing): a bodiless `GET` that may be shared is answered
//! from the profile's cache, or follows an identical read already in flight, or leads one and
//! shares its answer. Writes drop what they may have changed, here and, in a fleet, on every
//! replica.
//!
//! What is held in memory to be shared is bounded twice: [`SHARE_LIMIT`] per answer (a longer one
//! streams to its own client and each follower sends its own request) and [`SHARE_BUDGET`] across
//! all answers being read at once.
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Response};
use tokio::time::Instant;

use super::cache::{Invalidation, ReadCache, is_wide};
use super::coalesce::{FlightState, ReadKey, Role, SharedAnswer, read_key};
use super::error::ProxyError;
use super::{Answer, Outbound, Proxy};
use crate::body::{self, Chunks, Relay};
use crate::config::{Config, ProfileConfig};
use crate::metrics::{CacheResult, Metrics};
use crate::store::Invalidated;
use crate::token::TokenManager;

/// Says where an answer to a shareable read came from: `hit` (the cache), `coalesced` (another
/// client's identical read), `miss` (Contentstack, for this request).
pub const CACHE_HEADER: &str = "x-cma-auth-proxy-cache";

/// The largest answer shared between clients or cached.
pub const SHARE_LIMIT: u64 = 8 << 20;

/// The most held in memory, across all answers being read to be shared, at one time; past it an
/// answer streams to its own client as any other.
pub const SHARE_BUDGET: u64 = 64 << 20;

/// Bytes held by answers being read to be shared, process-wide.
static SHARING: AtomicU64 = AtomicU64::new(0);

/// The reads of each profile: its cache, and the account under which a fleet shares its writes.
pub struct ProfileReads {
    pub cache: Option<Arc<ReadCache>>,
    pub account: Option<String>,
    /// Whom the cache read as: another account's answers are not this one's.
    credentials: crate::config::Credentials,
}

/// Keyed by profile name with a fast hash, as the token manager's profiles are.
pub type Reads = HashMap<Arc<str>, ProfileReads, foldhash::fast::RandomState>;

/// Caches for `config`, keeping those whose settings and credentials did not change (and what they
/// hold): a profile moved to another account (or management token, or OAuth app) starts empty, as
/// what the old one could read is not what the new one may.
pub fn reads(config: &Config, tokens: &TokenManager, metrics: &Metrics, previous: &Reads) -> Reads {
    config
        .profiles
        .iter()
        .map(|p| {
            metrics.reads_of(&p.name, p.cache.is_some());
            let cache = p.cache.as_ref().map(|settings| {
                let kept = previous
                    .get(&p.name)
                    .filter(|r| r.credentials == p.credentials)
                    .and_then(|r| r.cache.as_ref());
                match kept {
                    Some(cache) if cache.config == *settings => cache.clone(),
                    _ => Arc::new(ReadCache::new(settings)),
                }
            });
            let account = tokens.shared_budget(p).map(|(_, account)| account);
            let credentials = p.credentials.clone();
            (
                p.name.clone(),
                ProfileReads {
                    cache,
                    account,
                    credentials,
                },
            )
        })
        .collect()
}

/// A read that may be shared, and how.
pub struct SharedRead {
    key: ReadKey,
    /// The profile's cache, when its `paths` cover this read.
    cache: Option<Arc<ReadCache>>,
    coalesce: bool,
    path: Box<str>,
    wide: bool,
}

/// What joining a shareable read gave: its answer, or the lead of a read to send and share.
pub(super) enum Joined<'f> {
    Answered(Response<Relay>),
    Leads(Lead<'f>),
}

/// A read this request sends for others too: the flight it leads (none when it does not
/// coalesce), and its deadline and cache epoch.
pub(super) struct Lead<'f> {
    read: SharedRead,
    leader: Option<super::coalesce::Leader<'f>>,
    deadline: Instant,
    /// The cache's epoch when the read went: an answer from before a write is not stored.
    epoch: Option<u64>,
}

impl Proxy {
    /// Whether this request, which comes without a body, is a read that may be shared: a `GET` of
    /// a profile that coalesces or caches it, whose headers [`read_key`] accepts. A request that is
    /// not costs a comparison or two.
    pub(super) fn shareable_read(
        &self,
        profile: &ProfileConfig,
        outbound: &Outbound,
    ) -> Option<SharedRead> {
        // Decided from the profile's own settings first: one that neither coalesces nor caches
        // shares no read, and costs no lookup of its read state.
        if outbound.method != Method::GET || (!profile.coalesce_reads && profile.cache.is_none()) {
            return None;
        }
        let path = outbound.target.path();
        let cache = self
            .reads
            .load()
            .get(&profile.name)
            .and_then(|r| r.cache.clone())
            .filter(|cache| cache.covers(path));
        if !profile.coalesce_reads && cache.is_none() {
            return None;
        }
        let path_and_query = outbound.target.as_str();
        let key = read_key(&profile.name, path_and_query, &outbound.headers)?;
        Some(SharedRead {
            key,
            wide: cache.is_some() && is_wide(outbound.target.query()),
            cache,
            coalesce: profile.coalesce_reads,
            path: path.into(),
        })
    }

    /// Joins a shareable read: its answer from the cache, or from an identical read in flight
    /// (followed, within the request's timeout), or, when there is neither, the lead of a read
    /// that others may follow, which the caller sends and then gives to [`Proxy::share_read`].
    pub(super) async fn join_read(
        &self,
        profile: &ProfileConfig,
        outbound: &mut Outbound,
        read: SharedRead,
    ) -> Result<Joined<'_>, ProxyError> {
        if let Some(cache) = &read.cache {
            if let Some(answer) = cache.get(&read.key) {
                self.metrics.cache(&profile.name, CacheResult::Hit);
                let age = answer.received.elapsed();
                return Ok(Joined::Answered(answered(&answer, "hit", Some(age))));
            }
            self.metrics.cache(&profile.name, CacheResult::Miss);
        }
        // A follower waits for the leader no longer than it would wait for Contentstack.
        let deadline = Instant::now() + outbound.timeout;
        let leader = loop {
            if !read.coalesce {
                break None;
            }
            let mut follower = match self.flights.join(&read.key, &profile.name, &read.path) {
                Role::Leader(leader) => break Some(leader),
                Role::Follower(follower) => follower,
            };
            let settled = tokio::time::timeout_at(
                deadline,
                follower.wait_for(|s| !matches!(s, FlightState::Pending)),
            )
            .await
            .map_err(|_| ProxyError::UpstreamTimeout(outbound.timeout))?
            .map(|state| state.clone())
            // The flight is gone without a word: as abandoned.
            .unwrap_or(FlightState::Abandoned);
            match settled {
                FlightState::Done(answer) => {
                    self.metrics.read_coalesced(&profile.name);
                    return Ok(Joined::Answered(answered(&answer, "coalesced", None)));
                }
                FlightState::Unshared => break None,
                FlightState::Abandoned | FlightState::Pending => continue,
            }
        };
        // A follower that took over from a leader that failed has waited already: its request
        // gets what is left of its own deadline, not a new one.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProxyError::UpstreamTimeout(outbound.timeout));
        }
        outbound.timeout = outbound.timeout.min(left);
        let epoch = read.cache.as_ref().map(|c| c.epoch());
        Ok(Joined::Leads(Lead {
            read,
            leader,
            deadline,
            epoch,
        }))
    }

    /// The upstream's answer to a read this request leads: streamed to its own client when it is
    /// nobody else's and not worth keeping (no future: the usual answer of a read nobody
    /// follows); else read to be shared with the followers and, when worth keeping, cached.
    pub(super) fn share_read<'a>(
        &'a self,
        profile: &'a ProfileConfig,
        mut lead: Lead<'a>,
        response: Response<Relay>,
    ) -> Answer<'a> {
        let worth_keeping = lead.read.cache.is_some() && response.status() == http::StatusCode::OK;
        if !worth_keeping && lead.leader.as_mut().is_none_or(|l| l.finish_if_alone()) {
            return Answer::Ready(marked(response, "miss"));
        }
        // Boxed: taken once for all the clients that share it (docs/design.md#performance).
        Answer::Reading(Box::pin(self.read_and_share(profile, lead, response)))
    }

    async fn read_and_share(
        &self,
        profile: &ProfileConfig,
        lead: Lead<'_>,
        response: Response<Relay>,
    ) -> Result<Response<Relay>, ProxyError> {
        let Lead {
            read,
            leader,
            deadline,
            epoch,
        } = lead;
        let (parts, mut relay) = response.into_parts();
        let (chunks, complete) = match read_to_share(&mut relay, deadline).await {
            Ok(read) => read,
            // The leader's guard abandons the flight: each follower tries again.
            Err(e) => return Err(ProxyError::UpstreamBroken(e)),
        };
        if !complete {
            if let Some(leader) = leader {
                leader.finish(FlightState::Unshared);
            }
            relay.prepend(chunks);
            return Ok(marked(Response::from_parts(parts, relay), "miss"));
        }
        let answer = Arc::new(SharedAnswer {
            status: parts.status,
            headers: parts.headers,
            body: body::concat(chunks),
            received: std::time::Instant::now(),
        });
        if let Some(leader) = leader {
            leader.finish(FlightState::Done(answer.clone()));
        }
        if let (Some(cache), Some(epoch)) = (&read.cache, epoch)
            && cache.store(read.key, &read.path, read.wide, &answer, epoch)
        {
            self.metrics.cache(&profile.name, CacheResult::Store);
        }
        Ok(answered(&answer, "miss", None))
    }

    /// A write went through `profile`: drop what it may have changed, here at once and, in a
    /// fleet, on the other replicas. Telling them is what is returned, to be awaited before the
    /// write's answer goes, or run on its own when the write's client has gone (boxed: only a fleet
    /// has it; it owns what it needs).
    pub(super) fn written(
        &self,
        profile: &ProfileConfig,
        target: &PathAndQuery,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
        let what = Invalidation::of(target.path());
        if profile.coalesce_reads {
            self.flights
                .detach(&profile.name, |read| what.affects(read, true));
        }
        let account = {
            let reads = self.reads.load();
            let reads = reads.get(&profile.name)?;
            let cache = reads.cache.as_ref()?;
            cache.invalidate(&what);
            self.metrics.cache(&profile.name, CacheResult::Invalidate);
            reads.account.clone()?
        };
        let store = self.tokens.store()?.clone();
        let (profile, target) = (profile.name.clone(), target.clone());
        // The store's timeout bounds it; a store that is down is skipped at once.
        Some(Box::pin(async move {
            if let Err(e) = store.publish_invalidation(&account, target.path()).await {
                tracing::debug!(profile = %profile, "cannot tell the fleet about a write: {e}");
            }
        }))
    }

    /// Another replica of the fleet wrote `path` (`None`: something that must drop everything)
    /// through the account `account`.
    fn written_elsewhere(&self, account: &str, path: Option<&str>) {
        let what = path.map_or(Invalidation::All, Invalidation::of);
        for (name, reads) in self.reads.load().iter() {
            if reads.account.as_deref() == Some(account)
                && let Some(cache) = &reads.cache
            {
                cache.invalidate(&what);
                self.metrics.cache(name, CacheResult::Invalidate);
            }
        }
    }

    /// In a fleet, listens for the other replicas' writes; the caches serve nothing until the
    /// subscription is up, and nothing while it is lost.
    pub fn listen_to_fleet(self: &Arc<Self>) {
        let Some(store) = self.tokens.store() else {
            return;
        };
        self.fleet_invalidations(false);
        let proxy = Arc::downgrade(self);
        store.listen_for_invalidations(move |event| {
            let Some(proxy) = proxy.upgrade() else { return };
            match event {
                Invalidated::Write { account, path } => proxy.written_elsewhere(account, path),
                Invalidated::Listening(live) => proxy.fleet_invalidations(live),
            }
        });
    }

    /// Whether other replicas' writes reach this one: while they may not, no cache serves.
    pub(super) fn fleet_invalidations(&self, live: bool) {
        self.hears_fleet.store(live, Ordering::Release);
        for reads in self.reads.load().values() {
            if let Some(cache) = &reads.cache {
                cache.set_live(live);
            }
        }
    }
}

/// A write on its way: when it is dropped unsettled (its client went away before the answer, and
/// hyper dropped the request's future), what it may have changed is dropped all the same, since
/// the write may have reached Contentstack; a fleet is then told on a task of its own.
pub(super) struct Write<'p> {
    proxy: &'p Proxy,
    profile: &'p ProfileConfig,
    target: PathAndQuery,
    settled: bool,
}

impl<'p> Write<'p> {
    pub(super) fn new(proxy: &'p Proxy, profile: &'p ProfileConfig, target: PathAndQuery) -> Self {
        Write {
            proxy,
            profile,
            target,
            settled: false,
        }
    }

    /// The write's answer came: what it may have changed is dropped now, and telling a fleet is
    /// returned, to be awaited before the answer goes.
    pub(super) fn settle(mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>> {
        self.settled = true;
        self.proxy.written(self.profile, &self.target)
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(telling) = self.proxy.written(self.profile, &self.target)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(telling);
        }
    }
}

/// An upstream response for the client, marked with where it came from.
fn marked(mut response: Response<Relay>, from: &'static str) -> Response<Relay> {
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(from));
    response
}

/// A shared answer for one client. A cache hit says how old it is.
fn answered(
    answer: &SharedAnswer,
    from: &'static str,
    age: Option<std::time::Duration>,
) -> Response<Relay> {
    let mut response = Response::new(Relay::full(answer.body.clone()));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers.clone();
    if let Some(age) = age {
        response
            .headers_mut()
            .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    }
    marked(response, from)
}

/// Reads an answer to be shared: the chunks, and whether they are all of it. It stops early, and
/// the caller streams the rest behind what was read, past [`SHARE_LIMIT`], once the answers being
/// read hold [`SHARE_BUDGET`] in all, or at `deadline` (a trickling upstream must not hold the
/// followers longer than they would wait for their own request). Not `body::read_up_to`: a chunk
/// read before the deadline must survive it, so the deadline bounds each chunk, not the loop.
async fn read_to_share(
    relay: &mut Relay,
    deadline: Instant,
) -> Result<(VecDeque<Bytes>, bool), body::BoxError> {
    let mut held = Held(0);
    let mut chunks = VecDeque::new();
    loop {
        if held.0 > SHARE_LIMIT || SHARING.load(Ordering::Relaxed) > SHARE_BUDGET {
            return Ok((chunks, false));
        }
        // Cancel-safe: a frame not yet returned stays in the body.
        match tokio::time::timeout_at(deadline, relay.next_chunk()).await {
            Err(_) => return Ok((chunks, false)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Ok((chunks, true)),
            Ok(Ok(Some(chunk))) => {
                held.0 += chunk.len() as u64;
                SHARING.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                chunks.push_back(chunk);
            }
        }
    }
}

/// What one answer being read holds of [`SHARE_BUDGET`], given back when the reading ends (the
/// answer is then held by the responses and the cache, which have bounds of their own).
struct Held(u64);

impl Drop for Held {
    fn drop(&mut self) {
        SHARING.fetch_sub(self.0, Ordering::Relaxed);
    }
}
