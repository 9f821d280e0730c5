//! Retiring sessions: a session that is no longer wanted (rotated credentials, a max-age refresh,
//! a fleet converging on one session) is logged out as soon as no request uses it any more, at
//! most [`RETIRE_WAIT`] later, and at once when the proxy shuts down, so none of the account's 20
//! sessions is left behind.
//!
//! Use is counted explicitly: every request holds a [`TokenLease`] while it sends with a token.
//! (Counting `Arc` clones does not work: the cache keeps clones of its values after they are
//! removed.)
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Token;

/// A retiring session is logged out once the requests using it are done, or after this long:
/// a request that holds it longer (a slow upload) then meets a 401 and is replayed, or fails, as
/// after any eviction.
pub const RETIRE_WAIT: Duration = Duration::from_secs(30);

/// How many requests are using a token, with a wake-up when that drops to zero.
#[derive(Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a release in between is not missed.
            idle.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A token in use by one request. Dereferences to the token; the use ends when it is dropped.
pub struct TokenLease(Arc<Token>);

impl TokenLease {
    pub(super) fn new(token: Arc<Token>) -> TokenLease {
        token.in_flight.count.fetch_add(1, Ordering::AcqRel);
        TokenLease(token)
    }
}

impl std::ops::Deref for TokenLease {
    type Target = Arc<Token>;

    fn deref(&self) -> &Arc<Token> {
        &self.0
    }
}

impl Drop for TokenLease {
    fn drop(&mut self) {
        if self.0.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.in_flight.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for TokenLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenLease({:?})", self.0)
    }
}

/// The retirements under way: each waits for its token to be unused, then logs it out.
#[derive(Default)]
pub(super) struct Retirements {
    tasks: TaskTracker,
    /// Cancelled at shutdown: stop waiting, log out now.
    now: CancellationToken,
}

/// Why a retirement stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Unused,
    WaitedTooLong,
    ShuttingDown,
}

impl Retirements {
    pub(super) fn spawn(&self, retirement: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(retirement);
    }

    /// Waits until no request uses `token`, `patience` ([`RETIRE_WAIT`]) passes, or shutdown
    /// hurries it.
    pub(super) async fn unused(&self, token: &Token, patience: Duration) -> Ended {
        tokio::select! {
            _ = token.in_flight.idle() => Ended::Unused,
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

#[cfg(test)]
mod tests {
    use super::*;

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
