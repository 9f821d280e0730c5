//! An OAuth profile's authorization as this process knows it: the app, and the newest refresh
//! token it has seen, chosen among the one the operator handed in (`refresh_token_file`), the one
//! kept (a `state_dir` file, or the fleet store) and the ones its own refreshes returned
//! (docs/design.md#oauth-profiles). Pure but for a lock around that choice.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use secrecy::ExposeSecret;

use super::oauth::Answer;
use super::state_file::StateFile;
use crate::config::OAuthCredentials;
use crate::store::{SharedGrant, sha256_hex};

/// How many refused refresh tokens a grant remembers, never to try them again.
const REFUSED_REMEMBERED: usize = 4;

pub(super) struct Grant {
    pub(super) oauth: Arc<OAuthCredentials>,
    /// Where the refresh token is kept without a fleet store.
    pub(super) file: Option<Arc<StateFile>>,
    known: Mutex<Known>,
    /// The newest refresh token could not be kept: it lives only in this process until a later
    /// attempt keeps it.
    unsaved: AtomicBool,
}

#[derive(Default)]
struct Known {
    newest: Option<SharedGrant>,
    /// Whether `newest` came from a refresh or from where tokens are kept (not just from
    /// `refresh_token_file`): only such a token is put back into a store that lost it.
    obtained: bool,
    /// Digests of refresh tokens the endpoint refused.
    refused: Vec<String>,
}

impl Grant {
    pub(super) fn new(oauth: Arc<OAuthCredentials>, file: Option<Arc<StateFile>>) -> Grant {
        let newest = oauth.bootstrap.as_ref().map(|bootstrap| {
            let digest = sha256_hex(bootstrap.token.expose_secret().as_bytes());
            SharedGrant {
                refresh_token: bootstrap.token.clone(),
                issued_at: bootstrap.written_at,
                origin: digest,
                generation: 0,
                user_uid: None,
                organization_uid: None,
            }
        });
        Grant {
            oauth,
            file,
            known: Mutex::new(Known {
                newest,
                ..Known::default()
            }),
            unsaved: AtomicBool::new(false),
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The refresh token to use next, if any.
    pub(super) fn newest(&self) -> Option<SharedGrant> {
        self.known().newest.clone()
    }

    /// The newest refresh token, if it came from a refresh or from where tokens are kept.
    pub(super) fn obtained(&self) -> Option<SharedGrant> {
        let known = self.known();
        known.newest.clone().filter(|_| known.obtained)
    }

    /// Takes `seen` (read from where tokens are kept, or obtained by a refresh) if it is newer
    /// than what this process knows, or if what it knows was refused; a refused token is never
    /// taken again. Returns whether it was taken.
    pub(super) fn consider(&self, seen: SharedGrant) -> bool {
        let mut known = self.known();
        if known.was_refused(&seen) {
            return false;
        }
        if let Some(newest) = &known.newest
            && !known.was_refused(newest)
            && (same_token(newest, &seen) || !newer(&seen, newest))
        {
            // The same token, read back: it is kept, whatever this process first learnt it from.
            known.obtained |= same_token(newest, &seen);
            return false;
        }
        known.newest = Some(seen);
        known.obtained = true;
        true
    }

    /// The endpoint refused `used`: any other token read or handed in from now on is preferred to
    /// it, however the dates compare. It stays the one to use until then: tried again once per
    /// `rejected_retry`, in case the refusal was the endpoint's mistake.
    pub(super) fn refused(&self, used: &SharedGrant) {
        let mut known = self.known();
        if known.refused.len() == REFUSED_REMEMBERED {
            known.refused.remove(0);
        }
        known.refused.push(digest(used));
    }

    pub(super) fn set_unsaved(&self, unsaved: bool) {
        self.unsaved.store(unsaved, Ordering::Relaxed);
    }

    pub(super) fn is_unsaved(&self) -> bool {
        self.unsaved.load(Ordering::Relaxed)
    }

    /// Starts from what another state of the same profile knew (a reload replaced the state): a
    /// refresh token obtained there must not be lost with it.
    pub(super) fn carry_over(&self, old: &Grant) {
        // What the endpoint refused stays refused: a reload (often the very one that brings the
        // new refresh token) must not bring a refused token back.
        let refused = old.known().refused.clone();
        self.known().refused = refused;
        if let Some(obtained) = old.obtained() {
            self.consider(obtained);
        }
        if old.is_unsaved() {
            self.set_unsaved(true);
        }
    }
}

/// What a refresh that used `used` leaves as the newest refresh token: the one it returned (or
/// `used` again, when the endpoint did not rotate it), one generation further along the chain.
pub(super) fn successor(used: &SharedGrant, answer: &Answer) -> SharedGrant {
    SharedGrant {
        refresh_token: answer
            .refresh_token
            .clone()
            .unwrap_or_else(|| used.refresh_token.clone()),
        issued_at: SystemTime::now().max(used.issued_at),
        origin: used.origin.clone(),
        generation: used.generation + 1,
        user_uid: answer.user_uid.clone().or_else(|| used.user_uid.clone()),
        organization_uid: answer
            .organization_uid
            .clone()
            .or_else(|| used.organization_uid.clone()),
    }
}

/// A refresh token that starts a chain: handed over by `oauth login`.
pub fn first_of_chain(refresh_token: secrecy::SecretString, answer: &Answer) -> SharedGrant {
    SharedGrant {
        origin: sha256_hex(refresh_token.expose_secret().as_bytes()),
        refresh_token,
        issued_at: SystemTime::now(),
        generation: 0,
        user_uid: answer.user_uid.clone(),
        organization_uid: answer.organization_uid.clone(),
    }
}

impl Known {
    fn was_refused(&self, grant: &SharedGrant) -> bool {
        self.refused.contains(&digest(grant))
    }
}

fn digest(grant: &SharedGrant) -> String {
    sha256_hex(grant.refresh_token.expose_secret().as_bytes())
}

fn same_token(a: &SharedGrant, b: &SharedGrant) -> bool {
    a.refresh_token.expose_secret() == b.refresh_token.expose_secret()
}

/// Whether `a` is newer than `b`. Along one chain (same origin) the later generation is newer,
/// whatever the dates say: a Kubernetes Secret volume is rewritten, with a fresh modification
/// time, whenever a Pod starts, and the token it holds is then older than the ones refreshed from
/// it. Between chains (an operator authorized the app again) the later one is newer.
pub(super) fn newer(a: &SharedGrant, b: &SharedGrant) -> bool {
    if a.origin == b.origin {
        a.generation > b.generation
    } else {
        a.issued_at > b.issued_at
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;

    fn grant(token: &str, origin: &str, generation: u64, issued_secs: u64) -> SharedGrant {
        SharedGrant {
            refresh_token: SecretString::from(token.to_owned()),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(issued_secs),
            origin: origin.to_owned(),
            generation,
            user_uid: None,
            organization_uid: None,
        }
    }

    #[test]
    fn along_a_chain_the_later_generation_wins_and_between_chains_the_later_date() {
        let bootstrap = grant("rt0", "x", 0, 2_000);
        let refreshed = grant("rt5", "x", 5, 1_000);
        // The Secret volume was rewritten after the refresh (a new Pod): still older.
        assert!(newer(&refreshed, &bootstrap));
        assert!(!newer(&bootstrap, &refreshed));
        // The app was authorized again: a new chain, newer by date.
        let reissued = grant("new0", "y", 0, 3_000);
        assert!(newer(&reissued, &refreshed));
        assert!(!newer(&refreshed, &reissued));
    }

    fn oauth() -> Arc<OAuthCredentials> {
        let profile = crate::config::tests::oauth_profile("");
        profile.oauth().unwrap().clone()
    }

    #[test]
    fn a_refused_token_gives_way_to_any_other_and_is_never_taken_again() {
        let grant_state = Grant::new(oauth(), None);
        let bootstrap = grant_state.newest().expect("the handed-in token");
        assert!(
            grant_state.obtained().is_none(),
            "not obtained, only handed in"
        );
        // A kept token of another chain, dated before the handed-in file was written: older.
        let kept = grant("rt-kept", "other", 3, 0);
        assert!(!grant_state.consider(kept.clone()));
        grant_state.refused(&bootstrap);
        // Still the one to try again, once per window, until another shows up.
        assert!(grant_state.newest().is_some());
        assert!(grant_state.consider(kept), "preferred to a refused one");
        assert!(grant_state.obtained().is_some());
        assert!(!grant_state.consider(bootstrap), "refused before");
    }

    #[test]
    fn a_successor_carries_the_chain_on() {
        let used = grant("rt1", "x", 1, 0);
        let answer = Answer {
            access_token: SecretString::from("at".to_owned()),
            refresh_token: Some(SecretString::from("rt2".to_owned())),
            lifetime: Duration::from_secs(3600),
            user_uid: Some("u".into()),
            organization_uid: None,
        };
        let next = successor(&used, &answer);
        assert_eq!(next.refresh_token.expose_secret(), "rt2");
        assert_eq!((next.origin.as_str(), next.generation), ("x", 2));
        assert!(newer(&next, &used));
        // Not rotated: the same token, one generation on.
        let answer = Answer {
            refresh_token: None,
            ..answer
        };
        assert_eq!(
            successor(&used, &answer).refresh_token.expose_secret(),
            "rt1"
        );
    }
}
