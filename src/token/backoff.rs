//! How long a profile waits after a failed login (docs/design.md#the-login-discipline), and when
//! tokens that Contentstack rejects right after their login hold the next login back the same way.
//! Pure.
use std::time::Duration;

use crate::config::ProfileConfig;

use super::LoginFailure;

/// Delay before the next attempt after `failures` consecutive failures (1 = the first), ending with
/// `failure`. Refused credentials wait `rejected_retry`, so a bad password cannot lock the account;
/// transient failures use exponential backoff with full jitter, `min_backoff` to `max_backoff`.
pub fn delay(
    profile: &ProfileConfig,
    failure: &LoginFailure,
    failures: u32,
    jitter: f64,
) -> Duration {
    match failure {
        LoginFailure::Rejected { .. }
        | LoginFailure::RefreshRefused { .. }
        | LoginFailure::NotAuthorized => profile.rejected_retry,
        // When the fleet has settled, spread over `min_backoff` so the replicas do not all
        // reach for the lock at once.
        LoginFailure::Transient(super::TransientCause::FleetSettling(left)) => {
            *left + profile.min_backoff.mul_f64(jitter.clamp(0.0, 1.0))
        }
        LoginFailure::Transient(_) => {
            let exp = failures.saturating_sub(1).min(32);
            let ceiling = profile
                .min_backoff
                .saturating_mul(1u32 << exp.min(31))
                .min(profile.max_backoff);
            // Full jitter: anywhere in [min_backoff, ceiling], so a fleet that failed together
            // does not retry together, and never faster than min_backoff.
            let span = ceiling.saturating_sub(profile.min_backoff);
            profile.min_backoff + span.mul_f64(jitter.clamp(0.0, 1.0))
        }
    }
}

/// A token rejected (401/105) younger than this did not die of the usual cause. Contentstack
/// tokens do not expire; one ends when 20 later logins on the account push it out. For that to
/// happen within a minute of our login, something is logging in to the account in a loop, or the
/// upstream refuses every token (wrong account or region, an IP allow-list): either way logging in
/// again at once only ends one more session. A real eviction of a token that lived longer is
/// answered by one immediate re-login, as always.
pub const YOUNG_TOKEN: Duration = Duration::from_secs(60);

/// Counts the tokens rejected in a row while still young, to bound the logins that 401s cause.
/// One young rejection is forgiven (a single eviction can follow a login closely); from the second
/// in a row, the next login waits as after a failing login: `min_backoff`, doubling, up to
/// `max_backoff`. A token seen to live past [`YOUNG_TOKEN`] ends the streak.
#[derive(Debug, Default)]
pub struct RejectionStreak {
    young: u32,
}

impl RejectionStreak {
    /// Contentstack rejected a token `age` after its login. Returns how many young tokens in a
    /// row it has rejected when that calls for a backoff (2 or more), else `None`.
    pub fn rejected(&mut self, age: Duration) -> Option<u32> {
        if age >= YOUNG_TOKEN {
            self.young = 0;
            return None;
        }
        self.young = self.young.saturating_add(1);
        (self.young >= 2).then_some(self.young)
    }

    /// The current token has lived `age`: past [`YOUNG_TOKEN`], whatever rejected the earlier
    /// ones has stopped.
    pub fn alive(&mut self, age: Duration) {
        if age >= YOUNG_TOKEN {
            self.young = 0;
        }
    }
}

/// The wait after `count` young tokens were rejected in a row ([`RejectionStreak::rejected`]):
/// the transient-failure backoff, the second rejection counting as the first failure.
pub fn rejection_delay(profile: &ProfileConfig, count: u32, jitter: f64) -> Duration {
    let failure = LoginFailure::Transient(super::TransientCause::TokensRejected {
        count,
        within: YOUNG_TOKEN,
    });
    delay(profile, &failure, count.saturating_sub(1), jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TransientCause;

    fn profile() -> ProfileConfig {
        crate::config::tests::login_profile(
            "min_backoff = \"1s\"\nmax_backoff = \"60s\"\nrejected_retry = \"5m\"\n",
        )
    }

    #[test]
    fn transient_backoff_grows_and_is_capped() {
        let p = profile();
        let t = LoginFailure::Transient(TransientCause::Status(502));
        assert_eq!(delay(&p, &t, 1, 1.0), Duration::from_secs(1));
        assert_eq!(delay(&p, &t, 2, 1.0), Duration::from_secs(2));
        assert_eq!(delay(&p, &t, 4, 1.0), Duration::from_secs(8));
        assert_eq!(delay(&p, &t, 30, 1.0), Duration::from_secs(60));
        assert_eq!(delay(&p, &t, 100, 1.0), Duration::from_secs(60));
        assert_eq!(delay(&p, &t, 4, 0.0), Duration::from_secs(1));
        assert_eq!(delay(&p, &t, 4, 0.5), Duration::from_millis(4500));
    }

    #[test]
    fn a_settling_fleet_is_waited_for_then_the_fleet_spreads_over_min_backoff() {
        let p = profile();
        let left = Duration::from_secs(17);
        let settling = LoginFailure::Transient(TransientCause::FleetSettling(left));
        // However many attempts failed before, only the window's end counts.
        assert_eq!(delay(&p, &settling, 30, 0.0), left);
        assert_eq!(delay(&p, &settling, 1, 1.0), left + Duration::from_secs(1));
    }

    #[test]
    fn rejected_waits_the_full_window() {
        let p = profile();
        let r = LoginFailure::Rejected {
            http_status: 422,
            error_code: Some(104),
        };
        for n in [1, 2, 10] {
            assert_eq!(delay(&p, &r, n, 0.0), Duration::from_secs(300));
        }
    }

    #[test]
    fn one_young_rejection_is_forgiven_and_a_second_in_a_row_backs_off() {
        let young = Duration::from_secs(2);
        let mut streak = RejectionStreak::default();
        assert_eq!(streak.rejected(young), None);
        assert_eq!(streak.rejected(young), Some(2));
        assert_eq!(streak.rejected(young), Some(3));
        // A real eviction of a token that lived: re-login at once, and the count starts over.
        assert_eq!(streak.rejected(YOUNG_TOKEN), None);
        assert_eq!(streak.rejected(young), None);
        assert_eq!(streak.rejected(young), Some(2));
    }

    #[test]
    fn a_token_that_lives_ends_the_streak() {
        let mut streak = RejectionStreak::default();
        streak.rejected(Duration::ZERO);
        streak.rejected(Duration::ZERO);
        streak.alive(Duration::from_secs(59));
        assert_eq!(streak.rejected(Duration::ZERO), Some(3));
        streak.alive(YOUNG_TOKEN);
        assert_eq!(streak.rejected(Duration::ZERO), None);
    }

    #[test]
    fn rejection_backoff_starts_at_min_backoff_and_doubles_to_max_backoff() {
        let p = profile();
        assert_eq!(rejection_delay(&p, 2, 1.0), Duration::from_secs(1));
        assert_eq!(rejection_delay(&p, 3, 1.0), Duration::from_secs(2));
        assert_eq!(rejection_delay(&p, 4, 1.0), Duration::from_secs(4));
        assert_eq!(rejection_delay(&p, 40, 1.0), Duration::from_secs(60));
        assert_eq!(rejection_delay(&p, 4, 0.0), Duration::from_secs(1));
    }
}
