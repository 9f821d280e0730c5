//! Errors the proxy itself answers with (docs/design.md#errors-the-proxy-answers), and the one
//! mapping from cause to response.
//!
//! Every synthetic response is JSON in Contentstack's error shape, so the official SDKs surface it,
//! and carries `x-cma-auth-proxy-error: <reason>`. Upstream responses never pass through here.
//! Messages name the cause and the fix, never a secret.
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{BodyError, BodyTimeout};
use crate::error_text::error_chain_text;
use crate::policy::{Denial, PathError};
use crate::token::{LoginError, LoginFailure};

/// Header that marks a response as the proxy's own.
pub const ERROR_HEADER: &str = "x-cma-auth-proxy-error";

/// The reasons of the answers that refuse a request (4xx), which `denied_total{reason}` counts and
/// shows from the start, at 0 (each arm's test checks its reason against this list).
pub const DENIED_REASONS: &[&str] = &[
    "policy_denied",
    "client_credentials_rejected",
    "bad_request",
    "method_not_allowed",
    "body_too_large",
    "body_timeout",
    "rate_limited",
    "malformed_login",
];

/// Why a request was malformed, for `bad_request`.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("absolute-form target for {0:?}; send origin-form requests (`/v3/...`) to the proxy")]
    ForeignAuthority(String),
    #[error("unknown profile {0:?} in x-cma-profile")]
    UnknownProfile(String),
    #[error(
        "no profile serves this request: send `x-cma-profile`, or configure a profile named `default`"
    )]
    NoProfile,
    #[error("the x-cma-profile header is not valid text")]
    BadProfileHeader,
    #[error("malformed path: {0}")]
    Path(#[from] PathError),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("refused by policy: {}", denial_text(*.0))]
    PolicyDenied(Denial),
    #[error(
        "refused: the request carries its own `authtoken` or `authorization` header, and policy.client_credentials = \"reject\"; remove it, the proxy injects the credentials"
    )]
    ClientCredentialsRejected,
    #[error("bad request: {0}")]
    BadRequest(#[from] BadRequest),
    #[error(
        "{0} is not supported: cma-auth-proxy forwards plain CMA requests (CONNECT tunnels, and TRACE would echo the injected token)"
    )]
    MethodNotAllowed(http::Method),
    #[error("the request body exceeds server.max_body ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("gave up waiting for the request body: {0}; send the body without pausing")]
    BodyTimeout(#[from] BodyTimeout),
    #[error("cannot reach Contentstack: {0}")]
    UpstreamUnreachable(#[source] super::upstream::SendError),
    #[error("Contentstack's response broke off: {0}")]
    UpstreamBroken(#[source] crate::body::BoxError),
    #[error("Contentstack did not answer within server.request_timeout ({0:?})")]
    UpstreamTimeout(Duration),
    #[error("the proxy is shutting down; retry against another instance")]
    ShuttingDown,
    #[error(
        "the organization's request budget (profiles.*.rate_limit) would make this request wait {0:?}, longer than max_wait; retry later"
    )]
    RateLimited(Duration),
    /// A login the proxy answers itself (`policy.session_endpoint = "emulate"`) whose body is not a
    /// login. Says what is wrong, never what was sent.
    #[error(
        "the login body is not Contentstack's login request ({0}); send {{\"user\":{{\"email\":\"…\",\"password\":\"…\"}}}}. The proxy answers logins itself with its own session (policy.session_endpoint = \"emulate\") and discards the credentials sent"
    )]
    MalformedLogin(&'static str),
    /// Contentstack's answer to `/v3/user`, the user object (which carries the token the proxy
    /// takes out, and which an emulated login returns), could not be read as one.
    #[error(
        "Contentstack's answer to /v3/user, the user object (which carries the session token the proxy takes out), {0}"
    )]
    UnreadableUser(&'static str),
    /// Over `server.max_connections`: answered by the acceptor, before any request is read.
    #[error("too many connections to the proxy (server.max_connections); retry shortly")]
    TooManyConnections,
}

impl From<BodyError> for ProxyError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit },
            BodyError::Timeout(timeout) => ProxyError::BodyTimeout(timeout),
            BodyError::Cut => BadRequest::Malformed("the request body ended abruptly").into(),
        }
    }
}

fn denial_text(d: Denial) -> &'static str {
    match d {
        Denial::SessionEndpoint => {
            "/v3/user-session is reserved to the proxy (it holds the shared session)"
        }
        Denial::DenyRule => "the request matches a policy.deny rule",
        Denial::NotAllowed => "the request matches no policy.allow rule",
        Denial::StackNotServed => "no profile serves this api_key (profiles.*.stacks)",
    }
}

/// What the response says: status, reason (stable, for machines) and Contentstack-style code.
struct Shape {
    status: StatusCode,
    reason: &'static str,
    error_code: u32,
    retry_after: Option<Duration>,
}

impl ProxyError {
    /// The stable machine-readable reason, also used as a metric label.
    pub fn reason(&self) -> &'static str {
        self.shape().reason
    }

    fn shape(&self) -> Shape {
        let shape = |status, reason, error_code| Shape {
            status,
            reason,
            error_code,
            retry_after: None,
        };
        match self {
            ProxyError::Login(e) => Shape {
                retry_after: Some(e.retry_after),
                ..match *e.failure {
                    LoginFailure::Rejected { .. }
                    | LoginFailure::RefreshRefused { .. }
                    | LoginFailure::NotAuthorized => {
                        shape(StatusCode::SERVICE_UNAVAILABLE, "login_rejected", 901)
                    }
                    LoginFailure::Transient(_) => {
                        shape(StatusCode::SERVICE_UNAVAILABLE, "login_unavailable", 902)
                    }
                }
            },
            ProxyError::PolicyDenied(_) => shape(StatusCode::FORBIDDEN, "policy_denied", 903),
            ProxyError::ClientCredentialsRejected => {
                shape(StatusCode::UNAUTHORIZED, "client_credentials_rejected", 904)
            }
            ProxyError::BadRequest(_) => shape(StatusCode::BAD_REQUEST, "bad_request", 905),
            ProxyError::MethodNotAllowed(_) => {
                shape(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", 906)
            }
            ProxyError::BodyTooLarge { .. } => {
                shape(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", 907)
            }
            ProxyError::BodyTimeout(_) => shape(StatusCode::REQUEST_TIMEOUT, "body_timeout", 913),
            ProxyError::MalformedLogin(_) => {
                shape(StatusCode::UNPROCESSABLE_ENTITY, "malformed_login", 914)
            }
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UnreadableUser(_) => {
                shape(StatusCode::BAD_GATEWAY, "upstream_unreachable", 908)
            }
            ProxyError::UpstreamTimeout(_) => {
                shape(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", 909)
            }
            ProxyError::ShuttingDown => Shape {
                retry_after: Some(Duration::from_secs(1)),
                ..shape(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", 910)
            },
            ProxyError::RateLimited(wait) => Shape {
                retry_after: Some(*wait),
                ..shape(StatusCode::TOO_MANY_REQUESTS, "rate_limited", 912)
            },
            ProxyError::TooManyConnections => Shape {
                retry_after: Some(Duration::from_secs(1)),
                ..shape(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", 911)
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().status
    }

    /// The response a client sees.
    pub fn to_response(&self) -> Response<Bytes> {
        let shape = self.shape();
        let message = error_chain_text(self);
        let body = serde_json::json!({
            "error_message": message,
            "error_code": shape.error_code,
            "errors": { "cma_auth_proxy": [shape.reason] },
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = shape.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(shape.reason));
        if let Some(after) = shape.retry_after {
            // Whole seconds, rounded up, at least 1: a client that retries at once would only fail again.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::token::TransientCause;

    fn body_of(e: &ProxyError) -> serde_json::Value {
        serde_json::from_slice(e.to_response().body()).unwrap()
    }

    fn check(e: ProxyError, status: u16, reason: &str) -> Response<Bytes> {
        let response = e.to_response();
        assert_eq!(response.status().as_u16(), status, "{e}");
        assert_eq!(response.headers()[ERROR_HEADER], reason);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = body_of(&e);
        assert_eq!(body["errors"]["cma_auth_proxy"][0], reason);
        assert!(body["error_code"].as_u64().unwrap() > 900);
        assert!(!body["error_message"].as_str().unwrap().is_empty());
        assert_eq!(
            DENIED_REASONS.contains(&reason),
            response.status().is_client_error(),
            "{reason} in DENIED_REASONS"
        );
        response
    }

    fn login_error(failure: LoginFailure, retry_after: Duration) -> ProxyError {
        ProxyError::Login(LoginError {
            profile: "default".into(),
            failure: Arc::new(failure),
            retry_after,
        })
    }

    #[test]
    fn login_rejected() {
        let r = check(
            login_error(
                LoginFailure::Rejected {
                    http_status: 422,
                    error_code: Some(104),
                },
                Duration::from_millis(299_500),
            ),
            503,
            "login_rejected",
        );
        assert_eq!(r.headers()["retry-after"], "300");
        let text = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(text.contains("104"), "{text}");
        assert!(text.contains("rotate"), "{text}");
        // An OAuth profile's refused refresh, or no refresh token at all, is refused credentials
        // too: the same answer, naming its own fix.
        for (failure, fix) in [
            (
                LoginFailure::RefreshRefused {
                    http_status: 400,
                    error: Some(crate::token::oauth::OAuthError::InvalidGrant),
                },
                "invalid_grant",
            ),
            (LoginFailure::NotAuthorized, "oauth login"),
        ] {
            let r = check(
                login_error(failure, Duration::from_secs(300)),
                503,
                "login_rejected",
            );
            let text = String::from_utf8(r.body().to_vec()).unwrap();
            assert!(text.contains(fix), "{text}");
        }
    }

    #[test]
    fn login_unavailable() {
        let r = check(
            login_error(
                LoginFailure::Transient(TransientCause::Status(502)),
                Duration::from_millis(10),
            ),
            503,
            "login_unavailable",
        );
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn policy_denied() {
        check(
            ProxyError::PolicyDenied(Denial::DenyRule),
            403,
            "policy_denied",
        );
        let r = check(
            ProxyError::PolicyDenied(Denial::SessionEndpoint),
            403,
            "policy_denied",
        );
        assert!(r.headers().get("retry-after").is_none());
    }

    #[test]
    fn client_credentials_rejected() {
        check(
            ProxyError::ClientCredentialsRejected,
            401,
            "client_credentials_rejected",
        );
    }

    #[test]
    fn bad_request() {
        check(
            ProxyError::BadRequest(BadRequest::UnknownProfile("x".into())),
            400,
            "bad_request",
        );
    }

    #[test]
    fn method_not_allowed() {
        check(
            ProxyError::MethodNotAllowed(http::Method::CONNECT),
            405,
            "method_not_allowed",
        );
    }

    #[test]
    fn body_too_large() {
        check(
            ProxyError::BodyTooLarge { limit: 10 },
            413,
            "body_too_large",
        );
    }

    #[test]
    fn body_timeout() {
        let r = check(
            ProxyError::BodyTimeout(BodyTimeout::Idle(Duration::from_secs(10))),
            408,
            "body_timeout",
        );
        let text = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(text.contains("server.body_idle_timeout"), "{text}");
        assert!(text.contains(r#""error_code":913"#), "{text}");
        let slow = body_of(&ProxyError::BodyTimeout(BodyTimeout::TooSlow(1024)));
        assert!(
            slow["error_message"]
                .as_str()
                .unwrap()
                .contains("server.body_min_rate (1024 bytes/s)"),
            "{slow}"
        );
    }

    #[tokio::test]
    async fn upstream_unreachable() {
        // A real connection error from the client type the proxy uses.
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap_err();
        check(
            ProxyError::UpstreamUnreachable(err.into()),
            502,
            "upstream_unreachable",
        );
    }

    #[test]
    fn malformed_login() {
        let r = check(
            ProxyError::MalformedLogin("no `user` object"),
            422,
            "malformed_login",
        );
        let body = body_of(&ProxyError::MalformedLogin("no `user` object"));
        assert_eq!(body["error_code"], 914);
        assert!(
            body["error_message"]
                .as_str()
                .unwrap()
                .contains("session_endpoint"),
            "{body}"
        );
        assert!(r.headers().get("retry-after").is_none());
    }

    #[test]
    fn unreadable_user() {
        check(
            ProxyError::UnreadableUser("is not JSON"),
            502,
            "upstream_unreachable",
        );
    }

    #[test]
    fn upstream_timeout() {
        check(
            ProxyError::UpstreamTimeout(Duration::from_secs(1)),
            504,
            "upstream_timeout",
        );
    }

    #[test]
    fn rate_limited() {
        let r = check(
            ProxyError::RateLimited(Duration::from_millis(2500)),
            429,
            "rate_limited",
        );
        assert_eq!(r.headers()["retry-after"], "3");
    }

    #[test]
    fn shutting_down() {
        check(ProxyError::ShuttingDown, 503, "shutting_down");
    }

    #[test]
    fn too_many_connections() {
        let r = check(ProxyError::TooManyConnections, 503, "too_many_connections");
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(body_of(&ProxyError::TooManyConnections)["error_code"] == 911);
    }
}
