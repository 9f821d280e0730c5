//! Configuration: the file/env shapes (`File*`, serde, unknown keys refused) and their validation into
//! the typed [`Config`] the rest of the program reads.
//!
//! Precedence, applied in [`Config::load`]: environment (`CMA_AUTH_PROXY_` + path joined by `__`)
//! over the TOML file over the defaults named here. Secret files are read during validation, so a
//! `Config` that exists is complete: nothing later fails because a file went missing in between.
//! This module never logs and never prints a secret; `Debug` of every secret is `[REDACTED]`, and
//! no error or warning quotes configuration text or a secret's value (see `source` and `de`).
mod de;
mod files;
mod source;
mod warning;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Digest;

use crate::body::BodyPace;
use crate::policy::{Policy, PolicyError};
use files::Sources;
pub use files::{CONFIG_FILE_LIMIT, PEM_FILE_LIMIT, SECRET_FILE_LIMIT};
pub use source::Origin;
pub use warning::{ConfigWarning, FileRole, Who};

/// Where the file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/cma-auth-proxy.toml";
/// Prefix of the environment variables that override file values.
pub const ENV_PREFIX: &str = "CMA_AUTH_PROXY";

/// Contentstack's CMA hosts by region (SPEC §1).
pub const REGIONS: &[(&str, &str)] = &[
    ("na", "https://api.contentstack.io"),
    ("eu", "https://eu-api.contentstack.com"),
    ("au", "https://au-api.contentstack.com"),
    ("azure-na", "https://azure-na-api.contentstack.com"),
    ("azure-eu", "https://azure-eu-api.contentstack.com"),
    ("gcp-na", "https://gcp-na-api.contentstack.com"),
    ("gcp-eu", "https://gcp-eu-api.contentstack.com"),
];

/// Why a configuration was refused. The text names the key, where it was written (a line of the
/// file, or an environment variable) when that is known, and what is wrong; it never quotes the
/// configuration text, a secret's value or a secret file's content.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML; `problem` is the parser's description of what it expected.
    #[error("{at}: not valid TOML: {problem}")]
    Syntax { at: Origin, problem: String },
    #[error("`{key}`{}: {problem}", in_parentheses(.at))]
    Invalid {
        key: String,
        problem: String,
        /// Where `key` was written, when the configuration has it.
        at: Option<Origin>,
    },
    #[error("`{key}`: cannot read secret file {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

fn in_parentheses(at: &Option<Origin>) -> String {
    at.as_ref().map(|at| format!(" ({at})")).unwrap_or_default()
}

impl ConfigError {
    /// Adds where the key of a validation error was written, found in the configuration tree.
    fn located_in(self, tree: &source::Node) -> Self {
        match self {
            ConfigError::Invalid {
                key,
                problem,
                at: None,
            } => {
                let at = tree.get(&key).map(|node| node.origin.clone());
                ConfigError::Invalid { key, problem, at }
            }
            other => other,
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

// ---------------------------------------------------------------------------------------------
// File shapes. Every field has a default so that an empty file is a valid start.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: FileServer,
    upstream: FileUpstream,
    profiles: BTreeMap<String, FileProfile>,
    policy: FilePolicy,
    token_store: FileTokenStore,
    log: FileLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileServer {
    listen: String,
    admin_listen: String,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    max_body: String,
    replay_body_limit: String,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    body_idle_timeout: Duration,
    body_min_rate: String,
    max_connections: usize,
    max_header_bytes: String,
    max_headers: usize,
    listen_mode: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    workers: usize,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9901".into(),
            shutdown_grace: Duration::from_secs(25),
            request_timeout: Duration::from_secs(120),
            max_body: "1GiB".into(),
            replay_body_limit: "1MiB".into(),
            header_read_timeout: ConnectionLimits::default().header_read_timeout,
            idle_timeout: ConnectionLimits::default().idle_timeout,
            body_idle_timeout: BodyPace::default().idle_timeout,
            body_min_rate: BodyPace::default().min_rate.to_string(),
            max_connections: ConnectionLimits::default().max_connections,
            max_header_bytes: "64KiB".into(),
            max_headers: ConnectionLimits::default().max_headers,
            listen_mode: None,
            tls_cert_file: None,
            tls_key_file: None,
            workers: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileUpstream {
    region: String,
    url: String,
    ca_file: String,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
}

impl Default for FileUpstream {
    fn default() -> Self {
        Self {
            region: "na".into(),
            url: String::new(),
            ca_file: String::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileProfile {
    email: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    totp_secret: Option<String>,
    totp_secret_file: Option<PathBuf>,
    management_token: Option<String>,
    management_token_file: Option<PathBuf>,
    stacks: Vec<String>,
    #[serde(with = "humantime_serde")]
    validate_interval: Duration,
    #[serde(with = "humantime_serde")]
    max_token_age: Duration,
    #[serde(with = "humantime_serde")]
    min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    rejected_retry: Duration,
    logout_on_shutdown: bool,
    rate_limit: Option<FileRateLimit>,
}

impl Default for FileProfile {
    fn default() -> Self {
        Self {
            email: None,
            password: None,
            password_file: None,
            totp_secret: None,
            totp_secret_file: None,
            management_token: None,
            management_token_file: None,
            stacks: Vec::new(),
            validate_interval: Duration::from_secs(5 * 60),
            max_token_age: Duration::ZERO,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            rejected_retry: Duration::from_secs(5 * 60),
            logout_on_shutdown: true,
            rate_limit: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
struct FileRateLimit {
    reads_per_second: f64,
    writes_per_second: f64,
    burst: u32,
    #[serde(with = "humantime_serde")]
    max_wait: Duration,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        // Contentstack's documented budget: 10 reads/s and 10 writes/s per organization.
        Self {
            reads_per_second: 10.0,
            writes_per_second: 10.0,
            burst: 10,
            max_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePolicy {
    allow: Vec<String>,
    deny: Vec<String>,
    client_credentials: String,
}

impl Default for FilePolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            client_credentials: "strip".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTokenStore {
    kind: String,
    url: Option<String>,
    key_prefix: Option<String>,
    encryption_key_file: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    lock_ttl: Option<Duration>,
    ca_file: Option<PathBuf>,
}

impl Default for FileTokenStore {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            url: None,
            key_prefix: None,
            encryption_key_file: None,
            allow_plaintext: None,
            timeout: None,
            lock_ttl: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    format: String,
    level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------------------------

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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    pub admin_listen: ListenAddr,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub max_body: u64,
    pub replay_body_limit: u64,
    pub limits: ConnectionLimits,
    /// How steadily a client must deliver a request body.
    pub body_pace: BodyPace,
    /// File mode of a unix-socket `listen`, e.g. 0o660.
    pub listen_mode: Option<u32>,
    /// Inbound TLS on `listen`: certificate chain and key, PEM, already read.
    pub tls: Option<TlsFiles>,
    /// Threads serving `listen`, each with its own runtime and upstream pool.
    pub workers: usize,
}

/// Per-connection limits of both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From accepting a connection to its first request, and for each later HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Clone)]
pub struct TlsFiles {
    pub cert_chain_pem: Arc<Vec<u8>>,
    pub key_pem: Arc<SecretBytes>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { cert_chain_pem, key_pem: [REDACTED] }")
    }
}

/// Bytes that never print.
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`, no trailing slash; the login client joins paths onto it.
    pub base_url: String,
    /// PEM file of extra roots, already read so a bad file is a config error.
    pub extra_roots_pem: Option<Arc<Vec<u8>>>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// Logs in as a user: `POST /v3/user-session`.
    Login(Arc<LoginCredentials>),
    /// Injected as `authorization: <token>`; never logs in.
    ManagementToken(ManagementToken),
}

/// What a login sends. `Debug` shows only the e-mail; two are equal when every field is, secrets
/// compared by value (a reload that changes none of them keeps the session).
#[derive(Clone)]
pub struct LoginCredentials {
    pub email: String,
    pub password: SecretString,
    pub totp_secret: Option<TotpSecret>,
}

impl std::fmt::Debug for LoginCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCredentials")
            .field("email", &self.email)
            .field("password", &"[REDACTED]")
            .field("totp", &self.totp_secret.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl PartialEq for LoginCredentials {
    fn eq(&self, other: &Self) -> bool {
        self.email == other.email
            && self.password.expose_secret() == other.password.expose_secret()
            && self.totp_secret.as_ref().map(TotpSecret::bytes)
                == other.totp_secret.as_ref().map(TotpSecret::bytes)
    }
}

/// A management token, as the `authorization` header value (marked sensitive). `Debug` never
/// shows it.
#[derive(Clone, PartialEq)]
pub struct ManagementToken(pub HeaderValue);

impl std::fmt::Debug for ManagementToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A decoded base32 TOTP secret. `Debug` never shows it.
#[derive(Clone)]
pub struct TotpSecret(Arc<[u8]>);

impl TotpSecret {
    /// Accepts the forms authenticator apps show: any case, spaces, optional `=` padding.
    pub fn from_base32(text: &str) -> Option<Self> {
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if cleaned.is_empty() {
            return None;
        }
        let secret = totp_rs::Secret::try_from_base32(&cleaned).ok()?;
        Some(Self(secret.as_bytes().into()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    pub name: Arc<str>,
    pub credentials: Credentials,
    pub stacks: Vec<String>,
    /// `None` = off.
    pub validate_interval: Option<Duration>,
    /// `None` = keep until rejected.
    pub max_token_age: Option<Duration>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub rejected_retry: Duration,
    pub logout_on_shutdown: bool,
    /// Local shaping of the organization's request budget; `None` = off.
    pub rate_limit: Option<RateLimitConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub reads_per_second: f64,
    pub writes_per_second: f64,
    pub burst: u32,
    pub max_wait: Duration,
}

impl ProfileConfig {
    pub fn is_login(&self) -> bool {
        self.login().is_some()
    }

    /// The credentials of a login profile; `None` for a management-token profile.
    pub fn login(&self) -> Option<&Arc<LoginCredentials>> {
        match &self.credentials {
            Credentials::Login(login) => Some(login),
            Credentials::ManagementToken(_) => None,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

// ---------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Loads `path` (TOML) with overrides from `env` (pairs of name and value; pass
    /// `std::env::vars()` in production, a fixed list in tests).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
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
        let tree = source::load(text, file, &env)?;
        let file_config: FileConfig = de::from_node(&tree)?;
        sources.warnings.extend(inline_secrets(&tree));
        validate(file_config, base_dir, sources).map_err(|e| e.located_in(&tree))
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
    let server = validate_server(file.server, base_dir, &mut sources)?;
    let upstream = validate_upstream(file.upstream, base_dir, &mut sources)?;
    if file.profiles.is_empty() {
        return Err(invalid(
            "profiles",
            "no profile configured; add a [profiles.default] table with `email` and `password_file` \
             (or `management_token_file`)",
        ));
    }
    let profiles = file
        .profiles
        .into_iter()
        .map(|(name, p)| validate_profile(name, p, base_dir, &mut sources).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let client_credentials = match file.policy.client_credentials.as_str() {
        "strip" => crate::policy::ClientCredentials::Strip,
        "reject" => crate::policy::ClientCredentials::Reject,
        other => {
            return Err(invalid(
                "policy.client_credentials",
                format!("{other:?} is not one of \"strip\", \"reject\""),
            ));
        }
    };
    let policy = Policy::new(&file.policy.allow, &file.policy.deny, client_credentials)?;
    let token_store = validate_token_store(file.token_store, base_dir, &mut sources)?;
    let log = LogConfig {
        format: match file.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                ));
            }
        },
        level: file.log.level,
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        return Err(invalid("log.level", e.to_string()));
    }
    let mut warnings = sources.warnings;
    warnings.extend(listener_warnings(&server));
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
fn inline_secrets(tree: &source::Node) -> Vec<ConfigWarning> {
    let Some(source::Value::Table(profiles)) = tree.get("profiles").map(|node| &node.value) else {
        return Vec::new();
    };
    profiles
        .iter()
        .flat_map(|(name, profile)| {
            de::PROFILE_SECRETS.iter().filter_map(move |secret| {
                let node = profile.get(secret)?;
                Some(ConfigWarning::InlineSecret {
                    key: format!("profiles.{name}.{secret}"),
                    at: node.origin.clone(),
                })
            })
        })
        .collect()
}

fn listener_warnings(server: &ServerConfig) -> Option<ConfigWarning> {
    match server.listen {
        ListenAddr::Tcp(listen) if !listen.ip().is_loopback() && server.tls.is_none() => {
            Some(ConfigWarning::ListenWithoutTls { listen })
        }
        _ => None,
    }
}

fn validate_token_store(
    store: FileTokenStore,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<TokenStoreConfig, ConfigError> {
    match store.kind.as_str() {
        "memory" => {
            if store.url.is_some()
                || store.key_prefix.is_some()
                || store.encryption_key_file.is_some()
                || store.allow_plaintext.is_some()
                || store.timeout.is_some()
                || store.lock_ttl.is_some()
                || store.ca_file.is_some()
            {
                return Err(invalid(
                    "token_store",
                    "`url`, `key_prefix`, `encryption_key_file`, `allow_plaintext`, `timeout`, `lock_ttl` and `ca_file` apply only to kind = \"redis\"",
                ));
            }
            Ok(TokenStoreConfig::Memory)
        }
        "redis" => {
            let url = store
                .url
                .filter(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
                .ok_or_else(|| {
                    invalid(
                        "token_store.url",
                        "kind = \"redis\" needs url = \"redis://host:6379\" (or rediss:// for TLS)",
                    )
                })?;
            redis::Client::open(url.as_str())
                .map_err(|_| invalid("token_store.url", "is not a valid Redis URL"))?;
            let encryption_key = store
                .encryption_key_file
                .map(|path| {
                    let path = resolve(base_dir, &path);
                    let bytes =
                        sources
                            .read_secret(&path)
                            .map_err(|source| ConfigError::SecretFile {
                                key: "token_store.encryption_key_file".into(),
                                path: path.clone(),
                                source,
                            })?;
                    parse_key(&bytes).ok_or_else(|| {
                        invalid(
                            "token_store.encryption_key_file",
                            format!(
                                "must hold a 32-byte key as 64 hex digits or base64: {MAKE_A_KEY}"
                            ),
                        )
                    })
                })
                .transpose()?;
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
                key_prefix: store.key_prefix.unwrap_or_else(|| "cma-auth-proxy:".into()),
                timeout,
                lock_ttl,
                encryption_key,
                roots_pem,
            }))
        }
        other => Err(invalid(
            "token_store.kind",
            format!("{other:?} is not one of \"memory\", \"redis\""),
        )),
    }
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

fn validate_server(
    s: FileServer,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<ServerConfig, ConfigError> {
    let listen = s.listen.parse().map_err(|e| invalid("server.listen", e))?;
    let admin_listen = s
        .admin_listen
        .parse()
        .map_err(|e| invalid("server.admin_listen", e))?;
    // Port 0 (any free port) on both is fine: they get different ports.
    let any_port = matches!(&listen, ListenAddr::Tcp(a) if a.port() == 0);
    if listen == admin_listen && !any_port {
        return Err(invalid(
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }
    if s.request_timeout.is_zero() {
        return Err(invalid("server.request_timeout", "must be more than 0s"));
    }
    let max_body = parse_size("server.max_body", &s.max_body)?;
    let replay_body_limit = parse_size("server.replay_body_limit", &s.replay_body_limit)?;
    if replay_body_limit > max_body {
        return Err(invalid(
            "server.replay_body_limit",
            "must not exceed server.max_body",
        ));
    }
    let max_header_bytes = parse_size("server.max_header_bytes", &s.max_header_bytes)?;
    let body_min_rate = parse_size("server.body_min_rate", &s.body_min_rate)?;
    // hyper's smallest read buffer; a request head never needs less.
    if max_header_bytes < 8192 {
        return Err(invalid("server.max_header_bytes", "must be at least 8KiB"));
    }
    for (key, value) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.body_idle_timeout", s.body_idle_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be more than 0s"));
        }
    }
    if s.max_connections == 0 || s.max_headers == 0 {
        return Err(invalid(
            "server.max_connections / server.max_headers",
            "must be at least 1",
        ));
    }
    let listen_mode = s
        .listen_mode
        .map(|mode| {
            if !matches!(listen, ListenAddr::Unix(_)) {
                return Err(invalid(
                    "server.listen_mode",
                    "applies only to a unix-socket listen (\"unix:/path\")",
                ));
            }
            u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "server.listen_mode",
                        format!("{mode:?} is not an octal file mode like \"0660\""),
                    )
                })
        })
        .transpose()?;
    let tls = match (s.tls_cert_file, s.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(read_tls_files(&cert, &key, base_dir, sources)?),
        _ => {
            return Err(invalid(
                "server.tls_cert_file",
                "inbound TLS needs both tls_cert_file and tls_key_file",
            ));
        }
    };
    if tls.is_some() && matches!(listen, ListenAddr::Unix(_)) {
        return Err(invalid(
            "server.tls_cert_file",
            "TLS is for TCP listeners; a unix socket is protected by its file mode",
        ));
    }
    Ok(ServerConfig {
        listen,
        admin_listen,
        shutdown_grace: s.shutdown_grace,
        request_timeout: s.request_timeout,
        max_body,
        replay_body_limit,
        limits: ConnectionLimits {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
            max_header_bytes: max_header_bytes as usize,
            max_headers: s.max_headers,
        },
        body_pace: BodyPace {
            idle_timeout: s.body_idle_timeout,
            min_rate: body_min_rate,
        },
        listen_mode,
        tls,
        // One per core by default: a request never leaves the thread that accepted it.
        workers: match s.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
    })
}

fn read_tls_files(
    cert: &Path,
    key: &Path,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<TlsFiles, ConfigError> {
    let cert = resolve(base_dir, cert);
    let cert_chain_pem = sources.read(&cert).map_err(|source| ConfigError::File {
        key: "server.tls_cert_file".into(),
        path: cert,
        source,
    })?;
    let key = resolve(base_dir, key);
    let key_pem = sources
        .read_secret(&key)
        .map_err(|source| ConfigError::SecretFile {
            key: "server.tls_key_file".into(),
            path: key,
            source,
        })?;
    // The PEM reader's errors may quote a line of the file: say only that the key is unusable.
    if !crate::tls::has_private_key(&key_pem) {
        return Err(invalid(
            "server.tls_key_file",
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        ));
    }
    // Parse now, so a bad file is a configuration error and not a failed handshake later.
    crate::tls::server_config(&cert_chain_pem, &key_pem)
        .map_err(|e| invalid("server.tls_cert_file", e.to_string()))?;
    Ok(TlsFiles {
        cert_chain_pem: Arc::new(cert_chain_pem),
        key_pem: Arc::new(SecretBytes(key_pem)),
    })
}

fn parse_size(key: &str, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| invalid(key, format!("{text:?} is not a size like \"1MiB\": {e}")))
}

fn validate_upstream(
    u: FileUpstream,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<UpstreamConfig, ConfigError> {
    let (key, url) = if u.url.is_empty() {
        let url = REGIONS
            .iter()
            .find(|(name, _)| *name == u.region)
            .map(|(_, url)| *url)
            .ok_or_else(|| {
                let names: Vec<_> = REGIONS.iter().map(|(n, _)| *n).collect();
                invalid(
                    "upstream.region",
                    format!("{:?} is not one of {}", u.region, names.join(", ")),
                )
            })?;
        ("upstream.region", url.to_owned())
    } else {
        ("upstream.url", u.url.trim_end_matches('/').to_owned())
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .filter(|s| matches!(s.as_str(), "http" | "https"))
        .cloned()
        .ok_or_else(|| invalid(key, "must start with https:// (or http:// for tests)"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key, "must name a host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            key,
            "must be only scheme and host, e.g. \"https://eu-api.contentstack.com\" (the /v3 path comes from the client)",
        ));
    }
    let extra_roots_pem = if u.ca_file.is_empty() {
        None
    } else {
        let path = resolve(base_dir, Path::new(&u.ca_file));
        Some(Arc::new(read_pem_roots(
            "upstream.ca_file",
            &path,
            sources,
        )?))
    };
    if u.connect_timeout.is_zero() {
        return Err(invalid("upstream.connect_timeout", "must be more than 0s"));
    }
    Ok(UpstreamConfig {
        base_url: format!("{scheme}://{authority}"),
        scheme,
        authority,
        extra_roots_pem,
        connect_timeout: u.connect_timeout,
    })
}

fn resolve(base_dir: Option<&Path>, path: &Path) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// Reads a secret given inline or as a file (the file wins nothing: both at once is an error).
fn read_secret(
    key_prefix: &str,
    name: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{key_prefix}.{name}"),
            format!("set either `{name}` or `{name}_file`, not both"),
        )),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let path = resolve(base_dir, &path);
            let bytes = sources
                .read_secret(&path)
                .map_err(|source| ConfigError::SecretFile {
                    key: format!("{key_prefix}.{name}_file"),
                    path: path.clone(),
                    source,
                })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid(format!("{key_prefix}.{name}_file"), "is not UTF-8"))?;
            // Secret volumes and `echo` leave a trailing newline; it is never part of the secret.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            Ok(Some(SecretString::from(value.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

fn validate_profile(
    name: String,
    p: FileProfile,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<ProfileConfig, ConfigError> {
    let key = format!("profiles.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            &key,
            "a profile name may hold only letters, digits, '-' and '_'",
        ));
    }
    let password = read_secret(
        &key,
        "password",
        p.password,
        p.password_file,
        base_dir,
        sources,
    )?;
    let totp = read_secret(
        &key,
        "totp_secret",
        p.totp_secret,
        p.totp_secret_file,
        base_dir,
        sources,
    )?;
    let management = read_secret(
        &key,
        "management_token",
        p.management_token,
        p.management_token_file,
        base_dir,
        sources,
    )?;
    let credentials = match (management, password) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &key,
                "has both a password and a management token; a profile logs in or uses a management token, not both",
            ));
        }
        (Some(token), None) => {
            if p.email.is_some() || totp.is_some() {
                return Err(invalid(
                    &key,
                    "a management-token profile takes no `email` or `totp_secret`",
                ));
            }
            let mut value = HeaderValue::from_str(token.expose_secret().trim()).map_err(|_| {
                invalid(
                    format!("{key}.management_token"),
                    "contains characters not allowed in a header",
                )
            })?;
            if value.is_empty() {
                return Err(invalid(format!("{key}.management_token"), "is empty"));
            }
            value.set_sensitive(true);
            Credentials::ManagementToken(ManagementToken(value))
        }
        (None, Some(password)) => {
            let email = p
                .email
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| invalid(format!("{key}.email"), "is required to log in"))?;
            if password.expose_secret().is_empty() {
                return Err(invalid(format!("{key}.password"), "is empty"));
            }
            let totp_secret = totp
                .map(|t| {
                    TotpSecret::from_base32(t.expose_secret()).ok_or_else(|| {
                        invalid(
                            format!("{key}.totp_secret"),
                            "is not a base32 secret (letters A-Z and digits 2-7)",
                        )
                    })
                })
                .transpose()?;
            Credentials::Login(Arc::new(LoginCredentials {
                email,
                password,
                totp_secret,
            }))
        }
        (None, None) => {
            return Err(invalid(
                &key,
                "has neither `password_file` (with `email`) nor `management_token_file`",
            ));
        }
    };
    if p.min_backoff.is_zero() {
        return Err(invalid(
            format!("{key}.min_backoff"),
            "must be more than 0s",
        ));
    }
    if p.max_backoff < p.min_backoff {
        return Err(invalid(
            format!("{key}.max_backoff"),
            "must not be less than min_backoff",
        ));
    }
    if p.rejected_retry < Duration::from_secs(1) {
        return Err(invalid(
            format!("{key}.rejected_retry"),
            "must be at least 1s: retrying refused credentials quickly locks the account",
        ));
    }
    let rate_limit = p
        .rate_limit
        .map(|r| {
            let key = format!("{key}.rate_limit");
            if !(r.reads_per_second > 0.0 && r.writes_per_second > 0.0) {
                return Err(invalid(
                    key,
                    "reads_per_second and writes_per_second must be above 0",
                ));
            }
            if r.burst == 0 {
                return Err(invalid(key, "burst must be at least 1"));
            }
            Ok(RateLimitConfig {
                reads_per_second: r.reads_per_second,
                writes_per_second: r.writes_per_second,
                burst: r.burst,
                max_wait: r.max_wait,
            })
        })
        .transpose()?;
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    Ok(ProfileConfig {
        name: name.into(),
        credentials,
        stacks: p.stacks,
        validate_interval: nonzero(p.validate_interval),
        max_token_age: nonzero(p.max_token_age),
        min_backoff: p.min_backoff,
        max_backoff: p.max_backoff,
        rejected_retry: p.rejected_retry,
        logout_on_shutdown: p.logout_on_shutdown,
        rate_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    const MINIMAL: &str = r#"
        [profiles.default]
        email = "svc@example.com"
        password = "pw"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL, no_env(), None).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.admin_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.server.max_body, 1 << 30);
        assert_eq!(c.server.replay_body_limit, 1 << 20);
        assert_eq!(c.upstream.base_url, "https://api.contentstack.io");
        let p = &c.profiles[0];
        assert_eq!(&*p.name, "default");
        assert_eq!(p.validate_interval, Some(Duration::from_secs(300)));
        assert_eq!(p.max_token_age, None);
        assert_eq!(p.rejected_retry, Duration::from_secs(300));
    }

    #[test]
    fn env_overrides_file_values() {
        let env = vec![
            (
                "CMA_AUTH_PROXY_UPSTREAM__URL".to_owned(),
                "http://127.0.0.1:1234".to_owned(),
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT__EMAIL".to_owned(),
                "other@example.com".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml(MINIMAL, env, None).unwrap();
        assert_eq!(c.upstream.base_url, "http://127.0.0.1:1234");
        match &c.profiles[0].credentials {
            Credentials::Login(login) => assert_eq!(login.email, "other@example.com"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn region_selects_host() {
        let c = Config::from_toml(
            &format!("[upstream]\nregion = \"eu\"\n{MINIMAL}"),
            no_env(),
            None,
        )
        .unwrap();
        assert_eq!(c.upstream.base_url, "https://eu-api.contentstack.com");
    }

    fn error_of(text: &str) -> String {
        Config::from_toml(text, no_env(), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_unknown_keys() {
        let e = error_of(&format!("[server]\nlisten_addr = \"x\"\n{MINIMAL}"));
        assert!(e.contains("listen_addr"), "{e}");
        let e = error_of(&format!("{MINIMAL}\npasword_file = \"/x\""));
        assert!(e.contains("pasword_file"), "{e}");
    }

    #[test]
    fn rejects_bad_durations_and_sizes() {
        let e = error_of(&format!("[server]\nshutdown_grace = \"soon\"\n{MINIMAL}"));
        assert!(e.contains("soon") || e.contains("shutdown_grace"), "{e}");
        let e = error_of(&format!("[server]\nmax_body = \"lots\"\n{MINIMAL}"));
        assert!(e.contains("server.max_body"), "{e}");
    }

    #[test]
    fn body_pace_defaults_and_validation() {
        let c = Config::from_toml(MINIMAL, no_env(), None).unwrap();
        assert_eq!(
            c.server.body_pace,
            BodyPace {
                idle_timeout: Duration::from_secs(10),
                min_rate: 1024
            }
        );
        let c = Config::from_toml(
            &format!("[server]\nbody_idle_timeout = \"2s\"\nbody_min_rate = \"0\"\n{MINIMAL}"),
            no_env(),
            None,
        )
        .unwrap();
        assert_eq!(c.server.body_pace.idle_timeout, Duration::from_secs(2));
        assert_eq!(
            c.server.body_pace.min_rate, 0,
            "0 turns the minimum rate off"
        );
        let e = error_of(&format!("[server]\nbody_idle_timeout = \"0s\"\n{MINIMAL}"));
        assert!(e.contains("server.body_idle_timeout"), "{e}");
        let e = error_of(&format!("[server]\nbody_min_rate = \"fast\"\n{MINIMAL}"));
        assert!(e.contains("server.body_min_rate"), "{e}");
    }

    #[test]
    fn rejects_profile_without_credentials() {
        let e = error_of("[profiles.default]\nemail = \"a@b.c\"\n");
        assert!(e.contains("profiles.default"), "{e}");
        assert!(e.contains("neither"), "{e}");
        let e = error_of("");
        assert!(e.contains("no profile configured"), "{e}");
    }

    #[test]
    fn rejects_missing_secret_file_naming_key_and_path() {
        let e = error_of(
            "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"/nonexistent/cma/password\"\n",
        );
        assert!(e.contains("profiles.default.password_file"), "{e}");
        assert!(e.contains("/nonexistent/cma/password"), "{e}");
    }

    #[test]
    fn secret_file_trailing_newline_is_ignored_and_never_printed() {
        let dir = tempdir();
        std::fs::write(dir.join("password"), "s3cret-pw\n").unwrap();
        let c = Config::from_toml(
            "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
            no_env(),
            Some(&dir),
        )
        .unwrap();
        match &c.profiles[0].credentials {
            Credentials::Login(login) => {
                assert_eq!(login.password.expose_secret(), "s3cret-pw")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.watched_files, vec![dir.join("password")]);
        assert!(!format!("{c:?}").contains("s3cret-pw"));
    }

    #[test]
    fn management_token_profile() {
        let c = Config::from_toml(
            "[profiles.mt]\nmanagement_token = \"cs-mgmt-token\"\n",
            no_env(),
            None,
        )
        .unwrap();
        assert!(!c.profiles[0].is_login());
        assert!(!format!("{c:?}").contains("cs-mgmt-token"));
    }

    #[test]
    fn totp_secret_must_be_base32() {
        let e = error_of(&format!("{MINIMAL}totp_secret = \"not base32 !\"\n"));
        assert!(e.contains("totp_secret"), "{e}");
        let ok = Config::from_toml(
            &format!("{MINIMAL}totp_secret = \"jbsw y3dp ehpk 3pxp\"\n"),
            no_env(),
            None,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn redis_token_store() {
        let dir = tempdir();
        std::fs::write(dir.join("key"), format!("{}\n", "ab".repeat(32))).unwrap();
        let c = Config::from_toml(
            &format!("[token_store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\nencryption_key_file = \"key\"\n{MINIMAL}"),
            no_env(),
            Some(&dir),
        )
        .unwrap();
        let TokenStoreConfig::Redis(r) = &c.token_store else {
            panic!()
        };
        assert_eq!(r.encryption_key.as_ref().unwrap().0, [0xab; 32]);
        assert_eq!(r.key_prefix, "cma-auth-proxy:");
        assert!(!format!("{c:?}").contains("hunter2"));
        std::fs::write(dir.join("key"), "short").unwrap();
        let e = Config::from_toml(
            &format!("[token_store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\nencryption_key_file = \"key\"\n{MINIMAL}"),
            no_env(),
            Some(&dir),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("32-byte"), "{e}");
        assert!(
            error_of(&format!("[token_store]\nkind = \"redis\"\n{MINIMAL}"))
                .contains("token_store.url")
        );
        assert!(
            error_of(&format!("[token_store]\nurl = \"redis://x\"\n{MINIMAL}"))
                .contains("only to kind")
        );
    }

    #[test]
    fn redis_needs_a_sealing_key_unless_plaintext_is_asked_for_explicitly() {
        let dir = tempdir();
        std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
        let store = |extra: &str| {
            Config::from_toml(
                &format!(
                    "[token_store]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1\"\n{extra}\n{MINIMAL}"
                ),
                no_env(),
                Some(&dir),
            )
        };
        let e = store("").unwrap_err().to_string();
        assert!(
            e.contains("token_store.encryption_key_file")
                && e.contains("openssl rand -base64 32")
                && e.contains("allow_plaintext = true"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let c = store("allow_plaintext = true").unwrap();
        let TokenStoreConfig::Redis(r) = &c.token_store else {
            panic!()
        };
        assert!(r.encryption_key.is_none());
        assert!(store("encryption_key_file = \"key\"").is_ok());
        let e = store("encryption_key_file = \"key\"\nallow_plaintext = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_store.allow_plaintext"), "{e}");
        // Leaving sealing on is not an opt-out.
        assert!(store("allow_plaintext = false").is_err());
        assert!(
            error_of(&format!("[token_store]\nallow_plaintext = true\n{MINIMAL}"))
                .contains("only to kind")
        );
    }

    #[test]
    fn redis_ca_file_needs_rediss_and_a_pem_certificate() {
        let dir = tempdir();
        let store = |url: &str, ca: &str| {
            Config::from_toml(
                &format!(
                    "[token_store]\nkind = \"redis\"\nurl = \"{url}\"\nca_file = \"{ca}\"\nallow_plaintext = true\n{MINIMAL}"
                ),
                no_env(),
                Some(&dir),
            )
        };
        let cert = rcgen::generate_simple_self_signed(vec!["redis.internal".to_owned()]).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("not.pem"), "hello").unwrap();
        let c = store("rediss://redis.internal:6380", "ca.pem").unwrap();
        let TokenStoreConfig::Redis(r) = &c.token_store else {
            panic!()
        };
        assert_eq!(r.roots_pem.as_deref(), Some(cert.cert.pem().as_bytes()));
        let e = store("redis://redis.internal", "ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token_store.ca_file") && e.contains("rediss://"),
            "{e}"
        );
        let e = store("rediss://redis.internal", "not.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token_store.ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = store("rediss://redis.internal", "missing.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_store.ca_file"), "{e}");
        assert!(
            error_of(&format!("[token_store]\nca_file = \"ca.pem\"\n{MINIMAL}"))
                .contains("only to kind")
        );
    }

    #[test]
    fn unknown_region_and_token_store_are_errors() {
        assert!(error_of(&format!("[upstream]\nregion = \"mars\"\n{MINIMAL}")).contains("mars"));
        assert!(error_of(&format!("[token_store]\nkind = \"disk\"\n{MINIMAL}")).contains("disk"));
    }

    #[test]
    fn unix_listen_address() {
        let c = Config::from_toml(
            &format!("[server]\nlisten = \"unix:/tmp/cma.sock\"\n{MINIMAL}"),
            no_env(),
            None,
        )
        .unwrap();
        assert_eq!(c.server.listen, ListenAddr::Unix("/tmp/cma.sock".into()));
    }

    /// Stands for a secret in the texts below; no error may show any part of it.
    const MARKER: &str = "Sekr1t-4471";

    fn assert_no_secret(e: &ConfigError, values: &[&str]) -> String {
        let shown = e.to_string();
        let debug = format!("{e:?}");
        for value in values.iter().chain(&[MARKER, "Sekr1t", "4471"]) {
            assert!(
                !shown.contains(value) && !debug.contains(value),
                "{value:?} shown in {shown} / {debug}"
            );
        }
        shown
    }

    #[test]
    fn syntax_errors_say_where_and_what_was_expected_never_the_text() {
        let profile = "[profiles.default]\nemail = \"a@b.c\"\n";
        for (line, text) in [
            (3, format!("{profile}password = \"{MARKER}\n")),
            (3, format!("{profile}password = '{MARKER}\n")),
            (3, format!("{profile}password = \"{MARKER}\\q\"\n")),
            (3, format!("{profile}password = {MARKER}\n")),
            (3, format!("{profile}password = \"{MARKER}\" \"more\"\n")),
            (3, format!("{profile}password = {{ value = \"{MARKER}\"\n")),
            (3, format!("{profile}\"{MARKER}\n")),
            (
                4,
                format!("{profile}password = \"{MARKER}\"\npassword = \"{MARKER}\"\n"),
            ),
            (4, format!("{profile}password = \"\"\"{MARKER}\n")),
        ] {
            let e = Config::from_toml(&text, no_env(), None).unwrap_err();
            let shown = assert_no_secret(&e, &[]);
            assert!(matches!(e, ConfigError::Syntax { .. }), "{shown}");
            assert!(
                shown.starts_with(&format!("line {line}, column "))
                    && shown.contains("not valid TOML"),
                "{text:?}: {shown}"
            );
        }
        let e = error_of(&format!("{MINIMAL}\nlisten = \"x\n"));
        assert!(e.ends_with("invalid basic string, expected `\"`"), "{e}");
    }

    #[test]
    fn type_errors_on_secret_keys_name_key_and_line_but_never_the_value() {
        let profile = "[profiles.default]\nemail = \"a@b.c\"\n";
        for (key, line) in [
            ("password", "password = 44711234"),
            ("password", "password = true"),
            ("password", "password = [\"Sekr1t-4471\", 4471]"),
            ("password", "password = { inner = \"Sekr1t-4471\" }"),
            ("password", "password.inner = \"Sekr1t-4471\""),
            ("totp_secret", "totp_secret = 4471.5\npassword = \"x\""),
            (
                "management_token",
                "management_token = 4471-05-27T07:32:00Z",
            ),
        ] {
            let e = Config::from_toml(&format!("{profile}{line}\n"), no_env(), None).unwrap_err();
            let shown = assert_no_secret(&e, &[]);
            assert!(
                shown.starts_with(&format!("`profiles.default.{key}` (line 3, column "))
                    && shown.contains("): expected a string, found a"),
                "{line}: {shown}"
            );
        }
        let e = Config::from_toml(
            &format!("[token_store]\nkind = \"redis\"\nurl = 44711234\n{MINIMAL}"),
            no_env(),
            None,
        )
        .unwrap_err();
        let shown = assert_no_secret(&e, &[]);
        assert!(
            shown.starts_with("`token_store.url` (line 3, column 7)"),
            "{shown}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_errors_name_the_variable_and_never_the_value() {
        for (var, needle) in [
            (
                "CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS",
                "`server.max_connections` (environment variable CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS): expected a whole number (0 or more), found a string",
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__INNER",
                "`profiles.default.password` (environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__INNER): is a string (line 4, column 20), so no environment variable can set a key inside it",
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__OTHER__PASSWORD__INNER",
                "`profiles.other.password` (environment variable CMA_AUTH_PROXY_PROFILES__OTHER__PASSWORD__INNER): expected a string, found a table",
            ),
            (
                "CMA_AUTH_PROXY_PROFILES__DEFAULT",
                "`profiles.default` (environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT): expected a table, found a string",
            ),
            (
                "CMA_AUTH_PROXY_SERVER____LISTEN",
                "`CMA_AUTH_PROXY_SERVER____LISTEN`: names no configuration key",
            ),
        ] {
            let e = Config::from_toml(MINIMAL, env(&[(var, MARKER)]), None).unwrap_err();
            let shown = assert_no_secret(&e, &[]);
            assert!(shown.contains(needle), "{var}: {shown}");
        }
    }

    #[test]
    fn environment_strings_are_read_as_numbers_and_booleans_where_a_key_wants_one() {
        let c = Config::from_toml(
            &format!("{MINIMAL}[profiles.default.rate_limit]\n"),
            env(&[
                ("CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS", "10"),
                (
                    "CMA_AUTH_PROXY_PROFILES__DEFAULT__LOGOUT_ON_SHUTDOWN",
                    "false",
                ),
                (
                    "CMA_AUTH_PROXY_PROFILES__DEFAULT__RATE_LIMIT__READS_PER_SECOND",
                    "2.5",
                ),
                ("CMA_AUTH_PROXY_PROFILES__DEFAULT__RATE_LIMIT__BURST", "3"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.server.limits.max_connections, 10);
        let p = &c.profiles[0];
        assert!(!p.logout_on_shutdown);
        assert_eq!(p.rate_limit.unwrap().reads_per_second, 2.5);
        assert_eq!(p.rate_limit.unwrap().burst, 3);
        // The file is typed: a number in quotes is a string.
        let e = error_of(&format!("[server]\nmax_connections = \"10\"\n{MINIMAL}"));
        assert!(
            e.starts_with("`server.max_connections` (line 2, column 19): expected a whole number"),
            "{e}"
        );
    }

    #[test]
    fn validation_errors_say_where_the_key_was_written() {
        let e = error_of(&format!("[server]\nmax_body = \"big\"\n{MINIMAL}"));
        assert!(
            e.starts_with("`server.max_body` (line 2, column 12): "),
            "{e}"
        );
        let e = Config::from_toml(
            MINIMAL,
            env(&[("CMA_AUTH_PROXY_UPSTREAM__REGION", "mars")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "`upstream.region` (environment variable CMA_AUTH_PROXY_UPSTREAM__REGION): \"mars\""
            ),
            "{e}"
        );
        let dir = tempdir();
        let path = dir.join("config.toml");
        std::fs::write(&path, format!("{MINIMAL}\n[server]\nlisten = 8080\n")).unwrap();
        let e = Config::load(&path, no_env()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "`server.listen` (line 7, column 10 of {}): expected a string, found an integer",
                path.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn secrets_written_inline_or_in_the_environment_are_warned_about() {
        let c = Config::from_toml(
            "[profiles.default]\nemail = \"a@b.c\"\npassword = \"Sekr1t-4471\"\n",
            env(&[
                (
                    "CMA_AUTH_PROXY_PROFILES__DEFAULT__TOTP_SECRET",
                    "JBSWY3DPEHPK3PXP",
                ),
                (
                    "CMA_AUTH_PROXY_PROFILES__MT__MANAGEMENT_TOKEN",
                    "Sekr1t-4471",
                ),
            ]),
            None,
        )
        .unwrap();
        let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].starts_with(
            "`profiles.default.password` is written in the configuration file (line 3, column 12)"
        ));
        assert!(
            warnings[0].ends_with("name it with `password_file`"),
            "{}",
            warnings[0]
        );
        assert!(warnings[1].starts_with(
            "`profiles.default.totp_secret` comes from the environment variable CMA_AUTH_PROXY_PROFILES__DEFAULT__TOTP_SECRET"
        ));
        assert!(warnings[2].contains("CMA_AUTH_PROXY_PROFILES__MT__MANAGEMENT_TOKEN,"));
        for w in &warnings {
            assert!(!w.contains("Sekr1t") && !w.contains("JBSWY3DP"), "{w}");
        }
    }

    #[test]
    fn a_plain_listener_beyond_loopback_is_warned_about() {
        let warnings = |listen: &str| {
            Config::from_toml(
                &format!("[server]\nlisten = \"{listen}\"\n{MINIMAL}"),
                no_env(),
                None,
            )
            .unwrap()
            .warnings
            .into_iter()
            .filter(|w| matches!(w, ConfigWarning::ListenWithoutTls { .. }))
            .count()
        };
        assert_eq!(warnings("0.0.0.0:8080"), 1);
        assert_eq!(warnings("10.1.2.3:8080"), 1);
        assert_eq!(warnings("[::]:8080"), 1);
        assert_eq!(warnings("127.0.0.1:8080"), 0);
        assert_eq!(warnings("[::1]:8080"), 0);
        assert_eq!(warnings("unix:/tmp/cma.sock"), 0);
    }

    #[test]
    fn files_open_to_other_users_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("password"), "pw").unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(&config, 0o600);
        mode(&dir.join("password"), 0o644);
        let c = Config::load(&config, no_env()).unwrap();
        assert_eq!(
            c.warnings,
            vec![ConfigWarning::FileAccess {
                path: dir.join("password"),
                role: FileRole::Secret,
                mode: 0o644,
                readers: Some(Who::Everyone),
                writers: None,
            }]
        );
        mode(&config, 0o622);
        mode(&dir.join("password"), 0o440);
        let c = Config::load(&config, no_env()).unwrap();
        let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            vec![format!(
                "configuration file {} (mode 0622) is writable by every user: whoever can change \
                 it can send the credentials elsewhere; let only the proxy's user write it (`chmod go-w`)",
                config.display()
            )]
        );
    }

    #[test]
    fn every_file_is_read_with_a_bound() {
        let dir = tempdir();
        let secret = |path: &Path| {
            Config::from_toml(
                &format!(
                    "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"{}\"\n",
                    path.display()
                ),
                no_env(),
                None,
            )
        };
        std::fs::write(dir.join("largest"), vec![b'a'; SECRET_FILE_LIMIT as usize]).unwrap();
        assert!(secret(&dir.join("largest")).is_ok());
        std::fs::write(
            dir.join("too-large"),
            vec![b'a'; SECRET_FILE_LIMIT as usize + 1],
        )
        .unwrap();
        let e = secret(&dir.join("too-large")).unwrap_err().to_string();
        assert!(
            e.contains("`profiles.default.password_file`") && e.contains("larger than 64 KiB"),
            "{e}"
        );
        let e = secret(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: not a regular file"), "{e}");

        let config = dir.join("config.toml");
        let mut text = MINIMAL.to_owned();
        text.push_str(&"#".repeat(CONFIG_FILE_LIMIT as usize));
        std::fs::write(&config, text).unwrap();
        let e = Config::load(&config, no_env()).unwrap_err().to_string();
        assert!(
            e.contains("`--config`") && e.contains("larger than 1 MiB"),
            "{e}"
        );

        std::fs::write(dir.join("ca.pem"), vec![b'a'; PEM_FILE_LIMIT as usize + 1]).unwrap();
        let e = error_of(&format!(
            "[upstream]\nca_file = \"{}\"\n{MINIMAL}",
            dir.join("ca.pem").display()
        ));
        assert!(
            e.contains("`upstream.ca_file`") && e.contains("larger than 1 MiB"),
            "{e}"
        );
    }

    pub(crate) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cma-auth-proxy-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
