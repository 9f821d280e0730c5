//! `cma-auth-proxy dev`: the simulated CMA of the `cma-sim` crate with a demo account, and the
//! proxy in front of it, configured as a user would configure it. Only in builds with the `dev`
//! feature (the default); `run` never needs it.
use cma_sim::{Account, DEMO_API_KEY, DEMO_EMAIL, DEMO_PASSWORD, DEMO_TOTP_SECRET, FakeCma};

use crate::config::{ConfigError, ListenAddr};
use crate::{Config, StartError};

/// `cma-auth-proxy dev`: the simulator with the demo account, and the proxy in front of it.
pub async fn run_dev(
    listen: ListenAddr,
    admin_listen: ListenAddr,
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
    let config = Config::from_toml(&toml, Vec::new(), None).map_err(DevError::Config)?;
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
    Config(#[source] ConfigError),
    #[error(transparent)]
    Start(StartError),
}
