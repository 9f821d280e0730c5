//! Session emulation (docs/design.md#session-emulation): a client's own login and logout, answered
//! by the proxy, so that code written for Contentstack (`client.login(...)`, `csdx auth:login`)
//! works through the sidecar with only its host changed.
//!
//! Exactly `POST /v3/user-session` and `DELETE /v3/user-session`, as received, are answered here
//! when `policy.session_endpoint = "emulate"`: no other method, spelling, sub-path or API version,
//! which all go on to the policy and are refused as before. A login answers the service account's
//! user object (`GET /v3/user` through the profile's own session) with a placeholder `authtoken`;
//! a logout answers success and ends nothing. The body of a login is read (bounded) only to check
//! that it is one, then dropped: the e-mail, password and two-factor code a client sends are never
//! forwarded, logged, stored or echoed.
//!
//! The placeholder token a login hands out, and its removal from later requests, are
//! `placeholder.rs`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ProxyError;
use super::placeholder::Placeholder;
use super::{AccessRecord, Outbound, Proxy, content_length, headers, profile};
use crate::body::{self, Relay, RequestBody};
use crate::config::{Config, ProfileConfig};
use crate::metrics::SessionAction;
use crate::policy::{Policy, SessionEndpoint};
use crate::token::{Token, TokenManager};

/// The one path answered here, byte for byte as received.
const SESSION_PATH: &str = "/v3/user-session";
/// Where the user object of an emulated login comes from.
const USER_PATH: &str = "/v3/user";
/// A login body is a few hundred bytes; more is not a login.
const LOGIN_BODY_LIMIT: u64 = 64 * 1024;
/// The user object is a few KiB (the session calls allow a login answer as much).
const USER_LIMIT: usize = 1 << 20;

/// The placeholder token and the user objects of the profiles' sessions.
pub struct Sessions {
    placeholder: Placeholder,
    /// Per profile: the user object, and the session it was read with. Kept while that session is
    /// the profile's current one; at most one entry per configured profile.
    users: Mutex<HashMap<Arc<str>, CachedUser>>,
    /// Login bodies are kept against a budget of their own: kept request bodies filling
    /// `replay_memory` must not turn a 40-byte login into a refusal.
    login_bodies: Arc<crate::body::ReplayBudget>,
}

/// Memory for login bodies being read at once: 64 of the largest accepted (a real one is about
/// 100 bytes).
const LOGIN_MEMORY: u64 = 64 * LOGIN_BODY_LIMIT;

struct CachedUser {
    /// Compared by address; a `Weak` keeps the address from being reused while it is held.
    session: Weak<Token>,
    user: Arc<Map<String, Value>>,
}

/// What a request asks of the session endpoint that this module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Login,
    Logout,
}

impl From<Action> for SessionAction {
    fn from(action: Action) -> SessionAction {
        match action {
            Action::Login => SessionAction::Login,
            Action::Logout => SessionAction::Logout,
        }
    }
}

/// Whether this module answers the request: only the exact method and path as received. A path
/// that needed normalizing to read `/v3/user-session` is an odd spelling, and stays refused.
pub(super) fn emulated(parts: &Parts, policy: &Policy) -> Option<Action> {
    if policy.session_endpoint != SessionEndpoint::Emulate || parts.uri.path() != SESSION_PATH {
        return None;
    }
    match parts.method {
        Method::POST => Some(Action::Login),
        Method::DELETE => Some(Action::Logout),
        _ => None,
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            placeholder: Placeholder::new(),
            users: Mutex::default(),
            login_bodies: crate::body::ReplayBudget::new(LOGIN_MEMORY),
        }
    }
}

impl Sessions {
    pub(super) fn placeholder(&self) -> &Placeholder {
        &self.placeholder
    }

    /// The user object cached for the profile's current session, if that is the session it was
    /// read with.
    fn cached_user(
        &self,
        profile: &ProfileConfig,
        tokens: &TokenManager,
    ) -> Option<Arc<Map<String, Value>>> {
        let current = tokens.cached(&profile.name)?;
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let cached = users.get(&profile.name)?;
        std::ptr::eq(cached.session.as_ptr(), Arc::as_ptr(&current)).then(|| cached.user.clone())
    }

    /// Keeps `user` for the profile's current session. Profiles no longer configured are
    /// forgotten, so the map never outgrows the configuration.
    fn remember_user(
        &self,
        profile: &ProfileConfig,
        tokens: &TokenManager,
        user: Arc<Map<String, Value>>,
        config: &Config,
    ) {
        let Some(current) = tokens.cached(&profile.name) else {
            return;
        };
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|name, _| config.profile(name).is_some());
        users.insert(
            profile.name.clone(),
            CachedUser {
                session: Arc::downgrade(&current),
                user,
            },
        );
    }
}

impl Proxy {
    /// Answers a login or logout itself. The client's headers are screened and its profile chosen
    /// as for any request; nothing the client sent goes upstream.
    pub(super) async fn emulate_session(
        &self,
        action: Action,
        headers: &mut HeaderMap,
        api_key: Option<&str>,
        (body, receiving): (Incoming, Option<crate::server::ReceivingBody>),
        config: &Config,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        let screened = headers::screen_request(headers, config.policy.client_credentials)?;
        let profile =
            &config.profiles[profile::select_profile(headers, &screened, api_key, config)?];
        record.profile = Some(profile.name.clone());
        let body = body::take_request_body(
            body,
            receiving,
            content_length(headers)?,
            LOGIN_BODY_LIMIT,
            config.server.max_body,
            config.server.body_pace,
            &self.sessions.login_bodies,
        )
        .await?;
        let response = match action {
            Action::Login => {
                check_login_body(&body)?;
                drop(body);
                // The answer shows what `GET /v3/user` shows: only to a client the policy lets
                // see it.
                config
                    .policy
                    .check(&Method::GET, USER_PATH)
                    .map_err(ProxyError::PolicyDenied)?;
                match self.service_user(profile, config, record).await? {
                    Ok(user) => login_answer(&user, &self.sessions.placeholder),
                    // Not a user: the client sees what `GET /v3/user` answered, as a request
                    // would have.
                    Err(upstream) => return Ok(upstream),
                }
            }
            Action::Logout => logout_answer(),
        };
        self.metrics.emulated_session(&profile.name, action.into());
        Ok(response)
    }

    /// The service account's user object: the one cached for the profile's current session, else
    /// `GET /v3/user` through that session, with everything a forwarded request gets (a login on a
    /// miss, its failures as 503s, the replay after an eviction, the rate budget). An upstream
    /// answer other than 200 comes back as it is.
    async fn service_user(
        &self,
        profile: &ProfileConfig,
        config: &Config,
        record: &mut AccessRecord,
    ) -> Result<Result<Arc<Map<String, Value>>, Response<Relay>>, ProxyError> {
        if let Some(user) = self.sessions.cached_user(profile, &self.tokens) {
            return Ok(Ok(user));
        }
        let mut request_headers = HeaderMap::new();
        request_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        request_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut outbound = Outbound {
            kind: crate::ratelimit::RequestKind::Read,
            method: Method::GET,
            target: http::uri::PathAndQuery::from_static(USER_PATH),
            headers: request_headers,
            timeout: config.server.request_timeout,
            budget: self.budget(profile),
            pinned: None,
            carries_token: true,
            token_kind: None,
        };
        let response = self
            .dispatch(
                profile,
                &mut outbound,
                RequestBody::Replayable(
                    Bytes::new(),
                    crate::body::Held::none(&*self.replay_budget),
                ),
                record,
            )
            .await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(response));
        }
        let user = Arc::new(read_user(response, config.server.request_timeout).await?);
        self.sessions
            .remember_user(profile, &self.tokens, user.clone(), config);
        Ok(Ok(user))
    }
}

/// The `user` object of a `GET /v3/user` answer, read with a bound on its size and its time.
async fn read_user(
    response: Response<Relay>,
    deadline: std::time::Duration,
) -> Result<Map<String, Value>, ProxyError> {
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ProxyError::UnreadableUser(
            "is compressed, though the proxy asked for no encoding",
        ));
    }
    let read = http_body_util::Limited::new(response.into_body(), USER_LIMIT).collect();
    let bytes = match tokio::time::timeout(deadline, read).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(deadline)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::UnreadableUser("is larger than 1 MiB"));
        }
        Ok(Err(_)) => return Err(ProxyError::UnreadableUser("broke off before its end")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut answer)) => match answer.remove("user") {
            Some(Value::Object(user)) => Ok(user),
            _ => Err(ProxyError::UnreadableUser("has no `user` object")),
        },
        _ => Err(ProxyError::UnreadableUser("is not a JSON object")),
    }
}

/// A login request's shape, checked without keeping any of it: `{"user":{"email","password"}}`
/// with strings (a `tfa_token` and other fields may come too, and are ignored).
#[derive(Deserialize)]
struct LoginBody {
    #[allow(dead_code)] // read only to check its shape
    user: LoginUser,
}

#[derive(Deserialize)]
struct LoginUser {
    #[allow(dead_code)]
    email: Discarded,
    #[allow(dead_code)]
    password: Discarded,
}

/// A JSON string, checked and dropped as it is read, so no copy of a credential is made.
struct Discarded;

impl<'de> Deserialize<'de> for Discarded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Discarded, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Discarded;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Discarded, E> {
                Ok(Discarded)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Refuses (422) a body that is not a login. serde's error text is never used: it can quote the
/// value it choked on.
fn check_login_body(body: &RequestBody) -> Result<(), ProxyError> {
    let RequestBody::Replayable(bytes, _) = body else {
        return Err(ProxyError::MalformedLogin(
            "it is larger than 64 KiB, or more logins than the proxy keeps at once are being sent",
        ));
    };
    serde_json::from_slice::<LoginBody>(bytes)
        .map(drop)
        .map_err(|_| {
            ProxyError::MalformedLogin(
                "it must be a JSON object whose `user` object holds the strings `email` and `password`",
            )
        })
}

/// Contentstack's login answer: the user object with the placeholder as its `authtoken`.
fn login_answer(user: &Map<String, Value>, placeholder: &Placeholder) -> Response<Relay> {
    let mut user = user.clone();
    user.insert("authtoken".into(), placeholder.as_str().into());
    json_answer(serde_json::json!({ "notice": "Login Successful.", "user": user }))
}

/// Contentstack's logout answer.
fn logout_answer() -> Response<Relay> {
    json_answer(serde_json::json!({ "notice": "You've logged out successfully!" }))
}

fn json_answer(body: Value) -> Response<Relay> {
    let mut response = Response::new(Relay::full(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_the_exact_login_and_logout_are_emulated() {
        let emulate = Policy::default();
        for (method, target, want) in [
            ("POST", "/v3/user-session", Some(Action::Login)),
            ("POST", "/v3/user-session?x=1", Some(Action::Login)),
            ("DELETE", "/v3/user-session", Some(Action::Logout)),
            ("post", "/v3/user-session", None),
            ("Delete", "/v3/user-session", None),
            ("GET", "/v3/user-session", None),
            ("PUT", "/v3/user-session", None),
            ("HEAD", "/v3/user-session", None),
            ("POST", "/v3/user-session/", None),
            ("POST", "/v3//user-session", None),
            ("POST", "//v3/user-session", None),
            ("POST", "/v3/./user-session", None),
            ("POST", "/v3/%75ser-session", None),
            ("POST", "/V3/user-session", None),
            ("POST", "/v2/user-session", None),
            ("POST", "/user-session", None),
            ("POST", "/v3/user-session;x", None),
            ("POST", "/v3/user-session.json", None),
            ("DELETE", "/v3/user-session/x", None),
        ] {
            let got = emulated(&parts(method, target, &[]), &emulate);
            assert_eq!(got, want, "{method} {target}");
        }
        let mut deny = Policy::default();
        deny.session_endpoint = SessionEndpoint::Deny;
        assert_eq!(
            emulated(&parts("POST", "/v3/user-session", &[]), &deny),
            None
        );
    }

    #[test]
    fn login_bodies_are_checked_for_shape_only() {
        let budget = crate::body::ReplayBudget::new(1 << 20);
        let body = |text: &str| {
            RequestBody::Replayable(
                Bytes::from(text.to_owned()),
                crate::body::Held::none(&*budget),
            )
        };
        for ok in [
            r#"{"user":{"email":"a@b.c","password":"p"}}"#,
            r#"{"user":{"email":"a@b.c","password":"p\"q","tfa_token":"123456"},"x":1}"#,
            r#"{"user":{"email":"","password":""}}"#,
        ] {
            assert!(check_login_body(&body(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"user":"a@b.c"}"#,
            r#"{"user":{"email":"a@b.c"}}"#,
            r#"{"user":{"password":"p"}}"#,
            r#"{"user":{"email":"a@b.c","password":12345}}"#,
            r#"{"user":{"email":null,"password":"p"}}"#,
        ] {
            let e = check_login_body(&body(bad)).unwrap_err();
            assert_eq!(e.reason(), "malformed_login", "{bad}");
        }
    }
}
