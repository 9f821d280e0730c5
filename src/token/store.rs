//! The fleet store (`[token_store] kind = "redis"`): one session per account shared by every
//! replica, a fleet-wide single flight for logins, the last login failure shared so that refused
//! credentials are tried once per `rejected_retry` across the fleet, and a shared request budget.
//!
//! Keys, under `key_prefix`, per account (a digest of upstream and e-mail, so replicas with
//! different profile names still share):
//! - `token:{acct}`: `{sha256 of the token, hex}:{obtained unix ms}:{p|x}:{token or sealed token}`
//! - `lock:{acct}`: the login lock, `SET NX PX` with a random fencing value, released by its holder
//! - `fail:{acct}`: the last failed login, expiring when the next attempt is due
//! - `rate:{acct}:{read|write}`: the GCRA state of the shared budget
//!
//! Every call has a timeout; an error means "the store is unavailable" and the caller falls back
//! to its own cache and logins. Tokens at rest are sealed with XChaCha20-Poly1305 when
//! `encryption_key_file` is set. Nothing here logs a token or a key.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::HeaderValue;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Token;
use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the fleet login lock stayed taken for {0:?}; logging in without the fleet")]
    LockHeld(Duration),
}

/// A login failure as the fleet shares it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedFailure {
    pub rejected: bool,
    pub http_status: u16,
    pub error_code: Option<i64>,
    pub message: String,
    /// Which credentials failed (a salted digest): a replica with other credentials ignores it.
    pub credentials: String,
    /// Unix ms when the next attempt is allowed.
    pub retry_at_ms: u64,
}

/// The login lock, held by this replica.
pub struct Lock {
    fence: String,
}

/// Releases the lock only if this holder still has it (it may have expired and been taken).
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"#;

/// Extends the lock only if this holder still has it.
const EXTEND: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
"#;

/// Deletes the token only if it is still the one the caller saw die (by digest).
const DELETE_IF: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 64) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"#;

/// GCRA on the server's clock: returns the wait in ms (0 = go now), or -wait when refused.
const RATE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval, tolerance, max_wait, pushback = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if pushback > 0 then
  local pushed = now + pushback + tolerance
  if pushed > tat then tat = pushed end
  redis.call('SET', KEYS[1], tat, 'PX', pushback + tolerance + 1000)
  return 0
end
local allowed = tat - tolerance
if allowed < now then allowed = now end
local wait = allowed - now
if wait > max_wait then return -wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
return wait
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    lock_ttl: Duration,
    seal: Option<Arc<XChaCha20Poly1305>>,
    unlock: redis::Script,
    extend: redis::Script,
    delete_if: redis::Script,
    rate: redis::Script,
}

impl RedisStore {
    pub fn new(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let client = match &config.roots_pem {
            None => redis::Client::open(config.url.as_str()),
            Some(roots) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.clone()),
                },
            ),
        }
        .map_err(StoreError::Redis)?;
        let seal = config.encryption_key.as_ref().map(|key| {
            Arc::new(XChaCha20Poly1305::new_from_slice(&key.0).expect("validated as 32 bytes"))
        });
        Ok(RedisStore {
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            lock_ttl: config.lock_ttl,
            seal,
            unlock: redis::Script::new(UNLOCK),
            extend: redis::Script::new(EXTEND),
            delete_if: redis::Script::new(DELETE_IF),
            rate: redis::Script::new(RATE),
        })
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    fn key(&self, kind: &str, account: &str) -> String {
        format!("{}{kind}:{account}", self.prefix)
    }

    /// A connection, made on first use so that Redis may be down at start; reconnects by itself.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = self
            .bounded(self.client.get_connection_manager_with_config(config))
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
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

    async fn get_value(&self, kind: &str, account: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(
            redis::cmd("GET")
                .arg(self.key(kind, account))
                .query_async(&mut conn),
        )
        .await
    }

    pub async fn get(&self, account: &str) -> Result<Option<Token>, StoreError> {
        let value = self.get_value("token", account).await?;
        Ok(value.and_then(|v| self.open(account, &v)))
    }

    /// Publishes `token` as the account's session, replacing whatever was there.
    pub async fn put(&self, account: &str, token: &Token) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let value = self.seal_token(account, token);
        self.bounded(
            redis::cmd("SET")
                .arg(self.key("token", account))
                .arg(value)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Publishes `token` unless the account already has one; returns whether it was published.
    pub async fn put_if_absent(&self, account: &str, token: &Token) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let value = self.seal_token(account, token);
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.key("token", account))
                    .arg(value)
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Deletes the account's token if it is still `token`; a newer one is kept.
    pub async fn remove_if(&self, account: &str, token: &Token) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let removed: i64 = self
            .bounded(
                self.delete_if
                    .key(self.key("token", account))
                    .arg(digest_hex(token.header().as_bytes()))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(removed == 1)
    }

    pub async fn lock(&self, account: &str) -> Result<Option<Lock>, StoreError> {
        let mut conn = self.conn().await?;
        let fence = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.key("lock", account))
                    .arg(&fence)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.lock_ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.map(|_| Lock { fence }))
    }

    pub async fn unlock(&self, account: &str, lock: Lock) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(
            self.unlock
                .key(self.key("lock", account))
                .arg(lock.fence)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Gives a lock this replica holds another `lock_ttl`. `false`: the lock is no longer ours
    /// (it expired, or Redis lost it).
    pub async fn extend(&self, account: &str, lock: &Lock) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let extended = self
            .bounded(
                self.extend
                    .key(self.key("lock", account))
                    .arg(&lock.fence)
                    .arg(self.lock_ttl.as_millis() as u64)
                    .invoke_async::<i64>(&mut conn),
            )
            .await?;
        Ok(extended == 1)
    }

    pub async fn is_locked(&self, account: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(
            redis::cmd("EXISTS")
                .arg(self.key("lock", account))
                .query_async(&mut conn),
        )
        .await
    }

    pub async fn failure(&self, account: &str) -> Result<Option<SharedFailure>, StoreError> {
        let value = self.get_value("fail", account).await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub async fn set_failure(
        &self,
        account: &str,
        failure: &SharedFailure,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let text = serde_json::to_string(failure).expect("serializable");
        self.bounded(
            redis::cmd("SET")
                .arg(self.key("fail", account))
                .arg(text)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub async fn clear_failure(&self, account: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.bounded(
            redis::cmd("DEL")
                .arg(self.key("fail", account))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// The shared budget: `Ok(wait)` to go after `wait`, `Err(wait)` when refused.
    pub async fn rate(
        &self,
        account: &str,
        kind: &str,
        interval: Duration,
        tolerance: Duration,
        max_wait: Duration,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        self.rate_call(account, kind, interval, tolerance, max_wait, Duration::ZERO)
            .await
    }

    /// An upstream 429: push the shared budget of this kind back.
    pub async fn rate_pushback(
        &self,
        account: &str,
        kind: &str,
        tolerance: Duration,
        pushback: Duration,
    ) -> Result<(), StoreError> {
        self.rate_call(
            account,
            kind,
            Duration::ZERO,
            tolerance,
            Duration::ZERO,
            pushback,
        )
        .await
        .map(drop)
    }

    async fn rate_call(
        &self,
        account: &str,
        kind: &str,
        interval: Duration,
        tolerance: Duration,
        max_wait: Duration,
        pushback: Duration,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        let mut conn = self.conn().await?;
        let ms = |d: Duration| d.as_millis() as u64;
        let wait: i64 = self
            .bounded(
                self.rate
                    .key(self.key(&format!("rate:{kind}"), account))
                    .arg(ms(interval))
                    .arg(ms(tolerance))
                    .arg(ms(max_wait))
                    .arg(ms(pushback))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(if wait < 0 {
            Err(Duration::from_millis(wait.unsigned_abs()))
        } else {
            Ok(Duration::from_millis(wait as u64))
        })
    }

    fn seal_token(&self, account: &str, token: &Token) -> String {
        let secret = token.header().as_bytes();
        let obtained = token
            .obtained_at()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let body = match &self.seal {
            None => format!("p:{}", String::from_utf8_lossy(secret)),
            Some(cipher) => {
                let nonce_bytes: [u8; 24] = rand::random();
                let nonce = XNonce::from(nonce_bytes);
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: secret,
                            aad: account.as_bytes(),
                        },
                    )
                    .expect("XChaCha20-Poly1305 seals any message");
                let mut out = nonce_bytes.to_vec();
                out.extend_from_slice(&sealed);
                format!(
                    "x:{}",
                    base64::engine::general_purpose::STANDARD.encode(out)
                )
            }
        };
        format!("{}:{obtained}:{body}", digest_hex(secret))
    }

    /// Reads a stored token; a value this replica cannot open (other key, corrupt) counts as absent.
    fn open(&self, account: &str, value: &str) -> Option<Token> {
        let mut parts = value.splitn(4, ':');
        let (_digest, obtained, mode, body) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let obtained = UNIX_EPOCH + Duration::from_millis(obtained.parse().ok()?);
        let secret = match (mode, &self.seal) {
            ("p", None) => body.as_bytes().to_vec(),
            ("x", Some(cipher)) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .ok()?;
                if raw.len() < 24 {
                    return None;
                }
                let (nonce, sealed) = raw.split_at(24);
                let nonce = XNonce::try_from(nonce).ok()?;
                cipher
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: sealed,
                            aad: account.as_bytes(),
                        },
                    )
                    .ok()?
            }
            _ => {
                tracing::warn!(
                    "the shared token is stored with another encryption setting; ignoring it"
                );
                return None;
            }
        };
        let header = HeaderValue::from_bytes(&secret).ok()?;
        Some(Token::restored(header, obtained))
    }
}

fn digest_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The store's name for an account: upstream and e-mail, hashed (no e-mail in key names).
pub fn account_key(base_url: &str, email: &str) -> String {
    digest_hex(format!("{base_url}\n{}", email.to_ascii_lowercase()).as_bytes())[..24].to_owned()
}

/// A salted digest of credentials, to tell whether a shared failure concerns ours.
pub fn credentials_digest(email: &str, password: &str, totp: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(b"cma-auth-proxy credentials v1\0");
    h.update(email.as_bytes());
    h.update(b"\0");
    h.update(password.as_bytes());
    h.update(b"\0");
    h.update(totp.unwrap_or_default());
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
