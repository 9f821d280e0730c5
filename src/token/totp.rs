//! TOTP codes for two-factor logins (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps), as the official
//! SDKs compute them, with the one rule Contentstack adds: a code is accepted once, so a profile never
//! sends the same time step twice. Pure: the caller supplies the clock and does the waiting.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::TotpSecret;

pub const STEP_SECONDS: u64 = 30;

/// The code to send, or how long to wait because the current step was already used.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Code { step: u64, code: String },
    WaitFor(Duration),
}

/// The time step of `now`.
pub fn step_at(now: SystemTime) -> u64 {
    since_epoch(now).as_secs() / STEP_SECONDS
}

fn since_epoch(now: SystemTime) -> Duration {
    now.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Decides the code for a login at `now`, given the step the profile last used.
pub fn next(secret: &TotpSecret, now: SystemTime, last_step: Option<u64>) -> Next {
    let step = step_at(now);
    if let Some(last) = last_step
        && step <= last
    {
        let next_step = Duration::from_secs((last + 1) * STEP_SECONDS);
        return Next::WaitFor(next_step.saturating_sub(since_epoch(now)));
    }
    Next::Code {
        step,
        code: code_at(secret, step),
    }
}

/// The code of one time step.
pub fn code_at(secret: &TotpSecret, step: u64) -> String {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret.bytes())
        .build_noncompliant()
        .generate(step * STEP_SECONDS)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(unix_ms)
    }

    /// RFC 6238 appendix B, SHA-1 seed "12345678901234567890", truncated to 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        for (t, want) in [
            (59u64, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(
                next(&secret, at(t * 1000), None),
                Next::Code {
                    step: t / 30,
                    code: want.to_owned()
                }
            );
        }
    }

    #[test]
    fn never_reuses_a_step() {
        let secret = TotpSecret::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        let t0 = 1_700_000_020_000; // 10 s into a step (steps start at multiples of 30 s)
        let Next::Code { step, .. } = next(&secret, at(t0), None) else {
            panic!("first login gets a code")
        };
        assert_eq!(
            next(&secret, at(t0 + 5_000), Some(step)),
            Next::WaitFor(Duration::from_millis(15_000))
        );
        match next(&secret, at(t0 + 20_000), Some(step)) {
            Next::Code { step: s, .. } => assert_eq!(s, step + 1),
            other => panic!("{other:?}"),
        }
    }
}
