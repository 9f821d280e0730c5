//! Configuration: the file/env shapes (`File*`, serde, unknown keys refused) and their validation into
//! the typed [`Config`] the rest of the program reads, one file per section (`server.rs`,
//! `upstream.rs`, `profile.rs` with its `oauth.rs`, `token_store.rs`; `[policy]` and `[log]` are
//! small enough to live here). `source.rs` reads the file and the environment as written (with
//! where each value was written), `de.rs` has the `config` crate layer them and read them into the
//! shapes and renders its errors, `files.rs` reads the files the configuration names, `warning.rs`
//! says what is valid but unwise.
//!
//! Precedence, applied in [`Config::load`]: environment (`CMA_AUTH_PROXY_` + path joined by `__`)
//! over the TOML file over the defaults named here. Secret files are read during validation, so a
//! `Config` that exists is complete: nothing later fails because a file went missing in between.
//! This module never logs and never prints a secret; `Debug` of every secret is `[REDACTED]`, and
//! no error or warning quotes configuration text or a secret's value (see `source` and `de`).
mod cache;
mod de;
mod files;
mod oauth;
mod profile;
mod server;
mod source;
mod token_store;
mod upstream;
mod warning;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::Digest;

use crate::policy::{ClientCredentials, Policy, PolicyError, SessionEndpoint};
pub use cache::CacheConfig;
use files::Sources;
pub use files::{CONFIG_FILE_LIMIT, PEM_FILE_LIMIT, SECRET_FILE_LIMIT};
pub use oauth::{BootstrapToken, OAuthCredentials};
pub use profile::{
    Credentials, LoginCredentials, ManagementToken, ProfileConfig, RateLimitConfig, TotpSecret,
};
pub use server::{ConnectionLimits, CpuAffinity, SecretBytes, ServerConfig, TlsFiles};
pub use source::Origin;
pub use token_store::{EncryptionKey, RedisConfig, TokenStoreConfig};
pub use upstream::{Region, UpstreamConfig};
pub use warning::{ConfigWarning, FileRole, Who};

/// Where the file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/cma-auth-proxy.toml";

/// Prefix of the environment variables that override file values.
pub const ENV_PREFIX: &str = "CMA_AUTH_PROXY";

/// Why a configuration was refused. The text names the key, where it was written (a line of the
/// file, or an environment variable) when that is known, and what is wrong; it never quotes the
/// configuration text, a secret's value or a secret file's content.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML; `problem` is the parser's description of what it expected.
    #[error("{at}: not valid TOML: {problem}")]
    Syntax { at: Origin, problem: String },
    #[error("{}: {problem}", key_as_written(.key, .at))]
    Invalid {
        key: String,
        problem: String,
        /// Where `key` was written, when the configuration has it.
        at: Option<Origin>,
    },
    #[error(
        "{}: cannot read secret file {}: {source}{}",
        key_as_written(.key, .at),
        .path.display(),
        how_to_create(.path, .source)
    )]
    SecretFile {
        key: String,
        /// Resolved: relative paths are relative to the configuration file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
        /// Where `key` was written, when the configuration has it.
        at: Option<Origin>,
    },
    #[error("`{key}`: cannot read {path}: {source}")]
    File {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`policy`: {0}")]
    Policy(#[from] PolicyError),
}

/// The key as the operator wrote it: a line of the file, or the environment variable (named first,
/// since that is what they typed).
fn key_as_written(key: &str, at: &Option<Origin>) -> String {
    match at {
        None => format!("`{key}`"),
        Some(Origin::Env { var }) => format!("environment variable {var} (`{key}`)"),
        Some(at) => format!("`{key}` ({at})"),
    }
}

/// A secret file that is not there: what to put where, so that only the proxy can read it.
fn how_to_create(path: &Path, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::NotFound {
        return String::new();
    }
    format!(
        "; create it holding the secret alone, readable by the proxy's user only: \
         `install -m 600 /dev/null {0}`, then write the secret into {0}",
        path.display()
    )
}

impl ConfigError {
    /// Adds where the key of a validation error was written.
    fn located_in(self, origins: &source::Origins) -> Self {
        match self {
            ConfigError::Invalid {
                key,
                problem,
                at: None,
            } => {
                let at = origins.get(&key).cloned();
                ConfigError::Invalid { key, problem, at }
            }
            ConfigError::SecretFile {
                key,
                path,
                source,
                at: None,
            } => {
                let at = origins.get(&key).cloned();
                ConfigError::SecretFile {
                    key,
                    path,
                    source,
                    at,
                }
            }
            other => other,
        }
    }

    fn secret_file(key: impl Into<String>, path: &Path, source: std::io::Error) -> Self {
        ConfigError::SecretFile {
            key: key.into(),
            path: path.to_owned(),
            source,
            at: None,
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        at: None,
    }
}

// The file shapes of the sections below; every field has a default, so an empty file is a valid
// start (but for its profiles).

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: server::FileServer,
    upstream: upstream::FileUpstream,
    profiles: BTreeMap<String, profile::FileProfile>,
    policy: FilePolicy,
    token_store: token_store::FileTokenStore,
    log: FileLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePolicy {
    allow: Vec<String>,
    deny: Vec<String>,
    #[serde(deserialize_with = "de::one_of")]
    client_credentials: ClientCredentials,
    session_endpoint: SessionEndpoint,
}

impl Default for FilePolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            client_credentials: ClientCredentials::Strip,
            session_endpoint: SessionEndpoint::Emulate,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    #[serde(deserialize_with = "de::one_of")]
    format: LogFormat,
    level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// Sorted by name; never empty.
    pub profiles: Vec<Arc<ProfileConfig>>,
    pub policy: Arc<Policy>,
    pub token_store: TokenStoreConfig,
    pub log: LogConfig,
    /// Files whose change means "reload": the config file itself and every secret file.
    pub watched_files: Vec<PathBuf>,
    /// SHA-256 over the configuration text and every file it read: equal digests, equal configs.
    pub digest: [u8; 32],
    pub loaded_at: SystemTime,
    /// 1 at start, +1 for every successful reload.
    pub version: u64,
    /// Not errors, but worth the operator's attention: printed by `check`, logged by `run` at start
    /// and after every reload.
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// The TCP address, for tests and printing URLs.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "a unix listener needs a path, e.g. \"unix:/run/cma/proxy.sock\"".into(),
                );
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not an address; use \"IP:PORT\" (e.g. \"127.0.0.1:8080\") or \"unix:/path\"")
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Config {
    /// Loads `path` (TOML) with overrides from `env` (pairs of name and value; pass
    /// `std::env::vars()` in production, a fixed list in tests).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Absolute, so that every path an error names (this file's, a secret file's resolved
        // against it) can be found from wherever the operator reads it.
        let path = &absolute(path);
        let mut sources = Sources::default();
        let bytes = sources
            .read_config(path)
            .map_err(|source| ConfigError::File {
                key: "--config".into(),
                path: path.to_owned(),
                source,
            })?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("--config", "is not UTF-8"))?;
        Self::parse(&text, Some(path), env, path.parent(), sources)
    }

    /// Parses TOML text with environment overrides. Relative secret paths are resolved against
    /// `base_dir` (the config file's directory) when given.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut sources = Sources::default();
        sources.digest.update(text.as_bytes());
        Self::parse(text, None, env, base_dir, sources)
    }

    fn parse(
        text: &str,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        base_dir: Option<&Path>,
        mut sources: Sources,
    ) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")))
            .collect();
        for (key, value) in &env {
            sources.digest.update(key.as_bytes());
            sources.digest.update(value.as_bytes());
        }
        let mut origins = source::Origins::default();
        let file = source::TomlFile::parse(text, file, &mut origins)?;
        let environment = source::Environment::read(&env, &mut origins)?;
        let (file_config, values): (FileConfig, _) = de::layer(file, environment, &origins)?;
        sources.warnings.extend(inline_secrets(&values, &origins));
        validate(file_config, base_dir, sources).map_err(|e| e.located_in(&origins))
    }

    pub fn profile(&self, name: &str) -> Option<&Arc<ProfileConfig>> {
        self.profiles.iter().find(|p| &*p.name == name)
    }
}

fn validate(
    file: FileConfig,
    base_dir: Option<&Path>,
    mut sources: Sources,
) -> Result<Config, ConfigError> {
    let server = server::validate(file.server, base_dir, &mut sources)?;
    let upstream = upstream::validate(file.upstream, base_dir, &mut sources)?;
    if file.profiles.is_empty() {
        return Err(invalid(
            "profiles",
            "no profile configured; add a [profiles.default] table with `email` and `password_file` \
             (or `management_token_file`)",
        ));
    }
    // Before the profiles: an OAuth profile keeps its refresh token where the store says.
    let token_store = token_store::validate(file.token_store, base_dir, &mut sources)?;
    let oauth_context = oauth::Context {
        upstream: &upstream,
        token_store: &token_store,
    };
    let profiles = file
        .profiles
        .into_iter()
        .map(|(name, p)| {
            profile::validate(name, p, &oauth_context, base_dir, &mut sources).map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut policy = Policy::new(
        &file.policy.allow,
        &file.policy.deny,
        file.policy.client_credentials,
    )?;
    policy.session_endpoint = file.policy.session_endpoint;
    let log = LogConfig {
        format: file.log.format,
        level: file.log.level,
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        return Err(invalid("log.level", e.to_string()));
    }
    let mut warnings = sources.warnings;
    warnings.extend(server::listener_warnings(&server));
    if let TokenStoreConfig::Redis(redis) = &token_store
        && redis.encryption_key.is_none()
    {
        warnings.push(ConfigWarning::PlaintextStore);
    }
    Ok(Config {
        server,
        upstream,
        profiles,
        policy: Arc::new(policy),
        token_store,
        log,
        watched_files: sources.files,
        digest: sources.digest.finalize().into(),
        loaded_at: SystemTime::now(),
        version: 1,
        warnings,
    })
}

/// Secrets written in the file or passed in the environment rather than named by a `*_file` key.
fn inline_secrets(values: &config::Value, origins: &source::Origins) -> Vec<ConfigWarning> {
    let Some(config::ValueKind::Table(profiles)) = de::kind_at("profiles", values) else {
        return Vec::new();
    };
    profiles
        .iter()
        .flat_map(|(name, profile)| {
            de::PROFILE_SECRETS.iter().filter_map(move |secret| {
                let config::ValueKind::Table(keys) = &profile.kind else {
                    return None;
                };
                keys.get(*secret)?;
                let key = format!("profiles.{name}.{secret}");
                let at = origins.get(&key)?.clone();
                Some(ConfigWarning::InlineSecret { key, at })
            })
        })
        .collect()
}

/// A PEM file of CA certificates, checked to hold at least one.
fn read_pem_roots(key: &str, path: &Path, sources: &mut Sources) -> Result<Vec<u8>, ConfigError> {
    let pem = sources.read(path).map_err(|source| ConfigError::File {
        key: key.into(),
        path: path.to_path_buf(),
        source,
    })?;
    let certs =
        crate::tls::certificates(&pem).map_err(|e| invalid(key, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

/// `path` from the root, its directory resolved as the system resolves it (`..`, symlinks) and its
/// file name kept (it may be a Kubernetes `..data` symlink that a reload must see swapped).
fn absolute(path: &Path) -> PathBuf {
    let directory = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(directory), path.file_name()) {
        (Ok(directory), Some(name)) => directory.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

fn resolve(base_dir: Option<&Path>, path: &Path) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
