//! The calls to an OAuth app's token endpoint (`POST …/token`, form-encoded, as the official SDKs
//! make them): refresh, and the code exchange of `oauth login`. They carry the refresh token and
//! the client secret, so they follow the session calls' rules (`session.rs`): no redirect
//! followed, bounded reads, a timeout, and nothing kept of the answer but its status, the OAuth
//! error code (one of a fixed set) and, on success, the tokens and the uids they belong to.
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::failure::{LoginFailure, Redirect, TransientCause};
use super::session::{AuthClient, ERROR_BODY_LIMIT, LOGIN_BODY_LIMIT, read_capped, transient};
use crate::config::OAuthCredentials;

/// The lifetime assumed when the answer gives none (the SDKs assume an hour too).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// What a successful token call returned. `Debug` shows no token.
pub struct Answer {
    pub access_token: SecretString,
    /// `None` when the endpoint did not rotate it: the one sent stays valid.
    pub refresh_token: Option<SecretString>,
    /// How long the access token lives, bounded to what the store accepts.
    pub lifetime: Duration,
    pub user_uid: Option<String>,
    pub organization_uid: Option<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("lifetime", &self.lifetime)
            .field("user_uid", &self.user_uid)
            .field("organization_uid", &self.organization_uid)
            .finish()
    }
}

/// The `error` codes of RFC 6749 §5.2: the one word of a refusal the proxy keeps (anything else
/// the endpoint writes is free text and is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
}

impl OAuthError {
    fn parse(text: &str) -> Option<OAuthError> {
        Some(match text {
            "invalid_request" => OAuthError::InvalidRequest,
            "invalid_client" => OAuthError::InvalidClient,
            "invalid_grant" => OAuthError::InvalidGrant,
            "unauthorized_client" => OAuthError::UnauthorizedClient,
            "unsupported_grant_type" => OAuthError::UnsupportedGrantType,
            "invalid_scope" => OAuthError::InvalidScope,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<f64>,
    token_type: Option<String>,
    user_uid: Option<String>,
    organization_uid: Option<String>,
}

#[derive(Deserialize)]
struct RefusalBody {
    error: Option<String>,
}

impl AuthClient {
    /// `grant_type=refresh_token`: a new access token, and usually a new refresh token that
    /// replaces `refresh_token` (the caller keeps it before using the access token).
    pub async fn refresh(
        &self,
        oauth: &OAuthCredentials,
        refresh_token: &SecretString,
    ) -> Result<Answer, LoginFailure> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", &oauth.client_id),
            ("redirect_uri", &oauth.redirect_uri),
        ];
        if let Some(secret) = &oauth.client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        self.token_call(&oauth.token_url, &form).await
    }

    /// `grant_type=authorization_code` with the PKCE verifier (and the client secret of a
    /// confidential app): the first tokens of a new authorization.
    pub async fn exchange_code(
        &self,
        oauth: &OAuthCredentials,
        code: &str,
        code_verifier: &str,
    ) -> Result<Answer, LoginFailure> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &oauth.redirect_uri),
            ("client_id", &oauth.client_id),
            ("code_verifier", code_verifier),
        ];
        if let Some(secret) = &oauth.client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        self.token_call(&oauth.token_url, &form).await
    }

    async fn token_call(&self, url: &str, form: &[(&str, &str)]) -> Result<Answer, LoginFailure> {
        let response = self
            .http
            .post(url)
            .header(http::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(transient)?;
        // Not followed: it would send the refresh token and the client secret elsewhere.
        if response.status().is_redirection() {
            return Err(LoginFailure::Transient(TransientCause::Redirect(
                Redirect::of(&response),
            )));
        }
        let status = response.status().as_u16();
        let limit = if response.status().is_success() {
            LOGIN_BODY_LIMIT
        } else {
            ERROR_BODY_LIMIT
        };
        let body = read_capped(response, limit).await.map_err(transient)?;
        classify(status, body.as_deref())
    }
}

/// Decides what a token endpoint's answer means; `body` is `None` when it was larger than its cap.
/// Trouble on the way (5xx, 408, 429) is transient; any other 4xx refuses the refresh token or the
/// client, and is not retried before `rejected_retry`: retrying a dead grant quickly only fills
/// the endpoint's logs.
fn classify(status: u16, body: Option<&[u8]>) -> Result<Answer, LoginFailure> {
    match status {
        200..=299 => {
            let body = body.ok_or(LoginFailure::Transient(TransientCause::TooLarge(
                LOGIN_BODY_LIMIT,
            )))?;
            parse_answer(body).ok_or(LoginFailure::Transient(TransientCause::NoAccessToken))
        }
        408 | 429 | 500..=599 => Err(LoginFailure::Transient(TransientCause::Status(status))),
        _ => Err(LoginFailure::RefreshRefused {
            http_status: status,
            error: body
                .and_then(|b| serde_json::from_slice::<RefusalBody>(b).ok())
                .and_then(|b| b.error)
                .and_then(|e| OAuthError::parse(&e)),
        }),
    }
}

fn parse_answer(body: &[u8]) -> Option<Answer> {
    let body: TokenBody = serde_json::from_slice(body).ok()?;
    if body
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return None;
    }
    let usable = |t: &String| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic());
    let access_token = body.access_token.filter(usable)?;
    let refresh_token = match body.refresh_token {
        Some(token) if !usable(&token) => return None,
        other => other,
    };
    let lifetime = match body.expires_in {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs.min(crate::store::MAX_LIFETIME.as_secs_f64()))
        }
        Some(_) => return None,
        None => DEFAULT_LIFETIME,
    };
    Some(Answer {
        access_token: SecretString::from(access_token),
        refresh_token: refresh_token.map(SecretString::from),
        lifetime,
        user_uid: body.user_uid,
        organization_uid: body.organization_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &str) -> String {
        match classify(status, Some(body.as_bytes())) {
            Ok(answer) => format!("ok {}s", answer.lifetime.as_secs()),
            Err(e) if e.is_rejected() => "refused".to_owned(),
            Err(_) => "transient".to_owned(),
        }
    }

    #[test]
    fn token_answers_are_classified_by_status_and_shape() {
        let ok = r#"{"access_token":"at1","refresh_token":"rt2","expires_in":3600,"token_type":"Bearer","organization_uid":"blt0org","user_uid":"blt0user"}"#;
        assert_eq!(kind(200, ok), "ok 3600s");
        // Case of the type, a missing lifetime (an hour assumed), a missing refresh token.
        assert_eq!(
            kind(200, r#"{"access_token":"a","token_type":"bearer"}"#),
            "ok 3600s"
        );
        for unusable in [
            r#"{"refresh_token":"r"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            "<html>",
        ] {
            assert_eq!(kind(200, unusable), "transient", "{unusable}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert_eq!(kind(status, r#"{"error":"invalid_grant"}"#), "refused");
        }
        for status in [408, 429, 500, 502, 503] {
            assert_eq!(kind(status, ""), "transient");
        }
        // A lifetime longer than a day is not believed.
        assert_eq!(
            kind(200, r#"{"access_token":"a","expires_in":1e12}"#),
            "ok 86400s"
        );
    }

    #[test]
    fn a_refusal_keeps_its_oauth_code_and_no_text() {
        let e = classify(
            400,
            Some(
                br#"{"error":"invalid_grant","error_description":"token rt-secret-1 was revoked"}"#,
            ),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LoginFailure::RefreshRefused {
                    http_status: 400,
                    error: Some(OAuthError::InvalidGrant)
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("invalid_grant") && text.contains("oauth login"),
            "{text}"
        );
        assert!(!text.contains("rt-secret-1"), "{text}");
        // An error word outside the standard set is free text: dropped.
        let e = classify(400, Some(br#"{"error":"revoked: rt-secret-1"}"#)).unwrap_err();
        assert!(!e.to_string().contains("rt-secret-1"), "{e}");
    }

    #[test]
    fn the_answer_never_prints_its_tokens() {
        let answer =
            parse_answer(br#"{"access_token":"at-secret","refresh_token":"rt-secret"}"#).unwrap();
        let debug = format!("{answer:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
