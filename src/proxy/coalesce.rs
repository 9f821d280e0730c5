//! Read coalescing (docs/design.md#read-coalescing): concurrent identical `GET`s of one profile
//! share one upstream request. [`read_key`] decides what "identical" means; [`Flights`] is the
//! single flight: the first request for a key leads and sends, later ones follow and get the
//! leader's status, headers and body.
//!
//! A leader that fails, or whose client goes away, never fails its followers: its
//! [`Leader`] guard marks the flight abandoned when dropped unfinished, and each follower joins
//! again, the first of them leading. The map is locked only to look up, insert or remove, never
//! across an await; a coalescable `GET` costs one key built, one hash and one map operation.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};
use tokio::sync::watch;

/// Request headers whose values can change Contentstack's answer: two requests are identical only
/// if they carry the same values of each (docs/design.md#read-coalescing says why each is here).
static KEYED: [HeaderName; 13] = [
    HeaderName::from_static("api_key"),
    HeaderName::from_static("branch"),
    HeaderName::from_static("access_token"),
    HeaderName::from_static("organization_uid"),
    HeaderName::from_static("api_version"),
    HeaderName::from_static("locale"),
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// Request headers that do not change the answer: they name or trace the caller, or describe a
/// body a `GET` does not have. Any header in neither list makes a request uncoalescable: an
/// unknown `x-…` header may be one Contentstack reads.
static HARMLESS: [HeaderName; 9] = [
    header::USER_AGENT,
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-forwarded-for"),
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    // Read below for `no-cache`; other values change nothing upstream.
    header::CACHE_CONTROL,
];

/// The identity of a read: profile, the path and query as sent, and the values of the [`KEYED`]
/// headers, length-prefixed so that no two different reads share a key. Compared whole, never by
/// hash alone: a collision must not hand one read another's answer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReadKey(Arc<[u8]>);

impl std::fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values (an `access_token`) never print.
        write!(f, "ReadKey({} bytes)", self.0.len())
    }
}

impl ReadKey {
    pub fn weight(&self) -> usize {
        self.0.len()
    }
}

/// The key of a bodiless `GET`, or `None` when it must go upstream on its own: the client asked
/// for a fresh answer (`cache-control: no-cache`/`no-store`/`max-age=0`, `pragma: no-cache`), or
/// it carries a header that is in neither list (cookies, unknown `x-…` headers).
pub fn read_key(profile: &str, path_and_query: &str, headers: &HeaderMap) -> Option<ReadKey> {
    let mut keyed = 0u16;
    for (name, value) in headers {
        if let Some(i) = KEYED.iter().position(|k| k == name) {
            keyed |= 1 << i;
        } else if name == header::CACHE_CONTROL || name == header::PRAGMA {
            let wants_fresh = value.to_str().map_or(true, |v| {
                let v = v.to_ascii_lowercase();
                v.contains("no-cache") || v.contains("no-store") || v.contains("max-age=0")
            });
            if wants_fresh || name == header::PRAGMA {
                return None;
            }
        } else if !HARMLESS.contains(name) {
            return None;
        }
    }
    let mut key = Vec::with_capacity(profile.len() + path_and_query.len() + 64);
    push(&mut key, profile.as_bytes());
    push(&mut key, path_and_query.as_bytes());
    for (i, name) in KEYED
        .iter()
        .enumerate()
        .filter(|(i, _)| keyed & (1 << i) != 0)
    {
        for value in headers.get_all(name) {
            key.push(i as u8);
            push(&mut key, value.as_bytes());
        }
    }
    Some(ReadKey(key.into()))
}

fn push(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

/// An answer held in memory to be handed to more than one client: by followers of a flight, and
/// by the cache.
pub struct SharedAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the upstream answered, for `age` on a cache hit.
    pub received: Instant,
}

impl SharedAnswer {
    /// What the answer holds in memory, roughly: for the cache's `max_bytes`.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 64
    }
}

/// Where a flight stands, as its followers see it.
#[derive(Clone)]
pub enum FlightState {
    Pending,
    /// The leader's answer, for every follower.
    Done(Arc<SharedAnswer>),
    /// The answer is not shared (too large, or too slow to read): each follower sends its own.
    Unshared,
    /// The leader failed or went away: join again, the first to do so leads.
    Abandoned,
}

struct Flight {
    state: watch::Sender<FlightState>,
    followers: AtomicUsize,
    /// Profile and path, so that a write can detach the reads it may have changed.
    profile: Arc<str>,
    path: Box<str>,
    /// Tells this flight from a later one under the same key (see [`Leader::remove_from`]).
    id: u64,
}

/// The reads in flight, by key, for every profile.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<ReadKey, Arc<Flight>>>,
    next_id: AtomicU64,
}

pub enum Role<'f> {
    Leader(Leader<'f>),
    Follower(watch::Receiver<FlightState>),
}

impl Flights {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ReadKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the flight of `key` if one is in the air, else starts it.
    pub fn join<'f>(&'f self, key: &ReadKey, profile: &Arc<str>, path: &str) -> Role<'f> {
        let mut map = self.map();
        if let Some(flight) = map.get(key)
            && matches!(*flight.state.borrow(), FlightState::Pending)
        {
            flight.followers.fetch_add(1, Ordering::Relaxed);
            return Role::Follower(flight.state.subscribe());
        }
        let flight = Arc::new(Flight {
            state: watch::Sender::new(FlightState::Pending),
            followers: AtomicUsize::new(0),
            profile: profile.clone(),
            path: path.into(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        });
        map.insert(key.clone(), flight.clone());
        Role::Leader(Leader {
            flights: self,
            key: key.clone(),
            flight,
            finished: false,
        })
    }

    /// A write of `profile` happened: reads in flight for which `affected(path)` is true take no
    /// new followers, so a read that starts after the write never gets an answer from before it.
    pub fn detach(&self, profile: &str, affected: impl Fn(&str) -> bool) {
        self.map()
            .retain(|_, f| !(&*f.profile == profile && affected(&f.path)));
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.map().len()
    }
}

/// The leader's hold on its flight. Dropped unfinished (the leader failed, or its client went away
/// and the request future with it), the flight is abandoned and its followers join again.
pub struct Leader<'f> {
    flights: &'f Flights,
    key: ReadKey,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader<'_> {
    pub fn followers(&self) -> usize {
        self.flight.followers.load(Ordering::Relaxed)
    }

    /// Ends the flight: followers get `state`, and later requests start a flight of their own.
    pub fn finish(mut self, state: FlightState) {
        self.end(state);
    }

    /// Ends the flight if nobody follows it yet; the leader then streams its answer as it comes.
    /// Decided under the map's lock, so nobody can join between the look and the removal.
    pub fn finish_if_alone(&mut self) -> bool {
        let mut map = self.flights.map();
        if self.followers() > 0 {
            return false;
        }
        self.remove_from(&mut map);
        drop(map);
        self.finished = true;
        self.flight.state.send_replace(FlightState::Unshared);
        true
    }

    fn end(&mut self, state: FlightState) {
        self.remove_from(&mut self.flights.map());
        self.finished = true;
        self.flight.state.send_replace(state);
    }

    /// Removes this flight from the map, unless a write detached it and another took its key.
    fn remove_from(&self, map: &mut HashMap<ReadKey, Arc<Flight>>) {
        if map.get(&self.key).is_some_and(|f| f.id == self.flight.id) {
            map.remove(&self.key);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(FlightState::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn key(pairs: &[(&str, &str)]) -> Option<ReadKey> {
        read_key("default", "/v3/content_types?limit=1", &headers(pairs))
    }

    #[test]
    fn the_headers_that_change_the_answer_are_in_the_key() {
        let base = key(&[("api_key", "blt1"), ("branch", "main")]).unwrap();
        assert_eq!(
            base,
            key(&[("branch", "main"), ("api_key", "blt1"), ("user-agent", "x")]).unwrap(),
            "order and harmless headers do not matter"
        );
        for other in [
            key(&[("api_key", "blt2"), ("branch", "main")]),
            key(&[("api_key", "blt1"), ("branch", "dev")]),
            key(&[("api_key", "blt1")]),
            key(&[
                ("api_key", "blt1"),
                ("branch", "main"),
                ("accept-encoding", "gzip"),
            ]),
        ] {
            assert_ne!(Some(&base), other.as_ref());
        }
        // Values are length-prefixed: no two splits of the same bytes collide.
        assert_ne!(
            read_key("ab", "/c", &HeaderMap::new()),
            read_key("a", "b/c", &HeaderMap::new())
        );
        assert_ne!(
            read_key(
                "other",
                "/v3/content_types?limit=1",
                &headers(&[("api_key", "blt1")])
            ),
            key(&[("api_key", "blt1")]),
            "never across profiles"
        );
    }

    #[test]
    fn unknown_headers_and_requests_for_a_fresh_answer_are_not_coalesced() {
        for pairs in [
            &[("x-custom", "1")][..],
            &[("cookie", "a=b")],
            &[("cache-control", "no-cache")],
            &[("cache-control", "max-age=0")],
            &[("Cache-Control", "No-Store")],
            &[("pragma", "no-cache")],
        ] {
            assert!(key(pairs).is_none(), "{pairs:?}");
        }
        assert!(key(&[("cache-control", "max-age=60"), ("x-user-agent", "sdk")]).is_some());
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer_and_a_dropped_leader_hands_over() {
        let flights = Flights::default();
        let profile: Arc<str> = "default".into();
        let k = key(&[]).unwrap();
        let Role::Leader(leader) = flights.join(&k, &profile, "/v3/x") else {
            panic!("the first leads")
        };
        let Role::Follower(mut follower) = flights.join(&k, &profile, "/v3/x") else {
            panic!("the second follows")
        };
        assert_eq!(leader.followers(), 1);
        // The leader's client goes away: its future, and the guard, are dropped.
        drop(leader);
        let state = follower
            .wait_for(|s| !matches!(s, FlightState::Pending))
            .await
            .unwrap();
        assert!(matches!(*state, FlightState::Abandoned));
        drop(state);
        // The follower joins again and leads.
        let Role::Leader(mut leader) = flights.join(&k, &profile, "/v3/x") else {
            panic!("the follower takes over")
        };
        assert!(leader.finish_if_alone());
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn a_write_detaches_the_reads_it_may_have_changed() {
        let flights = Flights::default();
        let profile: Arc<str> = "default".into();
        let k = key(&[]).unwrap();
        let Role::Leader(first) = flights.join(&k, &profile, "/v3/content_types/blog") else {
            panic!()
        };
        flights.detach("other", |_| true);
        assert_eq!(
            flights.in_flight(),
            1,
            "another profile's write changes nothing"
        );
        flights.detach("default", |p| p.starts_with("/v3/content_types"));
        // A read after the write starts a flight of its own...
        let Role::Leader(second) = flights.join(&k, &profile, "/v3/content_types/blog") else {
            panic!("a new flight")
        };
        // ...which the first leader's end does not remove.
        first.finish(FlightState::Unshared);
        assert_eq!(flights.in_flight(), 1);
        second.finish(FlightState::Unshared);
        assert_eq!(flights.in_flight(), 0);
    }
}
