//! The token requests carry, a login's `authtoken` or an OAuth access token: its value, its
//! fingerprint (all that logs ever show of it), its age, when an access token must be renewed and
//! stops being usable, and the leases by which requests say they are using it.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, header};
use tokio::sync::Notify;

use crate::store;

/// Which header a token goes in, and so what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A login's session token, sent as `authtoken`; no expiry.
    Authtoken,
    /// An OAuth access token, sent as `authorization: Bearer …`; expires.
    Bearer,
}

impl TokenKind {
    pub fn header_name(self) -> HeaderName {
        match self {
            TokenKind::Authtoken => HeaderName::from_static("authtoken"),
            TokenKind::Bearer => header::AUTHORIZATION,
        }
    }
}

/// The most a renewal is drawn earlier than its latest moment, as a share of the lifetime, so that
/// replicas and restarts started together do not renew together.
const RENEW_JITTER: f64 = 0.05;
/// No token is renewed, or given up as expired, younger than this, whatever lifetime the token
/// endpoint claims: a refresh per second at most, however short-lived the answers.
const MIN_RENEW_AGE: Duration = Duration::from_secs(1);

/// When an expiring token should be renewed and when it stops being usable.
struct Expiry {
    expires_at: SystemTime,
    /// After this, a request does not use it: it would likely expire on the way.
    usable_until: Instant,
    /// The care loop renews it from here on.
    renew_at: Instant,
}

impl Expiry {
    /// The SDKs treat an access token as expired a minute early; the proxy renews well before that:
    /// max(60 s, 10 % of the lifetime) before the expiry (but no earlier than half-way), less up to
    /// another 5 % of the lifetime drawn at random. Requests use the token until a tenth of its
    /// lifetime (at most 60 s) before it expires, so one sent just before that still arrives in
    /// time; a renewal that keeps failing therefore has that whole span to succeed.
    fn new(obtained: Instant, obtained_at: SystemTime, lifetime: Duration, jitter: f64) -> Expiry {
        let margin = Duration::from_secs(60).max(lifetime / 10).min(lifetime / 2);
        let spread = lifetime.mul_f64(RENEW_JITTER * jitter.clamp(0.0, 1.0));
        let renew_after = lifetime
            .saturating_sub(margin)
            .saturating_sub(spread)
            .max(MIN_RENEW_AGE);
        // However short the lifetime claimed, a token is used for a second: if it is really dead
        // by then, the 401s it meets are bounded like any (see `backoff::RejectionStreak`), where
        // treating it as expired at once would refresh for every request.
        let usable_for = lifetime
            .saturating_sub((lifetime / 10).min(Duration::from_secs(60)))
            .max(MIN_RENEW_AGE);
        Expiry {
            expires_at: obtained_at + lifetime,
            usable_until: obtained + usable_for,
            renew_at: obtained + renew_after,
        }
    }
}

/// A live token. `Debug` and logs show only a fingerprint.
pub struct Token {
    kind: TokenKind,
    header: HeaderValue,
    fingerprint: String,
    obtained: Instant,
    obtained_at: SystemTime,
    /// OAuth access tokens only.
    expiry: Option<Expiry>,
    /// The requests using it, which a retiring session waits for.
    in_flight: InFlight,
}

impl Token {
    /// An `authtoken` this process just obtained.
    pub fn new(header: HeaderValue) -> Token {
        Token::restored(TokenKind::Authtoken, header, SystemTime::now(), None)
    }

    /// An OAuth access token this process just obtained, valid for `lifetime`; `None` if it cannot
    /// be sent in a header.
    pub fn bearer(access_token: &str, lifetime: Duration) -> Option<Token> {
        let header = HeaderValue::from_str(&format!("Bearer {access_token}")).ok()?;
        let now = SystemTime::now();
        Some(Token::restored(
            TokenKind::Bearer,
            header,
            now,
            Some(now + lifetime),
        ))
    }

    /// A token obtained (by some replica) at `obtained_at`, expiring at `expires_at` if it does:
    /// read back from the fleet store, or just made.
    pub fn restored(
        kind: TokenKind,
        mut header: HeaderValue,
        obtained_at: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> Token {
        header.set_sensitive(true);
        let now = SystemTime::now();
        let age = now.duration_since(obtained_at).unwrap_or_default();
        let obtained = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let expiry = expires_at.map(|expires_at| {
            let lifetime = expires_at.duration_since(obtained_at).unwrap_or_default();
            Expiry::new(obtained, obtained_at, lifetime, rand::random::<f64>())
        });
        Token {
            kind,
            fingerprint: fingerprint(header.as_bytes()),
            header,
            obtained,
            obtained_at,
            expiry,
            in_flight: InFlight::default(),
        }
    }

    /// The token as the fleet store shares it.
    pub fn shared(&self) -> store::SharedToken {
        store::SharedToken {
            header: self.header.clone(),
            obtained_at: self.obtained_at,
            expires_at: self.expires_at(),
        }
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The header the token goes in: `authtoken` or `authorization`.
    pub fn header_name(&self) -> HeaderName {
        self.kind.header_name()
    }

    /// The header's value (marked sensitive, so HTTP/2 never indexes it).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// When an access token expires; `None` for an `authtoken`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expiry.as_ref().map(|e| e.expires_at)
    }

    /// Whether a request may still use it: always for an `authtoken`, until shortly before its
    /// expiry for an access token.
    pub fn is_usable(&self) -> bool {
        self.expiry
            .as_ref()
            .is_none_or(|e| Instant::now() < e.usable_until)
    }

    /// How long until an access token should be renewed (zero when due); `None` for an
    /// `authtoken`.
    pub fn renew_in(&self) -> Option<Duration> {
        self.expiry
            .as_ref()
            .map(|e| e.renew_at.saturating_duration_since(Instant::now()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry(lifetime: Duration, jitter: f64) -> (Duration, Duration) {
        let now = Instant::now();
        let e = Expiry::new(now, SystemTime::now(), lifetime, jitter);
        (e.renew_at - now, e.usable_until - now)
    }

    #[test]
    fn an_access_token_is_renewed_well_ahead_and_used_until_just_before_its_expiry() {
        let hour = Duration::from_secs(3600);
        // 10 % (six minutes) ahead, plus up to 5 % (three minutes) of jitter; used until a minute
        // before the end, as the SDKs treat it.
        assert_eq!(
            expiry(hour, 0.0),
            (Duration::from_secs(54 * 60), Duration::from_secs(59 * 60))
        );
        assert_eq!(expiry(hour, 1.0).0, Duration::from_secs(51 * 60));
        // Ten minutes: a minute ahead at least.
        let ten = Duration::from_secs(600);
        assert_eq!(
            expiry(ten, 0.0),
            (Duration::from_secs(540), Duration::from_secs(540))
        );
        // Short lifetimes: no earlier than half-way.
        let eight = Duration::from_secs(8);
        assert_eq!(
            expiry(eight, 0.0),
            (Duration::from_secs(4), Duration::from_millis(7200))
        );
        // A lifetime claimed absurdly short: a second, not a refresh per request.
        let blink = Duration::from_millis(1);
        assert_eq!(expiry(blink, 0.5), (MIN_RENEW_AGE, MIN_RENEW_AGE));
    }

    #[test]
    fn a_bearer_token_goes_in_authorization_and_shows_only_its_fingerprint() {
        let token = Token::bearer("at-secret", Duration::from_secs(3600)).unwrap();
        assert_eq!(token.header_name(), http::header::AUTHORIZATION);
        assert_eq!(token.header(), "Bearer at-secret");
        assert!(token.header().is_sensitive());
        assert!(token.is_usable());
        assert!(!format!("{token:?}").contains("secret"));
        assert!(Token::bearer("a\r\nb", Duration::from_secs(1)).is_none());
        let login = Token::new(HeaderValue::from_static("blt1"));
        assert_eq!(login.header_name(), "authtoken");
        assert_eq!((login.expires_at(), login.renew_in()), (None, None));
    }
}
