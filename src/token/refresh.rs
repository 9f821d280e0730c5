//! An OAuth profile's way to a new access token (docs/design.md#oauth-profiles): refresh with the
//! newest refresh token known, and keep the refresh token that comes back before the access token
//! is used, in the profile's state file or in the fleet store. A refused refresh token is not taken
//! for a dead authorization before what is kept has been read again: `oauth login`, or another
//! replica, may have put a newer one there meanwhile.
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::failure::{LoginFailure, TransientCause};
use super::grant::{Grant, successor};
use super::oauth::Answer;
use super::state::ProfileState;
use super::state_file::{StateFile, StateFileError};
use super::{Token, TokenManager};
use crate::store::{RedisStore, SharedGrant};

/// Where a refresh keeps the refresh token it obtains.
#[derive(Clone, Copy)]
pub(super) enum Keep<'a> {
    /// Without a fleet store: the profile's state file (`state_dir`).
    Local,
    /// The fleet store, by the holder of the fleet's login lock.
    Fleet(&'a RedisStore),
}

impl TokenManager {
    /// Refreshes `grant`'s access token. Call with the login lock held (and, with a fleet, the
    /// fleet lock).
    pub(super) async fn refresh_grant(
        &self,
        state: &ProfileState,
        grant: &Grant,
        keep: Keep<'_>,
    ) -> Result<Token, LoginFailure> {
        self.read_kept(state, grant, keep).await?;
        let used = grant.newest().ok_or(LoginFailure::NotAuthorized)?;
        let failure = match self
            .inner
            .auth
            .refresh(&grant.oauth, &used.refresh_token)
            .await
        {
            Ok(answer) => return self.take_answer(state, grant, &used, answer, keep).await,
            Err(failure) if failure.is_rejected() => failure,
            Err(failure) => return Err(failure),
        };
        grant.refused(&used);
        self.read_kept(state, grant, keep).await?;
        let Some(other) = grant
            .newest()
            .filter(|g| g.refresh_token.expose_secret() != used.refresh_token.expose_secret())
        else {
            return Err(failure);
        };
        tracing::info!(profile = %state.name(), "the refresh token was refused, but a newer one was kept meanwhile; refreshing with it");
        match self
            .inner
            .auth
            .refresh(&grant.oauth, &other.refresh_token)
            .await
        {
            Ok(answer) => self.take_answer(state, grant, &other, answer, keep).await,
            Err(failure) => {
                if failure.is_rejected() {
                    grant.refused(&other);
                }
                Err(failure)
            }
        }
    }

    /// Keeps the refresh token of `answer`, then hands out its access token. A refresh token that
    /// cannot be kept is not thrown away: the endpoint may already have retired the one before it.
    /// It is used, said loudly, shown in `/status`, and kept as soon as that works.
    async fn take_answer(
        &self,
        state: &ProfileState,
        grant: &Grant,
        used: &SharedGrant,
        answer: Answer,
        keep: Keep<'_>,
    ) -> Result<Token, LoginFailure> {
        let next = successor(used, &answer);
        self.keep(state, grant, &next, keep).await;
        grant.consider(next);
        Token::bearer(answer.access_token.expose_secret(), answer.lifetime)
            .ok_or(LoginFailure::Transient(TransientCause::NoAccessToken))
    }

    /// Writes `next` where refresh tokens are kept; says so, and marks the grant, when that fails.
    async fn keep(&self, state: &ProfileState, grant: &Grant, next: &SharedGrant, keep: Keep<'_>) {
        let kept = match keep {
            Keep::Local => match grant.file.clone() {
                Some(file) => save(file, next.clone())
                    .await
                    .map_err(|e| crate::error_text::error_chain_text(&e)),
                None => Err("no state_dir is configured".to_owned()),
            },
            Keep::Fleet(store) => store
                .put_grant(&state.account, next)
                .await
                .inspect_err(|e| self.store_unavailable(e))
                .map_err(|e| crate::error_text::error_chain_text(&e)),
        };
        match kept {
            Ok(()) => grant.set_unsaved(false),
            Err(why) => {
                grant.set_unsaved(true);
                tracing::error!(profile = %state.name(), "the new refresh token could not be kept ({why}); it lives only in this process until it can be, and is lost if the process stops");
            }
        }
    }

    /// Takes what is kept into account before a refresh: the newest of it and what this process
    /// knows is used. With a fleet, the store is reconciled with what this replica knows, and a
    /// store that cannot be read, or a fleet settling after the store lost its refresh token,
    /// means no refresh now (`read_fleet_grant`).
    async fn read_kept(
        &self,
        state: &ProfileState,
        grant: &Grant,
        keep: Keep<'_>,
    ) -> Result<(), LoginFailure> {
        if let Keep::Fleet(store) = keep {
            return self.read_fleet_grant(store, state, grant).await;
        }
        match self.kept(state, grant, keep).await {
            Ok(Some(kept)) => {
                grant.consider(kept);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Unread::File(e)) => {
                tracing::warn!(profile = %state.name(), "ignoring the kept refresh token: {}", crate::error_text::error_chain_text(&e));
                Ok(())
            }
            Err(Unread::Store) => Err(LoginFailure::Transient(TransientCause::StoreNeeded)),
        }
    }

    /// The refresh token kept in `keep`, if there is a usable one.
    async fn kept(
        &self,
        state: &ProfileState,
        grant: &Grant,
        keep: Keep<'_>,
    ) -> Result<Option<SharedGrant>, Unread> {
        match keep {
            Keep::Local => match grant.file.clone() {
                Some(file) => load(file).await.map_err(Unread::File),
                None => Ok(None),
            },
            Keep::Fleet(store) => match store.get_grant(&state.account).await {
                Ok(stored) => Ok(stored.valid()),
                Err(e) => {
                    self.store_unavailable(&e);
                    Err(Unread::Store)
                }
            },
        }
    }

    /// While refused refresh tokens hold an OAuth profile back, looks at what is kept: a token put
    /// there since (by `oauth login`, or another replica) lifts the hold at once, as a new
    /// `refresh_token_file` does through a reload. Returns whether it did.
    pub(super) async fn look_for_new_grant(&self, state: &Arc<ProfileState>) -> bool {
        let super::source::Source::OAuth(grant) = &state.source else {
            return false;
        };
        if !state.held_back_as_refused() {
            return false;
        }
        let keep = match &self.inner.store {
            Some(store) => Keep::Fleet(store),
            None => Keep::Local,
        };
        // Quietly: this runs every few seconds while the profile is held back.
        let Ok(Some(kept)) = self.kept(state, grant, keep).await else {
            return false;
        };
        if !grant.consider(kept) {
            return false;
        }
        tracing::info!(profile = %state.name(), "a new refresh token was kept; trying it now");
        state.lift_hold();
        true
    }

    /// Without a fleet store: keeps a refresh token that could not be kept when it was obtained.
    /// (With one, the fleet sync puts it back.)
    pub(super) async fn keep_again(&self, state: &Arc<ProfileState>) {
        let super::source::Source::OAuth(grant) = &state.source else {
            return;
        };
        if self.inner.store.is_some() || !grant.is_unsaved() {
            return;
        }
        let _single_flight = state.login_lock.lock().await;
        if !grant.is_unsaved() {
            return;
        }
        // Only an obtained token needs keeping: one handed in is in its refresh_token_file.
        match grant.obtained() {
            Some(newest) => {
                self.keep(state, grant, &newest, Keep::Local).await;
                if !grant.is_unsaved() {
                    tracing::info!(profile = %state.name(), "the refresh token is kept at last");
                }
            }
            None => grant.set_unsaved(false),
        }
    }
}

/// Who an OAuth profile's token acts for, and where its refresh token is kept.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user_uid: Option<String>,
    pub organization_uid: Option<String>,
    /// `None` when the newest refresh token could not be kept.
    pub kept_in: Option<String>,
}

impl ProfileState {
    /// Who the profile's token acts for (OAuth profiles), and where its refresh token is kept.
    pub(super) fn identity(&self, fleet: bool) -> Identity {
        let super::source::Source::OAuth(grant) = &self.source else {
            return Identity::default();
        };
        let newest = grant.newest();
        let kept_in = match (&grant.file, fleet) {
            _ if grant.is_unsaved() => None,
            (_, true) => Some("the fleet store".to_owned()),
            (Some(file), false) => Some(file.path().display().to_string()),
            (None, false) => None,
        };
        Identity {
            user_uid: newest.as_ref().and_then(|g| g.user_uid.clone()),
            organization_uid: newest.and_then(|g| g.organization_uid),
            kept_in,
        }
    }
}

/// Why what is kept could not be read.
enum Unread {
    File(StateFileError),
    Store,
}

/// File work runs off the request threads: a sync to disk can take a while.
async fn load(file: Arc<StateFile>) -> Result<Option<SharedGrant>, StateFileError> {
    let path = file.path().to_owned();
    blocking(
        move || file.load(),
        || StateFileError::Read {
            path,
            source: std::io::Error::other("the runtime is shutting down"),
        },
    )
    .await
}

async fn save(file: Arc<StateFile>, grant: SharedGrant) -> Result<(), StateFileError> {
    let path = file.path().to_owned();
    blocking(
        move || file.save(&grant),
        || StateFileError::Write {
            path,
            source: std::io::Error::other("the runtime is shutting down"),
        },
    )
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateFileError> + Send + 'static,
    cancelled: impl FnOnce() -> StateFileError,
) -> Result<T, StateFileError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(cancelled()),
    }
}

/// Why `oauth login` could not keep the new refresh token.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error(transparent)]
    File(#[from] StateFileError),
    #[error("the fleet store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("profile {0:?} is not an OAuth profile")]
    NotOAuth(String),
}

/// Keeps a new authorization's refresh token (`oauth login`) where `profile` reads it: its state
/// file, or the fleet store (whose failure record for it is cleared, so the fleet tries it at
/// once). Returns where, for the operator. A running proxy takes it at its next refresh: it is
/// newer than the chain it holds.
pub async fn keep_authorization(
    config: &crate::Config,
    profile: &crate::config::ProfileConfig,
    grant: SharedGrant,
) -> Result<String, KeepError> {
    let not_oauth = || KeepError::NotOAuth(profile.name.to_string());
    let oauth = profile.oauth().ok_or_else(not_oauth)?;
    let account =
        super::source::Source::account(profile, &config.upstream.base_url).ok_or_else(not_oauth)?;
    match (&config.token_store, &oauth.state_dir) {
        (crate::config::TokenStoreConfig::Redis(redis), _) => {
            let store = RedisStore::new(redis, crate::metrics::Metrics::new())?;
            store.put_grant(&account, &grant).await?;
            store.clear_failure(&account).await?;
            Ok("the fleet store".to_owned())
        }
        (crate::config::TokenStoreConfig::Memory { .. }, Some(dir)) => {
            let file = Arc::new(StateFile::new(
                dir,
                &profile.name,
                oauth.state_key.as_ref(),
                &account,
            ));
            let path = file.path().display().to_string();
            save(file, grant).await?;
            Ok(path)
        }
        // The configuration requires a state_dir without a fleet store.
        (crate::config::TokenStoreConfig::Memory { .. }, None) => Err(not_oauth()),
    }
}
