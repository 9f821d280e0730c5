//! Session tokens: one cached `authtoken` per login profile, obtained by a single login no matter how
//! many requests need it, dropped only by compare-then-invalidate, and guarded by the login
//! discipline of SPEC §5 (refused credentials wait `rejected_retry`; transient failures back off;
//! so do tokens rejected right after their login, see `backoff::RejectionStreak`).
//!
//! This module decides *when* to log in; `login.rs` performs the calls. It never logs a token, only
//! its fingerprint. Management-token profiles never come here: they have nothing to log in for.
pub mod backoff;
mod fleet;
pub mod login;
mod retire;
pub mod totp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::{Config, LoginCredentials, ProfileConfig};
use crate::metrics::{LoginOutcome, Metrics, Trigger};
use crate::store;
pub use login::{AuthClient, LoginFailure, TransientCause, Validity};
pub use retire::TokenLease;

/// A live `authtoken`. `Debug` and logs show only a fingerprint.
pub struct Token {
    header: HeaderValue,
    fingerprint: String,
    obtained: Instant,
    obtained_at: SystemTime,
    /// The requests using it, which a retiring session waits for.
    in_flight: retire::InFlight,
}

impl Token {
    pub fn new(mut header: HeaderValue) -> Token {
        header.set_sensitive(true);
        Token {
            fingerprint: fingerprint(header.as_bytes()),
            header,
            obtained: Instant::now(),
            obtained_at: SystemTime::now(),
            in_flight: Default::default(),
        }
    }

    /// The value of the `authtoken` header (marked sensitive, so HTTP/2 never indexes it).
    /// A token read back from the fleet store, obtained (by some replica) at `obtained_at`.
    pub fn restored(mut header: HeaderValue, obtained_at: SystemTime) -> Token {
        header.set_sensitive(true);
        let age = SystemTime::now()
            .duration_since(obtained_at)
            .unwrap_or_default();
        Token {
            fingerprint: fingerprint(header.as_bytes()),
            header,
            obtained: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            obtained_at,
            in_flight: Default::default(),
        }
    }

    /// The token as the fleet store shares it.
    pub fn shared(&self) -> store::SharedToken {
        store::SharedToken {
            header: self.header.clone(),
            obtained_at: self.obtained_at,
        }
    }

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
    // The tail of the digest the fleet store names the token by.
    store::sha256_hex(secret)[56..].to_owned()
}

/// Why a request cannot have a token now; becomes a 503 with `Retry-After`. Its text names the
/// failure down to its cause (a refused connection, a certificate error), as logs and clients
/// need it; the failure stays its source too.
#[derive(Debug, Clone, thiserror::Error)]
#[error("profile {profile:?}: {}; next login attempt in {}s{}", crate::error_text::error_chain_text(&**failure), retry_after.as_secs().max(1), if matches!(**failure, LoginFailure::Rejected{..}) { " or when the credentials change" } else { "" })]
pub struct LoginError {
    pub profile: Arc<str>,
    #[source]
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
    pub last_attempt: Option<(SystemTime, LoginOutcome)>,
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

#[derive(Default)]
struct LoginStatus {
    ever_logged_in: bool,
    consecutive_failures: u32,
    /// No login is attempted before this instant.
    retry_at: Option<Instant>,
    last_failure: Option<Arc<LoginFailure>>,
    last_totp_step: Option<u64>,
    last_attempt: Option<(SystemTime, LoginOutcome)>,
    /// Tokens rejected in a row soon after their login; unlike the failures above, a successful
    /// login does not end it.
    rejections: backoff::RejectionStreak,
}

/// One login profile's state. Replaced as a whole when its credentials change, which clears the
/// backoff and the TOTP history with it; other setting changes keep it.
struct ProfileState {
    /// The profile's settings; replaced in place by a reload that keeps the credentials.
    config: ArcSwap<ProfileConfig>,
    /// What this state logs in with: fixed for its life (other credentials, another state).
    login: Arc<LoginCredentials>,
    /// Held by the one login in flight; waiters queue here, then find the token in the cache.
    login_lock: Arc<tokio::sync::Mutex<()>>,
    status: Mutex<LoginStatus>,
    /// The account's name in the fleet store.
    account: String,
    /// When these credentials were loaded: without a fleet key, failures other replicas shared
    /// count only if they happened after this.
    loaded_at: SystemTime,
    /// The cached token was obtained while the fleet store was unavailable, and is not shared.
    local_only: std::sync::atomic::AtomicBool,
    /// Fingerprints of the last tokens Contentstack rejected here: never taken from the fleet
    /// store again, however late a read of it arrives.
    dead: Mutex<std::collections::VecDeque<String>>,
}

impl ProfileState {
    fn new(config: Arc<ProfileConfig>, login: Arc<LoginCredentials>, base_url: &str) -> Self {
        Self {
            account: store::account_key(base_url, &login.email),
            login,
            config: ArcSwap::new(config),
            login_lock: Arc::default(),
            status: Mutex::default(),
            loaded_at: SystemTime::now(),
            local_only: Default::default(),
            dead: Mutex::default(),
        }
    }

    fn mark_dead(&self, token: &Token) {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if dead.len() == 8 {
            dead.pop_front();
        }
        dead.push_back(token.fingerprint().to_owned());
    }

    fn is_dead(&self, token: &Token) -> bool {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|f| f == token.fingerprint())
    }

    fn name(&self) -> Arc<str> {
        self.config.load().name.clone()
    }

    fn status(&self) -> std::sync::MutexGuard<'_, LoginStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails fast while a known-failing login is backing off.
    fn check_blocked(&self) -> Result<(), LoginError> {
        let status = self.status();
        match (status.retry_at, &status.last_failure) {
            (Some(at), Some(failure)) if at > Instant::now() => Err(LoginError {
                profile: self.name(),
                failure: failure.clone(),
                retry_after: at - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    /// How long logins are still held back by backoff.
    fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.status()
            .retry_at
            .filter(|at| *at > now)
            .map(|at| at - now)
    }

    fn record_success(&self) {
        let mut status = self.status();
        status.ever_logged_in = true;
        status.consecutive_failures = 0;
        status.retry_at = None;
        status.last_failure = None;
        status.last_attempt = Some((SystemTime::now(), LoginOutcome::Success));
    }

    /// Contentstack rejected `token` (401/105). When it is one more young token rejected in a row,
    /// the next login is held back like a failing one; returns the error requests then get.
    fn record_rejection(&self, token: &Token) -> Option<LoginError> {
        let mut status = self.status();
        let count = status.rejections.rejected(token.age())?;
        let delay = backoff::rejection_delay(&self.config.load(), count, rand::random::<f64>());
        let failure = Arc::new(LoginFailure::Transient(TransientCause::TokensRejected {
            count,
            within: backoff::YOUNG_TOKEN,
        }));
        status.retry_at = Some(Instant::now() + delay);
        status.last_failure = Some(failure.clone());
        Some(LoginError {
            profile: self.name(),
            failure,
            retry_after: delay,
        })
    }

    fn record_failure(&self, failure: LoginFailure) -> LoginError {
        let mut status = self.status();
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        let delay = backoff::delay(
            &self.config.load(),
            &failure,
            status.consecutive_failures,
            rand::random::<f64>(),
        );
        let outcome = failure.outcome();
        let failure = Arc::new(failure);
        status.retry_at = Some(Instant::now() + delay);
        status.last_failure = Some(failure.clone());
        status.last_attempt = Some((SystemTime::now(), outcome));
        LoginError {
            profile: self.name(),
            failure,
            retry_after: delay,
        }
    }
}

struct Inner {
    /// The current token of each login profile, by profile name.
    cache: moka::future::Cache<Arc<str>, Arc<Token>>,
    profiles: RwLock<HashMap<Arc<str>, Arc<ProfileState>>>,
    /// The background care task (validation, max age) of each login profile.
    care: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Wakes the care tasks when a token is cached, so that their timers start from it.
    token_cached: Arc<tokio::sync::Notify>,
    auth: AuthClient,
    metrics: Arc<Metrics>,
    /// The fleet store, with `token_store.kind = "redis"`.
    store: Option<Arc<store::RedisStore>>,
    base_url: String,
    retirements: retire::Retirements,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .care
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl TokenManager {
    pub fn new(
        config: &Config,
        auth: AuthClient,
        metrics: Arc<Metrics>,
    ) -> Result<Self, store::StoreError> {
        let base_url = config.upstream.base_url.clone();
        let profiles = config
            .profiles
            .iter()
            .filter_map(|p| {
                let state = ProfileState::new(p.clone(), p.login()?.clone(), &base_url);
                Some((p.name.clone(), Arc::new(state)))
            })
            .collect();
        let store = match &config.token_store {
            crate::config::TokenStoreConfig::Memory => None,
            crate::config::TokenStoreConfig::Redis(redis) => {
                Some(Arc::new(store::RedisStore::new(redis, metrics.clone())?))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cache: moka::future::Cache::builder().build(),
                profiles: RwLock::new(profiles),
                care: Mutex::default(),
                token_cached: Arc::default(),
                auth,
                metrics,
                store,
                base_url,
                retirements: Default::default(),
            }),
        })
    }

    pub fn auth(&self) -> &AuthClient {
        &self.inner.auth
    }

    /// The fleet store and the account key under which `profile` shares a request budget, when
    /// there is a store and the profile logs in (management tokens have no account).
    pub fn shared_budget(
        &self,
        profile: &ProfileConfig,
    ) -> Option<(Arc<store::RedisStore>, String)> {
        let store = self.inner.store.clone()?;
        let state = self.state(&profile.name)?;
        Some((store, state.account.clone()))
    }

    /// The fleet store's state, for `/status` (`None` without a store).
    pub fn store_status(&self) -> Option<store::LinkStatus> {
        self.inner.store.as_ref().map(|store| store.status())
    }

    fn state(&self, profile: &str) -> Option<Arc<ProfileState>> {
        self.inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(profile)
            .cloned()
    }

    fn is_current(&self, state: &Arc<ProfileState>) -> bool {
        self.state(&state.name())
            .is_some_and(|current| Arc::ptr_eq(&current, state))
    }

    /// The profile's token, leased for one request: from the cache, else from the one login in
    /// flight (started here if none).
    pub async fn token(&self, profile: &str) -> Result<TokenLease, LoginError> {
        loop {
            if let Some(token) = self.inner.cache.get(profile).await {
                return Ok(TokenLease::new(token));
            }
            let Some(state) = self.state(profile) else {
                return Err(LoginError {
                    profile: profile.into(),
                    failure: Arc::new(LoginFailure::Transient(TransientCause::ProfileRemoved)),
                    retry_after: Duration::from_secs(1),
                });
            };
            state.check_blocked()?;
            let guard = state.login_lock.clone().lock_owned().await;
            if let Some(token) = self.inner.cache.get(profile).await {
                return Ok(TokenLease::new(token));
            }
            if !self.is_current(&state) {
                // The credentials changed while we queued: queue behind the new ones instead.
                continue;
            }
            state.check_blocked()?;
            // The login runs in a task of its own that holds the lock: a caller that goes away does
            // not cancel it, so no session is created upstream and lost, and no waiter starts a
            // second one.
            let this = self.clone();
            let login = tokio::spawn(async move {
                let _single_flight = guard;
                // Leased before the lock is released: a token from a login that a rotation
                // overtook is retired once the lock is free, and must find this request's lease.
                this.obtain(&state).await.map(TokenLease::new)
            });
            return match login.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Its runtime is shutting down.
                Err(_) => Err(LoginError {
                    profile: profile.into(),
                    failure: Arc::new(LoginFailure::Transient(TransientCause::Cancelled)),
                    retry_after: Duration::from_secs(1),
                }),
            };
        }
    }

    /// Logs in with the state's credentials and caches the token. Call with the login lock held.
    async fn login(&self, state: &Arc<ProfileState>) -> Result<Arc<Token>, LoginError> {
        let config = state.config.load_full();
        let LoginCredentials {
            email,
            password,
            totp_secret,
        } = &*state.login;
        let name = &config.name;
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
                self.inner.metrics.login(name, LoginOutcome::Success);
                tracing::info!(profile = %name, token = %token.fingerprint(), "logged in");
                if self.is_current(state) {
                    self.inner.cache.insert(name.clone(), token.clone()).await;
                    self.inner.token_cached.notify_waiters();
                } else {
                    // The credentials were rotated during this login: serve the request waiting
                    // for it, then let the session go. Every login runs under the login lock,
                    // and that request leases the token before it lets go of the lock.
                    let login_lock = state.login_lock.clone();
                    let leased = async move { drop(login_lock.lock().await) };
                    self.retire_after(leased, name.clone(), state.account.clone(), token.clone());
                }
                Ok(token)
            }
            Err(failure) => {
                let error = state.record_failure(failure);
                self.inner.metrics.login(name, error.failure.outcome());
                // The text carries the whole cause chain, e.g. the refused connection.
                tracing::warn!(profile = %name, retry_after_ms = error.retry_after.as_millis() as u64, "{}", crate::error_text::error_chain_text(&error));
                Err(error)
            }
        }
    }

    /// A code for a time step this profile has not used yet, waiting for the next step if needed.
    async fn totp_code(&self, state: &ProfileState, secret: &crate::config::TotpSecret) -> String {
        loop {
            let last = state.status().last_totp_step;
            match totp::next(secret, SystemTime::now(), last) {
                totp::Next::Code { step, code } => {
                    state.status().last_totp_step = Some(step);
                    return code;
                }
                totp::Next::WaitFor(delay) => {
                    tracing::info!(profile = %state.name(), wait_ms = delay.as_millis() as u64, "waiting for the next TOTP step; a code is accepted only once");
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
        states.sort_by_key(|s| s.name());
        let mut out = Vec::with_capacity(states.len());
        for state in states {
            let name = state.name();
            let token = self.inner.cache.get(&name).await;
            let status = state.status();
            let now = Instant::now();
            let retry_in = status.retry_at.filter(|at| *at > now).map(|at| at - now);
            out.push(ProfileStatus {
                name,
                token_age: token.as_ref().map(|t| t.age()),
                ever_logged_in: status.ever_logged_in,
                // Failed logins, or logins held back because fresh tokens were rejected.
                failing: status.consecutive_failures > 0 || retry_in.is_some(),
                last_attempt: status.last_attempt,
                last_error: status
                    .last_failure
                    .as_ref()
                    .map(|f| crate::error_text::error_chain_text(&**f)),
                retry_in,
            });
        }
        out
    }

    /// The cached token, leased for one request, without logging in.
    pub async fn cached(&self, profile: &str) -> Option<TokenLease> {
        self.inner.cache.get(profile).await.map(TokenLease::new)
    }

    /// Drops `stale` if it is still the profile's cached token; a newer token is kept.
    /// Returns whether it was dropped (and counts the re-authentication under `trigger`). The
    /// re-login that follows is immediate, unless fresh tokens keep being rejected: then it is held
    /// back (see `backoff::RejectionStreak`), and said so once per backoff.
    pub async fn invalidate(&self, profile: &str, stale: &Arc<Token>, trigger: Trigger) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let state = self.state(profile);
        if let Some(state) = &state {
            state.mark_dead(stale);
            // Fleet-wide compare-then-invalidate, before the local one so that nothing re-reads
            // the dead token from the store into the cache: a newer token another replica
            // published survives.
            if let Some(store) = &self.inner.store
                && let Err(e) = store.remove_if(&state.account, stale.header()).await
            {
                self.store_unavailable(&e);
            }
        }
        let result = self
            .inner
            .cache
            .entry(Arc::from(profile))
            .and_compute_with(|entry| {
                // The same session, even if this replica holds another copy of it (from the store).
                let op = match entry {
                    Some(e) if e.value().header() == stale.header() => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        let dropped = matches!(result, CompResult::Removed(_));
        if !dropped {
            return false;
        }
        self.inner.metrics.reauth(profile, trigger);
        match state.and_then(|s| s.record_rejection(stale)) {
            None => {
                tracing::info!(profile, token = %stale.fingerprint(), trigger = trigger.as_str(), "token rejected by Contentstack (error_code 105); logging in again");
            }
            Some(held) => {
                self.inner.metrics.reauth_backoff(profile, trigger);
                tracing::warn!(profile, token = %stale.fingerprint(), trigger = trigger.as_str(), retry_after_ms = held.retry_after.as_millis() as u64, "{}", crate::error_text::error_chain_text(&held));
            }
        }
        true
    }

    /// Applies a reloaded configuration. A profile whose credentials changed gets a fresh state
    /// (backoff cleared), logs in again at once, and its old session is logged out once the requests
    /// using it are done; removed profiles are logged out too.
    pub fn reconfigure(&self, config: &Config) {
        let mut retired: Vec<(Arc<str>, String)> = Vec::new();
        let mut relogin = Vec::new();
        {
            let mut profiles = self
                .inner
                .profiles
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let mut next = HashMap::new();
            for p in &config.profiles {
                let Some(login) = p.login() else { continue };
                let state = match profiles.remove(&p.name) {
                    Some(old) if *old.login == **login => {
                        old.config.store(p.clone());
                        old
                    }
                    Some(old) => {
                        tracing::info!(profile = %p.name, "credentials changed; logging in with the new ones");
                        retired.push((p.name.clone(), old.account.clone()));
                        relogin.push(p.name.clone());
                        self.inner.metrics.reauth(&p.name, Trigger::Rotate);
                        Arc::new(ProfileState::new(
                            p.clone(),
                            login.clone(),
                            &self.inner.base_url,
                        ))
                    }
                    None => {
                        relogin.push(p.name.clone());
                        Arc::new(ProfileState::new(
                            p.clone(),
                            login.clone(),
                            &self.inner.base_url,
                        ))
                    }
                };
                next.insert(p.name.clone(), state);
            }
            for (name, state) in profiles.iter() {
                tracing::info!(profile = %name, "profile removed; logging its session out");
                retired.push((name.clone(), state.account.clone()));
            }
            *profiles = next;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for (name, account) in retired {
                if let Some(token) = this.inner.cache.remove(&name).await {
                    this.retire(name, account, token);
                }
            }
            for name in relogin {
                let this = this.clone();
                tokio::spawn(async move { this.token(&name).await.ok() });
            }
        });
        self.start_care();
    }

    /// Logs a session out in the background once no request uses it any more (first taking it
    /// out of the fleet store, if it is still there); at shutdown, at once.
    fn retire(&self, profile: Arc<str>, account: String, token: Arc<Token>) {
        self.retire_after(std::future::ready(()), profile, account, token);
    }

    /// [`Self::retire`], once `ready` has completed (the users-to-be of `token` hold their leases).
    fn retire_after(
        &self,
        ready: impl Future<Output = ()> + Send + 'static,
        profile: Arc<str>,
        account: String,
        token: Arc<Token>,
    ) {
        let this = self.clone();
        self.inner.retirements.spawn(async move {
            ready.await;
            if let Some(store) = &this.inner.store {
                let _ = store.remove_if(&account, token.header()).await;
            }
            let ended = this
                .inner
                .retirements
                .unused(&token, retire::RETIRE_WAIT)
                .await;
            if ended == retire::Ended::WaitedTooLong {
                tracing::info!(profile = %profile, token = %token.fingerprint(), wait_s = retire::RETIRE_WAIT.as_secs(), "a request still uses the retiring session; logging it out anyway");
            }
            this.logout(&profile, &token).await;
        });
    }

    async fn logout(&self, profile: &str, token: &Token) {
        match self.inner.auth.logout(token).await {
            Ok(()) => {
                self.inner.metrics.logout(profile);
                tracing::info!(profile, token = %token.fingerprint(), "logged out");
            }
            Err(e) => {
                tracing::warn!(profile, token = %token.fingerprint(), "logout failed: {}", crate::error_text::error_chain_text(&e))
            }
        }
    }

    /// Logs out every cached session of profiles with `logout_on_shutdown`, and every retiring
    /// session (those were to be logged out anyway), concurrently.
    pub async fn logout_all(&self) {
        self.stop_care();
        let states: Vec<_> = self
            .inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.config.load().logout_on_shutdown)
            .cloned()
            .collect();
        let logouts = states.into_iter().map(|state| async move {
            let name = state.name();
            // A session shared through the fleet store stays: the other replicas are using it.
            let shared = self.inner.store.is_some()
                && !state.local_only.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(token) = self.inner.cache.remove(&name).await
                && !shared
            {
                self.logout(&name, &token).await;
            }
        });
        futures_util::future::join(
            futures_util::future::join_all(logouts),
            self.inner.retirements.finish(),
        )
        .await;
    }

    /// (Re)starts one background task per login profile for `validate_interval` and `max_token_age`.
    pub fn start_care(&self) {
        let names: Vec<Arc<str>> = self
            .inner
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let weak = Arc::downgrade(&self.inner);
        let mut care = self.inner.care.lock().unwrap_or_else(|e| e.into_inner());
        for task in care.drain(..) {
            task.abort();
        }
        for name in names {
            let task = care_for(weak.clone(), self.inner.token_cached.clone(), name);
            care.push(tokio::spawn(task).abort_handle());
        }
    }

    fn stop_care(&self) {
        for task in self
            .inner
            .care
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// Replaces a token that is still valid (max age): log in first, then retire the old session.
    async fn refresh(&self, state: &Arc<ProfileState>, old: Arc<Token>, trigger: Trigger) {
        let _single_flight = state.login_lock.lock().await;
        let name = state.name();
        let still_current = self
            .inner
            .cache
            .get(&name)
            .await
            .is_some_and(|t| Arc::ptr_eq(&t, &old));
        if !still_current || state.check_blocked().is_err() {
            return;
        }
        let refreshed = match &self.inner.store {
            None => self.login(state).await.is_ok(),
            Some(store) => self.refresh_shared(store, state, &old).await,
        };
        if refreshed {
            self.inner.metrics.reauth(&name, trigger);
            self.retire(name, state.account.clone(), old);
        }
    }
}

/// How often a profile without validation or max age still looks at its token.
const CARE_IDLE: Duration = Duration::from_secs(60);
/// How often a replica of a fleet compares its token with the shared one.
const FLEET_SYNC: Duration = Duration::from_secs(2);
/// The care loop never spins faster than this, whatever the settings.
const CARE_MIN_TICK: Duration = Duration::from_millis(50);

/// Background care of one profile's token: validation against `GET /v3/user` every
/// `validate_interval`, and a fresh login after `max_token_age`. Ends with the token manager.
async fn care_for(
    weak: std::sync::Weak<Inner>,
    token_cached: Arc<tokio::sync::Notify>,
    name: Arc<str>,
) {
    let mut last_validated = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let this = TokenManager { inner };
        let Some(state) = this.state(&name) else {
            return;
        };
        let config = state.config.load_full();
        let token = this.inner.cache.get(&name).await;
        // With a fleet store, also look at the shared session every few seconds.
        let until_sync = this.inner.store.as_ref().map(|_| FLEET_SYNC);
        let until_validate = config
            .validate_interval
            .map(|every| every.saturating_sub(last_validated.elapsed()));
        // A refresh that is backing off waits for its backoff, not for the (passed) age.
        let until_max_age = config
            .max_token_age
            .zip(token.as_ref())
            .map(|(max, t)| max.saturating_sub(t.age()))
            .map(|left| left.max(state.retry_in().unwrap_or_default()));
        let wait = [until_validate, until_max_age, until_sync]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(CARE_IDLE)
            .max(CARE_MIN_TICK);
        drop((this, state, token));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A new token restarts the max-age clock.
            _ = token_cached.notified() => continue,
        }

        let Some(inner) = weak.upgrade() else { return };
        let this = TokenManager { inner };
        let Some(state) = this.state(&name) else {
            return;
        };
        let config = state.config.load_full();
        this.sync(&state).await;
        let Some(token) = this.inner.cache.get(&name).await else {
            continue;
        };
        state.status().rejections.alive(token.age());
        if config.max_token_age.is_some_and(|max| token.age() >= max) {
            this.refresh(&state, token, Trigger::MaxAge).await;
            continue;
        }
        if config
            .validate_interval
            .is_some_and(|every| last_validated.elapsed() >= every)
        {
            last_validated = Instant::now();
            match this.inner.auth.validate(&token).await {
                Ok(Validity::Dead) => {
                    if this.invalidate(&name, &token, Trigger::Validate).await {
                        // Log in now, before a client needs the token.
                        let _ = this.token(&name).await;
                    }
                }
                Ok(Validity::Valid) => {}
                Err(e) => {
                    tracing::debug!(profile = %name, "token validation inconclusive: {}", crate::error_text::error_chain_text(&e))
                }
            }
        }
    }
}
