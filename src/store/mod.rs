//! The fleet store (`[token_store] kind = "redis"`): one session per account shared by every
//! replica, a fleet-wide single flight for logins, the last login failure shared so that refused
//! credentials are tried once per `rejected_retry` across the fleet, and a shared request budget.
//!
//! Keys, under `key_prefix`, per account (a digest of upstream and e-mail, so replicas with
//! different profile names still share):
//! - `token:{acct}`: `{sha256 of the token, hex}:{obtained unix ms}[+{lifetime ms}]:{p|s}:{token |
//!   sealed token}` (a lifetime for OAuth access tokens)
//! - `grant:{acct}`: an OAuth profile's newest refresh token, `{issued unix ms}:{p|s}:{JSON | sealed
//!   JSON}`, written by the lock holder right after each refresh
//! - `settle:{acct}`: while it lives, no replica refreshes: the store had lost the refresh token,
//!   and every replica gets the time to put back the newest it holds (`SET NX PX` by the first to
//!   put one back)
//! - `lock:{acct}`: the login lock, `SET NX PX` with a random fencing value, released by its holder
//! - `fail:{acct}`: the last failed login (status and `error_code`, when, until when, and a keyed
//!   tag of the credentials), sealed; expiring when the next attempt is due
//! - `rate:{read|write|bulk}:{acct}`: the GCRA state of the shared budget (a unix ms time)
//! - `invalidate:{acct}`: a pub/sub channel, the writes one replica passed on, so that the others
//!   drop what their read caches may hold of them (`invalidations.rs`)
//!
//! Redis is not trusted beyond what a replica can check (see `record.rs`; the scripts are in
//! `scripts.rs`): values are read at most
//! [`record::MAX_VALUE`] bytes at a time, sealed with the fleet key (`encryption_key_file`) unless
//! the operator opted out with `allow_plaintext`, and dates and waits are bounded by this replica's
//! own settings; the login lock always expires. Every call has a timeout, and after a failure the
//! store is skipped until a probe reaches it (`link.rs`): an error means "the store is
//! unavailable" and the caller falls back to its own cache, logins and budget. Nothing here logs a
//! token or a key.
mod invalidations;
mod link;
mod record;
mod resp;
mod scripts;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use secrecy::SecretString;

use crate::config::{LoginCredentials, OAuthCredentials, RedisConfig};
use crate::metrics::{Metrics, StoreEvent};
pub use invalidations::Invalidated;
pub use link::{LinkStatus, PROBE_MAX};
pub use record::{Codec, Invalid, MAX_LIFETIME, MAX_VALUE, SharedFailure, sha256_hex, unix_ms};

/// A session as the store shares it: the header value requests carry (`authtoken`, or an OAuth
/// `Bearer` access token), when some replica obtained it, and when it expires (OAuth only).
pub struct SharedToken {
    pub header: HeaderValue,
    pub obtained_at: SystemTime,
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedToken")
            .field("header", &"[REDACTED]")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An OAuth profile's newest refresh token, as the fleet store and a `state_dir` file keep it.
/// Refresh tokens of one authorization form a chain (each refresh replaces the token): `origin`
/// names the chain (the SHA-256 of its first token, hex), `generation` counts refreshes along it,
/// `issued_at` is when this one was obtained. `Debug` never shows the token.
#[derive(Clone)]
pub struct SharedGrant {
    pub refresh_token: SecretString,
    pub issued_at: SystemTime,
    pub origin: String,
    pub generation: u64,
    pub user_uid: Option<String>,
    pub organization_uid: Option<String>,
}

impl std::fmt::Debug for SharedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedGrant")
            .field("refresh_token", &"[REDACTED]")
            .field("issued_at", &self.issued_at)
            .field("origin", &self.origin)
            .field("generation", &self.generation)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Escaped: the text may quote what the server sent, newlines included.
    #[error("redis: {}", crate::error_text::escape_controls(&.0.to_string()))]
    Redis(#[source] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the fleet store is skipped after a failure until a probe reaches it again")]
    Unavailable,
    #[error("the fleet login lock stayed taken for {0:?}; logging in without the fleet")]
    LockHeld(Duration),
}

/// A value read from the store: absent, present but refused (too large, forged, from another
/// setting), or valid.
pub enum Stored<T> {
    Absent,
    Invalid,
    Valid(T),
}

impl<T> Stored<T> {
    pub fn valid(self) -> Option<T> {
        match self {
            Stored::Valid(v) => Some(v),
            Stored::Absent | Stored::Invalid => None,
        }
    }
}

/// The login lock, held by this replica.
pub struct Lock {
    fence: String,
}

/// One call to the shared budget (see `ratelimit.rs`).
pub struct RateCall {
    pub interval: Duration,
    pub tolerance: Duration,
    pub max_wait: Duration,
    /// Non-zero: an upstream 429, push the budget back this far instead of taking a slot.
    pub pushback: Duration,
    /// The furthest ahead any call of this budget reserves: bounds what is read back.
    pub reach: Duration,
}

pub struct RedisStore {
    link: Arc<link::Link>,
    codec: Codec,
    prefix: String,
    timeout: Duration,
    lock_ttl: Duration,
    metrics: Arc<Metrics>,
    lock: redis::Script,
    unlock: redis::Script,
    extend: redis::Script,
    delete_if: redis::Script,
    restore_grant: redis::Script,
    settling: redis::Script,
    rate: redis::Script,
    /// This replica's name in the invalidations it publishes, so that it ignores its own.
    origin: String,
}

impl RedisStore {
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<RedisStore, StoreError> {
        let connector = link::Connector::new(config)?;
        Ok(RedisStore {
            link: link::Link::new(connector, &config.url, config.timeout, metrics.clone()),
            codec: Codec::new(config.encryption_key.as_ref()),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            lock_ttl: config.lock_ttl,
            metrics,
            lock: redis::Script::new(scripts::LOCK),
            unlock: redis::Script::new(scripts::UNLOCK),
            extend: redis::Script::new(scripts::EXTEND),
            delete_if: redis::Script::new(scripts::DELETE_IF),
            restore_grant: redis::Script::new(scripts::RESTORE_GRANT),
            settling: redis::Script::new(scripts::SETTLING),
            rate: redis::Script::new(scripts::RATE),
            origin: record::hex(&rand::random::<[u8; 8]>()),
        })
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// How long one call may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the store is in use, skipped or being probed, for `/status`.
    pub fn status(&self) -> LinkStatus {
        self.link.status()
    }

    /// The tag under which a failure of `credentials` is shared (`None` without the fleet key).
    pub fn credentials_tag(&self, login: &LoginCredentials) -> Option<String> {
        self.codec.credentials_tag(
            &login.email,
            secrecy::ExposeSecret::expose_secret(&login.password),
            login.totp_secret.as_ref().map(|t| t.bytes()),
        )
    }

    /// [`Self::credentials_tag`] for an OAuth profile.
    pub fn oauth_credentials_tag(&self, oauth: &OAuthCredentials) -> Option<String> {
        use secrecy::ExposeSecret;
        self.codec.oauth_credentials_tag(
            &oauth.client_id,
            oauth.client_secret.as_ref().map(|s| s.expose_secret()),
            oauth.bootstrap.as_ref().map(|b| b.token.expose_secret()),
        )
    }

    fn key(&self, kind: &str, account: &str) -> String {
        format!("{}{kind}:{account}", self.prefix)
    }

    /// Runs one command, within `timeout`.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let (mut conn, generation) = self.link.conn().await?;
        let result = self.bounded(cmd.query_async(&mut conn)).await;
        self.link.outcome(generation, result)
    }

    /// Runs one script, within `timeout`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let (mut conn, generation) = self.link.conn().await?;
        let result = self.bounded(script.invoke_async(&mut conn)).await;
        self.link.outcome(generation, result)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::Redis)
    }

    /// At most [`MAX_VALUE`] + 1 bytes of a value: enough to tell that it is too large, without
    /// reading a planted giant.
    async fn read(&self, kind: &str, account: &str) -> Result<Stored<Vec<u8>>, StoreError> {
        let read = self
            .query::<Vec<u8>>(
                redis::cmd("GETRANGE")
                    .arg(self.key(kind, account))
                    .arg(0)
                    .arg(MAX_VALUE),
            )
            .await;
        match read {
            // GETRANGE answers "" for a missing key.
            Ok(value) if value.is_empty() => Ok(Stored::Absent),
            Ok(value) => Ok(Stored::Valid(value)),
            // Not a string: planted.
            Err(StoreError::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                self.refuse(kind, Invalid::Malformed);
                Ok(Stored::Invalid)
            }
            Err(e) => Err(e),
        }
    }

    /// A value this replica cannot use counts as absent; counted, and logged now and then.
    fn refuse(&self, kind: &str, why: Invalid) {
        static LAST_WARNING: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        self.metrics.store_event(StoreEvent::Invalid);
        let mut last = LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            *last = Some(Instant::now());
            tracing::warn!("ignoring the fleet store's {kind} value: {why}");
        }
    }

    /// Reads the account's `kind` value and checks it with `open`; a value it refuses is counted
    /// and logged, and is then as good as absent.
    async fn read_checked<T>(
        &self,
        kind: &str,
        account: &str,
        open: impl FnOnce(&Codec, &[u8]) -> Result<T, Invalid>,
    ) -> Result<Stored<T>, StoreError> {
        Ok(match self.read(kind, account).await? {
            Stored::Valid(value) => match open(&self.codec, &value) {
                Ok(opened) => Stored::Valid(opened),
                Err(why) => {
                    self.refuse(kind, why);
                    Stored::Invalid
                }
            },
            Stored::Absent => Stored::Absent,
            Stored::Invalid => Stored::Invalid,
        })
    }

    pub async fn get(&self, account: &str) -> Result<Stored<SharedToken>, StoreError> {
        self.read_checked("token", account, |codec, value| {
            codec.open_token(account, value, SystemTime::now())
        })
        .await
    }

    /// Publishes `token` as the account's session, replacing whatever was there.
    pub async fn put(&self, account: &str, token: &SharedToken) -> Result<(), StoreError> {
        self.query(
            redis::cmd("SET")
                .arg(self.key("token", account))
                .arg(self.codec.token(account, token)),
        )
        .await
    }

    /// Publishes `token` unless the account already has one; returns whether it was published.
    pub async fn put_if_absent(
        &self,
        account: &str,
        token: &SharedToken,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.key("token", account))
                    .arg(self.codec.token(account, token))
                    .arg("NX"),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Deletes the account's token if it is still the one whose header is `header`; a newer one
    /// is kept.
    pub async fn remove_if(&self, account: &str, header: &HeaderValue) -> Result<bool, StoreError> {
        let removed: i64 = self
            .invoke(
                self.delete_if
                    .key(self.key("token", account))
                    .arg(sha256_hex(header.as_bytes())),
            )
            .await?;
        Ok(removed == 1)
    }

    pub async fn lock(&self, account: &str) -> Result<Option<Lock>, StoreError> {
        let fence = record::hex(&rand::random::<[u8; 16]>());
        let taken: i64 = self
            .invoke(
                self.lock
                    .key(self.key("lock", account))
                    .arg(&fence)
                    .arg(self.lock_ttl.as_millis() as u64),
            )
            .await?;
        Ok((taken == 1).then_some(Lock { fence }))
    }

    pub async fn unlock(&self, account: &str, lock: Lock) -> Result<(), StoreError> {
        self.invoke::<i64>(self.unlock.key(self.key("lock", account)).arg(lock.fence))
            .await
            .map(drop)
    }

    /// Gives a lock this replica holds another `lock_ttl`. `false`: the lock is no longer ours
    /// (it expired, or Redis lost it).
    pub async fn extend(&self, account: &str, lock: &Lock) -> Result<bool, StoreError> {
        let extended: i64 = self
            .invoke(
                self.extend
                    .key(self.key("lock", account))
                    .arg(&lock.fence)
                    .arg(self.lock_ttl.as_millis() as u64),
            )
            .await?;
        Ok(extended == 1)
    }

    /// The account's newest refresh token (OAuth profiles).
    pub async fn get_grant(&self, account: &str) -> Result<Stored<SharedGrant>, StoreError> {
        self.read_checked("grant", account, |codec, value| {
            codec.open_grant(account, value, SystemTime::now())
        })
        .await
    }

    /// Keeps `grant` as the account's refresh token, replacing whatever was there: the lock
    /// holder, right after a refresh, and `oauth login`.
    pub async fn put_grant(&self, account: &str, grant: &SharedGrant) -> Result<(), StoreError> {
        self.query(
            redis::cmd("SET")
                .arg(self.key("grant", account))
                .arg(self.codec.grant(account, grant)),
        )
        .await
    }

    /// Puts back a refresh token the store does not have (it lost its data, or a refresh could
    /// not keep it), unless the store holds one issued later; an `unreadable` value is replaced.
    /// Returns whether it was kept. When the store held no refresh token, this also starts the
    /// settling window of `settle` (see [`Self::grant_settling`]).
    pub async fn restore_grant(
        &self,
        account: &str,
        grant: &SharedGrant,
        unreadable: bool,
        settle: Duration,
    ) -> Result<bool, StoreError> {
        let kept: i64 = self
            .invoke(
                self.restore_grant
                    .key(self.key("grant", account))
                    .key(self.key("settle", account))
                    .arg(self.codec.grant(account, grant))
                    .arg(unix_ms(grant.issued_at))
                    .arg(settle.as_millis() as u64)
                    .arg(if unreadable { "1" } else { "0" }),
            )
            .await?;
        Ok(kept == 1)
    }

    /// How much is left of the settling window a restored refresh token started (at most
    /// `settle`), if any: until it ends, no replica refreshes.
    pub async fn grant_settling(
        &self,
        account: &str,
        settle: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let left: i64 = self
            .invoke(
                self.settling
                    .key(self.key("settle", account))
                    .arg(settle.as_millis() as u64),
            )
            .await?;
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    /// The last failed login of the account, if readable (see [`SharedFailure::hold`] for
    /// whether it concerns the caller).
    pub async fn failure(&self, account: &str) -> Result<Option<SharedFailure>, StoreError> {
        let stored = self.read_checked("fail", account, |codec, value| {
            codec.open_failure(account, value, SystemTime::now())
        });
        Ok(stored.await?.valid())
    }

    pub async fn set_failure(
        &self,
        account: &str,
        failure: &SharedFailure,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.query(
            redis::cmd("SET")
                .arg(self.key("fail", account))
                .arg(self.codec.failure(account, failure))
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
    }

    pub async fn clear_failure(&self, account: &str) -> Result<(), StoreError> {
        self.query(redis::cmd("DEL").arg(self.key("fail", account)))
            .await
    }

    /// The shared budget of `kind` (`read`/`write`): `Ok(wait)` to go after `wait`, `Err(wait)`
    /// when refused; with `pushback`, always `Ok(0)`. Waits are never longer than `reach`.
    pub async fn rate(
        &self,
        account: &str,
        kind: &str,
        call: &RateCall,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let wait: i64 = self
            .invoke(
                self.rate
                    .key(self.key(&format!("rate:{kind}"), account))
                    .arg(ms(call.interval))
                    .arg(ms(call.tolerance))
                    .arg(ms(call.max_wait))
                    .arg(ms(call.pushback))
                    .arg(ms(call.reach)),
            )
            .await?;
        let bounded = |w: u64| Duration::from_millis(w).min(call.reach);
        Ok(if wait < 0 {
            Err(bounded(wait.unsigned_abs()))
        } else {
            Ok(bounded(wait as u64))
        })
    }
}

/// The store's name for an account: upstream and e-mail, hashed (no e-mail in key names).
pub fn account_key(base_url: &str, email: &str) -> String {
    sha256_hex(format!("{base_url}\n{}", email.to_ascii_lowercase()).as_bytes())[..24].to_owned()
}
