//! The session calls to Contentstack (reqwest over rustls): log in, log out, validate.
//!
//! Owns the classification of login failures (SPEC §5): refused credentials vs. transient trouble,
//! decided by `error_code` first and HTTP status second, because Contentstack reports 2FA errors
//! with odd statuses. Bodies are parsed here and never logged.
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Token;

/// Every session call gives up after this long; a login that hangs must not hold requests forever.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Contentstack `error_code`s that mean "these credentials are refused".
const INVALID_CREDENTIALS: i64 = 104;
const TFA_REQUIRED: i64 = 294;
const TFA_INVALID: i64 = 295;
/// The `error_code` of a dead or missing authtoken.
pub const TOKEN_INVALID: i64 = 105;

#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    /// Credentials refused: not retried until `rejected_retry` passes or the credentials change.
    #[error("{}", rejected_text(*.http_status, *.error_code, .message))]
    Rejected {
        http_status: u16,
        error_code: Option<i64>,
        /// Contentstack's `error_message`, which names no secret.
        message: String,
    },
    /// Retried with exponential backoff.
    #[error("login failing transiently: {0}")]
    Transient(#[source] TransientCause),
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
    #[error("the profile was removed by a configuration reload")]
    ProfileRemoved,
    #[error("another replica's login failed: {0}")]
    Fleet(String),
    #[error("the login was cancelled: the proxy is shutting down")]
    Cancelled,
}

fn rejected_text(status: u16, code: Option<i64>, message: &str) -> String {
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
            "HTTP {status}, error_code {code} ({message}); check the account (SSO-only accounts cannot log in with a password)"
        ),
        None => format!("HTTP {status}; check the account and upstream settings"),
    };
    format!("login rejected by Contentstack: {cause}")
}

/// Contentstack's error body; only the fields the proxy reads.
#[derive(Deserialize)]
pub struct ErrorBody {
    pub error_code: Option<i64>,
    #[serde(default)]
    pub error_message: String,
}

#[derive(Deserialize)]
struct LoginResponse {
    user: LoginUser,
}

#[derive(Deserialize)]
struct LoginUser {
    authtoken: Option<String>,
}

/// Whether Contentstack still accepts a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Dead,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("session call failed")]
    Network(#[source] reqwest::Error),
    #[error("session call answered HTTP {0}")]
    Status(u16),
}

#[derive(Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    base_url: String,
}

impl AuthClient {
    pub fn new(
        base_url: &str,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(connect_timeout)
            .timeout(AUTH_CALL_TIMEOUT)
            .user_agent(concat!("cma-auth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn login(
        &self,
        email: &str,
        password: &SecretString,
        tfa_token: Option<&str>,
    ) -> Result<Token, LoginFailure> {
        let mut user = serde_json::json!({ "email": email, "password": password.expose_secret() });
        if let Some(code) = tfa_token {
            user["tfa_token"] = code.into();
        }
        let response = self
            .http
            .post(self.url("/v3/user-session"))
            .json(&serde_json::json!({ "user": user }))
            .send()
            .await
            .map_err(transient)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transient)?;
        classify_login(status, &body)
    }

    pub async fn logout(&self, token: &Token) -> Result<(), CallError> {
        let response = self
            .http
            .delete(self.url("/v3/user-session"))
            .header("authtoken", token.header().clone())
            .send()
            .await
            .map_err(CallError::Network)?;
        match response.status().as_u16() {
            // A token that is already dead is as logged out as it gets.
            200..=299 | 401 => Ok(()),
            status => Err(CallError::Status(status)),
        }
    }

    /// `GET /v3/user`: the cheapest authenticated call.
    pub async fn validate(&self, token: &Token) -> Result<Validity, CallError> {
        let response = self
            .http
            .get(self.url("/v3/user"))
            .header("authtoken", token.header().clone())
            .send()
            .await
            .map_err(CallError::Network)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Validity::Valid);
        }
        let body = response.bytes().await.map_err(CallError::Network)?;
        if status == 401 && error_code(&body) == Some(TOKEN_INVALID) {
            Ok(Validity::Dead)
        } else {
            Err(CallError::Status(status))
        }
    }
}

fn transient(e: reqwest::Error) -> LoginFailure {
    LoginFailure::Transient(if e.is_timeout() {
        TransientCause::Timeout(AUTH_CALL_TIMEOUT)
    } else {
        TransientCause::Network(e.without_url())
    })
}

pub fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error_code)
}

/// Decides what a login answer means. Refusals are recognised by `error_code` whatever the status;
/// unknown 4xx answers count as refusals too, because retrying them quickly could lock the account.
fn classify_login(status: u16, body: &[u8]) -> Result<Token, LoginFailure> {
    let error = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = error.as_ref().and_then(|e| e.error_code);
    let rejected = |message: String| LoginFailure::Rejected {
        http_status: status,
        error_code: code,
        message,
    };
    if let Some(INVALID_CREDENTIALS | TFA_REQUIRED | TFA_INVALID) = code {
        return Err(rejected(error.map(|e| e.error_message).unwrap_or_default()));
    }
    match status {
        200..=299 => {
            let token = serde_json::from_slice::<LoginResponse>(body)
                .ok()
                .and_then(|r| r.user.authtoken)
                .and_then(|t| HeaderValue::from_str(&t).ok())
                .filter(|t| !t.is_empty())
                .ok_or(LoginFailure::Transient(TransientCause::NoToken))?;
            Ok(Token::new(token))
        }
        408 | 429 | 500..=599 => Err(LoginFailure::Transient(TransientCause::Status(status))),
        _ => Err(rejected(error.map(|e| e.error_message).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &str) -> &'static str {
        match classify_login(status, body.as_bytes()) {
            Ok(_) => "ok",
            Err(LoginFailure::Rejected { .. }) => "rejected",
            Err(LoginFailure::Transient(_)) => "transient",
        }
    }

    #[test]
    fn classification() {
        assert_eq!(
            kind(
                200,
                r#"{"notice":"Login Successful.","user":{"authtoken":"blt1"}}"#
            ),
            "ok"
        );
        assert_eq!(kind(200, r#"{"notice":"x","user":{}}"#), "transient");
        assert_eq!(
            kind(
                422,
                r#"{"error_message":"Looks like your email or password is invalid.","error_code":104}"#
            ),
            "rejected"
        );
        // 2FA errors arrive with 401, 422 and even 294 as the HTTP status: the code decides.
        for status in [401, 422, 294] {
            assert_eq!(
                kind(
                    status,
                    r#"{"error_message":"2FA required","error_code":294}"#
                ),
                "rejected"
            );
            assert_eq!(
                kind(status, r#"{"error_message":"bad code","error_code":295}"#),
                "rejected"
            );
        }
        assert_eq!(kind(502, "<html>bad gateway</html>"), "transient");
        assert_eq!(kind(503, ""), "transient");
        assert_eq!(
            kind(429, r#"{"error_message":"rate","error_code":429}"#),
            "transient"
        );
        assert_eq!(
            kind(400, r#"{"error_message":"SSO","error_code":999}"#),
            "rejected"
        );
    }

    #[test]
    fn rejected_message_names_cause_and_fix_but_no_secret() {
        let e = classify_login(422, br#"{"error_message":"Looks like your email or password is invalid.","error_code":104}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("error_code 104") && e.contains("rotate the credentials"),
            "{e}"
        );
    }
}
