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
//! The placeholder is the proxy's own value, one per process. A request that carries exactly it
//! where a credential goes (the `authtoken` or `authorization` header, a cookie or query parameter
//! of such a name) has it removed before anything else reads the request, so the request is as
//! credential-free as one that never had it, also with `client_credentials = "reject"`. It is
//! never sent upstream. Any other value there is a client credential as before.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ProxyError;
use super::target::{Name, classify_name, params};
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
const PLACEHOLDER_PREFIX: &str = "cma-auth-proxy-session-";

/// The placeholder token and the user objects of the profiles' sessions.
pub struct Sessions {
    placeholder: Placeholder,
    /// Per profile: the user object, and the session it was read with. Kept while that session is
    /// the profile's current one; at most one entry per configured profile.
    users: Mutex<HashMap<Arc<str>, CachedUser>>,
}

struct CachedUser {
    /// Compared by address; a `Weak` keeps the address from being reused while it is held.
    session: Weak<Token>,
    user: Arc<Map<String, Value>>,
}

/// `cma-auth-proxy-session-` and 128 random bits in hex: recognizable in a client's configuration,
/// and never a token Contentstack issued.
struct Placeholder(String);

impl Placeholder {
    fn new() -> Placeholder {
        Placeholder(format!(
            "{PLACEHOLDER_PREFIX}{:032x}",
            rand::random::<u128>()
        ))
    }

    fn is(&self, value: &[u8]) -> bool {
        value == self.0.as_bytes()
    }
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
        }
    }
}

impl Sessions {
    /// Removes the placeholder from every place a client may carry a credential, and nothing else.
    /// Cheap when it is absent: a comparison per credential header, a substring search of the
    /// cookies and the query.
    pub(super) fn remove_placeholder(&self, parts: &mut Parts) {
        for name in [
            header::AUTHORIZATION,
            HeaderName::from_static(headers::AUTHTOKEN),
        ] {
            self.remove_from_header(&mut parts.headers, name);
        }
        self.remove_from_cookies(&mut parts.headers);
        self.remove_from_query(&mut parts.uri);
    }

    fn remove_from_header(&self, headers: &mut HeaderMap, name: HeaderName) {
        if !headers
            .get_all(&name)
            .iter()
            .any(|v| self.placeholder.is(v.as_bytes()))
        {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .filter(|v| !self.placeholder.is(v.as_bytes()))
            .cloned()
            .collect();
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }

    fn remove_from_cookies(&self, headers: &mut HeaderMap) {
        let carries = |v: &HeaderValue| contains(v.as_bytes(), self.placeholder.0.as_bytes());
        if !headers.get_all(header::COOKIE).iter().any(carries) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| {
                let pairs: Vec<&[u8]> = value
                    .as_bytes()
                    .split(|&b| b == b';')
                    .map(<[u8]>::trim_ascii)
                    .filter(|pair| !pair.is_empty() && !self.is_placeholder_pair(pair))
                    .collect();
                // Parts of a valid header value, joined by "; ": still a valid header value.
                (!pairs.is_empty())
                    .then(|| HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok())
                    .flatten()
            })
            .collect();
        headers.remove(header::COOKIE);
        for value in kept {
            headers.append(header::COOKIE, value);
        }
    }

    /// `name=placeholder` where `name` is read as a credential; the value must be exact (not
    /// decoded, not trimmed).
    fn is_placeholder_pair(&self, pair: &[u8]) -> bool {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return false;
        };
        classify_name(pair[..eq].trim_ascii()) == Name::Credential
            && self.placeholder.is(&pair[eq + 1..])
    }

    fn remove_from_query(&self, uri: &mut Uri) {
        let Some(query) = uri.query() else {
            return;
        };
        if !query.contains(self.placeholder.0.as_str()) {
            return;
        }
        // The parameters as the judge splits them, so that what is left is judged as usual.
        let mut kept = String::with_capacity(query.len());
        for (separator, param) in params(query) {
            if self.is_placeholder_pair(param.as_bytes()) {
                continue;
            }
            if !kept.is_empty() {
                kept.push(separator.unwrap_or('&'));
            }
            kept.push_str(param);
        }
        let mut target = uri.path().to_owned();
        if !kept.is_empty() {
            target.push('?');
            target.push_str(&kept);
        }
        let mut parts = uri.clone().into_parts();
        // A valid target less whole parameters is still valid; if it somehow were not, the
        // placeholder stays and is judged as a client credential: stripped or refused.
        if let Ok(path_and_query) = PathAndQuery::from_maybe_shared(Bytes::from(target)) {
            parts.path_and_query = Some(path_and_query);
            if let Ok(new) = Uri::from_parts(parts) {
                *uri = new;
            }
        }
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

/// Finds `needle` in `haystack` (both short: a header value, a placeholder).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Proxy {
    /// Answers a login or logout itself. The client's headers are screened and its profile chosen
    /// as for any request; nothing the client sent goes upstream.
    pub(super) async fn emulate_session(
        &self,
        action: Action,
        headers: &mut HeaderMap,
        api_key: Option<&str>,
        body: Incoming,
        config: &Config,
        record: &mut AccessRecord,
    ) -> Result<Response<Relay>, ProxyError> {
        headers::screen_request(headers, config.policy.client_credentials)?;
        let profile = profile::select_profile(headers, api_key, config)?;
        record.profile = Some(profile.name.clone());
        let body = body::take_request_body(
            body,
            content_length(headers)?,
            LOGIN_BODY_LIMIT,
            config.server.max_body,
            config.server.body_pace,
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
        let uri = Uri::builder()
            .scheme(config.upstream.scheme.clone())
            .authority(config.upstream.authority.clone())
            .path_and_query(USER_PATH)
            .build()
            .expect("the upstream's scheme and authority with a fixed path make a URI");
        let mut request_headers = HeaderMap::new();
        request_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        request_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let outbound = Outbound {
            method: Method::GET,
            uri,
            headers: request_headers,
            timeout: config.server.request_timeout,
            limiter: self.limiter(&profile.name),
            profile: profile.name.clone(),
        };
        let response = self
            .send_as(
                profile,
                outbound,
                RequestBody::Replayable(Bytes::new()),
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
    let RequestBody::Replayable(bytes) = body else {
        return Err(ProxyError::MalformedLogin("it is larger than 64 KiB"));
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
    user.insert("authtoken".into(), placeholder.0.clone().into());
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
    use crate::policy::ClientCredentials;

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
    fn the_placeholder_is_random_and_recognizable() {
        let (a, b) = (Placeholder::new(), Placeholder::new());
        assert_ne!(a.0, b.0);
        assert!(a.0.starts_with(PLACEHOLDER_PREFIX));
        assert_eq!(a.0.len(), PLACEHOLDER_PREFIX.len() + 32);
        assert!(a.is(a.0.as_bytes()));
        assert!(!a.is(format!("{} ", a.0).as_bytes()));
        assert!(!a.is(&a.0.as_bytes()[1..]));
    }

    /// The request after the placeholder is removed: its query, and every header as text.
    fn cleaned(target: &str, headers: &[(&str, &str)]) -> (Option<String>, Vec<(String, String)>) {
        let sessions = Sessions::default();
        let ph = sessions.placeholder.0.clone();
        let target = target.replace("PH", &ph);
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(n, v)| (*n, v.replace("PH", &ph)))
            .collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut p = parts("GET", &target, &headers);
        sessions.remove_placeholder(&mut p);
        let left = p
            .headers
            .iter()
            .map(|(n, v)| {
                let v = v.to_str().unwrap().replace(&ph, "PH");
                (n.to_string(), v)
            })
            .collect();
        (p.uri.query().map(|q| q.replace(&ph, "PH")), left)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_placeholder_is_removed_wherever_a_credential_goes() {
        assert_eq!(
            cleaned(
                "/v3/user?a=1&authtoken=PH;b=2",
                &[("authtoken", "PH"), ("api_key", "blt1")]
            ),
            (Some("a=1;b=2".into()), pairs(&[("api_key", "blt1")]))
        );
        assert_eq!(cleaned("/v3/user?AuthToken=PH", &[]), (None, vec![]));
        assert_eq!(
            cleaned("/v3/user", &[("authorization", "PH")]),
            (None, vec![])
        );
        assert_eq!(
            cleaned(
                "/v3/user",
                &[
                    ("cookie", "theme=dark; authtoken=PH"),
                    ("cookie", "authtoken=PH")
                ]
            ),
            (None, pairs(&[("cookie", "theme=dark")]))
        );
    }

    #[test]
    fn anything_but_the_exact_placeholder_is_left_to_the_credential_rules() {
        for headers in [
            [("authtoken", "PHx")],
            [("authtoken", "xPH")],
            [("authtoken", "other")],
            [("authorization", "Bearer PH")],
            [("cookie", "authtoken=PH0")],
            [("cookie", "authtoken= PH")],
            [("cookie", "theme=PH")],
        ] {
            assert_eq!(
                cleaned("/v3/user", &headers),
                (None, pairs(&headers)),
                "{headers:?}"
            );
        }
        for query in [
            "authtoken=PH%30",
            "authtoken=%63ma-auth-proxy-session-0",
            "theme=PH",
            "authtoken=PHPH",
        ] {
            let (left, _) = cleaned(&format!("/v3/user?{query}"), &[]);
            assert_eq!(left.as_deref(), Some(query));
        }
        let (left, _) = cleaned("/v3/user?authtoken=PH&authtoken=y", &[]);
        assert_eq!(left.as_deref(), Some("authtoken=y"));
        // What is left is judged as usual: a real credential beside the placeholder is refused.
        let sessions = Sessions::default();
        let mut p = parts(
            "GET",
            "/v3/user",
            &[
                ("authtoken", sessions.placeholder.0.as_str()),
                ("authtoken", "real"),
            ],
        );
        sessions.remove_placeholder(&mut p);
        assert_eq!(p.headers.get_all("authtoken").iter().count(), 1);
        assert!(matches!(
            headers::screen_request(&p.headers, ClientCredentials::Reject),
            Err(ProxyError::ClientCredentialsRejected)
        ));
    }

    #[test]
    fn login_bodies_are_checked_for_shape_only() {
        let body = |text: &str| RequestBody::Replayable(Bytes::from(text.to_owned()));
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
