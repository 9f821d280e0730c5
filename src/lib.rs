//! cma-auth-proxy: a sidecar that logs in to Contentstack's Content Management API with a service
//! account and forwards credential-free local requests with the session token injected.
//!
//! [`start`] wires the parts and binds the listeners; [`Running::shutdown`] drains and logs out.
//! `main.rs` adds only argument parsing, telemetry and signals, so tests drive exactly this.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod dev;
pub mod error;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
use hyper_util::server::graceful::GracefulShutdown;
use proxy::Proxy;
pub use server::BoundAddr;

/// Logging out at shutdown gives up after this long; the sessions then simply stay until evicted.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] proxy::upstream::TlsError),
    #[error("cannot build the session client")]
    Client(#[source] reqwest::Error),
}

/// A started proxy: listeners bound, first logins under way.
pub struct Running {
    proxy: Arc<Proxy>,
    proxy_addr: BoundAddr,
    admin_addr: BoundAddr,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_server: JoinHandle<GracefulShutdown>,
    admin_server: JoinHandle<GracefulShutdown>,
}

/// Builds the proxy from `config`, binds both listeners and starts serving. Login profiles log in
/// right away in the background, so the first request usually finds a token.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let tls = proxy::upstream::tls_config(&config.upstream)?;
    let mut session_tls = tls.clone();
    session_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let auth = token::AuthClient::new(
        &config.upstream.base_url,
        session_tls,
        config.upstream.connect_timeout,
    )
    .map_err(StartError::Client)?;
    let tokens = token::TokenManager::new(&config, auth);
    let client = proxy::upstream::client(&config.upstream, tls);
    let proxy = Arc::new(Proxy::new(config.clone(), tokens.clone(), client));

    let bind = |addr: &config::ListenAddr| {
        let addr = addr.clone();
        async move {
            server::bind(&addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: addr.to_string(),
                    source,
                })
        }
    };
    let (proxy_listener, proxy_addr) = bind(&config.server.listen).await?;
    let (admin_listener, admin_addr) = bind(&config.server.admin_listen).await?;
    let (stop_proxy, proxy_stop) = watch::channel(false);
    let (stop_admin, admin_stop) = watch::channel(false);
    let proxy_server = tokio::spawn(server::serve(proxy_listener, proxy.clone(), proxy_stop));
    let admin_server = tokio::spawn(server::serve(
        admin_listener,
        Arc::new(admin::Admin::new(proxy.clone())),
        admin_stop,
    ));
    for profile in config.profiles.iter().filter(|p| p.is_login()) {
        let tokens = tokens.clone();
        let name = profile.name.clone();
        // Failures are logged and remembered by the token manager; requests see them as 503s.
        tokio::spawn(async move { tokens.token(&name).await.ok() });
    }
    tracing::info!(listen = %proxy_addr, admin = %admin_addr, upstream = %config.upstream.base_url, profiles = config.profiles.len(), "cma-auth-proxy started");
    Ok(Running {
        proxy,
        proxy_addr,
        admin_addr,
        stop_proxy,
        stop_admin,
        proxy_server,
        admin_server,
    })
}

impl Running {
    pub fn proxy_addr(&self) -> &BoundAddr {
        &self.proxy_addr
    }

    pub fn admin_addr(&self) -> &BoundAddr {
        &self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// SPEC §9: readiness goes 503, the proxy listener stops accepting, in-flight requests get
    /// `shutdown_grace` to finish, sessions are logged out, then the admin listener closes.
    /// Returns whether every in-flight request finished in time.
    pub async fn shutdown(self) -> bool {
        let grace = self.proxy.config().server.shutdown_grace;
        self.proxy.start_draining();
        let _ = self.stop_proxy.send(true);
        let drained = match self.proxy_server.await {
            Ok(connections) => server::drain(connections, grace).await,
            Err(_) => false,
        };
        if drained {
            tracing::info!("in-flight requests finished");
        } else {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown_grace passed; cutting the requests still in flight"
            );
        }
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
        drained
    }
}
