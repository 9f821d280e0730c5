//! The session calls to Contentstack (reqwest over rustls): log in, log out, validate (the OAuth
//! token endpoint's calls are in `oauth.rs`, on the same client and under the same rules).
//!
//! Owns the classification of a session call's answer (docs/design.md#the-login-discipline), into
//! the failures of `failure.rs`: refused credentials vs. transient trouble, decided by
//! `error_code` first and HTTP status second, because
//! Contentstack reports 2FA errors with odd statuses. These calls carry the password or the token,
//! so they trust the answer as little as possible: no redirect is followed, only a bounded part of
//! a body is read, and no text of the answer is kept (only its status and `error_code`): a reply
//! that echoes the request would otherwise carry the password into client errors, `/status` and
//! logs.
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::failure::{LoginFailure, Redirect, TransientCause};
use super::{Token, TokenKind};

/// Every session call gives up after this long; a login that hangs must not hold requests forever.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The most read of a successful login answer. It holds the user object (organizations, roles,
/// settings): a few KiB for a service account, so 1 MiB is generous and still bounds the memory a
/// broken or hostile upstream can make the proxy hold.
pub const LOGIN_BODY_LIMIT: usize = 1 << 20;
/// The most read of any other answer the proxy looks into (error bodies): only `error_code` is
/// wanted from them.
pub const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Contentstack `error_code`s that mean "these credentials are refused".
pub(super) const INVALID_CREDENTIALS: i64 = 104;
pub(super) const TFA_REQUIRED: i64 = 294;
pub(super) const TFA_INVALID: i64 = 295;
/// The `error_code` of a dead or missing authtoken.
pub const TOKEN_INVALID: i64 = 105;
/// `error_code`s of 401s that are not about the token (a two-factor code needed, a missing
/// permission for an environment): the official SDKs do not refresh on these either.
const NOT_ABOUT_THE_TOKEN: [i64; 2] = [294, 161];
/// What the CMA's `error_message` says of an OAuth access token it no longer accepts (the CLI
/// refreshes on the same words); matched without regard to case.
const ACCESS_TOKEN_INVALID: &str = "access token is invalid or expired";

/// Contentstack's error body; only the fields the proxy reads (its text is never kept).
#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    error_message: Option<String>,
}

/// What a 401's body says of the token that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token is dead: drop it, obtain another.
    Dead,
    /// The 401 is about something else (a permission): the token stays.
    NotTheToken,
    /// Cannot tell from the body: ask Contentstack about the token.
    Unsure,
}

/// Reads a 401's body for what it says of a token of `kind`. An `authtoken` is dead on
/// `error_code` 105 only. For an OAuth access token the research found no documented code: its
/// 401 is recognised by 105 or by the words the CLI matches, and any other 401 that is not one of
/// the known other causes (294, 161) is settled by asking (`GET /v3/user`).
pub fn verdict(kind: TokenKind, body: &[u8]) -> Verdict {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = parsed.as_ref().and_then(|b| b.error_code);
    match kind {
        TokenKind::Authtoken if code == Some(TOKEN_INVALID) => Verdict::Dead,
        TokenKind::Authtoken => Verdict::NotTheToken,
        TokenKind::Bearer => {
            let says_invalid = parsed
                .as_ref()
                .and_then(|b| b.error_message.as_deref())
                .is_some_and(|m| m.to_ascii_lowercase().contains(ACCESS_TOKEN_INVALID));
            if code == Some(TOKEN_INVALID) || says_invalid {
                Verdict::Dead
            } else if code.is_some_and(|c| NOT_ABOUT_THE_TOKEN.contains(&c)) {
                Verdict::NotTheToken
            } else {
                Verdict::Unsure
            }
        }
    }
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
    #[error("session call answered more than {0} bytes; it was not read")]
    TooLarge(usize),
    #[error(transparent)]
    Redirect(Redirect),
    /// The answer did not have the shape the call needs (its text is not kept).
    #[error("session call answered {0}")]
    Unexpected(&'static str),
}

#[derive(Clone)]
pub struct AuthClient {
    pub(super) http: reqwest::Client,
    base_url: String,
}

impl AuthClient {
    /// A client of `base_url` that trusts what `tls` trusts (the forwarder's roots).
    pub fn new(
        base_url: &str,
        mut tls: rustls::ClientConfig,
        connect_timeout: Duration,
    ) -> reqwest::Result<Self> {
        // This client speaks HTTP/1.1 only (reqwest is built without HTTP/2): offering h2 by ALPN
        // would let a server pick a protocol the client cannot speak.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(connect_timeout)
            .timeout(AUTH_CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cma-auth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.to_owned(),
        })
    }

    pub(super) fn url(&self, path: &str) -> String {
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
        // Transient, not a refusal: the credentials were not judged, so a retry (with backoff)
        // cannot lock the account, and an edge that redirects during an outage recovers.
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
        classify_login(status, body.as_deref())
    }

    /// Sends `method path` with `token`: the logout and the validation.
    async fn with_token(
        &self,
        method: http::Method,
        path: &str,
        token: &Token,
    ) -> Result<reqwest::Response, CallError> {
        self.http
            .request(method, self.url(path))
            .header(token.header_name(), token.header().clone())
            .send()
            .await
            .map_err(CallError::Network)
    }

    /// Ends an `authtoken`'s session.
    pub async fn logout(&self, token: &Token) -> Result<(), CallError> {
        let response = self
            .with_token(http::Method::DELETE, "/v3/user-session", token)
            .await?;
        // The answer's body is never read: its status says it all.
        match response.status().as_u16() {
            // A token that is already dead is as logged out as it gets.
            200..=299 | 401 => Ok(()),
            300..=399 => Err(CallError::Redirect(Redirect::of(&response))),
            status => Err(CallError::Status(status)),
        }
    }

    /// `GET /v3/user`: the cheapest authenticated call.
    pub async fn validate(&self, token: &Token) -> Result<Validity, CallError> {
        let response = self
            .with_token(http::Method::GET, "/v3/user", token)
            .await?;
        // Only a 401's body is read, for its `error_code`.
        match response.status().as_u16() {
            200..=299 => Ok(Validity::Valid),
            300..=399 => Err(CallError::Redirect(Redirect::of(&response))),
            401 => {
                let body = read_capped(response, ERROR_BODY_LIMIT)
                    .await
                    .map_err(CallError::Network)?
                    .ok_or(CallError::TooLarge(ERROR_BODY_LIMIT))?;
                // The cheapest authenticated call needs no permission: for an access token, any 401
                // not known to be about something else means the token is not accepted.
                match (verdict(token.kind(), &body), token.kind()) {
                    (Verdict::Dead, _) | (Verdict::Unsure, TokenKind::Bearer) => Ok(Validity::Dead),
                    _ => Err(CallError::Status(401)),
                }
            }
            status => Err(CallError::Status(status)),
        }
    }
}

pub(super) fn transient(e: reqwest::Error) -> LoginFailure {
    LoginFailure::Transient(if e.is_timeout() {
        TransientCause::Timeout(AUTH_CALL_TIMEOUT)
    } else {
        TransientCause::Network(e.without_url())
    })
}

/// Reads an answer's body chunk by chunk, up to `limit` bytes; `None` when it is longer (the rest is
/// left unread and the connection dropped), so an endless or huge answer costs at most `limit`.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> reqwest::Result<Option<Bytes>> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let (chunks, ended) = crate::body::read_up_to(&mut response, limit as u64).await?;
    Ok(ended.then(|| crate::body::concat(chunks)))
}

/// A session answer's body, read with the same bound as every other body.
impl crate::body::Chunks for reqwest::Response {
    type Error = reqwest::Error;

    async fn next_chunk(&mut self) -> reqwest::Result<Option<Bytes>> {
        self.chunk().await
    }
}

pub fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error_code)
}

/// Decides what a login answer means; `body` is `None` when it was larger than its cap. Refusals are
/// recognised by `error_code` whatever the status; unknown 4xx answers count as refusals too (also
/// when their body was too large to read), because retrying them quickly could lock the account.
fn classify_login(status: u16, body: Option<&[u8]>) -> Result<Token, LoginFailure> {
    let code = body.and_then(error_code);
    let rejected = LoginFailure::Rejected {
        http_status: status,
        error_code: code,
    };
    if let Some(INVALID_CREDENTIALS | TFA_REQUIRED | TFA_INVALID) = code {
        return Err(rejected);
    }
    match status {
        200..=299 => {
            let body = body.ok_or(LoginFailure::Transient(TransientCause::TooLarge(
                LOGIN_BODY_LIMIT,
            )))?;
            let token = serde_json::from_slice::<LoginResponse>(body)
                .ok()
                .and_then(|r| r.user.authtoken)
                .and_then(|t| HeaderValue::from_str(&t).ok())
                .filter(|t| !t.is_empty())
                .ok_or(LoginFailure::Transient(TransientCause::NoToken))?;
            Ok(Token::new(token))
        }
        408 | 429 | 500..=599 => Err(LoginFailure::Transient(TransientCause::Status(status))),
        _ => Err(rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, body: &str) -> &'static str {
        match classify_login(status, Some(body.as_bytes())) {
            Ok(_) => "ok",
            Err(e) if e.is_rejected() => "rejected",
            Err(_) => "transient",
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
    fn a_401_is_read_by_the_kind_of_token_that_was_sent() {
        use Verdict::*;
        let evicted = br#"{"error_message":"You're not allowed in here unless you're logged in.","error_code":105,"errors":{"authtoken":["is not valid."]}}"#;
        let expired = br#"{"error_message":"The provided access token is invalid or expired or revoked","error_code":300}"#;
        let permission = br#"{"error_message":"You don't have permission for this environment.","error_code":161}"#;
        let other = br#"{"error_message":"Something else.","error_code":999}"#;
        assert_eq!(verdict(TokenKind::Authtoken, evicted), Dead);
        assert_eq!(verdict(TokenKind::Authtoken, expired), NotTheToken);
        assert_eq!(verdict(TokenKind::Authtoken, other), NotTheToken);
        assert_eq!(verdict(TokenKind::Bearer, evicted), Dead);
        assert_eq!(verdict(TokenKind::Bearer, expired), Dead);
        assert_eq!(
            verdict(
                TokenKind::Bearer,
                br#"{"error_message":"ACCESS TOKEN IS INVALID OR EXPIRED"}"#
            ),
            Dead
        );
        assert_eq!(verdict(TokenKind::Bearer, permission), NotTheToken);
        // No documented code for an expired access token: an unknown 401 is settled by asking.
        assert_eq!(verdict(TokenKind::Bearer, other), Unsure);
        assert_eq!(verdict(TokenKind::Bearer, b"<html>"), Unsure);
    }

    #[test]
    fn rejected_message_names_cause_and_fix_but_no_secret() {
        let e = classify_login(422, Some(br#"{"error_message":"Looks like your email or password is invalid.","error_code":104}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("error_code 104") && e.contains("rotate the credentials"),
            "{e}"
        );
    }

    fn client(url: &str) -> AuthClient {
        let config = crate::Config::from_toml(
            &format!("[upstream]\nurl = \"{url}\"\n[profiles.default]\nemail = \"a@b.c\"\npassword = \"x\"\n"),
            Vec::new(),
            None,
        )
        .unwrap();
        let tls = crate::tls::client_config(None).unwrap();
        AuthClient::new(&config.upstream.base_url, tls, Duration::from_secs(5)).unwrap()
    }

    /// An answer `status` whose body goes on for 64 MiB; returns the upstream once it gave up.
    async fn endless(status: u16) -> cma_sim::endless::EndlessUpstream {
        cma_sim::endless::EndlessUpstream::start(status, 64 << 20)
            .await
            .unwrap()
    }

    async fn read_at_most_a_little(upstream: &cma_sim::endless::EndlessUpstream) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while upstream.finished() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the answer never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The cap plus what the loopback socket buffers held when the client hung up.
        assert!(upstream.written() < 24 << 20, "{}", upstream.written());
    }

    #[tokio::test]
    async fn validation_reads_an_error_answer_only_up_to_its_cap() {
        let upstream = endless(401).await;
        let token = Token::new(HeaderValue::from_static("t"));
        let result = client(&upstream.url()).validate(&token).await;
        assert!(
            matches!(result, Err(CallError::TooLarge(ERROR_BODY_LIMIT))),
            "{result:?}"
        );
        read_at_most_a_little(&upstream).await;
    }

    #[tokio::test]
    async fn logout_reads_no_body_at_all() {
        let upstream = endless(200).await;
        let token = Token::new(HeaderValue::from_static("t"));
        client(&upstream.url()).logout(&token).await.unwrap();
        read_at_most_a_little(&upstream).await;
    }

    #[tokio::test]
    async fn a_refusal_too_large_to_read_is_judged_by_its_status() {
        let upstream = endless(422).await;
        let result = client(&upstream.url())
            .login("a@b.c", &SecretString::from("x"), None)
            .await;
        assert!(
            matches!(
                result,
                Err(LoginFailure::Rejected {
                    http_status: 422,
                    error_code: None
                })
            ),
            "{result:?}"
        );
        read_at_most_a_little(&upstream).await;
    }
}
