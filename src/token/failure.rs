//! Why a profile has no token (docs/design.md#the-login-discipline): credentials or a refresh
//! token refused by Contentstack, or transient trouble on the way to it, in this process or in the
//! fleet store. What each means for the next attempt (backoff), for the fleet (shared or not) and
//! for the operator (the text, which never quotes Contentstack). No I/O.
use std::time::Duration;

use super::oauth::OAuthError;
use super::session::{INVALID_CREDENTIALS, TFA_INVALID, TFA_REQUIRED};
use crate::metrics::LoginOutcome;

#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    /// Credentials refused: not retried until `rejected_retry` passes or the credentials change.
    /// Only the status and code are kept: Contentstack's `error_message` is text from upstream.
    #[error("{}", rejected_text(*.http_status, *.error_code))]
    Rejected {
        http_status: u16,
        error_code: Option<i64>,
    },
    /// The token endpoint refused an OAuth profile's refresh token or its client (the app's
    /// authorization was revoked, the refresh token expired or was already used, a wrong client
    /// secret): handled like refused credentials. Only the status and the OAuth error code are
    /// kept, never the answer's text.
    #[error("{}", refresh_refused_text(*.http_status, *.error))]
    RefreshRefused {
        http_status: u16,
        error: Option<OAuthError>,
    },
    /// An OAuth profile has no refresh token at all: none handed in, none kept.
    #[error(
        "no refresh token for this OAuth profile: none in refresh_token_file and none kept; run `cma-auth-proxy oauth login --profile NAME` once"
    )]
    NotAuthorized,
    /// Retried with exponential backoff.
    #[error("login failing transiently: {0}")]
    Transient(#[source] TransientCause),
}

impl LoginFailure {
    /// The outcome a failed login is counted and shown under.
    pub fn outcome(&self) -> LoginOutcome {
        if self.is_rejected() {
            LoginOutcome::Rejected
        } else {
            LoginOutcome::Transient
        }
    }

    /// Whether the failure came from Contentstack (or the way to it), rather than from this
    /// process or the fleet store: only such a failure is shared with the fleet.
    pub fn concerns_the_upstream(&self) -> bool {
        !matches!(
            self,
            LoginFailure::Transient(
                TransientCause::StoreNeeded
                    | TransientCause::FleetSettling(_)
                    | TransientCause::ProfileRemoved
                    | TransientCause::Cancelled
            )
        )
    }

    /// Whether Contentstack refused the credentials (or there are none): not retried before
    /// `rejected_retry` or a change of the credentials.
    pub fn is_rejected(&self) -> bool {
        match self {
            LoginFailure::Rejected { .. }
            | LoginFailure::RefreshRefused { .. }
            | LoginFailure::NotAuthorized => true,
            LoginFailure::Transient(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransientCause {
    #[error("Contentstack answered HTTP {0}")]
    Status(u16),
    #[error("cannot reach Contentstack")]
    Network(#[source] reqwest::Error),
    #[error("Contentstack did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Contentstack answered 200 without an authtoken")]
    NoToken,
    #[error("the token endpoint answered 200 without a usable bearer access token")]
    NoAccessToken,
    #[error(
        "the fleet store is unavailable: an OAuth profile refreshes only through it, so that replicas never use one refresh token twice"
    )]
    StoreNeeded,
    /// How long the window still had when this replica looked (its next attempt waits that long).
    #[error(
        "the fleet store had no refresh token (Redis restarted empty, or the fleet is new); no replica refreshes until every one has had the time to put back the newest it holds (about 20s), so that no refresh token is used twice"
    )]
    FleetSettling(Duration),
    #[error("the login answer is larger than {0} bytes; it was not read")]
    TooLarge(usize),
    #[error("{0}")]
    Redirect(Redirect),
    /// Logging in works, but the tokens do not: see `backoff::RejectionStreak`.
    #[error(
        "Contentstack rejected {count} tokens in a row (error_code 105) less than {}s after their login; something ends this account's sessions at once (20 other logins?) or refuses them, and logging in again would only end more",
        within.as_secs()
    )]
    TokensRejected { count: u32, within: Duration },
    #[error("the profile was removed by a configuration reload")]
    ProfileRemoved,
    #[error("another replica's login failed: {0}")]
    Fleet(String),
    #[error("the login was cancelled: the proxy is shutting down")]
    Cancelled,
}

/// A session call answered with a redirect. Contentstack's session and user endpoints never
/// redirect, and following one would send the password or the token to wherever it points; so it
/// is not followed, and it is reported by its status and the host it named (never its path or
/// query, which are free text from upstream).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Contentstack answered HTTP {status}, a redirect to {}; session endpoints never redirect, so it was not followed: check upstream.url",
    to.as_deref().unwrap_or("an unreadable location")
)]
pub struct Redirect {
    pub status: u16,
    /// `host[:port]` of the `Location`, resolved against the request URL.
    pub to: Option<String>,
}

impl Redirect {
    pub(super) fn of(response: &reqwest::Response) -> Redirect {
        let to = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .and_then(|url| {
                let host = url.host_str()?;
                Some(match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                })
            });
        Redirect {
            status: response.status().as_u16(),
            to,
        }
    }
}

fn refresh_refused_text(status: u16, error: Option<OAuthError>) -> String {
    let error = error.map_or_else(String::new, |e| format!(", {}", e.as_str()));
    format!(
        "refresh refused by Contentstack's token endpoint (HTTP {status}{error}): the app's authorization was revoked, or the refresh token expired or was replaced; run `cma-auth-proxy oauth login` and hand in the new refresh token (refresh_token_file)"
    )
}

fn rejected_text(status: u16, code: Option<i64>) -> String {
    let cause = match code {
        Some(INVALID_CREDENTIALS) => {
            "email or password invalid (error_code 104); rotate the credentials".to_owned()
        }
        Some(TFA_REQUIRED) => {
            "the account requires a two-factor code (error_code 294); set totp_secret_file"
                .to_owned()
        }
        Some(TFA_INVALID) => {
            "the two-factor code was refused (error_code 295); check totp_secret_file and the clock"
                .to_owned()
        }
        Some(code) => format!(
            "HTTP {status}, error_code {code}; check the account (SSO-only accounts cannot log in with a password)"
        ),
        None => format!("HTTP {status}; check the account and upstream settings"),
    };
    format!("login rejected by Contentstack: {cause}")
}
