//! `cma-auth-proxy oauth login`: a user authorizes an OAuth profile's app once, and the refresh
//! token that comes of it is kept where the profile reads it (its state file, or the fleet store),
//! or printed for a Kubernetes Secret (docs/design.md#oauth-profiles).
//!
//! The flow is the authorization code flow with PKCE (S256), as the official SDKs run it: the
//! authorization URL is printed for the user to open; the browser comes back to the profile's
//! `redirect_uri`, which must be an `http://` loopback address this command listens on; the code
//! is exchanged at the token endpoint with the verifier (and the client secret of a confidential
//! app). The wait for the browser is bounded, and a callback is accepted only with the `state`
//! this run generated, so no other page can slip its own code in.
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{Config, OAuthCredentials};
use crate::token::{self, LoginFailure};

/// How long a connection to the loopback listener may take to send its request head.
const CALLBACK_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OAuthLoginError {
    #[error("no profile {0:?} in the configuration")]
    NoProfile(String),
    #[error("profile {0:?} is not an OAuth profile (it has no [profiles.{0}.oauth] table)")]
    NotOAuth(String),
    #[error(
        "profiles.{profile}.oauth.redirect_uri must be an http:// loopback address with a port (e.g. http://127.0.0.1:8184/callback) for `oauth login` to receive the browser's answer; register that redirect URI with the app"
    )]
    NotLoopback { profile: String },
    #[error("cannot listen on {addr} for the browser's answer: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no authorization arrived within {0:?}; run the command again")]
    Timeout(Duration),
    #[error("the authorization was declined or failed ({0}); nothing was changed")]
    Declined(String),
    #[error(transparent)]
    Client(#[from] crate::StartError),
    #[error("the code exchange failed: {0}")]
    Exchange(#[source] LoginFailure),
    #[error("the token endpoint returned no refresh token: the app must allow refresh tokens")]
    NoRefreshToken,
    #[error("the refresh token could not be kept: {0}")]
    Keep(#[source] token::KeepError),
}

/// What came of a successful `oauth login`.
pub struct Authorized {
    /// The new refresh token: printed with `--print`, else already kept.
    pub refresh_token: SecretString,
    /// Where it was kept (`None` with `--print`).
    pub kept_in: Option<String>,
    pub user_uid: Option<String>,
    pub organization_uid: Option<String>,
}

/// Runs the flow for `profile`: `say` gets the lines for the operator (the URL to open), the
/// browser has `wait` to come back, and with `print` the refresh token is returned rather than
/// kept.
pub async fn oauth_login(
    config: &Config,
    profile: &str,
    print: bool,
    wait: Duration,
    mut say: impl FnMut(&str),
) -> Result<Authorized, OAuthLoginError> {
    let profile = config
        .profile(profile)
        .ok_or_else(|| OAuthLoginError::NoProfile(profile.to_owned()))?;
    let oauth = profile
        .oauth()
        .ok_or_else(|| OAuthLoginError::NotOAuth(profile.name.to_string()))?;
    let (addr, path) =
        loopback(&oauth.redirect_uri).ok_or_else(|| OAuthLoginError::NotLoopback {
            profile: profile.name.to_string(),
        })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OAuthLoginError::Listen { addr, source })?;
    let pkce = Pkce::new();
    let state = base64url(&rand::random::<[u8; 16]>());
    say(
        "Open this URL in a browser, sign in to Contentstack as the user the proxy should act for, and approve the app:",
    );
    say(&authorization_url(oauth, &pkce, &state));
    say(&format!(
        "Waiting up to {}s for the browser to come back to {} …",
        wait.as_secs(),
        oauth.redirect_uri
    ));
    let code = tokio::time::timeout(wait, receive_code(listener, path, state))
        .await
        .map_err(|_| OAuthLoginError::Timeout(wait))??;
    let auth = crate::session_client(config, crate::upstream_tls(config)?)?;
    let answer = auth
        .exchange_code(oauth, code.expose_secret(), pkce.verifier.expose_secret())
        .await
        .map_err(OAuthLoginError::Exchange)?;
    let refresh_token = answer
        .refresh_token
        .clone()
        .ok_or(OAuthLoginError::NoRefreshToken)?;
    let grant = token::first_of_chain(refresh_token.clone(), &answer);
    let kept_in = if print {
        None
    } else {
        Some(
            token::keep_authorization(config, profile, grant)
                .await
                .map_err(OAuthLoginError::Keep)?,
        )
    };
    Ok(Authorized {
        refresh_token,
        kept_in,
        user_uid: answer.user_uid,
        organization_uid: answer.organization_uid,
    })
}

/// The address to listen on and the path to answer on, if `redirect_uri` is `http://` on a
/// loopback address (`localhost` is taken as 127.0.0.1).
fn loopback(redirect_uri: &str) -> Option<(SocketAddr, String)> {
    let url = reqwest::Url::parse(redirect_uri).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let ip = match url.host()? {
        url::Host::Domain("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        url::Host::Domain(_) => return None,
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
    };
    let port = url.port_or_known_default()?;
    ip.is_loopback()
        .then(|| (SocketAddr::new(ip, port), url.path().to_owned()))
}

/// The page the user approves the app on, with the PKCE challenge and this run's `state`.
fn authorization_url(oauth: &OAuthCredentials, pkce: &Pkce, state: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &oauth.client_id)
        .append_pair("redirect_uri", &oauth.redirect_uri)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", state)
        .finish();
    // After the `#!/apps/…/authorize` route, as the Python and Java SDKs put it: the app reads it
    // from there.
    let separator = if oauth.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{separator}{query}", oauth.authorize_url)
}

/// A PKCE verifier (RFC 7636: 64 random bytes, base64url, 86 characters) and its S256 challenge.
struct Pkce {
    verifier: SecretString,
    challenge: String,
}

impl Pkce {
    fn new() -> Pkce {
        let verifier = base64url(&rand::random::<[u8; 64]>());
        Pkce {
            challenge: challenge(&verifier),
            verifier: SecretString::from(verifier),
        }
    }
}

fn challenge(verifier: &str) -> String {
    base64url(&Sha256::digest(verifier.as_bytes()))
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Serves the loopback listener until a request to `path` brings a code with `state`; answers
/// anything else without ending the wait (a stray request, a stale tab), except a callback that
/// says the user declined.
async fn receive_code(
    listener: tokio::net::TcpListener,
    path: String,
    state: String,
) -> Result<SecretString, OAuthLoginError> {
    let (sender, mut received) = mpsc::channel::<Result<SecretString, String>>(1);
    let expected = Arc::new((path, state));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            outcome = received.recv() => {
                return match outcome {
                    Some(Ok(code)) => Ok(code),
                    Some(Err(why)) => Err(OAuthLoginError::Declined(why)),
                    None => Err(OAuthLoginError::Declined("the listener stopped".to_owned())),
                };
            }
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else { continue };
        let (sender, expected) = (sender.clone(), expected.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = callback(&req, &expected.0, &expected.1);
                let sender = sender.clone();
                async move {
                    let (status, text, outcome) = answer;
                    if let Some(outcome) = outcome {
                        let _ = sender.try_send(outcome);
                    }
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CALLBACK_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What to answer a request to the loopback listener, and what it brings: a code, a refusal, or
/// nothing (a request that does not belong to this run).
type Callback = (
    StatusCode,
    &'static str,
    Option<Result<SecretString, String>>,
);

fn callback(req: &Request<Incoming>, path: &str, state: &str) -> Callback {
    if req.method() != Method::GET || req.uri().path() != path {
        return (StatusCode::NOT_FOUND, "not found\n", None);
    }
    let mut code = None;
    let mut returned_state = None;
    let mut error = None;
    for (key, value) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "code" => code = Some(value.into_owned()),
            "state" => returned_state = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            _ => {}
        }
    }
    if returned_state.as_deref() != Some(state) {
        return (
            StatusCode::BAD_REQUEST,
            "This answer does not belong to the running `cma-auth-proxy oauth login` (its state does not match); it was ignored.\n",
            None,
        );
    }
    match (code, error) {
        (_, Some(error)) => {
            // The error word is the authorization server's; only the standard ones are repeated.
            let why = match error.as_str() {
                "access_denied"
                | "invalid_request"
                | "unauthorized_client"
                | "invalid_scope"
                | "server_error"
                | "temporarily_unavailable"
                | "unsupported_response_type" => error,
                _ => "an error".to_owned(),
            };
            (
                StatusCode::OK,
                "The authorization did not succeed; see the terminal.\n",
                Some(Err(why)),
            )
        }
        (Some(code), None) if !code.is_empty() => (
            StatusCode::OK,
            "cma-auth-proxy received the authorization. You may close this window.\n",
            Some(Ok(SecretString::from(code))),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "No authorization code in this answer.\n",
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let pkce = Pkce::new();
        let verifier = pkce.verifier.expose_secret();
        // 43 to 128 characters of the unreserved set.
        assert_eq!(verifier.len(), 86);
        assert!(
            verifier
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        );
        assert_eq!(pkce.challenge, challenge(verifier));
    }

    #[test]
    fn only_an_http_loopback_redirect_can_be_listened_on() {
        let ok = |uri: &str| loopback(uri).map(|(addr, path)| format!("{addr} {path}"));
        assert_eq!(
            ok("http://127.0.0.1:8184/callback").as_deref(),
            Some("127.0.0.1:8184 /callback")
        );
        assert_eq!(
            ok("http://localhost:8184").as_deref(),
            Some("127.0.0.1:8184 /")
        );
        assert_eq!(
            ok("http://[::1]:9000/cb").as_deref(),
            Some("[::1]:9000 /cb")
        );
        for refused in [
            "https://127.0.0.1:8184/callback",
            "http://10.0.0.1:8184/",
            "http://example.com:8184/",
            "http://localhost.example.com/",
        ] {
            assert_eq!(ok(refused), None, "{refused}");
        }
    }

    #[test]
    fn the_authorization_url_carries_the_challenge_and_the_state_after_the_route() {
        let profile = crate::config::tests::oauth_profile("");
        let oauth = profile.oauth().unwrap();
        let pkce = Pkce::new();
        let url = authorization_url(oauth, &pkce, "st4te");
        assert!(
            url.starts_with(&format!(
                "{}?response_type=code&client_id=",
                oauth.authorize_url
            )),
            "{url}"
        );
        for part in [
            format!("code_challenge={}", pkce.challenge),
            "code_challenge_method=S256".to_owned(),
            "state=st4te".to_owned(),
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A".to_owned(),
        ] {
            assert!(url.contains(&part), "{part} in {url}");
        }
        assert!(!url.contains(pkce.verifier.expose_secret()));
    }
}
