//! `[token_store]`: where tokens live. `kind = "memory"` keeps each process's own (and may take a key
//! sealing what OAuth profiles keep on disk); `kind = "redis"` shares one session per account
//! across a fleet, sealed with a key every replica holds.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::files::Sources;
use super::{ConfigError, invalid, read_pem_roots, resolve};

/// The `[token_store]` table as written: `kind`, and the keys of `kind = "redis"` (memory takes
/// only `encryption_key_file`), each `None` when not written, so that a key of the other kind is
/// refused where it was written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileTokenStore {
    #[serde(deserialize_with = "super::de::one_of")]
    kind: Kind,
    url: Option<String>,
    key_prefix: Option<String>,
    encryption_key_file: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    lock_ttl: Option<Duration>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Memory,
    Redis,
}

impl FileTokenStore {
    /// The keys written that only `kind = "redis"` takes, by name.
    fn redis_keys(&self) -> impl Iterator<Item = &'static str> {
        [
            ("url", self.url.is_some()),
            ("key_prefix", self.key_prefix.is_some()),
            ("allow_plaintext", self.allow_plaintext.is_some()),
            ("timeout", self.timeout.is_some()),
            ("lock_ttl", self.lock_ttl.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, written)| written.then_some(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStoreConfig {
    /// Each process keeps its own token; `encryption_key` seals what OAuth profiles keep in their
    /// `state_dir`.
    Memory {
        encryption_key: Option<EncryptionKey>,
    },
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

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// How to make the fleet's sealing key, for error and warning text.
const MAKE_A_KEY: &str = "generate one with `openssl rand -base64 32 > store-key`, give every replica the same file (e.g. from one Kubernetes Secret) and set encryption_key_file";

pub(super) fn validate(
    store: FileTokenStore,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<TokenStoreConfig, ConfigError> {
    let encryption_key = store
        .encryption_key_file
        .as_deref()
        .map(|path| read_key(path, base_dir, sources))
        .transpose()?;
    if let Kind::Memory = store.kind {
        return match store.redis_keys().next() {
            None => Ok(TokenStoreConfig::Memory { encryption_key }),
            Some(name) => Err(invalid(
                format!("token_store.{name}"),
                "applies only to kind = \"redis\"",
            )),
        };
    }
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
    // Whoever can write to Redis could otherwise plant the token every replica uses and
    // the failure records that stop them logging in: sealing is the default, and going
    // without takes an explicit, logged opt-out.
    match (&encryption_key, store.allow_plaintext.unwrap_or(false)) {
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
    let timeout = store.timeout.unwrap_or(Duration::from_millis(250));
    let lock_ttl = store.lock_ttl.unwrap_or(Duration::from_secs(35));
    if timeout.is_zero() || lock_ttl.is_zero() {
        return Err(invalid(
            "token_store",
            "timeout and lock_ttl must be more than 0s",
        ));
    }
    Ok(TokenStoreConfig::Redis(RedisConfig {
        url,
        key_prefix: store
            .key_prefix
            .unwrap_or_else(|| "cma-auth-proxy:".to_owned()),
        timeout,
        lock_ttl,
        encryption_key,
        roots_pem,
    }))
}

/// The sealing key `encryption_key_file` names.
fn read_key(
    path: &Path,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<EncryptionKey, ConfigError> {
    let path = resolve(base_dir, path);
    let bytes = sources.read_secret(&path).map_err(|source| {
        ConfigError::secret_file("token_store.encryption_key_file", &path, source)
    })?;
    parse_key(&bytes).ok_or_else(|| {
        invalid(
            "token_store.encryption_key_file",
            format!("must hold a 32-byte key as 64 hex digits or base64: {MAKE_A_KEY}"),
        )
    })
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
