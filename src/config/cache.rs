//! `[profiles.NAME.cache]`: the opt-in short cache of a profile's reads (docs/design.md#the-read-cache).
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::policy::PathRules;

/// A cache is short by design: past this, a cached answer is no longer "what Contentstack says
/// now" in any useful sense, and writes made elsewhere (the web app, the CLI) go unseen too long.
const LONGEST_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileCache {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    max_bytes: ByteSize,
    paths: Vec<String>,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            max_bytes: ByteSize::mib(32),
            paths: Vec::new(),
        }
    }
}

/// A profile's read cache: which reads it keeps, for how long, in how much memory.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    /// The most the cached bodies and headers of this profile may weigh in all.
    pub max_bytes: u64,
    /// `"GET /v3/content_types/**"`-style rules: only reads they match are cached.
    pub paths: Arc<PathRules>,
    /// The rules as written: a reload that changes nothing keeps the cache and what it holds.
    written: Vec<String>,
}

impl PartialEq for CacheConfig {
    fn eq(&self, other: &Self) -> bool {
        self.ttl == other.ttl && self.max_bytes == other.max_bytes && self.written == other.written
    }
}

pub(super) fn validate(profile_key: &str, c: FileCache) -> Result<CacheConfig, ConfigError> {
    let key = format!("{profile_key}.cache");
    if c.ttl.is_zero() || c.ttl > LONGEST_TTL {
        return Err(invalid(
            format!("{key}.ttl"),
            "must be above 0s and at most 1h: the cache is a short one",
        ));
    }
    if c.max_bytes.0 == 0 {
        return Err(invalid(format!("{key}.max_bytes"), "must be above 0"));
    }
    if c.paths.is_empty() {
        return Err(invalid(
            format!("{key}.paths"),
            "names no reads to cache; add rules such as \"GET /v3/content_types/**\" (or remove the table)",
        ));
    }
    let paths =
        PathRules::new(&c.paths).map_err(|e| invalid(format!("{key}.paths"), e.to_string()))?;
    if !paths.only_get() {
        return Err(invalid(
            format!("{key}.paths"),
            "only reads are cached: every rule must name GET (or *)",
        ));
    }
    Ok(CacheConfig {
        ttl: c.ttl,
        max_bytes: c.max_bytes.0,
        paths: Arc::new(paths),
        written: c.paths,
    })
}
