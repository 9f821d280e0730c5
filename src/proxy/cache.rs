//! The opt-in short cache of a profile's reads (`[profiles.NAME.cache]`,
//! docs/design.md#the-read-cache): `200` answers of the `GET`s its `paths` name, kept for `ttl`
//! within `max_bytes` (a moka cache weighing what each answer holds), and dropped by the writes
//! that may have changed them, made through this replica or, in a fleet, through any.
//!
//! One cache per profile, keyed like coalescing ([`super::coalesce::ReadKey`]): a profile never sees
//! another's answers. Nothing here waits: lookups and inserts are moka's, under no lock of ours.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::{Method, StatusCode, header};

use super::coalesce::{ReadKey, SharedAnswer};
use crate::config::CacheConfig;
use crate::policy::PathRules;

/// A cached answer, with what an invalidation needs to know about it.
struct Cached {
    answer: Arc<SharedAnswer>,
    path: Box<str>,
    /// Asked for what may embed other resources (references, global fields): any write of the
    /// profile drops it.
    wide: bool,
}

pub struct ReadCache {
    entries: moka::sync::Cache<ReadKey, Arc<Cached>>,
    paths: Arc<PathRules>,
    max_entry: u64,
    /// Bumped by every invalidation. A read that started before one does not store its answer:
    /// it may have been read upstream before the write landed.
    epoch: AtomicU64,
    /// In a fleet, whether other replicas' invalidations reach this one. While they may not, the
    /// cache neither serves nor stores (docs/design.md#fleet-mode).
    live: AtomicBool,
    pub config: CacheConfig,
}

/// What a write may have changed (docs/design.md#the-read-cache).
pub enum Invalidation<'p> {
    /// A write under `/v3/content_types`: what lies on its path (the written resource, what is
    /// under it, the collections above it) and every wide read.
    Line(&'p str),
    /// Any other write: everything of the profile.
    All,
}

impl<'p> Invalidation<'p> {
    /// Content types and their entries are the resources whose dependencies the proxy knows: an
    /// entry lives under its content type, and a list under the resource it lists. Other writes
    /// (bulk calls, global fields, releases, environments, assets that entries embed, …) reach
    /// across the tree.
    /// Paths are compared as the upstream may read them (see [`resource`]).
    pub fn of(path: &'p str) -> Invalidation<'p> {
        let resource = resource(path);
        if resource.starts_with("/v3/content_types/") || resource == "/v3/content_types" {
            Invalidation::Line(path)
        } else {
            Invalidation::All
        }
    }

    /// Whether a read of `path` (`wide` as in [`Cached::wide`]) may have changed.
    pub fn affects(&self, path: &str, wide: bool) -> bool {
        match self {
            Invalidation::All => true,
            Invalidation::Line(written) => wide || on_one_line(&resource(path), &resource(written)),
        }
    }
}

/// The resource a server may read a judged path as: in lower case (routers that ignore case),
/// without `;params` (servers that cut them) and without a format suffix on the last segment
/// (`/blog.json` as `/blog`). Two spellings of one resource compare equal, so a write through one
/// drops what was read through the other; spellings of different resources that compare equal only
/// drop a little more than needed.
fn resource(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let mut segment = segment.split(';').next().unwrap_or_default();
        if segments.peek().is_none()
            && let Some(dot) = segment.find('.').filter(|&i| i > 0)
        {
            segment = &segment[..dot];
        }
        out.push('/');
        out.push_str(&segment.to_ascii_lowercase());
    }
    out
}

/// Whether one path lies under the other, segment-wise (or they are the same).
fn on_one_line(a: &str, b: &str) -> bool {
    let under = |child: &str, parent: &str| {
        child
            .strip_prefix(parent)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under(a, b) || under(b, a)
}

/// Whether a read's query asks for other resources to be embedded: reference includes
/// (`include[]`), global field schemas, and any `include…` parameter not known to stay within the
/// resource.
pub fn is_wide(query: Option<&str>) -> bool {
    const LOCAL: [&str; 5] = [
        "include_count",
        "include_content_type",
        "include_branch",
        "include_publish_details",
        "include_workflow",
    ];
    // Parameters split as the upstream may split them (`&` or `;`), names in any case.
    query.is_some_and(|q| {
        q.split(['&', ';'])
            .map(|p| p.split('=').next().unwrap_or_default().to_ascii_lowercase())
            .any(|name| name.starts_with("include") && !LOCAL.contains(&name.as_str()))
    })
}

impl ReadCache {
    pub fn new(config: &CacheConfig) -> ReadCache {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &ReadKey, cached: &Arc<Cached>| {
                let weight = key.weight() + cached.answer.weight() + cached.path.len();
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .time_to_live(config.ttl)
            .support_invalidation_closures()
            .build();
        ReadCache {
            entries,
            paths: config.paths.clone(),
            // An answer that would take more than a quarter of the cache would push out most of
            // what it holds.
            max_entry: config.max_bytes / 4,
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(true),
            config: config.clone(),
        }
    }

    /// Whether reads of `path` are cached at all.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.matches(&Method::GET, path)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &ReadKey) -> Option<Arc<SharedAnswer>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.entries.get(key).map(|c| c.answer.clone())
    }

    /// Keeps `answer` if it is a plain success, small enough, and no invalidation happened since
    /// the read started (`epoch`, read before it was sent). Returns whether it was kept.
    pub fn store(
        &self,
        key: ReadKey,
        path: &str,
        wide: bool,
        answer: &Arc<SharedAnswer>,
        epoch: u64,
    ) -> bool {
        let keep = answer.status == StatusCode::OK
            // An answer that sets a cookie is about one session, not about the content.
            && !answer.headers.contains_key(header::SET_COOKIE)
            // The upstream says the answer is not to be kept, or is for this requester only.
            && !forbids_storing(&answer.headers)
            && (answer.weight() as u64) <= self.max_entry
            && self.live.load(Ordering::Acquire)
            && self.epoch() == epoch;
        if keep {
            let cached = Cached {
                answer: answer.clone(),
                path: path.into(),
                wide,
            };
            self.entries.insert(key.clone(), Arc::new(cached));
            // An invalidation that ran between the check above and the insert did not see the
            // entry (moka's predicates cover only the entries present when they are registered):
            // it bumped the epoch first, so look again.
            if self.epoch() != epoch || !self.live.load(Ordering::Acquire) {
                self.entries.invalidate(&key);
                return false;
            }
        }
        keep
    }

    /// Drops what a write may have changed.
    pub fn invalidate(&self, what: &Invalidation<'_>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match what {
            Invalidation::All => self.entries.invalidate_all(),
            Invalidation::Line(written) => {
                let written: Box<str> = (*written).into();
                let _ = self.entries.invalidate_entries_if(move |_, cached| {
                    Invalidation::Line(&written).affects(&cached.path, cached.wide)
                });
            }
        }
    }

    /// In a fleet: whether other replicas' invalidations reach this one. Losing them empties the
    /// cache, and it stays unused until they reach it again.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.invalidate(&Invalidation::All);
        }
        self.live.store(live, Ordering::Release);
    }
}

/// `cache-control: no-store` or `private` (any case, any of several headers), or `vary: *`: an
/// answer the upstream does not let a shared cache keep (docs/design.md#the-read-cache).
fn forbids_storing(headers: &http::HeaderMap) -> bool {
    let directive = |v: &[u8], name: &[u8]| {
        v.split(|&b| b == b',').any(|d| {
            let d = d.trim_ascii();
            let d = d
                .split(|&b| b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            d.eq_ignore_ascii_case(name)
        })
    };
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|v| directive(v.as_bytes(), b"no-store") || directive(v.as_bytes(), b"private"))
        || headers.get_all(header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|d| d.trim_ascii() == b"*")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_invalidates_its_line_and_wide_reads() {
        let put_ct = Invalidation::of("/v3/content_types/blog");
        for (read, changed) in [
            ("/v3/content_types/blog", true),
            ("/v3/content_types/blog/entries", true),
            ("/v3/content_types/blog/entries/e1", true),
            ("/v3/content_types", true),
            ("/v3/content_types/blogs", false),
            ("/v3/content_types/news/entries", false),
        ] {
            assert_eq!(put_ct.affects(read, false), changed, "{read}");
        }
        let put_entry = Invalidation::of("/v3/content_types/news/entries/e1");
        assert!(put_entry.affects("/v3/content_types/news/entries", false));
        assert!(put_entry.affects("/v3/content_types/news/entries/e1/locales", false));
        assert!(!put_entry.affects("/v3/content_types/news/entries/e2", false));
        assert!(
            put_entry.affects("/v3/content_types/blog/entries/e9", true),
            "wide"
        );
        for path in ["/v3/bulk/publish", "/v3/global_fields/seo", "/v3/assets/a1"] {
            assert!(
                Invalidation::of(path).affects("/v3/content_types/blog", false),
                "{path} reaches across"
            );
        }
    }

    #[test]
    fn reads_that_embed_other_resources_are_wide() {
        assert!(!is_wide(None));
        assert!(!is_wide(Some("include_count=true&limit=5")));
        assert!(!is_wide(Some("include_content_type=true")));
        assert!(is_wide(Some("include[]=author")));
        assert!(is_wide(Some("locale=en&include_global_field_schema=true")));
        assert!(is_wide(Some("include_reference=true")));
    }

    #[test]
    fn answers_the_upstream_marks_private_or_unstorable_are_not_kept() {
        let with = |name: &'static str, value: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(name, http::HeaderValue::from_static(value));
            h
        };
        assert!(forbids_storing(&with("cache-control", "No-Store")));
        assert!(forbids_storing(&with(
            "cache-control",
            "max-age=60, private"
        )));
        assert!(forbids_storing(&with(
            "cache-control",
            "private=\"set-cookie\""
        )));
        assert!(forbids_storing(&with("vary", "accept, *")));
        assert!(!forbids_storing(&with(
            "cache-control",
            "max-age=60, no-cache"
        )));
        assert!(!forbids_storing(&with("vary", "accept-encoding")));
        assert!(!forbids_storing(&http::HeaderMap::new()));
    }

    #[test]
    fn a_write_drops_what_was_read_under_another_spelling_of_its_resource() {
        let line = Invalidation::of("/v3/content_types/blog");
        for read in [
            "/v3/content_types/blog.json",
            "/v3/Content_Types/BLOG",
            "/v3/content_types/blog;v=1/entries/e1",
            "/v3/content_types",
        ] {
            assert!(line.affects(read, false), "{read}");
        }
        assert!(!line.affects("/v3/content_types/page", false));
        assert!(
            Invalidation::of("/v3/content_types/blog.json")
                .affects("/v3/content_types/blog", false)
        );
        assert!(matches!(
            Invalidation::of("/v3/Content_Types/blog"),
            Invalidation::Line(_)
        ));
        assert!(is_wide(Some("a=1;include[]=ref")));
        assert!(is_wide(Some("INCLUDE[]=ref")));
    }
}
