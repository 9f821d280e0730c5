//! `[token_store]`: where tokens live. `kind = "memory"` keeps each process's own; `kind = "redis"`
//! shares one session per account across a fleet, sealed with a key every replica holds.
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::files::Sources;
use super::{ConfigError, invalid, read_pem_roots, resolve};

/// The `[token_store]` table: `kind`, and the keys of that kind. The configuration tree hands a
/// table's `kind` first, so the keys are read as that kind's own: a key of another kind is refused
/// where it was written, as an unknown key would be.
#[derive(Debug, Default)]
pub(super) enum FileTokenStore {
    #[default]
    Memory,
    Redis(FileRedisStore),
}

/// The keys of `kind = "redis"`, with their defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRedisStore {
    url: Option<String>,
    key_prefix: String,
    encryption_key_file: Option<PathBuf>,
    allow_plaintext: bool,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(with = "humantime_serde")]
    lock_ttl: Duration,
    ca_file: Option<PathBuf>,
}

impl Default for FileRedisStore {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "cma-auth-proxy:".into(),
            encryption_key_file: None,
            allow_plaintext: false,
            timeout: Duration::from_millis(250),
            lock_ttl: Duration::from_secs(35),
            ca_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Memory,
    Redis,
}

/// The keys of `[token_store]`: `kind`, then those of `kind = "redis"` (memory takes none).
const KEYS: &[&str] = &[
    "kind",
    "url",
    "key_prefix",
    "encryption_key_file",
    "allow_plaintext",
    "timeout",
    "lock_ttl",
    "ca_file",
];

/// A key of the table other than `kind` while the kind is memory: refused, at the key. Never
/// made, so nothing is ever matched on it.
enum NotForMemory {}

impl<'de> Deserialize<'de> for NotForMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <&str>::deserialize(deserializer)?;
        Err(not_for_memory(name))
    }
}

fn not_for_memory<E: de::Error>(name: &str) -> E {
    if KEYS.contains(&name) {
        E::custom("applies only to kind = \"redis\"")
    } else {
        E::unknown_field(name, KEYS)
    }
}

impl<'de> Deserialize<'de> for FileTokenStore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TokenStoreVisitor)
    }
}

struct TokenStoreVisitor;

impl<'de> Visitor<'de> for TokenStoreVisitor {
    type Value = FileTokenStore;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<FileTokenStore, M::Error> {
        // Without `kind` the store is memory, which takes no other key.
        let kind = if map.next_key::<KindKey>()?.is_some() {
            map.next_value::<Kind>()?
        } else {
            Kind::Memory
        };
        match kind {
            Kind::Memory => match map.next_key::<NotForMemory>()? {
                None => Ok(FileTokenStore::Memory),
                Some(never) => match never {},
            },
            Kind::Redis => FileRedisStore::deserialize(de::value::MapAccessDeserializer::new(map))
                .map(FileTokenStore::Redis),
        }
    }
}

/// The `kind` key, the first of the table if it is there at all; any other first key is one that
/// memory (the default kind) does not take.
struct KindKey;

impl<'de> Deserialize<'de> for KindKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <&str>::deserialize(deserializer)?;
        if name == "kind" {
            Ok(KindKey)
        } else {
            Err(not_for_memory(name))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStoreConfig {
    /// Each process keeps its own token.
    Memory,
    /// One session per account shared by a fleet through Redis.
    Redis(RedisConfig),
}

#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS over rustls); may hold a password, so never printed.
    pub url: String,
    pub key_prefix: String,
    /// Every Redis call gives up after this; the proxy then works on its own.
    pub timeout: Duration,
    /// The fleet login lock expires after this, should its holder die mid-login.
    pub lock_ttl: Duration,
    /// 32-byte key sealing what the store holds (XChaCha20-Poly1305) and keying the credentials
    /// tag; `None` only with `allow_plaintext = true`.
    pub encryption_key: Option<EncryptionKey>,
    /// `ca_file`: the roots a `rediss://` server is verified against instead of the public ones.
    pub roots_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[REDACTED]")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("ca_file", &self.roots_pem.is_some())
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(pub [u8; 32]);

/// How to make the fleet's sealing key, for error and warning text.
const MAKE_A_KEY: &str = "generate one with `openssl rand -base64 32 > store-key`, give every replica the same file (e.g. from one Kubernetes Secret) and set encryption_key_file";

pub(super) fn validate(
    store: FileTokenStore,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<TokenStoreConfig, ConfigError> {
    let store = match store {
        FileTokenStore::Memory => return Ok(TokenStoreConfig::Memory),
        FileTokenStore::Redis(store) => store,
    };
    let url = store
        .url
        .filter(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        .ok_or_else(|| {
            invalid(
                "token_store.url",
                "kind = \"redis\" needs url = \"redis://host:6379\" (or rediss:// for TLS)",
            )
        })?;
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|_| invalid("token_store.url", "is not a valid Redis URL"))?;
    if matches!(
        info.addr(),
        redis::ConnectionAddr::TcpTls { insecure: true, .. }
    ) {
        return Err(invalid(
            "token_store.url",
            "`#insecure` (TLS without checking the certificate) is not supported; trust a private CA with token_store.ca_file",
        ));
    }
    let encryption_key = store
        .encryption_key_file
        .map(|path| {
            let path = resolve(base_dir, &path);
            let bytes = sources
                .read_secret(&path)
                .map_err(|source| ConfigError::SecretFile {
                    key: "token_store.encryption_key_file".into(),
                    path: path.clone(),
                    source,
                })?;
            parse_key(&bytes).ok_or_else(|| {
                invalid(
                    "token_store.encryption_key_file",
                    format!("must hold a 32-byte key as 64 hex digits or base64: {MAKE_A_KEY}"),
                )
            })
        })
        .transpose()?;
    // Whoever can write to Redis could otherwise plant the token every replica uses and
    // the failure records that stop them logging in: sealing is the default, and going
    // without takes an explicit, logged opt-out.
    match (&encryption_key, store.allow_plaintext) {
        (None, false) => {
            return Err(invalid(
                "token_store.encryption_key_file",
                format!(
                    "kind = \"redis\" needs a key to seal what the replicas share: {MAKE_A_KEY} (or set allow_plaintext = true to store the token in the clear, so that anyone who can write to Redis can steer the fleet)"
                ),
            ));
        }
        (Some(_), true) => {
            return Err(invalid(
                "token_store.allow_plaintext",
                "contradicts encryption_key_file; remove allow_plaintext",
            ));
        }
        _ => {}
    }
    let roots_pem = match store.ca_file {
        None => None,
        Some(_) if !url.starts_with("rediss://") => {
            return Err(invalid(
                "token_store.ca_file",
                "applies only to a rediss:// (TLS) url",
            ));
        }
        Some(path) => Some(read_pem_roots(
            "token_store.ca_file",
            &resolve(base_dir, &path),
            sources,
        )?),
    };
    let (timeout, lock_ttl) = (store.timeout, store.lock_ttl);
    if timeout.is_zero() || lock_ttl.is_zero() {
        return Err(invalid(
            "token_store",
            "timeout and lock_ttl must be more than 0s",
        ));
    }
    Ok(TokenStoreConfig::Redis(RedisConfig {
        url,
        key_prefix: store.key_prefix,
        timeout,
        lock_ttl,
        encryption_key,
        roots_pem,
    }))
}

/// A 32-byte key written as hex or base64, with or without a trailing newline.
fn parse_key(bytes: &[u8]) -> Option<EncryptionKey> {
    use base64::Engine;
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let raw = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    Some(EncryptionKey(raw.try_into().ok()?))
}
