//! Session tokens: one cached `authtoken` per login profile, obtained by a single login no matter how
//! many requests need it, dropped only by compare-then-invalidate, and guarded by the login
//! discipline of SPEC §5 (refused credentials wait `rejected_retry`; transient failures back off).
//!
//! This module decides *when* to log in; `login.rs` performs the calls. It never logs a token, only
//! its fingerprint. Management-token profiles never come here: they have nothing to log in for.
pub mod backoff;
pub mod login;
pub mod totp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::{Config, Credentials, ProfileConfig};
pub use login::{AuthClient, LoginFailure, TransientCause, Validity};

/// A live `authtoken`. `Debug` and logs show only a fingerprint.
pub struct Token {
    header: HeaderValue,
    fingerprint: String,
    obtained: Instant,
    obtained_at: SystemTime,
}

impl Token {
    pub fn new(mut header: HeaderValue) -> Token {
        header.set_sensitive(true);
        Token {
            fingerprint: fingerprint(header.as_bytes()),
            header,
            obtained: Instant::now(),
            obtained_at: SystemTime::now(),
        }
    }

    /// The value of the `authtoken` header (marked sensitive, so HTTP/2 never indexes it).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn age(&self) -> Duration {
        self.obtained.elapsed()
    }

    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(sha256:…{})", self.fingerprint)
    }
}

/// The last 8 hex digits of the SHA-256 of a secret: enough to tell tokens apart in logs, useless to
/// an attacker.
pub fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    digest[digest.len() - 4..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a request cannot have a token now; becomes a 503 with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("profile {profile:?}: {failure}; next login attempt in {}s{}", retry_after.as_secs().max(1), if matches!(**failure, LoginFailure::Rejected{..}) { " or when the credentials change" } else { "" })]
pub struct LoginError {
    pub profile: Arc<str>,
    pub failure: Arc<LoginFailure>,
    pub retry_after: Duration,
}

/// A login profile as the admin endpoints see it. Holds no secret and no token.
#[derive(Debug, Clone)]
pub struct ProfileStatus {
    pub name: Arc<str>,
    pub token_age: Option<Duration>,
    pub ever_logged_in: bool,
    /// The last login attempt failed (and no success since).
    pub failing: bool,
    pub last_attempt: Option<(SystemTime, Outcome)>,
    pub last_error: Option<String>,
    /// How long logins are still held back by backoff.
    pub retry_in: Option<Duration>,
}

impl ProfileStatus {
    /// Able to serve: a token is cached, or the last login succeeded and the token was merely dropped
    /// (a re-login is one request away). A failing profile without a token is not ready.
    pub fn ready(&self) -> bool {
        self.token_age.is_some() || (self.ever_logged_in && !self.failing)
    }
}

/// What happened at the last login attempt, for `/status` and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Rejected,
    Transient,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Transient => "transient",
        }
    }
}

#[derive(Default)]
struct LoginStatus {
    ever_logged_in: bool,
    consecutive_failures: u32,
    /// No login is attempted before this instant.
    retry_at: Option<Instant>,
    last_failure: Option<Arc<LoginFailure>>,
    last_totp_step: Option<u64>,
    last_attempt: Option<(SystemTime, Outcome)>,
}

/// One login profile's state. Replaced as a whole when its credentials change, which clears the
/// backoff and the TOTP history with it.
struct ProfileState {
    config: Arc<ProfileConfig>,
    /// Held by the one login in flight; waiters queue here, then find the token in the cache.
    login_lock: Arc<tokio::sync::Mutex<()>>,
    status: Mutex<LoginStatus>,
}

impl ProfileState {
    fn new(config: Arc<ProfileConfig>) -> Self {
        Self {
            config,
            login_lock: Arc::default(),
            status: Mutex::default(),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, LoginStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails fast while a known-failing login is backing off.
    fn check_blocked(&self) -> Result<(), LoginError> {
        let status = self.status();
        match (status.retry_at, &status.last_failure) {
            (Some(at), Some(failure)) if at > Instant::now() => Err(LoginError {
                profile: self.config.name.clone(),
                failure: failure.clone(),
                retry_after: at - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    fn record_success(&self) {
        let mut status = self.status();
        status.ever_logged_in = true;
        status.consecutive_failures = 0;
        status.retry_at = None;
        status.last_failure = None;
        status.last_attempt = Some((SystemTime::now(), Outcome::Success));
    }

    fn record_failure(&self, failure: LoginFailure) -> LoginError {
        let mut status = self.status();
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        let delay = backoff::delay(
            &self.config,
            &failure,
            status.consecutive_failures,
            rand::random::<f64>(),
        );
        let outcome = match failure {
            LoginFailure::Rejected { .. } => Outcome::Rejected,
            LoginFailure::Transient(_) => Outcome::Transient,
        };
        let failure = Arc::new(failure);
        status.retry_at = Some(Instant::now() + delay);
        status.last_failure = Some(failure.clone());
        status.last_attempt = Some((SystemTime::now(), outcome));
        LoginError {
            profile: self.config.name.clone(),
            failure,
            retry_after: delay,
        }
    }
}

struct Inner {
    /// The current token of each login profile, by profile name.
    cache: moka::future::Cache<Arc<str>, Arc<Token>>,
    profiles: RwLock<HashMap<Arc<str>, Arc<ProfileState>>>,
    auth: AuthClient,
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl TokenManager {
    pub fn new(config: &Config, auth: AuthClient) -> Self {
        let profiles = config
            .profiles
            .iter()
            .filter(|p| p.is_login())
            .map(|p| (p.name.clone(), Arc::new(ProfileState::new(p.clone()))))
            .collect();
        Self {
            inner: Arc::new(Inner {
                cache: moka::future::Cache::builder().build(),
                profiles: RwLock::new(profiles),
                auth,
            }),
        }
    }

    pub fn auth(&self) -> &AuthClient {
        &self.inner.auth
    }

    fn state(&self, profile: &str) -> Option<Arc<ProfileState>> {
        self.inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(profile)
            .cloned()
    }

    /// The profile's token: from the cache, else from the one login in flight (started here if none).
    ///
    /// # Panics
    /// If `profile` is not a login profile of the current configuration (a caller bug).
    pub async fn token(&self, profile: &str) -> Result<Arc<Token>, LoginError> {
        if let Some(token) = self.inner.cache.get(profile).await {
            return Ok(token);
        }
        let state = self
            .state(profile)
            .unwrap_or_else(|| panic!("profile {profile:?} is not a login profile"));
        state.check_blocked()?;
        let guard = state.login_lock.clone().lock_owned().await;
        if let Some(token) = self.inner.cache.get(profile).await {
            return Ok(token);
        }
        state.check_blocked()?;
        // The login runs in a task of its own that holds the lock: a caller that goes away does not
        // cancel it, so no session is created upstream and lost, and no waiter starts a second one.
        let this = self.clone();
        tokio::spawn(async move {
            let _single_flight = guard;
            this.login(&state).await
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    async fn login(&self, state: &ProfileState) -> Result<Arc<Token>, LoginError> {
        let Credentials::Login {
            email,
            password,
            totp_secret,
        } = &state.config.credentials
        else {
            unreachable!("only login profiles have a ProfileState")
        };
        let name = &state.config.name;
        let code = match totp_secret {
            Some(secret) => Some(self.totp_code(state, secret).await),
            None => None,
        };
        match self
            .inner
            .auth
            .login(email, password, code.as_deref())
            .await
        {
            Ok(token) => {
                let token = Arc::new(token);
                state.record_success();
                self.inner.cache.insert(name.clone(), token.clone()).await;
                tracing::info!(profile = %name, token = %token.fingerprint(), "logged in");
                Ok(token)
            }
            Err(failure) => {
                let error = state.record_failure(failure);
                tracing::warn!(profile = %name, retry_after_ms = error.retry_after.as_millis() as u64, "{}", crate::error::error_chain_text(&error));
                Err(error)
            }
        }
    }

    /// A code for a time step this profile has not used yet, waiting for the next step if needed.
    async fn totp_code(&self, state: &ProfileState, secret: &crate::config::TotpSecret) -> String {
        loop {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            let last = state.status().last_totp_step;
            match totp::next(secret, now_ms, last) {
                totp::Next::Code { step, code } => {
                    state.status().last_totp_step = Some(step);
                    return code;
                }
                totp::Next::WaitFor(delay) => {
                    tracing::info!(profile = %state.config.name, wait_ms = delay.as_millis() as u64, "waiting for the next TOTP step; a code is accepted only once");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// What `/status` and the probes report of every login profile.
    pub async fn snapshot(&self) -> Vec<ProfileStatus> {
        let mut states: Vec<_> = self
            .inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        states.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let mut out = Vec::with_capacity(states.len());
        for state in states {
            let token = self.inner.cache.get(&state.config.name).await;
            let status = state.status();
            let now = Instant::now();
            out.push(ProfileStatus {
                name: state.config.name.clone(),
                token_age: token.as_ref().map(|t| t.age()),
                ever_logged_in: status.ever_logged_in,
                failing: status.consecutive_failures > 0,
                last_attempt: status.last_attempt,
                last_error: status
                    .last_failure
                    .as_ref()
                    .map(|f| crate::error::error_chain_text(&**f)),
                retry_in: status.retry_at.filter(|at| *at > now).map(|at| at - now),
            });
        }
        out
    }

    /// The cached token, without logging in.
    pub async fn cached(&self, profile: &str) -> Option<Arc<Token>> {
        self.inner.cache.get(profile).await
    }

    /// Drops `stale` if it is still the profile's cached token; a newer token is kept.
    /// Returns whether it was dropped.
    pub async fn invalidate(&self, profile: &str, stale: &Arc<Token>) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .inner
            .cache
            .entry(Arc::from(profile))
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(e) if Arc::ptr_eq(e.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        let dropped = matches!(result, CompResult::Removed(_));
        if dropped {
            tracing::info!(profile, token = %stale.fingerprint(), "token rejected by Contentstack (error_code 105); logging in again");
        }
        dropped
    }

    /// Logs out every cached session of profiles with `logout_on_shutdown`, concurrently.
    pub async fn logout_all(&self) {
        let states: Vec<_> = self
            .inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.config.logout_on_shutdown)
            .cloned()
            .collect();
        let logouts = states.into_iter().map(|state| async move {
            let name = state.config.name.clone();
            let Some(token) = self.inner.cache.remove(&name).await else {
                return;
            };
            match self.inner.auth.logout(&token).await {
                Ok(()) => {
                    tracing::info!(profile = %name, token = %token.fingerprint(), "logged out")
                }
                Err(e) => {
                    tracing::warn!(profile = %name, token = %token.fingerprint(), "logout failed: {}", crate::error::error_chain_text(&e))
                }
            }
        });
        futures_util::future::join_all(logouts).await;
    }
}
