//! How long a profile waits after a failed login (SPEC §5). Pure.
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
        LoginFailure::Rejected { .. } => profile.rejected_retry,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TransientCause;

    fn profile() -> ProfileConfig {
        let c = crate::config::Config::from_toml(
            "[profiles.default]\nemail = \"a@b.c\"\npassword = \"x\"\nmin_backoff = \"1s\"\nmax_backoff = \"60s\"\nrejected_retry = \"5m\"\n",
            Vec::new(),
            None,
        )
        .unwrap();
        (*c.profiles[0]).clone()
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
}
