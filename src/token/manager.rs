//! The token manager: hands requests the current token of their profile, and when there is none
//! (or an access token expired) runs the profile's one login or OAuth refresh (single flight)
//! while every other request for it waits; drops a token Contentstack rejected only if it is still
//! the current one; applies reloaded profiles; logs sessions out at shutdown.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::failure::{LoginFailure, TransientCause};
use super::refresh::Keep;
use super::session::AuthClient;
use super::source::Source;
use super::state::{LoginError, ProfileState, ProfileStatus};
use super::{Token, TokenLease, retire, totp};
use crate::config::{Config, LoginCredentials, ProfileConfig, TokenStoreConfig, TotpSecret};
use crate::metrics::{LoginOutcome, Metrics, Trigger};
use crate::store::{self, RedisStore};

/// The profiles with a session (login or OAuth), by name. Replaced as a whole by a reload.
/// Keyed by profile name with a fast hash: looked up by every request, and the names come from the
/// configuration, not from clients (docs/design.md#performance).
type Profiles = HashMap<Arc<str>, Arc<ProfileState>, foldhash::fast::RandomState>;

pub(super) struct Inner {
    /// Every session profile's state, each holding its current token: the one place a token lives.
    pub(super) profiles: ArcSwap<Profiles>,
    /// Reloads apply one at a time.
    reconfiguring: Mutex<()>,
    /// The background care task (validation, max age, renewal ahead of expiry) of each profile.
    pub(super) care: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Wakes the care tasks when a token is cached, so that their timers start from it.
    pub(super) token_cached: Arc<tokio::sync::Notify>,
    pub(super) auth: AuthClient,
    pub(super) metrics: Arc<Metrics>,
    /// The fleet store, with `token_store.kind = "redis"`.
    pub(super) store: Option<Arc<RedisStore>>,
    base_url: String,
    pub(super) retirements: retire::Retirements,
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

/// Cheap to clone; all clones share the same profiles.
#[derive(Clone)]
pub struct TokenManager {
    pub(super) inner: Arc<Inner>,
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
                let state = ProfileState::new(p.clone(), &base_url)?;
                Some((p.name.clone(), Arc::new(state)))
            })
            .collect();
        let store = match &config.token_store {
            TokenStoreConfig::Memory { .. } => None,
            TokenStoreConfig::Redis(redis) => {
                Some(Arc::new(RedisStore::new(redis, metrics.clone())?))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                profiles: ArcSwap::from_pointee(profiles),
                reconfiguring: Mutex::default(),
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
    /// there is a store and the profile has a session (management tokens have no account).
    pub fn shared_budget(&self, profile: &ProfileConfig) -> Option<(Arc<RedisStore>, String)> {
        let store = self.inner.store.clone()?;
        let state = self.state(&profile.name)?;
        Some((store, state.account.clone()))
    }

    /// Notified whenever a profile gets a new current token (a login, or one adopted from the fleet).
    pub fn token_changes(&self) -> Arc<tokio::sync::Notify> {
        self.inner.token_cached.clone()
    }

    /// The fleet store, with `token_store.kind = "redis"`.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.inner.store.as_ref()
    }

    /// The fleet store's state, for `/status` (`None` without a store).
    pub fn store_status(&self) -> Option<store::LinkStatus> {
        self.inner.store.as_ref().map(|store| store.status())
    }

    pub(super) fn state(&self, profile: &str) -> Option<Arc<ProfileState>> {
        self.inner.profiles.load().get(profile).cloned()
    }

    pub(super) fn is_current(&self, state: &Arc<ProfileState>) -> bool {
        self.inner
            .profiles
            .load()
            .get(state.name())
            .is_some_and(|current| Arc::ptr_eq(current, state))
    }

    /// The profile's token, leased for one request: the current one, else the one from the login
    /// or refresh in flight (started here if none). An access token past its use counts as none.
    pub async fn token(&self, profile: &str) -> Result<TokenLease, LoginError> {
        loop {
            if let Some(token) = self.cached(profile) {
                return Ok(token);
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
            if let Some(token) = state.usable() {
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

    /// Obtains a new token with the state's credentials (a login, or an OAuth refresh whose new
    /// refresh token goes to `keep` first) and makes it current. Call with the login lock held.
    pub(super) async fn renew(
        &self,
        state: &Arc<ProfileState>,
        keep: Keep<'_>,
    ) -> Result<Arc<Token>, LoginError> {
        let name = state.name();
        let obtained = match &state.source {
            Source::Login(login) => self.log_in(state, login).await,
            Source::OAuth(grant) => self.refresh_grant(state, grant, keep).await,
        };
        match obtained {
            Ok(token) => {
                let token = Arc::new(token);
                state.record_success();
                self.inner.metrics.login(name, LoginOutcome::Success);
                match token.expires_at() {
                    None => {
                        tracing::info!(profile = %name, token = %token.fingerprint(), "logged in")
                    }
                    Some(expires) => {
                        let valid_s = expires
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .as_secs();
                        tracing::info!(profile = %name, token = %token.fingerprint(), valid_s, "refreshed the OAuth access token")
                    }
                }
                if self.is_current(state) {
                    state.set_current(token.clone());
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

    /// `POST /v3/user-session`, with a TOTP code for a time step not used yet.
    async fn log_in(
        &self,
        state: &ProfileState,
        login: &LoginCredentials,
    ) -> Result<Token, LoginFailure> {
        let LoginCredentials {
            email,
            password,
            totp_secret,
        } = login;
        let code = match totp_secret {
            Some(secret) => Some(self.totp_code(state, secret).await),
            None => None,
        };
        self.inner
            .auth
            .login(email, password, code.as_deref())
            .await
    }

    /// A code for a time step this profile has not used yet, waiting for the next step if needed.
    async fn totp_code(&self, state: &ProfileState, secret: &TotpSecret) -> String {
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

    /// What `/status` and the probes report of every profile with a session.
    pub fn snapshot(&self) -> Vec<ProfileStatus> {
        let mut states: Vec<_> = self.inner.profiles.load().values().cloned().collect();
        states.sort_by(|a, b| a.name().cmp(b.name()));
        states.iter().map(|state| state.report()).collect()
    }

    /// The current token, leased for one request, without logging in (none when an access token
    /// is past its use).
    pub fn cached(&self, profile: &str) -> Option<TokenLease> {
        // The hot path of every request: one load of the profiles, one lookup, one load of the
        // token, and no clone of the profile's state.
        let profiles = self.inner.profiles.load();
        profiles.get(profile)?.usable().map(TokenLease::new)
    }

    /// Drops `stale` if it is still the profile's current token; a newer token is kept.
    /// Returns whether it was dropped (and counts the re-authentication under `trigger`). The
    /// re-login that follows is immediate, unless fresh tokens keep being rejected: then it is held
    /// back (see `backoff::RejectionStreak`), and said so once per backoff.
    pub async fn invalidate(&self, profile: &str, stale: &Arc<Token>, trigger: Trigger) -> bool {
        let Some(state) = self.state(profile) else {
            return false;
        };
        state.mark_dead(stale);
        // Fleet-wide compare-then-invalidate, before the local one so that nothing re-reads the
        // dead token from the store into the profile: a newer token another replica published
        // survives.
        if let Some(store) = &self.inner.store
            && let Err(e) = store.remove_if(&state.account, stale.header()).await
        {
            self.store_unavailable(&e);
        }
        if !state.drop_if_current(stale) {
            return false;
        }
        self.inner.metrics.reauth(profile, trigger);
        match state.record_rejection(stale) {
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
        let _one_at_a_time = self
            .inner
            .reconfiguring
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.inner.profiles.load_full();
        let mut retired = Vec::new();
        let mut relogin = Vec::new();
        let mut next = Profiles::default();
        for p in &config.profiles {
            if !p.has_session() {
                continue;
            }
            let fresh = || ProfileState::new(p.clone(), &self.inner.base_url).map(Arc::new);
            let state = match current.get(&p.name) {
                Some(old) if old.source.same_credentials(p) => {
                    old.config.store(p.clone());
                    old.clone()
                }
                Some(old) => {
                    let Some(state) = fresh() else { continue };
                    tracing::info!(profile = %p.name, "credentials changed; logging in with the new ones");
                    state.source.carry_over(&old.source);
                    retired.push(old.clone());
                    relogin.push(p.name.clone());
                    self.inner.metrics.reauth(&p.name, Trigger::Rotate);
                    state
                }
                None => {
                    let Some(state) = fresh() else { continue };
                    relogin.push(p.name.clone());
                    state
                }
            };
            next.insert(p.name.clone(), state);
        }
        for (name, state) in current.iter() {
            if !next.contains_key(name) {
                tracing::info!(profile = %name, "profile removed; logging its session out");
                retired.push(state.clone());
            }
        }
        self.inner.profiles.store(Arc::new(next));
        for state in retired {
            let this = self.clone();
            tokio::spawn(async move {
                // A login still running with the old credentials makes its token current first
                // (it checked before the swap); that token goes with the state.
                let _login_done = state.login_lock.lock().await;
                if let Some(token) = state.take_current() {
                    this.retire(state.name().clone(), state.account.clone(), token);
                }
            });
        }
        for name in relogin {
            let this = self.clone();
            tokio::spawn(async move { this.token(&name).await.ok() });
        }
        self.start_care();
    }

    /// Shutdown, before [`Self::logout_all`]: stops background care and waits, until `deadline`
    /// at most, for the logins in flight to finish, so that the sessions they create are logged
    /// out with the others rather than left among the account's 20.
    pub async fn finish_logins(&self, deadline: tokio::time::Instant) {
        self.stop_care();
        let states: Vec<_> = self.inner.profiles.load().values().cloned().collect();
        // A login runs in a task of its own that holds its profile's login lock.
        let logins = states.iter().map(|state| async move {
            let _ = tokio::time::timeout_at(deadline, state.login_lock.lock()).await;
        });
        futures_util::future::join_all(logins).await;
    }

    /// Logs out every current session of profiles with `logout_on_shutdown`, and every retiring
    /// session (those were to be logged out anyway), concurrently.
    pub async fn logout_all(&self) {
        self.stop_care();
        let states: Vec<_> = self
            .inner
            .profiles
            .load()
            .values()
            .filter(|s| s.config.load().logout_on_shutdown)
            .cloned()
            .collect();
        let logouts = states.into_iter().map(|state| async move {
            // A session shared through the fleet store stays: the other replicas are using it.
            let shared = self.inner.store.is_some()
                && !state.local_only.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(token) = state.take_current()
                && !shared
            {
                self.logout(state.name(), &token).await;
            }
        });
        futures_util::future::join(
            futures_util::future::join_all(logouts),
            self.inner.retirements.finish(),
        )
        .await;
    }

    /// Replaces a token that is still valid (max age, or an access token due for renewal): obtain
    /// the new one first, then retire the old one.
    pub(super) async fn refresh(
        &self,
        state: &Arc<ProfileState>,
        old: Arc<Token>,
        trigger: Trigger,
    ) {
        let single_flight = state.login_lock.clone().lock_owned().await;
        let still_current = state.current().is_some_and(|t| Arc::ptr_eq(&t, &old));
        if !still_current || state.check_blocked().is_err() {
            return;
        }
        // In a task of its own that holds the lock, like every login: stopping the care task at
        // shutdown must not cut a login short and leave its session behind.
        let (this, state) = (self.clone(), state.clone());
        let refresh = tokio::spawn(async move {
            let _single_flight = single_flight;
            let refreshed = match &this.inner.store {
                None => this.renew(&state, Keep::Local).await.is_ok(),
                Some(store) => this.refresh_shared(store, &state, &old).await,
            };
            if refreshed {
                let name = state.name().clone();
                this.inner.metrics.reauth(&name, trigger);
                this.retire(name, state.account.clone(), old);
            }
        });
        let _ = refresh.await;
    }
}
