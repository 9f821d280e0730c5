//! Shared test harness: the simulated CMA and the proxy, both on 127.0.0.1:0, in this process.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use cma_auth_proxy::dev::{Account, FakeCma, FakeCmaBuilder};
use cma_auth_proxy::{Config, Running};

pub const EMAIL: &str = "svc@example.com";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn account() -> Account {
    Account::new(EMAIL, PASSWORD)
}

/// The simulator with one account and no rate limit (most tests send bursts).
pub async fn fake() -> FakeCma {
    FakeCma::builder()
        .account(account())
        .without_rate_limit()
        .start()
        .await
        .unwrap()
}

pub async fn fake_with(builder: FakeCmaBuilder) -> FakeCma {
    builder.start().await.unwrap()
}

/// Starts the proxy in front of `fake`. `server` is added to `[server]`; `rest` follows
/// `[upstream]` (profiles, policy, …).
pub async fn proxy(fake: &FakeCma, server: &str, rest: &str) -> Proxy {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n[upstream]\nurl = \"{}\"\n{rest}",
        fake.url()
    );
    let config = Config::from_toml(&toml, Vec::new(), None).expect("test config is valid");
    let running = cma_auth_proxy::start(config).await.expect("proxy starts");
    Proxy::new(running)
}

/// The default profile for [`EMAIL`] with a given password and extra profile keys.
pub fn profile(password: &str, extra: &str) -> String {
    format!("[profiles.default]\nemail = \"{EMAIL}\"\npassword = \"{password}\"\n{extra}\n")
}

pub struct Proxy {
    pub running: Option<Running>,
    pub url: String,
    pub admin: String,
    pub client: reqwest::Client,
}

impl Proxy {
    fn new(running: Running) -> Proxy {
        let url = format!("http://{}", running.proxy_addr().tcp().unwrap());
        let admin = format!("http://{}", running.admin_addr().tcp().unwrap());
        Proxy {
            running: Some(running),
            url,
            admin,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .unwrap(),
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url))
    }

    pub async fn status_json(&self) -> serde_json::Value {
        self.client
            .get(format!("{}/status", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn shutdown(&mut self) -> bool {
        self.running.take().unwrap().shutdown().await
    }
}

/// Runs `n` copies of `f` at once and collects their results.
pub async fn concurrently<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let fut = f(i);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Polls `check` until it is true, at most `secs` seconds (for effects that take real time, such as
/// a backoff expiring). Panics with `what` on timeout.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
