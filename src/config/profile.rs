//! `[profiles.NAME]`: an account's credentials (a login, an OAuth app's user authorization in
//! `oauth.rs`, or a management token), the stacks it serves, how its token is cared for and how its
//! logins back off, and its request budget.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::cache::{CacheConfig, FileCache};
use super::files::Sources;
use super::oauth::{self, FileOAuth, OAuthCredentials};
use super::{ConfigError, invalid, resolve};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileProfile {
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
    coalesce_reads: bool,
    cache: Option<FileCache>,
    oauth: Option<FileOAuth>,
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
            coalesce_reads: true,
            cache: None,
            oauth: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
struct FileRateLimit {
    reads_per_second: Option<f64>,
    writes_per_second: Option<f64>,
    bulk_per_second: Option<f64>,
    organization_uid: Option<String>,
    burst: u32,
    #[serde(with = "humantime_serde")]
    max_wait: Duration,
}

impl Default for FileRateLimit {
    fn default() -> Self {
        // Rates not written are learned from the organization's plan (see `ratelimit.rs`).
        Self {
            reads_per_second: None,
            writes_per_second: None,
            bulk_per_second: None,
            organization_uid: None,
            // Contentstack counts any sliding second, and GCRA lets `burst + rate - 1` requests
            // into one: a burst of 1 keeps a budget of N per second within N in every second.
            burst: 1,
            max_wait: Duration::from_secs(2),
        }
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
    /// Concurrent identical reads share one upstream request (docs/design.md#read-coalescing).
    pub coalesce_reads: bool,
    /// The opt-in short cache of reads; `None` = off.
    pub cache: Option<CacheConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Rates written in the configuration; a `None` is learned from the organization's plan
    /// after a login, or falls back to Contentstack's default.
    pub reads_per_second: Option<f64>,
    pub writes_per_second: Option<f64>,
    pub bulk_per_second: Option<f64>,
    /// Whose plan to read; `None` = the account's organization (see `ratelimit.rs`).
    pub organization_uid: Option<String>,
    pub burst: u32,
    pub max_wait: Duration,
}

impl ProfileConfig {
    /// Whether the profile has a session the token manager obtains and keeps (a login or an OAuth
    /// authorization), unlike a management token.
    pub fn has_session(&self) -> bool {
        !matches!(self.credentials, Credentials::ManagementToken(_))
    }

    /// The credentials of a login profile; `None` for other profiles.
    pub fn login(&self) -> Option<&Arc<LoginCredentials>> {
        match &self.credentials {
            Credentials::Login(login) => Some(login),
            Credentials::ManagementToken(_) | Credentials::OAuth(_) => None,
        }
    }

    /// The app and authorization of an OAuth profile; `None` for other profiles.
    pub fn oauth(&self) -> Option<&Arc<OAuthCredentials>> {
        match &self.credentials {
            Credentials::OAuth(oauth) => Some(oauth),
            Credentials::Login(_) | Credentials::ManagementToken(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// Logs in as a user: `POST /v3/user-session`.
    Login(Arc<LoginCredentials>),
    /// Injected as `authorization: <token>`; never logs in.
    ManagementToken(ManagementToken),
    /// Acts through an OAuth app with a user's authorization: access tokens obtained by refresh,
    /// injected as `authorization: Bearer <token>`.
    OAuth(Arc<OAuthCredentials>),
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
            let file_key = format!("{key_prefix}.{name}_file");
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    file_key,
                    format!("is empty; name the file that holds the {name}"),
                ));
            }
            let path = resolve(base_dir, &path);
            let bytes = sources
                .read_secret(&path)
                .map_err(|source| ConfigError::secret_file(&file_key, &path, source))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid(&file_key, format!("{} is not UTF-8", path.display())))?;
            // Secret volumes and `echo` leave a trailing newline; it is never part of the secret.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(invalid(
                    file_key,
                    format!("{} is empty; write the {name} into it", path.display()),
                ));
            }
            Ok(Some(SecretString::from(value.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

pub(super) fn validate(
    name: String,
    p: FileProfile,
    oauth_context: &oauth::Context<'_>,
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
    // Logs and metrics say `profile=none` for a request refused before a profile was chosen.
    if name == "none" {
        return Err(invalid(
            &key,
            "the name `none` is reserved: logs and metrics use it for requests that no profile served",
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
    let credentials = match (management, password, p.oauth) {
        (management, password, Some(oauth)) => {
            if p.email.is_some() || password.is_some() || totp.is_some() || management.is_some() {
                return Err(invalid(
                    &key,
                    "an OAuth profile takes no `email`, `password`, `totp_secret` or `management_token`: it acts through the app's authorization",
                ));
            }
            if !p.max_token_age.is_zero() {
                return Err(invalid(
                    format!("{key}.max_token_age"),
                    "does not apply to an OAuth profile: its access tokens are refreshed ahead of their expiry",
                ));
            }
            Credentials::OAuth(Arc::new(oauth::validate(
                &key,
                oauth,
                oauth_context,
                base_dir,
                sources,
            )?))
        }
        (Some(_), Some(_), None) => {
            return Err(invalid(
                &key,
                "has both a password and a management token; a profile logs in or uses a management token, not both",
            ));
        }
        (Some(token), None, None) => {
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
        (None, Some(password), None) => {
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
        (None, None, None) => {
            return Err(invalid(
                &key,
                "has neither `password_file` (with `email`), `management_token_file` nor an `[oauth]` table",
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
            for (name, rate) in [
                ("reads_per_second", r.reads_per_second),
                ("writes_per_second", r.writes_per_second),
                ("bulk_per_second", r.bulk_per_second),
            ] {
                if rate.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
                    return Err(invalid(format!("{key}.{name}"), "must be above 0"));
                }
            }
            if r.burst == 0 {
                return Err(invalid(format!("{key}.burst"), "must be at least 1"));
            }
            if r.organization_uid.as_deref().is_some_and(|uid| {
                uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric())
            }) {
                return Err(invalid(
                    format!("{key}.organization_uid"),
                    "must be an organization uid (letters and digits, e.g. \"blt1234abcd\")",
                ));
            }
            Ok(RateLimitConfig {
                reads_per_second: r.reads_per_second,
                writes_per_second: r.writes_per_second,
                bulk_per_second: r.bulk_per_second,
                organization_uid: r.organization_uid,
                burst: r.burst,
                max_wait: r.max_wait,
            })
        })
        .transpose()?;
    let cache = p
        .cache
        .map(|c| super::cache::validate(&key, c))
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
        coalesce_reads: p.coalesce_reads,
        cache,
    })
}
