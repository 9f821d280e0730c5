//! One profile's session state, the single source of truth about it: its settings, how it obtains
//! its token (a login, or an OAuth refresh: `source.rs`), its current token, and how its logins
//! and refreshes have gone (backoff, TOTP steps, the login-storm count). [`ProfileStatus`] is what
//! the admin endpoints see of it, [`LoginError`] what a request gets while no token can be had.
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::Token;
use super::backoff::{self, RejectionStreak};
use super::failure::{LoginFailure, TransientCause};
use super::source::Source;
use crate::config::ProfileConfig;
use crate::metrics::LoginOutcome;
use crate::store::SharedFailure;

/// Why a request cannot have a token now; becomes a 503 with `Retry-After`. Its text names the
/// failure down to its cause (a refused connection, a certificate error), as logs and clients
/// need it; the failure stays its source too.
#[derive(Debug, Clone, thiserror::Error)]
#[error("profile {profile:?}: {}; next login attempt in {}s{}", crate::error_text::error_chain_text(&**failure), retry_after.as_secs().max(1), if failure.is_rejected() { " or when the credentials change" } else { "" })]
pub struct LoginError {
    pub profile: Arc<str>,
    #[source]
    pub failure: Arc<LoginFailure>,
    pub retry_after: Duration,
}

/// A profile with a session as the admin endpoints see it. Holds no secret and no token.
#[derive(Debug, Clone)]
pub struct ProfileStatus {
    pub name: Arc<str>,
    /// `login` or `oauth`.
    pub mode: &'static str,
    pub token_age: Option<Duration>,
    /// How long the current OAuth access token remains valid.
    pub token_expires_in: Option<Duration>,
    /// An OAuth profile's newest refresh token could not be kept (state file or fleet store): it
    /// is lost if the process stops before a later attempt keeps it.
    pub refresh_token_unsaved: bool,
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
pub(super) struct LoginStatus {
    ever_logged_in: bool,
    consecutive_failures: u32,
    /// No login is attempted before this instant.
    retry_at: Option<Instant>,
    last_failure: Option<Arc<LoginFailure>>,
    pub(super) last_totp_step: Option<u64>,
    last_attempt: Option<(SystemTime, LoginOutcome)>,
    /// Tokens rejected in a row soon after their login; unlike the failures above, a successful
    /// login does not end it.
    pub(super) rejections: RejectionStreak,
}

/// How many fingerprints of rejected tokens a profile remembers.
const DEAD_REMEMBERED: usize = 8;

/// One profile's session state. Replaced as a whole when its credentials change, which clears the
/// backoff and the TOTP history with it; other setting changes keep it.
pub(super) struct ProfileState {
    name: Arc<str>,
    /// The profile's settings; replaced in place by a reload that keeps the credentials.
    pub(super) config: ArcSwap<ProfileConfig>,
    /// How this state obtains tokens, with credentials fixed for its life (other credentials,
    /// another state).
    pub(super) source: Source,
    /// The token requests use; replaced by a login, dropped only by compare-and-swap.
    current: ArcSwapOption<Token>,
    /// Held by the one login in flight; waiters queue here, then find the token.
    pub(super) login_lock: Arc<tokio::sync::Mutex<()>>,
    status: Mutex<LoginStatus>,
    /// The account's name in the fleet store.
    pub(super) account: String,
    /// When these credentials were loaded: without a fleet key, failures other replicas shared
    /// count only if they happened after this.
    pub(super) loaded_at: SystemTime,
    /// The current token was obtained while the fleet store was unavailable, and is not shared.
    pub(super) local_only: AtomicBool,
    /// Fingerprints of the last tokens Contentstack rejected here: never taken from the fleet
    /// store again, however late a read of it arrives.
    dead: Mutex<VecDeque<String>>,
}

impl ProfileState {
    /// The state of `config`'s profile; `None` for a management-token profile, which has none.
    pub(super) fn new(config: Arc<ProfileConfig>, base_url: &str) -> Option<Self> {
        let account = Source::account(&config, base_url)?;
        Some(Self {
            name: config.name.clone(),
            source: Source::of(&config, &account)?,
            account,
            config: ArcSwap::new(config),
            current: ArcSwapOption::empty(),
            login_lock: Arc::default(),
            status: Mutex::default(),
            loaded_at: SystemTime::now(),
            local_only: AtomicBool::default(),
            dead: Mutex::default(),
        })
    }

    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The token requests use now, if any.
    pub(super) fn current(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// The current token if a request may use it now (an access token past its use is as good
    /// as none).
    pub(super) fn usable(&self) -> Option<Arc<Token>> {
        self.current().filter(|t| t.is_usable())
    }

    /// Makes `token` the one requests use.
    pub(super) fn set_current(&self, token: Arc<Token>) {
        self.current.store(Some(token));
    }

    /// Takes the token away from requests (to retire or log it out).
    pub(super) fn take_current(&self) -> Option<Arc<Token>> {
        self.current.swap(None)
    }

    /// Drops the current token if it is `stale`'s session (the same header, even if this replica
    /// holds another copy of it, read from the store); a newer token is kept. Returns whether it
    /// was dropped.
    pub(super) fn drop_if_current(&self, stale: &Token) -> bool {
        let mut seen = self.current.load();
        loop {
            match &*seen {
                Some(token) if token.header() == stale.header() => {
                    let before = self.current.compare_and_swap(&seen, None);
                    if same(&before, &seen) {
                        return true;
                    }
                    // Replaced meanwhile: judge the newer one.
                    seen = before;
                }
                _ => return false,
            }
        }
    }

    pub(super) fn mark_dead(&self, token: &Token) {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if dead.len() == DEAD_REMEMBERED {
            dead.pop_front();
        }
        dead.push_back(token.fingerprint().to_owned());
    }

    pub(super) fn is_dead(&self, token: &Token) -> bool {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|f| f == token.fingerprint())
    }

    pub(super) fn status(&self) -> MutexGuard<'_, LoginStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `/status` and the probes report of this profile.
    pub(super) fn report(&self) -> ProfileStatus {
        let token = self.usable();
        let status = self.status();
        let now = Instant::now();
        let retry_in = status.retry_at.filter(|at| *at > now).map(|at| at - now);
        ProfileStatus {
            name: self.name.clone(),
            mode: self.source.mode(),
            token_age: token.as_ref().map(|t| t.age()),
            token_expires_in: token
                .as_ref()
                .and_then(|t| t.expires_at())
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default()),
            refresh_token_unsaved: match &self.source {
                Source::OAuth(grant) => grant.is_unsaved(),
                Source::Login(_) => false,
            },
            ever_logged_in: status.ever_logged_in,
            // Failed logins, or logins held back because fresh tokens were rejected.
            failing: status.consecutive_failures > 0 || retry_in.is_some(),
            last_attempt: status.last_attempt,
            last_error: status
                .last_failure
                .as_ref()
                .map(|f| crate::error_text::error_chain_text(&**f)),
            retry_in,
        }
    }

    /// Fails fast while a known-failing login is backing off.
    pub(super) fn check_blocked(&self) -> Result<(), LoginError> {
        let status = self.status();
        match (status.retry_at, &status.last_failure) {
            (Some(at), Some(failure)) if at > Instant::now() => Err(LoginError {
                profile: self.name.clone(),
                failure: failure.clone(),
                retry_after: at - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    /// How long logins are still held back by backoff.
    pub(super) fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.status()
            .retry_at
            .filter(|at| *at > now)
            .map(|at| at - now)
    }

    /// Whether logins are held back because the credentials were refused (not for trouble on
    /// the way).
    pub(super) fn held_back_as_refused(&self) -> bool {
        let status = self.status();
        status.retry_at.is_some_and(|at| at > Instant::now())
            && status
                .last_failure
                .as_ref()
                .is_some_and(|f| f.is_rejected())
    }

    /// New credentials arrived that the refusal did not concern: the next attempt may go now.
    pub(super) fn lift_hold(&self) {
        self.status().retry_at = None;
    }

    pub(super) fn record_success(&self) {
        let mut status = self.status();
        status.ever_logged_in = true;
        status.consecutive_failures = 0;
        status.retry_at = None;
        status.last_failure = None;
        status.last_attempt = Some((SystemTime::now(), LoginOutcome::Success));
    }

    /// Contentstack rejected `token` (401/105). When it is one more young token rejected in a row,
    /// the next login is held back like a failing one; returns the error requests then get.
    pub(super) fn record_rejection(&self, token: &Token) -> Option<LoginError> {
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
            profile: self.name.clone(),
            failure,
            retry_after: delay,
        })
    }

    pub(super) fn record_failure(&self, failure: LoginFailure) -> LoginError {
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
            profile: self.name.clone(),
            failure,
            retry_after: delay,
        }
    }

    /// Another replica's login with these credentials failed: wait `retry_after`, as it waits.
    pub(super) fn record_shared_failure(
        &self,
        shared: &SharedFailure,
        retry_after: Duration,
    ) -> LoginError {
        let failure = if shared.rejected {
            self.source.refused(shared)
        } else if shared.http_status != 0 {
            LoginFailure::Transient(TransientCause::Fleet(format!(
                "Contentstack answered HTTP {}",
                shared.http_status
            )))
        } else {
            LoginFailure::Transient(TransientCause::Fleet(
                "Contentstack could not be reached or did not answer".to_owned(),
            ))
        };
        let failure = Arc::new(failure);
        let mut status = self.status();
        status.consecutive_failures = status.consecutive_failures.max(1);
        status.retry_at = Some(Instant::now() + retry_after);
        status.last_failure = Some(failure.clone());
        LoginError {
            profile: self.name.clone(),
            failure,
            retry_after,
        }
    }
}

/// Whether two loads of a token slot hold the same token (or both none).
fn same(a: &Option<Arc<Token>>, b: &Option<Arc<Token>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ProfileState {
        let profile = Arc::new(crate::config::tests::login_profile(""));
        ProfileState::new(profile, "https://api.contentstack.io").unwrap()
    }

    fn token(value: &'static str) -> Arc<Token> {
        Arc::new(Token::new(http::HeaderValue::from_static(value)))
    }

    #[test]
    fn only_the_session_that_died_is_dropped_and_a_newer_one_is_kept() {
        let state = state();
        let (old, new) = (token("old"), token("new"));
        state.set_current(new.clone());
        assert!(!state.drop_if_current(&old), "a newer token is kept");
        assert!(state.current().is_some_and(|t| Arc::ptr_eq(&t, &new)));
        // Another copy of the same session (read back from the fleet store) is the same session.
        let copy = token("new");
        assert!(state.drop_if_current(&copy));
        assert!(state.current().is_none());
        assert!(!state.drop_if_current(&new), "nothing left to drop");
    }
}
