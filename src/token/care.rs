//! Background care of each session profile's token, one task per profile: validation against
//! `GET /v3/user` every `validate_interval` (so an evicted token is found before a client meets
//! it), a fresh login after `max_token_age`, an OAuth access token's refresh ahead of its expiry
//! (and keeping a refresh token that could not be kept before), and, with a fleet store, keeping
//! in step with the fleet's shared session. The tasks hold no reference to the manager while they
//! sleep, and end with it.
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::TokenManager;
use super::manager::Inner;
use super::session::Validity;
use crate::metrics::Trigger;

/// How often a profile without validation or max age still looks at its token.
const CARE_IDLE: Duration = Duration::from_secs(60);
/// How often a replica of a fleet compares its token with the shared one.
pub(super) const FLEET_SYNC: Duration = Duration::from_secs(2);
/// How often an OAuth profile without a usable token looks for a new refresh token kept by
/// `oauth login` (or another replica), in case refused ones hold it back; and how soon one whose
/// refresh token could not be kept tries again.
const KEPT_LOOK: Duration = Duration::from_secs(2);
/// The care loop never spins faster than this, whatever the settings.
const CARE_MIN_TICK: Duration = Duration::from_millis(50);

impl TokenManager {
    /// (Re)starts one background task per session profile for `validate_interval`, `max_token_age`
    /// and OAuth renewals.
    pub fn start_care(&self) {
        let names: Vec<Arc<str>> = self.inner.profiles.load().keys().cloned().collect();
        let weak = Arc::downgrade(&self.inner);
        let mut care = self.inner.care.lock().unwrap_or_else(|e| e.into_inner());
        for task in care.drain(..) {
            task.abort();
        }
        for name in names {
            let task = watch_token(weak.clone(), self.inner.token_cached.clone(), name);
            care.push(tokio::spawn(task).abort_handle());
        }
    }

    pub(super) fn stop_care(&self) {
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
}

/// Watches over one profile's token until the token manager is gone: validates it, renews it at
/// max age or ahead of its expiry, and keeps it in step with the fleet.
async fn watch_token(weak: Weak<Inner>, token_cached: Arc<tokio::sync::Notify>, name: Arc<str>) {
    let mut last_validated = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let this = TokenManager { inner };
        let Some(state) = this.state(&name) else {
            return;
        };
        let config = state.config.load_full();
        let token = state.current();
        // With a fleet store, also look at the shared session every few seconds.
        let until_sync = this.inner.store.as_ref().map(|_| FLEET_SYNC);
        let until_validate = config
            .validate_interval
            .map(|every| every.saturating_sub(last_validated.elapsed()));
        // A renewal that is backing off waits for its backoff, not for the (passed) moment.
        let until_renewal = token
            .as_ref()
            .and_then(|t| renewal_in(t, config.max_token_age))
            .map(|left| left.max(state.retry_in().unwrap_or_default()));
        // Without a usable token an OAuth profile may be held back by a refused refresh token, now
        // or once its first refresh fails; and a refresh token not kept yet is tried again soon.
        let until_kept = match &state.source {
            super::source::Source::OAuth(grant) => (grant.is_unsaved()
                || token.as_ref().is_none_or(|t| !t.is_usable()))
            .then_some(KEPT_LOOK),
            super::source::Source::Login(_) => None,
        };
        let wait = [until_validate, until_renewal, until_sync, until_kept]
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
        this.keep_again(&state).await;
        if this.look_for_new_grant(&state).await {
            let _ = this.token(&name).await;
        }
        let Some(token) = state.current() else {
            continue;
        };
        state.status().rejections.alive(token.age());
        if token.renew_in() == Some(Duration::ZERO) {
            this.refresh(&state, token, Trigger::Expiry).await;
            continue;
        }
        if config.max_token_age.is_some_and(|max| token.age() >= max) {
            this.refresh(&state, token, Trigger::MaxAge).await;
            continue;
        }
        if config
            .validate_interval
            .is_some_and(|every| last_validated.elapsed() >= every)
            && token.is_usable()
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

/// How long until `token` is due for renewal: an access token ahead of its expiry, an `authtoken`
/// at `max_token_age` (if set).
fn renewal_in(token: &super::Token, max_token_age: Option<Duration>) -> Option<Duration> {
    token
        .renew_in()
        .or_else(|| max_token_age.map(|max| max.saturating_sub(token.age())))
}
