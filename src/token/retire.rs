//! Retiring sessions: a session that is no longer wanted (rotated credentials, a max-age refresh,
//! a fleet converging on one session) is logged out as soon as no request uses it any more, at
//! most [`RETIRE_WAIT`] later, and at once when the proxy shuts down, so none of the account's 20
//! sessions is left behind. Use is counted by [`TokenLease`](super::TokenLease)s. An OAuth access
//! token retires the same way, but has nothing to log out.
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Token, TokenKind, TokenManager};

/// A retiring session is logged out once the requests using it are done, or after this long:
/// a request that holds it longer (a slow upload) then meets a 401 and is replayed, or fails, as
/// after any eviction.
pub const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// The retirements under way: each waits for its token to be unused, then logs it out.
#[derive(Default)]
pub(super) struct Retirements {
    tasks: TaskTracker,
    /// Cancelled at shutdown: stop waiting, log out now.
    now: CancellationToken,
}

/// Why a retirement stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Unused,
    WaitedTooLong,
    ShuttingDown,
}

impl Retirements {
    fn spawn(&self, retirement: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(retirement);
    }

    /// Waits until no request uses `token`, `patience` ([`RETIRE_WAIT`]) passes, or shutdown
    /// hurries it.
    async fn unused(&self, token: &Token, patience: Duration) -> Ended {
        tokio::select! {
            _ = token.unused() => Ended::Unused,
            _ = tokio::time::sleep(patience) => Ended::WaitedTooLong,
            _ = self.now.cancelled() => Ended::ShuttingDown,
        }
    }

    /// Shutdown: every retirement logs its session out now; returns when all have.
    pub(super) async fn finish(&self) {
        self.now.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl TokenManager {
    /// Logs a session out in the background once no request uses it any more (first taking it
    /// out of the fleet store, if it is still there); at shutdown, at once.
    pub(super) fn retire(&self, profile: Arc<str>, account: String, token: Arc<Token>) {
        self.retire_after(std::future::ready(()), profile, account, token);
    }

    /// [`Self::retire`], once `ready` has completed (the users-to-be of `token` hold their leases).
    pub(super) fn retire_after(
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
            let ended = this.inner.retirements.unused(&token, RETIRE_WAIT).await;
            if ended == Ended::WaitedTooLong {
                tracing::info!(profile = %profile, token = %token.fingerprint(), wait_s = RETIRE_WAIT.as_secs(), "a request still uses the retiring session; logging it out anyway");
            }
            this.logout(&profile, &token).await;
        });
    }

    pub(super) async fn logout(&self, profile: &str, token: &Token) {
        // An OAuth access token has no session to end: it expires by itself, and the one call that
        // ends it (revoking the app's authorization) would end the refresh token with it.
        if token.kind() == TokenKind::Bearer {
            return;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenLease;

    fn token() -> Arc<Token> {
        Arc::new(Token::new(http::HeaderValue::from_static("t")))
    }

    #[tokio::test]
    async fn an_unused_token_is_unused_at_once() {
        let retirements = Retirements::default();
        let token = token();
        drop(TokenLease::new(token.clone()));
        assert_eq!(retirements.unused(&token, RETIRE_WAIT).await, Ended::Unused);
    }

    #[tokio::test]
    async fn the_wait_ends_with_the_last_lease() {
        let retirements = Arc::new(Retirements::default());
        let token = token();
        let (first, second) = (
            TokenLease::new(token.clone()),
            TokenLease::new(token.clone()),
        );
        let waiting = tokio::spawn({
            let (retirements, token) = (retirements.clone(), token.clone());
            async move { retirements.unused(&token, RETIRE_WAIT).await }
        });
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one request still uses it");
        drop(second);
        assert_eq!(waiting.await.unwrap(), Ended::Unused);
    }

    #[tokio::test]
    async fn a_lease_held_too_long_or_a_shutdown_ends_the_wait() {
        let retirements = Retirements::default();
        let token = token();
        let _held = TokenLease::new(token.clone());
        let patience = Duration::from_millis(10);
        assert_eq!(
            retirements.unused(&token, patience).await,
            Ended::WaitedTooLong
        );
        retirements.now.cancel();
        assert_eq!(
            retirements.unused(&token, RETIRE_WAIT).await,
            Ended::ShuttingDown
        );
    }
}
