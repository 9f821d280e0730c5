//! A simulated Contentstack CMA, served by `cma-auth-proxy dev` and used by the tests.
//!
//! It behaves like the real service where the proxy's design depends on it (SPEC §1): logins with
//! error codes 104/294/295, single-use TOTP codes, account lockout after repeated bad passwords,
//! at most 20 live sessions per user (the 21st login silently evicts the oldest), 401 with
//! `error_code` 105 for dead tokens, and per-organization rate limits answered with 429 and
//! `X-RateLimit-*` headers. Stack content lives in [`content`]. Test controls (outages, evictions,
//! misbehaving session endpoints, the request log) are methods on [`FakeCma`]; an upstream whose
//! answers never end is [`endless`]. Nothing here is used by `run`.
pub mod content;
pub mod endless;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::body::Relay;
use crate::config::TotpSecret;
use crate::server::{self, Handler};
use crate::token::totp;

/// A user holds at most this many live sessions; the next login evicts the oldest.
pub const MAX_SESSIONS: usize = 20;
/// Consecutive bad passwords before the account locks.
pub const LOCKOUT_AFTER: u32 = 5;
/// Requests per second per organization, for reads and for writes (when rate limiting is on).
pub const RATE_LIMIT: u32 = 10;
/// Largest body the simulator reads into memory (assets); `/v3/_sim/upload` streams instead.
const MAX_SIM_BODY: usize = 64 << 20;
/// Requests kept in the log.
const LOG_CAPACITY: usize = 50_000;

/// The demo account of `cma-auth-proxy dev`.
pub const DEMO_EMAIL: &str = "demo@cma-auth-proxy.dev";
pub const DEMO_PASSWORD: &str = "demo-password-not-secret";
/// Base32 TOTP secret of the demo account (it has two-factor authentication on).
pub const DEMO_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
pub const DEMO_API_KEY: &str = "blt0demo0stack0api0key";
pub const DEMO_ORG: &str = "blt0demo0org";

#[derive(Clone)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub totp_secret: Option<String>,
    pub org_uid: String,
}

impl Account {
    pub fn new(email: &str, password: &str) -> Account {
        Account {
            email: email.into(),
            password: password.into(),
            totp_secret: None,
            org_uid: DEMO_ORG.into(),
        }
    }

    pub fn with_totp(mut self, secret: &str) -> Account {
        self.totp_secret = Some(secret.into());
        self
    }

    pub fn in_org(mut self, org_uid: &str) -> Account {
        self.org_uid = org_uid.into();
        self
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// One login attempt as the simulator judged it.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    pub email: String,
    pub tfa_token: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    pub error_code: Option<i64>,
    pub at: Instant,
}

struct AccountState {
    account: Account,
    failures: u32,
    locked: bool,
    /// Oldest first.
    sessions: VecDeque<String>,
    used_totp_steps: HashSet<u64>,
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, AccountState>,
    /// authtoken → email
    sessions: HashMap<String, String>,
    login_attempts: Vec<LoginAttempt>,
    issued: Vec<String>,
    logouts: Vec<String>,
    log: VecDeque<Recorded>,
    login_outage: Option<StatusCode>,
    login_delay: Option<Duration>,
    /// (status, error_code) of logins that echo the request body in `error_message`.
    login_echo: Option<(StatusCode, i64)>,
    /// (status, base URL) the session endpoints redirect to.
    session_redirect: Option<(StatusCode, String)>,
    /// Every authtoken is answered 401/105, however fresh.
    reject_tokens: bool,
    rate_limit: bool,
    /// (org, is_write) → request instants in the last second
    rate_windows: HashMap<(String, bool), VecDeque<Instant>>,
    rate_limited: u64,
    content: content::ContentStore,
}

/// A running simulated CMA on `127.0.0.1:0` (or the given address).
pub struct FakeCma {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<server::Connections>>,
}

pub struct FakeCmaBuilder {
    accounts: Vec<Account>,
    stacks: Vec<(String, String)>,
    rate_limit: bool,
    addr: SocketAddr,
}

impl Default for FakeCmaBuilder {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            stacks: vec![(DEMO_API_KEY.into(), "Demo stack".into())],
            rate_limit: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl FakeCmaBuilder {
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    pub fn stack(mut self, api_key: &str, name: &str) -> Self {
        self.stacks.push((api_key.into(), name.into()));
        self
    }

    /// Load tests turn Contentstack's 10 requests/s per organization off.
    pub fn without_rate_limit(mut self) -> Self {
        self.rate_limit = false;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    pub async fn start(self) -> std::io::Result<FakeCma> {
        let stacks: Vec<(&str, &str)> = self
            .stacks
            .iter()
            .map(|(k, n)| (k.as_str(), n.as_str()))
            .collect();
        let state = State {
            accounts: self
                .accounts
                .into_iter()
                .map(|a| {
                    (
                        a.email.clone(),
                        AccountState {
                            account: a,
                            failures: 0,
                            locked: false,
                            sessions: VecDeque::new(),
                            used_totp_steps: HashSet::new(),
                        },
                    )
                })
                .collect(),
            rate_limit: self.rate_limit,
            content: content::ContentStore::new(&stacks),
            ..State::default()
        };
        let state = Arc::new(Mutex::new(state));
        let bound = server::bind(&crate::config::ListenAddr::Tcp(self.addr), None)
            .map_err(std::io::Error::other)?;
        let addr = bound.addr.tcp().expect("bound a TCP address");
        let (stop, stop_rx) = watch::channel(false);
        let handler = Arc::new(Sim {
            state: state.clone(),
        });
        let limits = crate::config::ConnectionLimits {
            max_connections: 100_000,
            ..Default::default()
        };
        let options =
            server::ServeOptions::new("simulator", limits, None, crate::metrics::Metrics::new());
        let server = server::serve_here(bound.listener, handler, options, stop_rx)?;
        Ok(FakeCma {
            state,
            addr,
            stop,
            server: Some(server),
        })
    }
}

impl FakeCma {
    pub fn builder() -> FakeCmaBuilder {
        FakeCmaBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every login attempt so far, in order.
    pub fn login_attempts(&self) -> Vec<LoginAttempt> {
        self.state().login_attempts.clone()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        self.state()
            .login_attempts
            .iter()
            .filter(|a| a.status == 200)
            .count()
    }

    /// Every token ever issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// Tokens logged out so far (`DELETE /v3/user-session` with a live token).
    pub fn logouts(&self) -> Vec<String> {
        self.state().logouts.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().log.iter().cloned().collect()
    }

    pub fn is_locked(&self, email: &str) -> bool {
        self.state().accounts.get(email).is_some_and(|a| a.locked)
    }

    pub fn live_sessions(&self, email: &str) -> Vec<String> {
        self.state()
            .accounts
            .get(email)
            .map(|a| a.sessions.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Kills every session of `email`, as twenty logins elsewhere (a person, the CLI, another
    /// replica) would. Returns how many died.
    pub fn evict_sessions(&self, email: &str) -> usize {
        let mut state = self.state();
        let tokens: Vec<String> = state
            .accounts
            .get_mut(email)
            .map(|a| a.sessions.drain(..).collect())
            .unwrap_or_default();
        for t in &tokens {
            state.sessions.remove(t);
        }
        tokens.len()
    }

    /// While set, logins answer with this status (e.g. 502) and an HTML body, as a failing edge would.
    pub fn set_login_outage(&self, status: Option<StatusCode>) {
        self.state().login_outage = status;
    }

    /// While set, logins take this long to answer (a slow upstream).
    pub fn set_login_delay(&self, delay: Option<Duration>) {
        self.state().login_delay = delay;
    }

    /// While set, logins answer with this status and `error_code`, and an `error_message` that
    /// echoes the request body (password included), as some gateways and debugging stubs do.
    pub fn set_login_echo(&self, answer: Option<(StatusCode, i64)>) {
        self.state().login_echo = answer;
    }

    /// While set, the session endpoints (`/v3/user-session`, `GET /v3/user`) answer with this
    /// redirect status and `Location: <base URL><same path>`, which Contentstack never does.
    pub fn set_session_redirect(&self, redirect: Option<(StatusCode, String)>) {
        self.state().session_redirect = redirect;
    }

    /// While set, every request with an authtoken is answered 401/105, even with a token issued a
    /// moment ago (as when something else ends each session at once, or the upstream does not
    /// accept the account's sessions). Logins still succeed.
    pub fn set_reject_tokens(&self, reject: bool) {
        self.state().reject_tokens = reject;
    }

    /// `POST /v3/user-session` requests received, counted on arrival (also those whose client
    /// went away before the answer).
    pub fn login_requests(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.method == Method::POST && r.path == "/v3/user-session")
            .count()
    }

    pub fn set_password(&self, email: &str, password: &str) {
        if let Some(a) = self.state().accounts.get_mut(email) {
            a.account.password = password.into();
        }
    }

    /// Requests answered 429 so far.
    pub fn rate_limited(&self) -> u64 {
        self.state().rate_limited
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take()
            && let Ok(connections) = server.await
        {
            server::drain(connections, Duration::from_secs(1)).await;
        }
    }
}

impl Drop for FakeCma {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Deterministic bytes for `/v3/_sim/download`, so a test can check what arrived.
pub fn sim_bytes(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Sim {
    state: Arc<Mutex<State>>,
}

impl Handler for Sim {
    async fn call(&self, req: Request<Incoming>, _peer: Option<IpAddr>) -> Response<Relay> {
        let gzip = accepts_gzip(req.headers());
        let (status, headers, body) = self.route(req).await;
        let mut response = Response::new(Relay::empty());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        match body {
            Answer::Json(value) => {
                let text = value.to_string();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                // Contentstack compresses JSON for clients that accept it, errors included.
                let bytes = if gzip {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(text.as_bytes()).expect("writing to memory");
                    Bytes::from(enc.finish().expect("writing to memory"))
                } else {
                    Bytes::from(text)
                };
                *response.body_mut() = Relay::full(bytes);
            }
            Answer::Raw(bytes, content_type) => {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                *response.body_mut() = Relay::full(bytes);
            }
        }
        response
    }
}

enum Answer {
    Json(Value),
    Raw(Bytes, &'static str),
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

fn error(status: u16, code: i64, message: &str, errors: Value) -> (StatusCode, HeaderMap, Answer) {
    (
        StatusCode::from_u16(status).expect("valid status"),
        HeaderMap::new(),
        Answer::Json(json!({ "error_message": message, "error_code": code, "errors": errors })),
    )
}

fn dead_token() -> (StatusCode, HeaderMap, Answer) {
    error(
        401,
        105,
        "You're not allowed in here unless you're logged in.",
        json!({ "authtoken": ["is not valid."] }),
    )
}

fn ok(value: Value) -> (StatusCode, HeaderMap, Answer) {
    (StatusCode::OK, HeaderMap::new(), Answer::Json(value))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn new_token() -> String {
    format!(
        "cs{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl Sim {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn route(&self, req: Request<Incoming>) -> (StatusCode, HeaderMap, Answer) {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        {
            let mut state = self.state();
            if state.log.len() == LOG_CAPACITY {
                state.log.pop_front();
            }
            state.log.push_back(Recorded {
                method: parts.method.clone(),
                path: path.clone(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers.clone(),
            });
        }
        if let Some(redirect) = self.session_redirect(&parts.method, &path) {
            discard(body).await;
            return redirect;
        }
        if path == "/v3/user-session" {
            let body = match read_body(body).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            let delay = self.state().login_delay;
            if let (true, Some(delay)) = (parts.method == Method::POST, delay) {
                tokio::time::sleep(delay).await;
            }
            return match parts.method {
                Method::POST => self.login(&body),
                Method::DELETE => self.logout(&parts.headers),
                _ => error(405, 405, "Method not allowed.", json!({})),
            };
        }
        let email = match self.authenticate(&parts.headers) {
            Some(email) => email,
            None => {
                // Like nginx's discard_request_body: read and drop what the client is still
                // sending, so it sees the 401 rather than a reset connection.
                discard(body).await;
                return dead_token();
            }
        };
        if let Some(limited) = self.rate_limit(&email, &parts.method) {
            return limited;
        }
        match (parts.method.clone(), path.as_str()) {
            (Method::GET, "/v3/user") => self.user(&email),
            (Method::POST | Method::PUT, "/v3/_sim/upload") => upload(body).await,
            (Method::GET, "/v3/_sim/download") => {
                let n = parts
                    .uri
                    .query()
                    .and_then(|q| q.strip_prefix("bytes="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (
                    StatusCode::OK,
                    HeaderMap::new(),
                    Answer::Raw(sim_bytes(n), "application/octet-stream"),
                )
            }
            (Method::GET, "/v3/_sim/slow") => {
                // A long request, for drain tests: `?ms=N`.
                let ms = parts
                    .uri
                    .query()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ok(json!({ "slept_ms": ms }))
            }
            (Method::GET, "/v3/_sim/echo") => ok(json!({
                "headers": parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or("<binary>")))).collect::<serde_json::Map<_, _>>(),
                "query": parts.uri.query(),
            })),
            _ => {
                let body = match read_body(body).await {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                let mut state = self.state();
                let answer = state.content.handle(content::SimRequest {
                    method: &parts.method,
                    path: &path,
                    query: parts.uri.query(),
                    headers: &parts.headers,
                    body,
                    user_email: &email,
                });
                match answer {
                    Some(r) => (r.status, HeaderMap::new(), Answer::Json(r.body)),
                    None => error(404, 404, "The requested URL could not be found.", json!({})),
                }
            }
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers.get("authtoken")?.to_str().ok()?;
        let state = self.state();
        if state.reject_tokens {
            return None;
        }
        state.sessions.get(token).cloned()
    }

    fn session_redirect(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(StatusCode, HeaderMap, Answer)> {
        let session_call =
            path == "/v3/user-session" || (method == Method::GET && path == "/v3/user");
        let (status, base) = self
            .state()
            .session_redirect
            .clone()
            .filter(|_| session_call)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{base}{path}")).expect("a URL is a valid header"),
        );
        Some((status, headers, Answer::Json(json!({ "notice": "moved" }))))
    }

    fn login(&self, body: &[u8]) -> (StatusCode, HeaderMap, Answer) {
        let mut state = self.state();
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let user = &request["user"];
        let email = user["email"].as_str().unwrap_or_default().to_owned();
        let tfa = user["tfa_token"].as_str().map(str::to_owned);
        let (answer, error_code) = match (state.login_echo, state.login_outage) {
            (Some((status, code)), _) => (
                error(
                    status.as_u16(),
                    code,
                    &String::from_utf8_lossy(body),
                    json!({ "request": request.clone() }),
                ),
                Some(code),
            ),
            (None, Some(status)) => (
                (
                    status,
                    HeaderMap::new(),
                    Answer::Raw(
                        Bytes::from_static(b"<html><body>Bad Gateway</body></html>"),
                        "text/html",
                    ),
                ),
                None,
            ),
            (None, None) => {
                let password = user["password"].as_str().unwrap_or_default();
                let (answer, code) = judge_login(&mut state, &email, password, tfa.as_deref());
                (answer, code)
            }
        };
        state.login_attempts.push(LoginAttempt {
            email,
            tfa_token: tfa,
            status: answer.0.as_u16(),
            error_code,
            at: Instant::now(),
        });
        answer
    }

    fn logout(&self, headers: &HeaderMap) -> (StatusCode, HeaderMap, Answer) {
        let token = headers
            .get("authtoken")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut state = self.state();
        let Some(email) = state.sessions.remove(&token) else {
            return dead_token();
        };
        if let Some(a) = state.accounts.get_mut(&email) {
            a.sessions.retain(|t| *t != token);
        }
        state.logouts.push(token);
        ok(json!({ "notice": "You've logged out successfully!" }))
    }

    fn user(&self, email: &str) -> (StatusCode, HeaderMap, Answer) {
        let state = self.state();
        let org = state
            .accounts
            .get(email)
            .map(|a| a.account.org_uid.clone())
            .unwrap_or_default();
        ok(json!({ "user": user_json(email, &org) }))
    }

    /// Contentstack's budget: 10 reads/s and 10 writes/s per organization.
    fn rate_limit(&self, email: &str, method: &Method) -> Option<(StatusCode, HeaderMap, Answer)> {
        let mut state = self.state();
        if !state.rate_limit {
            return None;
        }
        let org = state.accounts.get(email)?.account.org_uid.clone();
        let is_write = !matches!(*method, Method::GET | Method::HEAD);
        let now = Instant::now();
        let window = state.rate_windows.entry((org, is_write)).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
        if window.len() >= RATE_LIMIT as usize {
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
            state.rate_limited += 1;
            let (status, _, answer) = error(
                429,
                429,
                "Too many requests. Please try again later.",
                json!({}),
            );
            return Some((status, headers, answer));
        }
        window.push_back(now);
        None
    }
}

fn user_json(email: &str, org: &str) -> Value {
    json!({
        "uid": format!("blt{}", &sha256_hex(email.as_bytes())[..16]),
        "email": email,
        "username": email.split('@').next().unwrap_or(email),
        "first_name": "Service",
        "last_name": "Account",
        "active": true,
        "tfa_enabled": false,
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        "organizations": [{ "uid": org, "name": "Demo organization", "is_owner": true, "enabled": true }],
    })
}

fn judge_login(
    state: &mut State,
    email: &str,
    password: &str,
    tfa: Option<&str>,
) -> ((StatusCode, HeaderMap, Answer), Option<i64>) {
    let invalid = || {
        error(
            422,
            104,
            "Looks like your email or password is invalid. Please try again or reset your password.",
            json!({}),
        )
    };
    let Some(account) = state.accounts.get_mut(email) else {
        return (invalid(), Some(104));
    };
    if account.locked {
        return (invalid(), Some(104));
    }
    if account.account.password != password {
        account.failures += 1;
        if account.failures >= LOCKOUT_AFTER {
            account.locked = true;
        }
        return (invalid(), Some(104));
    }
    if let Some(secret) = &account.account.totp_secret {
        let secret = TotpSecret::from_base32(secret).expect("the fake's TOTP secret is base32");
        let Some(code) = tfa else {
            // Contentstack reports 294 with odd HTTP statuses; the proxy must read the code.
            return (
                error(
                    294,
                    294,
                    "Two-Factor Authentication is enabled for your account. Please provide the 2FA token.",
                    json!({}),
                ),
                Some(294),
            );
        };
        let current = unix_now() / totp::STEP_SECONDS;
        let matched = [current.saturating_sub(1), current, current + 1]
            .into_iter()
            .find(|step| totp::code_at(&secret, *step) == code);
        match matched {
            Some(step) if account.used_totp_steps.insert(step) => {}
            _ => {
                return (
                    error(
                        401,
                        295,
                        "Two-Factor Authentication token is invalid or already used.",
                        json!({}),
                    ),
                    Some(295),
                );
            }
        }
    }
    account.failures = 0;
    let token = new_token();
    account.sessions.push_back(token.clone());
    let evicted = (account.sessions.len() > MAX_SESSIONS)
        .then(|| account.sessions.pop_front())
        .flatten();
    let org = account.account.org_uid.clone();
    if let Some(old) = evicted {
        state.sessions.remove(&old);
    }
    state.sessions.insert(token.clone(), email.to_owned());
    state.issued.push(token.clone());
    let mut user = user_json(email, &org);
    user["authtoken"] = token.into();
    (
        ok(json!({ "notice": "Login Successful.", "user": user })),
        None,
    )
}

async fn read_body(body: Incoming) -> Result<Bytes, (StatusCode, HeaderMap, Answer)> {
    http_body_util::Limited::new(body, MAX_SIM_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| error(413, 413, "Request entity too large.", json!({})))
}

async fn discard(mut body: Incoming) {
    let mut read = 0;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |d| d.len());
        if read > MAX_SIM_BODY {
            return;
        }
    }
}

/// Streams the body through SHA-256 without keeping it.
async fn upload(mut body: Incoming) -> (StatusCode, HeaderMap, Answer) {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    hasher.update(data);
                }
            }
            Err(_) => return error(400, 400, "The upload was cut short.", json!({})),
        }
    }
    ok(json!({ "bytes": bytes, "sha256": hex(&hasher.finalize()) }))
}

/// `cma-auth-proxy dev`: the simulator with the demo account, and the proxy in front of it.
pub async fn run_dev(
    listen: crate::config::ListenAddr,
    admin_listen: crate::config::ListenAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DevError> {
    let fake = FakeCma::builder()
        .account(Account::new(DEMO_EMAIL, DEMO_PASSWORD).with_totp(DEMO_TOTP_SECRET))
        .start()
        .await
        .map_err(DevError::Simulator)?;
    let toml = format!(
        r#"
        [server]
        listen = "{listen}"
        admin_listen = "{admin_listen}"
        shutdown_grace = "5s"
        [upstream]
        url = "{url}"
        [profiles.default]
        email = "{DEMO_EMAIL}"
        password = "{DEMO_PASSWORD}"
        totp_secret = "{DEMO_TOTP_SECRET}"
        "#,
        url = fake.url()
    );
    let config = crate::Config::from_toml(&toml, Vec::new(), None).map_err(DevError::Config)?;
    let running = crate::start(config).await.map_err(DevError::Start)?;
    let proxy = running.proxy_addr().to_string();
    let admin = running.admin_addr().to_string();
    println!(
        "cma-auth-proxy dev: simulated Contentstack CMA at {}",
        fake.url()
    );
    println!("proxy listening on http://{proxy}");
    println!("admin listening on http://{admin}  (/livez /readyz /startupz /status /metrics)");
    println!(
        "demo account: {DEMO_EMAIL} (two-factor on; the password and TOTP secret stay inside the proxy)"
    );
    println!("demo stack api_key: {DEMO_API_KEY}");
    println!("try:");
    println!("  curl -s http://{proxy}/v3/user");
    println!("  curl -s http://{proxy}/v3/content_types -H 'api_key: {DEMO_API_KEY}'");
    println!("stop with Ctrl-C");
    shutdown.await;
    running.shutdown().await;
    fake.stop().await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot start the simulated CMA: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("dev configuration: {0}")]
    Config(#[source] crate::config::ConfigError),
    #[error(transparent)]
    Start(crate::StartError),
}
