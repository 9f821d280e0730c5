//! The simulator's OAuth app (Contentstack Developer Hub), where the proxy's OAuth profiles depend
//! on it: an authorization page that approves at once for the app's user and sends the browser
//! back to the registered redirect URI with a code; a token endpoint (`POST /token`,
//! form-encoded) for the code exchange, with PKCE (S256) and client-secret checks, and for
//! refreshes with rotation; access tokens that expire (an hour, or what a test sets) and that the
//! CMA endpoints accept as `authorization: Bearer …`; and revocation, by a test control or through
//! the authorizations API the official SDK's logout uses.
//!
//! Rotation: a refresh returns a new refresh token. The one used stays valid until its successor
//! is used in turn (so a client that lost the answer can try again), and is dead from then on;
//! reusing a dead one, or any of a revoked authorization, is refused with `invalid_grant`.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::reply::Reply;
use crate::{State, sha256_hex};

/// How long a code from the authorization page may wait for its exchange.
const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Access tokens live an hour, as Contentstack's do, unless a test says otherwise.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(3600);
/// What the CMA answers for an OAuth access token it does not accept.
pub const ACCESS_TOKEN_INVALID: &str = "The provided access token is invalid or expired or revoked";

/// An app registered in Developer Hub, authorized by one user.
#[derive(Clone, Debug)]
pub struct OAuthApp {
    pub app_id: String,
    pub client_id: String,
    /// A confidential app's secret; `None` for a public app, which must use PKCE.
    pub client_secret: Option<String>,
    pub redirect_uri: String,
    /// Who approves on the authorization page.
    pub user_email: String,
}

impl OAuthApp {
    pub fn new(app_id: &str, client_id: &str, redirect_uri: &str, user_email: &str) -> OAuthApp {
        OAuthApp {
            app_id: app_id.into(),
            client_id: client_id.into(),
            client_secret: None,
            redirect_uri: redirect_uri.into(),
            user_email: user_email.into(),
        }
    }

    pub fn with_secret(mut self, secret: &str) -> OAuthApp {
        self.client_secret = Some(secret.into());
        self
    }
}

/// One refresh as the token endpoint judged it.
#[derive(Debug, Clone)]
pub struct RefreshAttempt {
    pub refresh_token: String,
    /// HTTP status answered.
    pub status: u16,
    pub at: Instant,
}

struct PendingCode {
    challenge: Option<String>,
    redirect_uri: String,
    issued: Instant,
}

/// One user's authorization of the app: its refresh tokens and whether it was revoked.
struct Authorization {
    current: String,
    /// The token `current` was obtained with: valid until `current` is used.
    previous: Option<String>,
    revoked: bool,
}

pub(crate) struct OAuthState {
    pub(crate) app: Option<OAuthApp>,
    pub(crate) access_ttl: Duration,
    codes: HashMap<String, PendingCode>,
    authorizations: Vec<Authorization>,
    /// access token → (authorization, expiry)
    access: HashMap<String, (usize, Instant)>,
    pub(crate) refreshes: Vec<RefreshAttempt>,
    pub(crate) issued_refresh_tokens: Vec<String>,
    pub(crate) issued_access_tokens: Vec<String>,
    pub(crate) outage: Option<StatusCode>,
}

impl Default for OAuthState {
    fn default() -> Self {
        OAuthState::new(None, DEFAULT_ACCESS_TTL)
    }
}

impl OAuthState {
    pub(crate) fn new(app: Option<OAuthApp>, access_ttl: Duration) -> OAuthState {
        OAuthState {
            app,
            access_ttl,
            codes: HashMap::new(),
            authorizations: Vec::new(),
            access: HashMap::new(),
            refreshes: Vec::new(),
            issued_refresh_tokens: Vec::new(),
            issued_access_tokens: Vec::new(),
            outage: None,
        }
    }
}

fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// An OAuth error answer (RFC 6749 §5.2).
fn refusal(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        StatusCode::from_u16(status).expect("valid status"),
        json!({ "error": error, "error_description": description }),
    )
}

impl OAuthState {
    /// A new authorization of the app by its user, as if the user had approved it and the code
    /// had been exchanged: its refresh token.
    pub(crate) fn authorize(&mut self) -> Option<String> {
        self.app.as_ref()?;
        let token = new_secret("rt");
        self.authorizations.push(Authorization {
            current: token.clone(),
            previous: None,
            revoked: false,
        });
        self.issued_refresh_tokens.push(token.clone());
        Some(token)
    }

    /// Revokes the authorization `refresh_token` belongs to (its current or previous token).
    pub(crate) fn revoke_of(&mut self, refresh_token: &str) -> bool {
        let found = self
            .authorizations
            .iter_mut()
            .find(|a| a.current == refresh_token || a.previous.as_deref() == Some(refresh_token));
        found.map(|a| a.revoked = true).is_some()
    }

    pub(crate) fn revoke_all(&mut self) {
        for a in &mut self.authorizations {
            a.revoked = true;
        }
    }

    pub(crate) fn expire_access_tokens(&mut self) {
        let now = Instant::now();
        for (_, expires) in self.access.values_mut() {
            *expires = now;
        }
    }

    pub(crate) fn is_refresh_token_live(&self, token: &str) -> bool {
        self.authorizations
            .iter()
            .any(|a| !a.revoked && (a.current == token || a.previous.as_deref() == Some(token)))
    }

    /// The e-mail of the user an access token acts for, if it is valid.
    pub(crate) fn user_of(&self, access_token: &str) -> Option<String> {
        let (authorization, expires) = self.access.get(access_token)?;
        let valid = Instant::now() < *expires && !self.authorizations[*authorization].revoked;
        valid.then(|| self.app.as_ref().map(|a| a.user_email.clone()))?
    }

    /// `GET /apps/{app_id}/authorize?…`: approves at once and sends the browser back with a code.
    pub(crate) fn authorize_page(&mut self, app_id: &str, query: Option<&str>) -> Reply {
        let Some(app) = self.app.clone().filter(|a| a.app_id == app_id) else {
            return refusal(404, "invalid_request", "no such app");
        };
        let params = form(query.unwrap_or_default().as_bytes());
        let get = |k: &str| params.get(k).map(String::as_str);
        if get("response_type") != Some("code") || get("client_id") != Some(&app.client_id) {
            return refusal(
                400,
                "invalid_request",
                "response_type=code and the app's client_id",
            );
        }
        let redirect_uri = get("redirect_uri").unwrap_or(&app.redirect_uri).to_owned();
        if redirect_uri != app.redirect_uri {
            return refusal(400, "invalid_request", "redirect_uri is not the app's");
        }
        let challenge = match (get("code_challenge"), get("code_challenge_method")) {
            (Some(c), Some("S256")) => Some(c.to_owned()),
            (Some(_), _) => return refusal(400, "invalid_request", "only S256 is supported"),
            (None, _) if app.client_secret.is_none() => {
                return refusal(400, "invalid_request", "a public app needs PKCE");
            }
            (None, _) => None,
        };
        let code = new_secret("code");
        self.codes.insert(
            code.clone(),
            PendingCode {
                challenge,
                redirect_uri: redirect_uri.clone(),
                issued: Instant::now(),
            },
        );
        let mut back = url::Url::parse(&redirect_uri).expect("the app's redirect_uri is a URL");
        back.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("location", "NA");
        if let Some(state) = get("state") {
            back.query_pairs_mut().append_pair("state", state);
        }
        let mut reply = Reply::json(StatusCode::FOUND, json!({ "notice": "approved" }));
        reply.headers.insert(
            header::LOCATION,
            HeaderValue::from_str(back.as_str()).expect("a URL is a valid header"),
        );
        reply
    }

    /// `POST /token`, form-encoded: the code exchange and the refresh.
    pub(crate) fn token_endpoint(&mut self, body: &[u8]) -> Reply {
        let params = form(body);
        let get = |k: &str| params.get(k).map(String::as_str);
        let Some(app) = self.app.clone() else {
            return refusal(404, "invalid_request", "no app");
        };
        if get("client_id") != Some(&app.client_id) {
            return refusal(401, "invalid_client", "unknown client");
        }
        if app.client_secret.is_some() && get("client_secret") != app.client_secret.as_deref() {
            return refusal(401, "invalid_client", "wrong client secret");
        }
        match get("grant_type") {
            Some("authorization_code") => {
                self.exchange(get("code"), get("redirect_uri"), get("code_verifier"))
            }
            Some("refresh_token") => {
                let used = get("refresh_token").unwrap_or_default().to_owned();
                let reply = match self.outage {
                    Some(status) => refusal(status.as_u16(), "temporarily_unavailable", "down"),
                    None => self.refresh(&used),
                };
                self.refreshes.push(RefreshAttempt {
                    refresh_token: used,
                    status: reply.status.as_u16(),
                    at: Instant::now(),
                });
                reply
            }
            _ => refusal(
                400,
                "unsupported_grant_type",
                "authorization_code or refresh_token",
            ),
        }
    }

    fn exchange(
        &mut self,
        code: Option<&str>,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Reply {
        // A code is used once, right or wrong.
        let Some(pending) = code.and_then(|c| self.codes.remove(c)) else {
            return refusal(400, "invalid_grant", "unknown or used code");
        };
        if pending.issued.elapsed() > CODE_LIFETIME {
            return refusal(400, "invalid_grant", "the code expired");
        }
        if redirect_uri != Some(pending.redirect_uri.as_str()) {
            return refusal(400, "invalid_grant", "redirect_uri differs");
        }
        if let Some(challenge) = &pending.challenge {
            let Some(verifier) = verifier else {
                return refusal(400, "invalid_grant", "code_verifier missing");
            };
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if &computed != challenge {
                return refusal(400, "invalid_grant", "code_verifier does not match");
            }
        }
        let refresh_token = self.authorize().expect("the app exists");
        let index = self.authorizations.len() - 1;
        self.answer(index, refresh_token)
    }

    fn refresh(&mut self, used: &str) -> Reply {
        let found = self
            .authorizations
            .iter()
            .position(|a| !a.revoked && (a.current == used || a.previous.as_deref() == Some(used)));
        let Some(index) = found else {
            return refusal(400, "invalid_grant", "the refresh token is not valid");
        };
        let next = new_secret("rt");
        let authorization = &mut self.authorizations[index];
        if authorization.current == used {
            // Its successor is used: the one before it is dead now.
            authorization.previous = Some(used.to_owned());
        }
        // Else `used` is the previous one, used again before its successor was: that successor
        // is replaced.
        authorization.current = next.clone();
        self.issued_refresh_tokens.push(next.clone());
        self.answer(index, next)
    }

    fn answer(&mut self, authorization: usize, refresh_token: String) -> Reply {
        let access_token = new_secret("at");
        self.access.insert(
            access_token.clone(),
            (authorization, Instant::now() + self.access_ttl),
        );
        self.issued_access_tokens.push(access_token.clone());
        let email = self
            .app
            .as_ref()
            .map(|a| a.user_email.clone())
            .unwrap_or_default();
        Reply::ok(json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": self.access_ttl.as_secs_f64(),
            "organization_uid": crate::DEMO_ORG,
            "user_uid": user_uid(&email),
            "authorization_type": "user",
            "location": "NA",
        }))
    }

    /// `GET|DELETE /manifests/{app_id}/authorizations[/{uid}]`, with a valid access token.
    pub(crate) fn authorizations_api(
        &mut self,
        method: &Method,
        rest: &str,
        headers: &HeaderMap,
    ) -> Reply {
        let Some(index) = bearer(headers)
            .and_then(|t| self.access.get(t).map(|(i, _)| *i))
            .filter(|i| !self.authorizations[*i].revoked)
        else {
            return access_token_invalid();
        };
        let email = self
            .app
            .as_ref()
            .map(|a| a.user_email.clone())
            .unwrap_or_default();
        match (method, rest) {
            (&Method::GET, "") => Reply::ok(json!({ "data": [{
                "authorization_uid": format!("auth{index}"),
                "user": { "uid": user_uid(&email) },
            }] })),
            (&Method::DELETE, uid) if uid == format!("/auth{index}") => {
                self.authorizations[index].revoked = true;
                Reply::ok(json!({ "notice": "Authorization revoked" }))
            }
            _ => refusal(404, "invalid_request", "no such authorization"),
        }
    }
}

/// The access token of an `authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The CMA's 401 for an OAuth access token it does not accept. Its `error_code` is not
/// documented; like the simulator's other generic errors it repeats the status.
pub(crate) fn access_token_invalid() -> Reply {
    Reply::error(
        StatusCode::UNAUTHORIZED,
        401,
        ACCESS_TOKEN_INVALID,
        json!({ "authorization": ["is not valid."] }),
    )
}

/// Whether a request goes to the OAuth app (`/token`, `/apps/…`, `/manifests/…`) rather than the
/// CMA.
pub(crate) fn is_oauth_path(path: &str) -> bool {
    path == "/token" || path.starts_with("/apps/") || path.starts_with("/manifests/")
}

/// Answers a request to the OAuth app.
pub(crate) fn route(
    state: &mut State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let oauth = &mut state.oauth;
    if let (&Method::POST, "/token") = (method, path) {
        return oauth.token_endpoint(body);
    }
    if let Some(app_id) = path
        .strip_prefix("/apps/")
        .and_then(|rest| rest.strip_suffix("/authorize"))
        && method == Method::GET
    {
        return oauth.authorize_page(app_id, query);
    }
    if let Some(rest) = path.strip_prefix("/manifests/") {
        let (app_id, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(rest) = rest.strip_prefix("authorizations")
            && oauth.app.as_ref().is_some_and(|a| a.app_id == app_id)
        {
            return oauth.authorizations_api(method, rest, headers);
        }
    }
    refusal(404, "invalid_request", "not an OAuth endpoint")
}

fn user_uid(email: &str) -> String {
    format!("blt{}", &sha256_hex(email.as_bytes())[..16])
}

fn form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}
