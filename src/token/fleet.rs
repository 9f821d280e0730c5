//! How a token manager uses the fleet store: obtain the shared session (or be the one replica that
//! logs in, or refreshes an OAuth authorization, for everyone), share failures so refused
//! credentials are tried once per window across the fleet, renew at max age or ahead of expiry
//! under the fleet lock, and converge on one session after an outage. Whenever the store fails, a
//! login profile works on its own (its cache, its logins) and says so; an OAuth profile keeps
//! serving its access token but does not refresh alone, since that would spend a refresh token
//! the other replicas still hold.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::care::FLEET_SYNC;
use super::grant::Grant;
use super::refresh::{Identity, Keep};
use super::source::Source;
use super::state::{LoginError, ProfileState};
use super::{LoginFailure, Token, TokenKind, TokenLease, TokenManager, TransientCause};
use crate::metrics::StoreEvent;
use crate::store::{
    Lock, PROBE_MAX, RedisStore, SharedFailure, SharedToken, StoreError, Stored, unix_ms,
};

/// How often a waiting replica looks for the token the lock holder publishes.
const POLL: Duration = Duration::from_millis(25);

/// How long no replica refreshes after one put a refresh token into a store that held none: long
/// enough for every live replica to notice that the store is back (a probe at least every
/// [`PROBE_MAX`], each taking up to the store's `timeout`) and to put back its own, if newer (a
/// sync every [`FLEET_SYNC`]), so that the next refresh uses the newest token of the fleet rather
/// than one a replica has already used.
fn settle(store: &RedisStore) -> Duration {
    PROBE_MAX + store.timeout() + FLEET_SYNC + Duration::from_secs(3)
}

/// The longest a live lock holder's login can take: a wait for the next TOTP step (codes are never
/// reused) plus the login call itself. The holder keeps its lock alive that long (see
/// [`with_lock_renewed`]),
/// so waiters wait that long before giving up on the fleet and logging in on their own.
const LONGEST_LOGIN: Duration =
    Duration::from_secs(super::totp::STEP_SECONDS + super::session::AUTH_CALL_TIMEOUT.as_secs());

/// Runs `work` while holding `lock`, renewing it every third of `lock_ttl`: a login that outlasts
/// `lock_ttl` (a TOTP step wait, a slow Contentstack) keeps the lock, so no second replica starts
/// one; a holder that dies stops renewing and its lock expires as before.
async fn with_lock_renewed<T>(
    store: &RedisStore,
    account: &str,
    lock: &Lock,
    work: impl std::future::Future<Output = T>,
) -> T {
    let renew = async {
        loop {
            tokio::time::sleep(store.lock_ttl() / 3).await;
            match store.extend(account, lock).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "the fleet login lock expired during a login; another replica may log in too"
                    );
                    return std::future::pending().await;
                }
                // Redis is down: keep trying, the login itself goes on regardless.
                Err(e) => tracing::debug!("cannot renew the fleet login lock: {e}"),
            }
        }
    };
    tokio::select! {
        biased;
        result = work => result,
        never = renew => never,
    }
}

impl TokenManager {
    /// Obtains a token for `state`, with the login lock of this process held.
    pub(super) async fn obtain(&self, state: &Arc<ProfileState>) -> Result<Arc<Token>, LoginError> {
        let Some(store) = self.inner.store.clone() else {
            return self.renew(state, Keep::Local).await;
        };
        match self.obtain_shared(&store, state).await {
            Ok(result) => result,
            Err(e) => {
                self.store_unavailable(&e);
                self.renew_alone(state).await
            }
        }
    }

    /// The store failed: a login profile logs in on its own; an OAuth profile does not refresh.
    async fn renew_alone(&self, state: &Arc<ProfileState>) -> Result<Arc<Token>, LoginError> {
        if let Source::OAuth(_) = state.source {
            let error = state.record_failure(LoginFailure::Transient(TransientCause::StoreNeeded));
            tracing::warn!(profile = %state.name(), retry_after_ms = error.retry_after.as_millis() as u64, "{}", crate::error_text::error_chain_text(&error));
            return Err(error);
        }
        let result = self.renew(state, Keep::Local).await;
        if result.is_ok() {
            state.local_only.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn obtain_shared(
        &self,
        store: &RedisStore,
        state: &Arc<ProfileState>,
    ) -> Result<Result<Arc<Token>, LoginError>, StoreError> {
        let account = &state.account;
        let credentials_tag = state.source.credentials_tag(store);
        // A holder that died leaves its lock for `lock_ttl`; a live one renews it for as long as
        // its login can take.
        let patience = store.lock_ttl().max(LONGEST_LOGIN) + Duration::from_secs(5);
        let deadline = Instant::now() + patience;
        let mut waited = false;
        loop {
            if let Some(token) = store.get(account).await?.valid()
                && let Some(token) = self.adopt(state, token).await
            {
                self.inner.metrics.store_event(StoreEvent::Hit);
                return Ok(Ok(token));
            }
            if let Some(failure) = store.failure(account).await?
                && let Some(hold) = failure.hold(
                    credentials_tag.as_deref(),
                    state.loaded_at,
                    &state.config.load(),
                    SystemTime::now(),
                )
            {
                return Ok(Err(state.record_shared_failure(&failure, hold)));
            }
            if let Some(lock) = store.lock(account).await? {
                self.inner.metrics.store_event(StoreEvent::Miss);
                // Someone may have published between our look and our lock.
                let published = match store.get(account).await {
                    Ok(Stored::Valid(token)) => self.adopt(state, token).await,
                    _ => None,
                };
                let result = match published {
                    Some(token) => Ok(token),
                    None => {
                        with_lock_renewed(store, account, &lock, self.renew_for_fleet(store, state))
                            .await
                    }
                };
                let _ = store.unlock(account, lock).await;
                return Ok(result);
            }
            if !waited {
                self.inner.metrics.store_event(StoreEvent::LockWait);
                waited = true;
            }
            if Instant::now() > deadline {
                return Err(StoreError::LockHeld(patience));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Logs in, or refreshes, for the whole fleet (the fleet lock is held) and publishes the
    /// outcome. A refresh has kept its new refresh token in the store before this publishes the
    /// access token.
    async fn renew_for_fleet(
        &self,
        store: &RedisStore,
        state: &Arc<ProfileState>,
    ) -> Result<Arc<Token>, LoginError> {
        self.inner.metrics.store_event(StoreEvent::FleetLogin);
        let result = self.renew(state, Keep::Fleet(store)).await;
        let published = match &result {
            Ok(token) => match store.put(&state.account, &token.shared()).await {
                Ok(()) => store.clear_failure(&state.account).await,
                Err(e) => Err(e),
            },
            // Nothing Contentstack said: each replica finds it out for itself.
            Err(error) if !error.failure.concerns_the_upstream() => Ok(()),
            Err(error) => {
                let tag = state.source.credentials_tag(store);
                let shared = SharedFailure::new(error, tag);
                store
                    .set_failure(&state.account, &shared, error.retry_after)
                    .await
            }
        };
        if let Err(e) = published {
            self.store_unavailable(&e);
            state.local_only.store(result.is_ok(), Ordering::Relaxed);
        }
        result
    }

    /// Takes a token from the store into this replica's cache, unless this replica already saw
    /// Contentstack reject it (a read that raced with the eviction), or it is an access token past
    /// its use (or not the kind of token this profile sends).
    async fn adopt(&self, state: &Arc<ProfileState>, shared: SharedToken) -> Option<Arc<Token>> {
        let kind = state.source.kind();
        if shared.expires_at.is_some() != (kind == TokenKind::Bearer) {
            return None;
        }
        let token = Token::restored(kind, shared.header, shared.obtained_at, shared.expires_at);
        if state.is_dead(&token) || !token.is_usable() {
            return None;
        }
        let token = Arc::new(token);
        state.record_success();
        state.local_only.store(false, Ordering::Relaxed);
        state.set_current(token.clone());
        self.inner.token_cached.notify_waiters();
        tracing::debug!(profile = %state.name(), token = %token.fingerprint(), "using the fleet's shared token");
        Some(token)
    }

    /// Max age, or an access token due for renewal, with a fleet: one replica renews under the
    /// fleet lock and publishes; the others adopt the newer token when they sync. While the store
    /// is unavailable a login profile logs in on its own (an OAuth profile waits for the store).
    /// Returns whether this replica renewed.
    pub(super) async fn refresh_shared(
        &self,
        store: &RedisStore,
        state: &Arc<ProfileState>,
        old: &Token,
    ) -> bool {
        let account = &state.account;
        let lock = match store.lock(account).await {
            Ok(Some(lock)) => lock,
            // Another replica is logging in for the fleet.
            Ok(None) => return false,
            Err(e) => {
                self.store_unavailable(&e);
                return self.renew_alone(state).await.is_ok();
            }
        };
        let still_shared =
            matches!(store.get(account).await, Ok(Stored::Valid(t)) if t.header == old.header());
        let refreshed = still_shared
            && with_lock_renewed(store, account, &lock, self.renew_for_fleet(store, state))
                .await
                .is_ok();
        let _ = store.unlock(account, lock).await;
        refreshed
    }

    /// Keeps this replica on the fleet's session: adopts a newer shared token, gives up a session
    /// made while the store was down in favour of the shared one, or publishes it when there is none
    /// (or only a value no replica can use).
    pub(super) async fn sync(&self, state: &Arc<ProfileState>) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let name = state.name().clone();
        let local = state.current();
        let local_only = state.local_only.load(Ordering::Relaxed);
        match store.get(&state.account).await {
            Err(e) => self.store_unavailable(&e),
            Ok(Stored::Valid(shared)) => {
                let same = local.as_ref().is_some_and(|l| l.header() == shared.header);
                let newer = local
                    .as_ref()
                    .is_none_or(|l| shared.obtained_at > l.obtained_at());
                if !same && (local_only || newer) && self.adopt(state, shared).await.is_some() {
                    self.inner.metrics.store_event(StoreEvent::Adopt);
                    if let (true, Some(own)) = (local_only, local) {
                        self.retire(name, state.account.clone(), own);
                    }
                }
            }
            Ok(stored @ (Stored::Absent | Stored::Invalid)) => {
                if let (true, Some(own)) = (local_only, local) {
                    // An unreadable value is replaced: left alone it would keep the whole fleet
                    // from sharing again until every replica's own session died.
                    let published = match stored {
                        Stored::Invalid => store
                            .put(&state.account, &own.shared())
                            .await
                            .map(|()| true),
                        _ => store.put_if_absent(&state.account, &own.shared()).await,
                    };
                    match published {
                        Ok(true) => {
                            self.inner.metrics.store_event(StoreEvent::Publish);
                            state.local_only.store(false, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => self.store_unavailable(&e),
                    }
                }
            }
        }
        if let Source::OAuth(grant) = &state.source
            && let Err(e) = self.reconcile_grant(&store, state, grant, false).await
        {
            self.store_unavailable(&e);
        }
    }

    /// Before a refresh for the fleet (the fleet lock is held): this replica's newest refresh
    /// token and the store's are reconciled, and no refresh starts while the fleet is settling
    /// after the store lost its refresh token (docs/design.md#oauth-profiles).
    pub(super) async fn read_fleet_grant(
        &self,
        store: &RedisStore,
        state: &ProfileState,
        grant: &Grant,
    ) -> Result<(), LoginFailure> {
        let settling = match self.reconcile_grant(store, state, grant, true).await {
            Ok(()) => store.grant_settling(&state.account, settle(store)).await,
            Err(e) => Err(e),
        };
        match settling {
            Ok(None) => Ok(()),
            Ok(Some(left)) => Err(LoginFailure::Transient(TransientCause::FleetSettling(left))),
            Err(e) => {
                self.store_unavailable(&e);
                // A replica that refreshed without reading the store could spend a refresh token
                // the others still hold.
                Err(LoginFailure::Transient(TransientCause::StoreNeeded))
            }
        }
    }

    /// Keeps this replica's idea of the newest refresh token in step with the store's: takes a
    /// newer one from the store, and puts back one the store does not have (it restarted empty,
    /// a refresh could not keep its token there, or this replica holds a later one than the
    /// store's), unless a newer one is there by then. Putting one into a store that held none
    /// starts the settling window. Before a refresh (`for_refresh`) that includes a token only
    /// handed in: a replica that started while the store was empty cannot tell a new fleet from
    /// a store that lost its data while other replicas hold later tokens, so it waits too.
    async fn reconcile_grant(
        &self,
        store: &RedisStore,
        state: &ProfileState,
        grant: &Grant,
        for_refresh: bool,
    ) -> Result<(), StoreError> {
        let account = &state.account;
        let (put_back, unreadable) = match store.get_grant(account).await? {
            Stored::Valid(kept) => {
                grant.consider(kept.clone());
                // Further along the same chain only: between chains the store's dates decide, and
                // a new authorization `oauth login` kept there must not be overwritten by an old
                // chain from a replica whose clock is ahead.
                let behind = grant.obtained().is_some_and(|ours| {
                    ours.origin == kept.origin && ours.generation > kept.generation
                });
                (grant.is_unsaved() || behind, false)
            }
            Stored::Absent => (true, false),
            Stored::Invalid => (true, true),
        };
        // In a sync, only a token that came from a refresh or the store: one merely handed in at
        // start-up is compared with the kept one by the next refresh.
        let ours = if for_refresh {
            grant.newest()
        } else {
            grant.obtained()
        };
        let Some(ours) = ours.filter(|_| put_back) else {
            return Ok(());
        };
        let kept = store
            .restore_grant(account, &ours, unreadable, settle(store))
            .await?;
        grant.set_unsaved(false);
        if kept {
            self.inner.metrics.store_event(StoreEvent::Publish);
            tracing::info!(profile = %state.name(), "put the newest refresh token back into the fleet store");
        } else if let Stored::Valid(kept) = store.get_grant(account).await? {
            // A newer one is there: take it.
            grant.consider(kept);
        }
        Ok(())
    }

    /// The store failed: this replica carries on alone. A failed call was counted and logged by
    /// the store (and a failing store is skipped until it answers again); a lock that never came
    /// free is counted and logged here.
    pub(super) fn store_unavailable(&self, error: &StoreError) {
        match error {
            StoreError::LockHeld(_) => {
                self.inner.metrics.store_event(StoreEvent::Error);
                tracing::warn!("{}", crate::error_text::error_chain_text(error));
            }
            StoreError::Redis(_) | StoreError::Timeout(_) | StoreError::Unavailable => {
                tracing::debug!(
                    "working without the fleet token store: {}",
                    crate::error_text::error_chain_text(error)
                );
            }
        }
    }
}

impl SharedFailure {
    /// What the fleet learns of a failed login: status and `error_code`, never Contentstack's
    /// text (which may echo what was sent).
    fn new(error: &LoginError, credentials_tag: Option<String>) -> SharedFailure {
        let (rejected, http_status, error_code) = match &*error.failure {
            LoginFailure::Rejected {
                http_status,
                error_code,
            } => (true, *http_status, *error_code),
            LoginFailure::RefreshRefused { http_status, .. } => (true, *http_status, None),
            LoginFailure::NotAuthorized => (true, 0, None),
            LoginFailure::Transient(TransientCause::Status(status)) => (false, *status, None),
            LoginFailure::Transient(_) => (false, 0, None),
        };
        let now = SystemTime::now();
        SharedFailure {
            rejected,
            http_status,
            error_code,
            failed_at_ms: unix_ms(now),
            retry_at_ms: unix_ms(now + error.retry_after),
            credentials_tag,
        }
    }
}

impl TokenManager {
    /// `check --login` for an OAuth profile: one refresh now, the new refresh token kept as in
    /// service (under the fleet lock, with a store). Returns the new token and who it acts for.
    pub async fn renew_now(&self, profile: &str) -> Result<(TokenLease, Identity), LoginError> {
        let Some(state) = self.state(profile) else {
            return Err(LoginError {
                profile: profile.into(),
                failure: Arc::new(LoginFailure::Transient(TransientCause::ProfileRemoved)),
                retry_after: Duration::from_secs(1),
            });
        };
        let _single_flight = state.login_lock.clone().lock_owned().await;
        let token = match self.inner.store.clone() {
            None => self.renew(&state, Keep::Local).await?,
            Some(store) => match self.renew_with_fleet_lock(&store, &state).await {
                Ok(result) => result?,
                Err(e) => {
                    self.store_unavailable(&e);
                    self.renew_alone(&state).await?
                }
            },
        };
        Ok((
            TokenLease::new(token),
            state.identity(self.inner.store.is_some()),
        ))
    }

    async fn renew_with_fleet_lock(
        &self,
        store: &RedisStore,
        state: &Arc<ProfileState>,
    ) -> Result<Result<Arc<Token>, LoginError>, StoreError> {
        let patience = store.lock_ttl().max(LONGEST_LOGIN) + Duration::from_secs(5);
        let deadline = Instant::now() + patience;
        loop {
            if let Some(lock) = store.lock(&state.account).await? {
                let account = &state.account;
                let result =
                    with_lock_renewed(store, account, &lock, self.renew_for_fleet(store, state))
                        .await;
                let _ = store.unlock(account, lock).await;
                return Ok(result);
            }
            if Instant::now() > deadline {
                return Err(StoreError::LockHeld(patience));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
