//! The `authtoken` itself: its value, its fingerprint (all that logs ever show of it), its age, and
//! the leases by which requests say they are using it.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use tokio::sync::Notify;

use crate::store;

/// A live `authtoken`. `Debug` and logs show only a fingerprint.
pub struct Token {
    header: HeaderValue,
    fingerprint: String,
    obtained: Instant,
    obtained_at: SystemTime,
    /// The requests using it, which a retiring session waits for.
    in_flight: InFlight,
}

impl Token {
    /// A token this process just obtained.
    pub fn new(header: HeaderValue) -> Token {
        Token::restored(header, SystemTime::now())
    }

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
            in_flight: InFlight::default(),
        }
    }

    /// The token as the fleet store shares it.
    pub fn shared(&self) -> store::SharedToken {
        store::SharedToken {
            header: self.header.clone(),
            obtained_at: self.obtained_at,
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

    /// Resolves once no request holds a lease on this token.
    pub(super) async fn unused(&self) {
        self.in_flight.idle().await
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(sha256:…{})", self.fingerprint)
    }
}

/// The last 8 hex digits of the SHA-256 of a secret: enough to tell tokens apart in logs, useless to
/// an attacker.
fn fingerprint(secret: &[u8]) -> String {
    // The tail of the digest the fleet store names the token by.
    store::sha256_hex(secret)[56..].to_owned()
}

/// How many requests are using a token, with a wake-up when that drops to zero. Use is counted
/// explicitly, by leases: counting `Arc` clones would also count the holders that merely keep the
/// token (a profile's state, a retirement waiting for it).
#[derive(Default)]
struct InFlight {
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
