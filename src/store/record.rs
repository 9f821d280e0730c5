//! The values the fleet store holds, as text, and how a replica checks them on the way back in.
//!
//! Whoever can write to Redis can write anything under our keys, so nothing read back is taken on
//! trust: a value is at most [`MAX_VALUE`] bytes, dates are no later than this replica's clock
//! allows, and with the fleet key everything is sealed (XChaCha20-Poly1305) over all the fields a
//! reader acts on, so a value not written by a holder of the key is refused. Without the key
//! (`allow_plaintext`) a planted token cannot be told from a real one: that is the opt-out's cost.
//!
//! Nothing stored is derived from the password without the fleet key, and no upstream text is
//! stored: a failure is shared as its status and `error_code` only. An OAuth profile's refresh
//! token (a "grant") is kept in the same format in the store and in a `state_dir` file.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use secrecy::{ExposeSecret, SecretString};

use super::{SharedGrant, SharedToken};
use crate::config::{EncryptionKey, ProfileConfig};

/// The most a replica reads of one value. A token value is about 150 bytes, a failure record
/// about 250: anything near this is not ours, and is not read further.
pub const MAX_VALUE: usize = 8 * 1024;

/// The longest lifetime a shared access token may claim: Contentstack's last an hour, and a value
/// claiming more was not written by a replica.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of this replica's clock another replica's may be. A date later than that was
/// not written by a replica, and would make a planted token look newest or a failure last forever.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a value read from the store was refused (for the log; the value then counts as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("larger than {MAX_VALUE} bytes")]
    TooLarge,
    #[error("not in the format this version writes")]
    Malformed,
    #[error(
        "written with another encryption setting (a replica with another or no encryption_key_file?)"
    )]
    OtherSetting,
    #[error("not sealed with this replica's encryption key (planted, or another key)")]
    NotSealedByUs,
    #[error("dated later than this replica's clock allows")]
    FromTheFuture,
}

/// Keys derived from the operator's `encryption_key_file`, one per use, so that no use can
/// reveal another's.
struct Keys {
    seal: XChaCha20Poly1305,
    credentials_tag: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

fn keyed_digest(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        // Length-prefixed, so that no two lists of parts feed the same bytes.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl Keys {
    fn derive(key: &EncryptionKey) -> Keys {
        let seal = keyed_digest(&key.0, &[b"cma-auth-proxy fleet store: seal v2"]);
        Keys {
            seal: XChaCha20Poly1305::new_from_slice(&seal).expect("a 32-byte key"),
            credentials_tag: keyed_digest(&key.0, &[b"cma-auth-proxy fleet store: credentials v2"]),
        }
    }

    /// `base64(nonce ‖ ciphertext)`, authenticated together with `context`.
    fn seal(&self, context: &[u8], message: &[u8]) -> String {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .seal
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: message,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Invalid> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| Invalid::Malformed)?;
        if raw.len() < 24 {
            return Err(Invalid::Malformed);
        }
        let (nonce, sealed) = raw.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| Invalid::Malformed)?;
        self.seal
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: context,
                },
            )
            .map_err(|_| Invalid::NotSealedByUs)
    }
}

/// Writes and reads the store's values, sealed when the fleet has a key.
pub struct Codec {
    keys: Option<Keys>,
}

impl Codec {
    pub fn new(key: Option<&EncryptionKey>) -> Codec {
        Codec {
            keys: key.map(Keys::derive),
        }
    }

    /// `{sha256 of the token, hex}:{obtained unix ms}[+{lifetime ms}]:{p|s}:{token | sealed token}`
    /// (a lifetime for tokens that expire: OAuth access tokens). The digest lets a Lua script
    /// compare-and-delete without the key; the seal covers digest, date and lifetime.
    pub fn token(&self, account: &str, token: &SharedToken) -> String {
        let secret = token.header.as_bytes();
        let digest = sha256_hex(secret);
        let obtained = unix_ms(token.obtained_at);
        let dates = match token.expires_at {
            None => obtained.to_string(),
            Some(expires) => format!("{obtained}+{}", unix_ms(expires).saturating_sub(obtained)),
        };
        match &self.keys {
            None => format!("{digest}:{dates}:p:{}", String::from_utf8_lossy(secret)),
            Some(keys) => {
                let sealed = keys.seal(&token_context(account, &digest, &dates), secret);
                format!("{digest}:{dates}:s:{sealed}")
            }
        }
    }

    pub fn open_token(
        &self,
        account: &str,
        value: &[u8],
        now: SystemTime,
    ) -> Result<SharedToken, Invalid> {
        let text = bounded_text(value)?;
        let mut fields = text.splitn(4, ':');
        let (Some(digest), Some(dates), Some(mode), Some(body)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(Invalid::Malformed);
        };
        let (obtained, lifetime) = match dates.split_once('+') {
            None => (dates, None),
            Some((obtained, lifetime)) => (obtained, Some(lifetime)),
        };
        let obtained: u64 = obtained.parse().map_err(|_| Invalid::Malformed)?;
        not_after(obtained, now)?;
        let lifetime = lifetime
            .map(|ms| ms.parse::<u64>().map(Duration::from_millis))
            .transpose()
            .map_err(|_| Invalid::Malformed)?;
        if lifetime.is_some_and(|l| l > MAX_LIFETIME) {
            return Err(Invalid::Malformed);
        }
        let secret = match (mode, &self.keys) {
            ("p", None) => body.as_bytes().to_vec(),
            ("s", Some(keys)) => {
                keys.open(&token_context(account, digest, dates), body.as_bytes())?
            }
            ("p" | "s", _) => return Err(Invalid::OtherSetting),
            _ => return Err(Invalid::Malformed),
        };
        // Without a seal the digest is the only thing tying the value together: a token whose
        // digest does not match could never be compare-and-deleted once it dies.
        if sha256_hex(&secret) != digest {
            return Err(Invalid::Malformed);
        }
        let header = HeaderValue::from_bytes(&secret).map_err(|_| Invalid::Malformed)?;
        let obtained_at = UNIX_EPOCH + Duration::from_millis(obtained);
        Ok(SharedToken {
            header,
            obtained_at,
            expires_at: lifetime.map(|l| obtained_at + l),
        })
    }

    /// `{issued unix ms}:{p|s}:{JSON | sealed JSON}`: an OAuth profile's newest refresh token, in
    /// the fleet store and in a `state_dir` file alike. The seal covers the date.
    pub fn grant(&self, account: &str, grant: &SharedGrant) -> String {
        let issued = unix_ms(grant.issued_at);
        let json = serde_json::to_string(&GrantBody {
            refresh_token: grant.refresh_token.expose_secret().to_owned(),
            origin: grant.origin.clone(),
            generation: grant.generation,
            user_uid: grant.user_uid.clone(),
            organization_uid: grant.organization_uid.clone(),
        })
        .expect("serializable");
        match &self.keys {
            None => format!("{issued}:p:{json}"),
            Some(keys) => format!(
                "{issued}:s:{}",
                keys.seal(&grant_context(account, issued), json.as_bytes())
            ),
        }
    }

    pub fn open_grant(
        &self,
        account: &str,
        value: &[u8],
        now: SystemTime,
    ) -> Result<SharedGrant, Invalid> {
        let text = bounded_text(value)?;
        let mut fields = text.splitn(3, ':');
        let (Some(issued), Some(mode), Some(body)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(Invalid::Malformed);
        };
        let issued: u64 = issued.parse().map_err(|_| Invalid::Malformed)?;
        not_after(issued, now)?;
        let json = match (mode, &self.keys) {
            ("p", None) => body.as_bytes().to_vec(),
            ("s", Some(keys)) => keys.open(&grant_context(account, issued), body.as_bytes())?,
            ("p" | "s", _) => return Err(Invalid::OtherSetting),
            _ => return Err(Invalid::Malformed),
        };
        let body: GrantBody = serde_json::from_slice(&json).map_err(|_| Invalid::Malformed)?;
        if body.refresh_token.is_empty() {
            return Err(Invalid::Malformed);
        }
        Ok(SharedGrant {
            refresh_token: SecretString::from(body.refresh_token),
            issued_at: UNIX_EPOCH + Duration::from_millis(issued),
            origin: body.origin,
            generation: body.generation,
            user_uid: body.user_uid,
            organization_uid: body.organization_uid,
        })
    }

    /// JSON without the key; `s:{sealed JSON}` with it.
    pub fn failure(&self, account: &str, failure: &SharedFailure) -> String {
        let json = serde_json::to_string(failure).expect("serializable");
        match &self.keys {
            None => json,
            Some(keys) => format!(
                "s:{}",
                keys.seal(&failure_context(account), json.as_bytes())
            ),
        }
    }

    pub fn open_failure(
        &self,
        account: &str,
        value: &[u8],
        now: SystemTime,
    ) -> Result<SharedFailure, Invalid> {
        let text = bounded_text(value)?;
        let json = match (text.strip_prefix("s:"), &self.keys) {
            (Some(sealed), Some(keys)) => {
                keys.open(&failure_context(account), sealed.as_bytes())?
            }
            (None, None) => text.as_bytes().to_vec(),
            _ => return Err(Invalid::OtherSetting),
        };
        let failure: SharedFailure =
            serde_json::from_slice(&json).map_err(|_| Invalid::Malformed)?;
        not_after(failure.failed_at_ms, now)?;
        Ok(failure)
    }

    /// Which credentials a shared failure concerns, keyed with the fleet key: equal for replicas
    /// with the same credentials, and of no use to anyone guessing the password without the key.
    /// Without a key there is none (see [`SharedFailure::hold`]).
    pub fn credentials_tag(
        &self,
        email: &str,
        password: &str,
        totp_secret: Option<&[u8]>,
    ) -> Option<String> {
        let keys = self.keys.as_ref()?;
        let tag = keyed_digest(
            &keys.credentials_tag,
            &[
                email.as_bytes(),
                password.as_bytes(),
                totp_secret.unwrap_or_default(),
            ],
        );
        Some(hex(&tag[..16]))
    }

    /// [`Self::credentials_tag`] of an OAuth profile: the app's client and the refresh token the
    /// operator handed in, so a new `refresh_token_file` (or a new client secret) is not held back
    /// by the failure of the one before.
    pub fn oauth_credentials_tag(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        bootstrap: Option<&str>,
    ) -> Option<String> {
        let keys = self.keys.as_ref()?;
        let tag = keyed_digest(
            &keys.credentials_tag,
            &[
                b"oauth",
                client_id.as_bytes(),
                client_secret.unwrap_or_default().as_bytes(),
                bootstrap.unwrap_or_default().as_bytes(),
            ],
        );
        Some(hex(&tag[..16]))
    }
}

fn token_context(account: &str, digest: &str, dates: &str) -> Vec<u8> {
    format!("token\0{account}\0{digest}\0{dates}").into_bytes()
}

fn grant_context(account: &str, issued: u64) -> Vec<u8> {
    format!("grant\0{account}\0{issued}").into_bytes()
}

/// What a kept refresh token is stored as, inside the (sealed) value.
#[derive(Serialize, Deserialize)]
struct GrantBody {
    refresh_token: String,
    origin: String,
    generation: u64,
    user_uid: Option<String>,
    organization_uid: Option<String>,
}

fn failure_context(account: &str) -> Vec<u8> {
    format!("fail\0{account}").into_bytes()
}

fn bounded_text(value: &[u8]) -> Result<&str, Invalid> {
    if value.len() > MAX_VALUE {
        return Err(Invalid::TooLarge);
    }
    std::str::from_utf8(value).map_err(|_| Invalid::Malformed)
}

fn not_after(at_ms: u64, now: SystemTime) -> Result<(), Invalid> {
    let latest = unix_ms(now).saturating_add(MAX_CLOCK_SKEW.as_millis() as u64);
    if at_ms > latest {
        Err(Invalid::FromTheFuture)
    } else {
        Ok(())
    }
}

/// A login failure as the fleet shares it: what happened and when, never the upstream's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFailure {
    pub rejected: bool,
    /// Contentstack's HTTP status (0 when it did not answer).
    pub http_status: u16,
    pub error_code: Option<i64>,
    /// Unix ms when the login failed, on the writer's clock.
    pub failed_at_ms: u64,
    /// Unix ms when the writer allows the next attempt.
    pub retry_at_ms: u64,
    /// [`Codec::credentials_tag`] of the credentials that failed; none without the fleet key.
    /// (Stored as `credentials`, the name earlier builds wrote.)
    #[serde(rename = "credentials")]
    pub credentials_tag: Option<String>,
}

impl SharedFailure {
    /// How much longer this failure holds back a login with credentials tagged `ours` (or, without
    /// a key, loaded at `loaded_at`) under `profile`'s settings; `None` if it does not concern them
    /// or is over.
    ///
    /// The writer's retry time counts only up to what this replica's own settings allow after the
    /// failure (`rejected_retry` for refused credentials, `max_backoff` otherwise): a record from a
    /// replica with longer settings, or a forged one, holds logins back no longer than ours would.
    /// Without a key there is no tag to compare, so a replica heeds only failures that happened
    /// after it loaded its credentials: one whose credentials were just rotated tries at once.
    pub fn hold(
        &self,
        ours: Option<&str>,
        loaded_at: SystemTime,
        profile: &ProfileConfig,
        now: SystemTime,
    ) -> Option<Duration> {
        let concerns_us = match ours {
            Some(tag) => self.credentials_tag.as_deref() == Some(tag),
            None => self.failed_at_ms >= unix_ms(loaded_at),
        };
        if !concerns_us {
            return None;
        }
        let window = if self.rejected {
            profile.rejected_retry
        } else {
            profile.max_backoff
        };
        let until = self
            .retry_at_ms
            .min(self.failed_at_ms.saturating_add(window.as_millis() as u64));
        let left = Duration::from_millis(until.checked_sub(unix_ms(now))?);
        (!left.is_zero()).then_some(left.min(window))
    }
}

/// SHA-256 as lower-case hex: how the store names a token (and an account) without holding it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests;
