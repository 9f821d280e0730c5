//! cma-auth-proxy: a sidecar that logs in to Contentstack's Content Management API with a service
//! account and forwards credential-free local requests with the session token injected.
//!
//! [`start`] wires the parts and binds the listeners; [`Running::shutdown`] drains and logs out.
//! `main.rs` adds only argument parsing, telemetry and signals, so tests drive exactly this. This is
//! the one place that knows every part; the parts themselves depend on each other one way only
//! (docs/design.md#overview-and-module-map).
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error_text;
pub mod metrics;
pub mod oauth_login;
pub mod one_task;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use body::Relay;
pub use config::Config;
use config::ListenAddr;
use proxy::Proxy;

/// Logging out at shutdown gives up after this long; the sessions then simply stay until evicted.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: server::BindError,
    },
    #[error("cannot start the {thread} thread: {source}")]
    Thread {
        thread: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::ClientTlsError),
    #[error("cannot build the session client")]
    Client(#[source] reqwest::Error),
    #[error("inbound TLS: {0}")]
    InboundTls(#[from] tls::ServerTlsError),
    #[error("token_store: {0}")]
    Store(#[from] store::StoreError),
}

/// A started proxy: listeners bound, first logins under way.
pub struct Running {
    proxy: Arc<Proxy>,
    /// The proxy listener's TLS, which a reload may give new certificate files.
    inbound_tls: Option<Arc<server::InboundTls>>,
    proxy_addr: ListenAddr,
    admin_addr: ListenAddr,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    /// Each worker reports whether its connections drained in time.
    proxy_workers: Vec<oneshot::Receiver<bool>>,
    admin_server: JoinHandle<server::Connections>,
    stop_reload: watch::Sender<bool>,
    /// Unix socket files bound, removed after the listeners have drained.
    socket_files: Vec<server::SocketFile>,
}

/// Builds the proxy from `config`, binds both listeners and starts serving. Login profiles log in
/// right away in the background, so the first request usually finds a token.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let tls = upstream_tls(&config)?;
    let auth = session_client(&config, tls.clone())?;
    let metrics = metrics::Metrics::new();
    let tokens = token::TokenManager::new(&config, auth, metrics.clone())?;
    let workers = config.server.workers;
    let clients = proxy::upstream::UpstreamClients::new(&config.upstream, &tls, workers);
    let proxy = Arc::new(Proxy::new(config.clone(), tokens.clone(), clients, metrics));
    proxy.learn_budgets();
    proxy.listen_to_fleet();

    let server_config = &config.server;
    let inbound_tls = server_config
        .tls
        .as_ref()
        .map(server::InboundTls::new)
        .transpose()?;
    let bind = |addr: &ListenAddr, mode| {
        server::bind(addr, mode).map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })
    };
    let proxy_bound = bind(&server_config.listen, server_config.listen_mode)?;
    let admin_bound = bind(&server_config.admin_listen, None)?;
    let (proxy_addr, admin_addr) = (proxy_bound.addr, admin_bound.addr);
    let socket_files = [proxy_bound.socket_file, admin_bound.socket_file]
        .into_iter()
        .flatten()
        .collect();
    let metrics = proxy.metrics().clone();
    let proxy_options = server::ServeOptions::new(
        "proxy",
        server_config.limits,
        inbound_tls.clone(),
        metrics.clone(),
    );
    let admin_options =
        server::ServeOptions::new("admin", server_config.limits, None, metrics).making_room();
    let (stop_proxy, proxy_stop) = watch::channel(false);
    let (stop_admin, admin_stop) = watch::channel(false);
    let proxy_workers =
        serve_proxy(proxy_bound.listener, &proxy, proxy_options, proxy_stop).await?;
    let admin_server = server::serve_here(
        admin_bound.listener,
        Arc::new(AdminListener(admin::Admin::new(proxy.clone()))),
        admin_options,
        admin_stop,
    )
    .map_err(|source| StartError::Bind {
        addr: admin_addr.to_string(),
        source: source.into(),
    })?;
    tokens.start_care();
    for profile in config.profiles.iter().filter(|p| p.has_session()) {
        let tokens = tokens.clone();
        let name = profile.name.clone();
        // Failures are logged and remembered by the token manager; requests see them as 503s.
        tokio::spawn(async move { tokens.token(&name).await.ok() });
    }
    tracing::info!(listen = %proxy_addr, admin = %admin_addr, upstream = %config.upstream.base_url, profiles = config.profiles.len(), "cma-auth-proxy started");
    Ok(Running {
        proxy,
        inbound_tls,
        proxy_addr,
        admin_addr,
        stop_proxy,
        stop_admin,
        proxy_workers,
        admin_server,
        stop_reload: watch::channel(false).0,
        socket_files,
    })
}

/// The proxy listener's requests take the request path.
struct ProxyListener(Arc<Proxy>);

impl server::Handler for ProxyListener {
    type Connection = proxy::upstream::Pinned;

    fn connection(&self, beside: one_task::Beside) -> proxy::upstream::Pinned {
        proxy::upstream::Pinned::new(beside)
    }

    /// The proxy's own future, not one wrapped around it: each wrapper would keep, and copy, a
    /// request of its own (docs/design.md#performance).
    fn call(
        &self,
        req: Request<Incoming>,
        peer: Option<std::net::IpAddr>,
        pinned: &Arc<proxy::upstream::Pinned>,
    ) -> impl Future<Output = Response<Relay>> + Send {
        self.0.handle(req, peer, Some(pinned))
    }
}

/// The admin listener's requests get probes, `/status` and `/metrics`.
struct AdminListener(admin::Admin);

impl server::Handler for AdminListener {
    type Connection = ();

    fn connection(&self, _beside: one_task::Beside) {}

    async fn call(
        &self,
        req: Request<Incoming>,
        _peer: Option<std::net::IpAddr>,
        _connection: &Arc<()>,
    ) -> Response<Relay> {
        self.0
            .respond(&req)
            .await
            .map(|body: Bytes| Relay::full(body))
    }
}

/// The proxy listener: an acceptor thread hands each connection to the least busy of
/// `server.workers` worker threads. Each thread has a single-threaded runtime of its own, and each
/// worker its own upstream pool: a request, its upstream connection and that connection's task
/// stay on one thread. Returns, per worker, whether its connections drained within
/// `shutdown_grace` once `stop` turned true; a worker whose did not has dropped them (and so
/// logged each request cut off) before it says so.
async fn serve_proxy(
    listener: server::StdListener,
    proxy: &Arc<Proxy>,
    options: server::ServeOptions,
    stop: watch::Receiver<bool>,
) -> Result<Vec<oneshot::Receiver<bool>>, StartError> {
    let mut links = Vec::new();
    let mut drained = Vec::new();
    let workers = proxy.config().server.workers;
    let this_process = server::cpus::Cpus::of_this_process();
    let placement = server::cpus::plan(workers, &this_process, proxy.config().server.cpu_affinity)
        .map(|cpus| {
            tracing::info!(
                ?cpus,
                "each worker keeps to a CPU of its own while more than one has connections"
            );
            Arc::new(server::cpus::Placement::new(cpus, this_process.allowed))
        });
    for index in 0..workers {
        let (link, inbox) = server::worker_channel(index, placement.clone());
        let (proxy, options, stop) = (proxy.clone(), options.clone(), stop.clone());
        let placement = placement.clone();
        let name = format!("cma-proxy-{index}");
        let worker_drained = spawn_with_runtime(name.clone(), move || {
            let placed = placement.map(|placement| placement.register(index));
            proxy::upstream::set_worker(index);
            Ok(async move {
                let _placed = placed;
                tokio::spawn(keep_timer_wake_near(options.limits.header_read_timeout));
                let handler = Arc::new(ProxyListener(proxy.clone()));
                let connections = server::serve(inbox, handler, options, stop).await;
                let grace = proxy.config().server.shutdown_grace;
                let drained = server::drain(connections, grace).await;
                if !drained {
                    // The runtime's end drops the connections still open, and with them their
                    // requests: each is logged as cut off by shutdown, not as its client's leaving.
                    proxy.start_cutting();
                }
                drained
            })
        })
        .await?;
        links.push(link);
        drained.push(worker_drained);
    }
    spawn_with_runtime("cma-accept".to_owned(), move || {
        let acceptor = server::Acceptor::new(listener)?;
        Ok(acceptor.run(links, options, stop))
    })
    .await?;
    Ok(drained)
}

/// Starts a thread named `name` with a single-threaded runtime, makes its task with `setup` inside
/// that runtime, and runs the task to its end. Returns once `setup` has worked or failed, so that a
/// thread that cannot start fails `start` rather than leaving a listener unserved; then the
/// receiver gets the task's output once the runtime has ended, and so has dropped every task
/// spawned on it (without waiting for its blocking threads).
async fn spawn_with_runtime<F, T>(
    name: String,
    setup: F,
) -> Result<oneshot::Receiver<T::Output>, StartError>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: std::future::Future + 'static,
    T::Output: Send + 'static,
{
    let (ready, started) = oneshot::channel();
    let (finished, output) = oneshot::channel();
    let thread = name.clone();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let task = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    let task = {
                        let _inside = runtime.enter();
                        setup()?
                    };
                    Ok((runtime, task))
                });
            match task {
                Ok((runtime, task)) => {
                    let _ = ready.send(Ok(()));
                    let out = runtime.block_on(task);
                    // Drops every task spawned on the runtime, here and now; does not wait for
                    // blocking threads (a DNS lookup may hang), so that shutdown has a bound.
                    runtime.shutdown_background();
                    let _ = finished.send(out);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|source| StartError::Thread {
            thread: name,
            source,
        })?;
    let outcome = started
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread ended before it started")));
    outcome.map_err(|source| StartError::Thread { thread, source })?;
    Ok(output)
}

/// hyper re-arms a header-read timer for every request on a connection. tokio's timer wakes its
/// own driver (an eventfd write: one syscall per request) whenever a timer is armed earlier than
/// the driver's next planned wake-up, which on a busy worker is often none or a far-off request
/// timeout. A tick at half the header-read timeout keeps the planned wake-up nearer than any
/// re-armed header timer, so re-arming costs no syscall; it costs one wake-up per tick.
async fn keep_timer_wake_near(header_read_timeout: Duration) {
    let mut tick = tokio::time::interval((header_read_timeout / 2).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

impl Running {
    pub fn proxy_addr(&self) -> &ListenAddr {
        &self.proxy_addr
    }

    pub fn admin_addr(&self) -> &ListenAddr {
        &self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Reloads the configuration from `path` on SIGHUP and whenever it or a secret file it names
    /// changes (docs/design.md#reload-and-rotation).
    pub fn watch_config(&mut self, path: std::path::PathBuf) {
        let (stop, stopped) = watch::channel(false);
        self.stop_reload = stop;
        let live = reload::Reloadable {
            proxy: self.proxy.clone(),
            inbound_tls: self.inbound_tls.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = reload::watch(path, live, stopped).await {
                tracing::error!("live reload is off: {}", error_text::error_chain_text(&e));
            }
        });
    }

    /// Shutdown (docs/design.md#shutdown): readiness goes 503, the proxy listener stops accepting,
    /// in-flight requests get `shutdown_grace` to finish, sessions are logged out, then the admin
    /// listener closes. Returns whether every in-flight request finished in time.
    pub async fn shutdown(self) -> bool {
        let grace = self.proxy.config().server.shutdown_grace;
        let grace_ends = tokio::time::Instant::now() + grace;
        let _ = self.stop_reload.send(true);
        self.proxy.start_draining();
        let _ = self.stop_proxy.send(true);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining: not ready, not accepting, letting in-flight requests finish"
        );
        let mut drained = true;
        for worker in self.proxy_workers {
            drained &= worker.await.unwrap_or(false);
        }
        if drained {
            tracing::info!("in-flight requests finished");
        } else {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown_grace passed; cutting the requests still in flight"
            );
        }
        // A login started before the signal finishes first (within the grace period), so that its
        // session is logged out below with the others.
        self.proxy.tokens().finish_logins(grace_ends).await;
        if tokio::time::timeout(LOGOUT_TIMEOUT, self.proxy.tokens().logout_all())
            .await
            .is_err()
        {
            tracing::warn!("logout did not finish within {LOGOUT_TIMEOUT:?}");
        }
        let _ = self.stop_admin.send(true);
        if let Ok(connections) = self.admin_server.await {
            server::drain(connections, Duration::from_secs(1)).await;
        }
        drop(self.socket_files);
        drained
    }
}

/// The result of `check --login` for one profile.
pub struct ProfileCheck {
    pub profile: Arc<str>,
    pub outcome: Result<String, String>,
}

/// `check --login`: for every login profile, log in once, validate the token with `GET /v3/user`,
/// and log out; for every OAuth profile, refresh once (keeping the new refresh token, as in
/// service), validate, and say whom the token acts for and until when. Management-token profiles
/// are reported as not checked (they need a stack).
pub async fn check_login(config: &Config) -> Result<Vec<ProfileCheck>, StartError> {
    let auth = session_client(config, upstream_tls(config)?)?;
    let tokens = token::TokenManager::new(config, auth.clone(), metrics::Metrics::new())?;
    let mut out = Vec::new();
    for profile in &config.profiles {
        let outcome = match &profile.credentials {
            config::Credentials::ManagementToken(_) => Ok(
                "management token: not checked (no login; it is validated per stack)".to_owned(),
            ),
            config::Credentials::Login(login) => {
                let code = login.totp_secret.as_ref().map(|secret| {
                    token::totp::code_at(secret, token::totp::step_at(SystemTime::now()))
                });
                check_one(&auth, &login.email, &login.password, code.as_deref()).await
            }
            config::Credentials::OAuth(_) => check_oauth(&tokens, &profile.name).await,
        };
        out.push(ProfileCheck {
            profile: profile.name.clone(),
            outcome,
        });
    }
    Ok(out)
}

/// One refresh of an OAuth profile, through the token manager so that the new refresh token is
/// kept exactly as the running proxy keeps it; then `GET /v3/user` with the new access token.
async fn check_oauth(tokens: &token::TokenManager, profile: &str) -> Result<String, String> {
    let (token, identity) = tokens
        .renew_now(profile)
        .await
        .map_err(|e| error_text::error_chain_text(&e))?;
    let valid_for = token
        .expires_at()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    let until = token
        .expires_at()
        .map(|at| humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string())
        .unwrap_or_default();
    let who = format!(
        "user {}, organization {}, access token valid for {}s (until {until})",
        identity.user_uid.as_deref().unwrap_or("unknown"),
        identity.organization_uid.as_deref().unwrap_or("unknown"),
        valid_for.as_secs(),
    );
    let Some(kept_in) = identity.kept_in else {
        return Err(format!(
            "refreshed ({who}), but the new refresh token could not be kept (see the log); the old one may no longer work"
        ));
    };
    match tokens.auth().validate(&token).await {
        Ok(token::Validity::Valid) => Ok(format!(
            "refreshed: {who}; token valid (GET /v3/user); the new refresh token is kept in {kept_in}"
        )),
        Ok(token::Validity::Dead) => Err(format!(
            "refreshed ({who}), but Contentstack rejected the new access token at once; the new refresh token is kept in {kept_in}"
        )),
        Err(e) => Err(format!(
            "refreshed ({who}), but validating the token failed: {}; the new refresh token is kept in {kept_in}",
            error_text::error_chain_text(&e)
        )),
    }
}

/// The TLS configuration towards Contentstack, shared by the forwarder and the session client.
pub(crate) fn upstream_tls(config: &Config) -> Result<rustls::ClientConfig, StartError> {
    Ok(tls::client_config(config.upstream.extra_roots())?)
}

/// The session client (login, logout, validation, the OAuth token endpoint).
pub(crate) fn session_client(
    config: &Config,
    tls: rustls::ClientConfig,
) -> Result<token::AuthClient, StartError> {
    token::AuthClient::new(
        &config.upstream.base_url,
        tls,
        config.upstream.connect_timeout,
    )
    .map_err(StartError::Client)
}

async fn check_one(
    auth: &token::AuthClient,
    email: &str,
    password: &secrecy::SecretString,
    code: Option<&str>,
) -> Result<String, String> {
    let token = auth
        .login(email, password, code)
        .await
        .map_err(|e| error_text::error_chain_text(&e))?;
    let validity = auth.validate(&token).await;
    let logout = auth.logout(&token).await;
    match (validity, logout) {
        (Ok(token::Validity::Valid), Ok(())) => Ok(format!(
            "logged in as {email}, token valid (GET /v3/user), logged out"
        )),
        (Ok(token::Validity::Dead), _) => Err(
            "logged in, but Contentstack rejected the new token at once (error_code 105)".into(),
        ),
        (Err(e), _) => Err(format!(
            "logged in, but validating the token failed: {}",
            error_text::error_chain_text(&e)
        )),
        (Ok(token::Validity::Valid), Err(e)) => Err(format!(
            "logged in and validated, but logging out failed: {}",
            error_text::error_chain_text(&e)
        )),
    }
}
