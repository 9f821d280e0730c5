//! A simulated Contentstack Content Management API (CMA), served by `cma-auth-proxy dev` and used by
//! the proxy's tests. It depends on nothing of the proxy, so that a production build of the proxy can
//! leave it out.
//!
//! It behaves like the real service where the proxy's design depends on it: logins with error codes
//! 104/294/295, single-use TOTP codes, account lockout after repeated bad passwords, at most 20 live
//! sessions per user (the 21st login silently evicts the oldest), 401 with `error_code` 105 for dead
//! tokens, and per-organization rate limits (a sliding second for reads, writes and bulk calls,
//! each organization with its own plan) answered with 429 and `X-RateLimit-*` headers. It also
//! plays an OAuth app of Developer Hub (`oauth.rs`): authorization, code exchange with PKCE,
//! refresh with rotation, expiring access tokens, revocation.
//!
//! Where things are: the test controls (outages, evictions, misbehaving session endpoints, the
//! request log) are methods on [`FakeCma`], here; the session layer and the `/v3/_sim/*` endpoints
//! are in `session.rs`, stack content in `content/`, the listener in `server.rs`, and responses
//! with the one function that writes Contentstack's error shape in `reply.rs`. An upstream whose
//! answers never end is [`endless`]. Nothing here is used by the proxy's `run`.
#![forbid(unsafe_code)]

mod content;
pub mod endless;
mod oauth;
mod reply;
mod server;
mod session;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub use oauth::{ACCESS_TOKEN_INVALID, DEFAULT_ACCESS_TTL, OAuthApp, RefreshAttempt};

/// A user holds at most this many live sessions; the next login evicts the oldest.
pub const MAX_SESSIONS: usize = 20;
/// Consecutive bad passwords before the account locks.
pub const LOCKOUT_AFTER: u32 = 5;
/// Requests per second per organization, for reads and for writes (when rate limiting is on),
/// unless the organization's plan says otherwise ([`FakeCmaBuilder::plan`]).
pub const RATE_LIMIT: u32 = 10;
/// Bulk calls (`/v3/bulk/…`) per second per organization, by default.
pub const BULK_RATE_LIMIT: u32 = 1;
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

/// An organization's plan limits, per second: `getLimit`, `limit` and `bulkLimit` among the
/// plan's features, as `GET /v3/organizations/{uid}?include_plan=true` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub reads: u32,
    pub writes: u32,
    pub bulk: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            reads: RATE_LIMIT,
            writes: RATE_LIMIT,
            bulk: BULK_RATE_LIMIT,
        }
    }
}

/// Which of an organization's budgets a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Budget {
    Read,
    Write,
    Bulk,
}

impl Budget {
    pub(crate) fn of(method: &Method, path: &str) -> Budget {
        if path == "/v3/bulk" || path.starts_with("/v3/bulk/") {
            Budget::Bulk
        } else if matches!(*method, Method::GET | Method::HEAD) {
            Budget::Read
        } else {
            Budget::Write
        }
    }

    pub(crate) fn limit(self, plan: &Plan) -> u32 {
        match self {
            Budget::Read => plan.reads,
            Budget::Write => plan.writes,
            Budget::Bulk => plan.bulk,
        }
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
    /// (org, budget) → the instants of the requests it accepted in the last second: a sliding
    /// window, so that no second, wherever it starts, holds more than the plan allows.
    rate_windows: HashMap<(String, Budget), VecDeque<Instant>>,
    rate_limited: u64,
    /// Plans by organization uid; an organization not listed has [`Plan::default`].
    plans: HashMap<String, Plan>,
    /// While set, `GET /v3/organizations/…` answers 403, as for a member who may not read it.
    plan_hidden: bool,
    /// Requests to `/v3/_sim/gate` wait until this turns true.
    gate_open: Option<watch::Sender<bool>>,
    content: content::ContentStore,
    oauth: oauth::OAuthState,
}

/// A running simulated CMA on `127.0.0.1:0` (or the given address).
pub struct FakeCma {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub struct FakeCmaBuilder {
    accounts: Vec<Account>,
    stacks: Vec<(String, String)>,
    rate_limit: bool,
    plans: HashMap<String, Plan>,
    addr: SocketAddr,
    oauth_app: Option<OAuthApp>,
    access_ttl: Duration,
}

impl Default for FakeCmaBuilder {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            stacks: vec![(DEMO_API_KEY.into(), "Demo stack".into())],
            rate_limit: true,
            plans: HashMap::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            oauth_app: None,
            access_ttl: DEFAULT_ACCESS_TTL,
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

    /// The plan of organization `org_uid`: its reads, writes and bulk calls per second.
    pub fn plan(mut self, org_uid: &str, plan: Plan) -> Self {
        self.plans.insert(org_uid.into(), plan);
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Registers an OAuth app in the simulated Developer Hub (its user must be an account too).
    pub fn oauth_app(mut self, app: OAuthApp) -> Self {
        self.oauth_app = Some(app);
        self
    }

    /// How long the OAuth app's access tokens live (an hour unless a test shortens it).
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
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
            plans: self.plans,
            gate_open: Some(watch::channel(false).0),
            content: content::ContentStore::new(&stacks),
            oauth: oauth::OAuthState::new(self.oauth_app, self.access_ttl),
            ..State::default()
        };
        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let sim = Arc::new(session::Sim::new(state.clone()));
        let server = tokio::spawn(server::serve(listener, sim, stop_rx));
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

    /// While set, the organization endpoint answers 403 (the plan cannot be read).
    pub fn set_plan_hidden(&self, hidden: bool) {
        self.state().plan_hidden = hidden;
    }

    /// Lets every request waiting at `/v3/_sim/gate` be answered, and those that come later at
    /// once.
    pub fn open_gate(&self) {
        if let Some(gate) = &self.state().gate_open {
            gate.send_replace(true);
        }
    }

    /// Requests received for `path` so far (any method, any query).
    pub fn requests_to(&self, path: &str) -> usize {
        self.state().log.iter().filter(|r| r.path == path).count()
    }

    /// A new authorization of the OAuth app by its user, as if approved and exchanged: its refresh
    /// token (what an operator hands the proxy). `None` without an app.
    pub fn authorize_oauth_app(&self) -> Option<String> {
        self.state().oauth.authorize()
    }

    /// Every refresh the token endpoint judged, in order.
    pub fn refresh_attempts(&self) -> Vec<RefreshAttempt> {
        self.state().oauth.refreshes.clone()
    }

    /// Successful refreshes so far.
    pub fn refreshes(&self) -> usize {
        self.state()
            .oauth
            .refreshes
            .iter()
            .filter(|r| r.status == 200)
            .count()
    }

    /// Whether a refresh with `token` would succeed now.
    pub fn is_refresh_token_live(&self, token: &str) -> bool {
        self.state().oauth.is_refresh_token_live(token)
    }

    /// Every OAuth refresh and access token issued, in order.
    pub fn issued_oauth_tokens(&self) -> Vec<String> {
        let state = self.state();
        let oauth = &state.oauth;
        oauth
            .issued_refresh_tokens
            .iter()
            .chain(&oauth.issued_access_tokens)
            .cloned()
            .collect()
    }

    /// Revokes every authorization of the OAuth app (as the user would in Contentstack's
    /// "authorized apps" page): its refresh and access tokens stop working.
    pub fn revoke_oauth(&self) {
        self.state().oauth.revoke_all();
    }

    /// Revokes the one authorization `refresh_token` belongs to; returns whether there was one.
    pub fn revoke_oauth_of(&self, refresh_token: &str) -> bool {
        self.state().oauth.revoke_of(refresh_token)
    }

    /// Every access token issued so far expires now.
    pub fn expire_access_tokens(&self) {
        self.state().oauth.expire_access_tokens();
    }

    /// Access tokens issued from now on live this long.
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.state().oauth.access_ttl = ttl;
    }

    /// While set, refreshes answer with this status (e.g. 503), as a failing token endpoint would.
    pub fn set_token_outage(&self, status: Option<StatusCode>) {
        self.state().oauth.outage = status;
    }

    /// Stops accepting, lets the open connections finish what they are answering (for a moment),
    /// and returns once they are closed.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// Dropped without [`FakeCma::stop`], it still stops, in the background.
impl Drop for FakeCma {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Deterministic bytes for `/v3/_sim/download`, so a test can check what arrived.
pub fn sim_bytes(len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    SimBytes::default().fill(&mut out, len);
    out.into()
}

/// The generator behind [`sim_bytes`] (xorshift32), so that `/v3/_sim/download` can produce the
/// same bytes piece by piece as it sends them.
struct SimBytes(u32);

impl Default for SimBytes {
    fn default() -> Self {
        SimBytes(0x9e37_79b9)
    }
}

impl SimBytes {
    /// Appends the next `len` bytes. The generator moves in steps of 4 bytes: only the last piece
    /// of a sequence may have a length that is not a multiple of 4.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let end = out.len() + len;
        while out.len() < end {
            let x = &mut self.0;
            *x ^= *x << 13;
            *x ^= *x >> 17;
            *x ^= *x << 5;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(end);
    }
}

/// Lower-case hex of the SHA-256 of `data`: how the upload endpoint reports what it received.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
