//! The session layer of the simulated CMA: what every request goes through before content is
//! served (the request log, misbehaviour switched on by a test, authentication, the rate limit), and
//! the session calls themselves: login (`POST /v3/user-session`), logout, `GET /v3/user`. It also
//! serves the endpoints the proxy's tests stream through (`/v3/_sim/*`).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::reply::{Body, Reply};
use crate::{
    Budget, LOCKOUT_AFTER, LOG_CAPACITY, LoginAttempt, MAX_SESSIONS, MAX_SIM_BODY, Recorded, State,
    content, hex, oauth, sha256_hex,
};

/// TOTP time step (RFC 6238), as Contentstack and authenticator apps use it.
const TOTP_STEP_SECONDS: u64 = 30;

/// The simulator's request handler; its state is shared with the [`crate::FakeCma`] controls.
pub(crate) struct Sim {
    state: Arc<Mutex<State>>,
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

fn error(status: u16, code: i64, message: &str, errors: Value) -> Reply {
    Reply::error(
        StatusCode::from_u16(status).expect("valid status"),
        code,
        message,
        errors,
    )
}

fn dead_token() -> Reply {
    error(
        401,
        105,
        "You're not allowed in here unless you're logged in.",
        json!({ "authtoken": ["is not valid."] }),
    )
}

/// The key of a base32 TOTP secret, read as leniently as authenticator apps read it (spaces,
/// dashes, padding and lower case allowed).
fn totp_secret(base32: &str) -> Vec<u8> {
    let cleaned: String = base32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    totp_rs::Secret::try_from_base32(&cleaned)
        .expect("the fake's TOTP secret is base32")
        .as_bytes()
        .to_vec()
}

/// The code of one time step: RFC 6238 with HMAC-SHA-1 and 6 digits.
fn totp_code(secret: &[u8], step: u64) -> String {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(TOTP_STEP_SECONDS)
        .with_secret(secret)
        .build_noncompliant()
        .generate(step * TOTP_STEP_SECONDS)
        .to_string()
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
    pub fn new(state: Arc<Mutex<State>>) -> Sim {
        Sim { state }
    }

    /// Answers one request. Contentstack compresses JSON for clients that accept it.
    pub async fn call(&self, req: Request<Incoming>) -> Response<Body> {
        let gzip = accepts_gzip(req.headers());
        self.route(req).await.into_response(gzip)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
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
        if oauth::is_oauth_path(&path) {
            let body = match read_body(body).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            let mut state = self.state();
            return oauth::route(
                &mut state,
                &parts.method,
                &path,
                parts.uri.query(),
                &parts.headers,
                &body,
            );
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
                return match oauth::bearer(&parts.headers) {
                    Some(_) => oauth::access_token_invalid(),
                    None => dead_token(),
                };
            }
        };
        let budget = match self.rate_limit(&email, &parts.method, &path) {
            Ok(budget) => budget,
            Err(limit) => return too_many_requests(limit),
        };
        let mut reply = self.serve(parts, body, &path, &email).await;
        // Contentstack tells every answer how much of the budget is left.
        if let Some((limit, remaining)) = budget {
            reply
                .headers
                .insert("x-ratelimit-limit", HeaderValue::from(limit));
            reply
                .headers
                .insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        }
        reply
    }

    /// Answers an authenticated request that the rate limit let through.
    async fn serve(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        path: &str,
        email: &str,
    ) -> Reply {
        let email = email.to_owned();
        if parts.method == Method::GET
            && let Some(org) = path.strip_prefix("/v3/organizations/")
        {
            let include_plan = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "include_plan=true"));
            return self.organization(&email, org, include_plan);
        }
        if path.starts_with("/v3/bulk/") {
            discard(body).await;
            return Reply::ok(json!({
                "notice": "Your bulk request is in progress. Please check publish queue for more details.",
                "job_id": format!("bltjob{:016x}", rand::random::<u64>()),
            }));
        }
        match (parts.method.clone(), path) {
            (Method::GET, "/v3/user") => {
                let token = parts.headers.get("authtoken").and_then(|v| v.to_str().ok());
                self.user(&email, token)
            }
            (Method::POST | Method::PUT, "/v3/_sim/upload") => upload(body).await,
            (Method::GET, "/v3/_sim/download") => {
                let n = parts
                    .uri
                    .query()
                    .and_then(|q| q.strip_prefix("bytes="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Reply::download(n)
            }
            (Method::GET, "/v3/_sim/slow") => {
                // A long request, for drain tests: `?ms=N`.
                let ms = parts
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms=")))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Reply::ok(json!({ "slept_ms": ms }))
            }
            (Method::GET | Method::POST, "/v3/_sim/gate") => {
                // Held until the test opens the gate: requests that must overlap (reads, or a
                // write still in flight), without timing.
                let gate = self.state().gate_open.as_ref().map(|g| g.subscribe());
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(|open| *open).await;
                }
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                Reply::ok(json!({
                    "query": parts.uri.query(),
                    "api_key": header("api_key"),
                    "branch": header("branch"),
                    "padding": parts.uri.query().and_then(|q| q.strip_prefix("pad=")).and_then(|n| n.parse::<usize>().ok()).map(|n| "x".repeat(n)),
                }))
            }
            (Method::GET, "/v3/_sim/echo") => Reply::ok(json!({
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
                    path,
                    query: parts.uri.query(),
                    headers: &parts.headers,
                    body,
                    user_email: &email,
                });
                match answer {
                    Some(r) => Reply::json(r.status, r.body),
                    None => error(404, 404, "The requested URL could not be found.", json!({})),
                }
            }
        }
    }

    /// The user a request acts for: by its `authtoken`, or by an OAuth access token.
    fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        let state = self.state();
        if state.reject_tokens {
            return None;
        }
        match headers.get("authtoken") {
            Some(token) => state.sessions.get(token.to_str().ok()?).cloned(),
            None => state.oauth.user_of(oauth::bearer(headers)?),
        }
    }

    fn session_redirect(&self, method: &Method, path: &str) -> Option<Reply> {
        let session_call =
            path == "/v3/user-session" || (method == Method::GET && path == "/v3/user");
        let (status, base) = self
            .state()
            .session_redirect
            .clone()
            .filter(|_| session_call)?;
        let mut reply = Reply::json(status, json!({ "notice": "moved" }));
        reply.headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("{base}{path}")).expect("a URL is a valid header"),
        );
        Some(reply)
    }

    fn login(&self, body: &[u8]) -> Reply {
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
            (None, Some(status)) => {
                // A failing edge in front of the CMA answers HTML, not Contentstack's JSON.
                let mut reply = Reply::raw(
                    Bytes::from_static(b"<html><body>Bad Gateway</body></html>"),
                    "text/html",
                );
                reply.status = status;
                (reply, None)
            }
            (None, None) => {
                let password = user["password"].as_str().unwrap_or_default();
                let (answer, code) = judge_login(&mut state, &email, password, tfa.as_deref());
                (answer, code)
            }
        };
        state.login_attempts.push(LoginAttempt {
            email,
            tfa_token: tfa,
            status: answer.status.as_u16(),
            error_code,
            at: Instant::now(),
        });
        answer
    }

    fn logout(&self, headers: &HeaderMap) -> Reply {
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
        Reply::ok(json!({ "notice": "You've logged out successfully!" }))
    }

    /// `GET /v3/user`: as Contentstack documents it, the user object carries the session's
    /// `authtoken` (the one the request was sent with).
    fn user(&self, email: &str, authtoken: Option<&str>) -> Reply {
        let state = self.state();
        let account = state.accounts.get(email).map(|a| &a.account);
        let org = account.map(|a| a.org_uid.clone()).unwrap_or_default();
        let mut user = user_json(email, &org);
        if let Some(token) = authtoken {
            user["authtoken"] = token.into();
        }
        // As Contentstack says: an account that logs in with a TOTP code has two-factor on.
        user["tfa_enabled"] = account.is_some_and(|a| a.totp_secret.is_some()).into();
        Reply::ok(json!({ "user": user }))
    }

    /// `GET /v3/organizations/{uid}`, with the plan's features when `include_plan`: only for a
    /// member of the organization.
    fn organization(&self, email: &str, uid: &str, include_plan: bool) -> Reply {
        let state = self.state();
        let member = state
            .accounts
            .get(email)
            .is_some_and(|a| a.account.org_uid == uid);
        if state.plan_hidden || !member {
            return error(
                403,
                403,
                "You don't have the permission to perform this action.",
                json!({}),
            );
        }
        let plan = state.plans.get(uid).copied().unwrap_or_default();
        let mut organization = json!({ "uid": uid, "name": "Demo organization", "enabled": true });
        if include_plan {
            let feature = |uid: &str, name: &str, limit: u32| json!({ "uid": uid, "name": name, "limit": limit, "enabled": true });
            organization["plan"] = json!({
                "plan_id": "sim",
                "name": "Simulated",
                "features": [
                    feature("users", "Users", 1000),
                    feature("getLimit", "GET Requests Limit", plan.reads),
                    feature("limit", "API Requests Limit", plan.writes),
                    feature("bulkLimit", "Bulk Requests Limit", plan.bulk),
                    feature("bulk-action", "Bulk Action", 25),
                ],
            });
        }
        Reply::ok(json!({ "organization": organization }))
    }

    /// Contentstack's budget per organization, by its plan (10 reads/s, 10 writes/s and 1 bulk
    /// call/s by default), over a sliding second. `Ok` with the budget's limit and what is left
    /// of it after this request (`None` with rate limiting off), or `Err` with the limit it is over.
    fn rate_limit(
        &self,
        email: &str,
        method: &Method,
        path: &str,
    ) -> Result<Option<(u32, u32)>, u32> {
        let mut state = self.state();
        if !state.rate_limit {
            return Ok(None);
        }
        let Some(org) = state.accounts.get(email).map(|a| a.account.org_uid.clone()) else {
            return Ok(None);
        };
        let budget = Budget::of(method, path);
        let limit = budget.limit(&state.plans.get(&org).copied().unwrap_or_default());
        let now = Instant::now();
        let window = state.rate_windows.entry((org, budget)).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            state.rate_limited += 1;
            return Err(limit);
        }
        window.push_back(now);
        Ok(Some((limit, limit - window.len() as u32)))
    }
}

/// Contentstack's 429: no `Retry-After`, the budget's limit and nothing left of it.
fn too_many_requests(limit: u32) -> Reply {
    let mut reply = error(
        429,
        429,
        "Too many requests. Please try again later.",
        json!({}),
    );
    reply
        .headers
        .insert("x-ratelimit-limit", HeaderValue::from(limit));
    reply
        .headers
        .insert("x-ratelimit-remaining", HeaderValue::from(0));
    reply
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
) -> (Reply, Option<i64>) {
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
        let secret = totp_secret(secret);
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
        let current = unix_now() / TOTP_STEP_SECONDS;
        let matched = [current.saturating_sub(1), current, current + 1]
            .into_iter()
            .find(|step| totp_code(&secret, *step) == code);
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
    let tfa_enabled = account.account.totp_secret.is_some();
    if let Some(old) = evicted {
        state.sessions.remove(&old);
    }
    state.sessions.insert(token.clone(), email.to_owned());
    state.issued.push(token.clone());
    let mut user = user_json(email, &org);
    user["tfa_enabled"] = tfa_enabled.into();
    user["authtoken"] = token.into();
    (
        Reply::ok(json!({ "notice": "Login Successful.", "user": user })),
        None,
    )
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
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
async fn upload(mut body: Incoming) -> Reply {
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
    Reply::ok(json!({ "bytes": bytes, "sha256": hex(&hasher.finalize()) }))
}
