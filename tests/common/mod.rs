//! Shared test harness: the simulated CMA and the proxy, both on 127.0.0.1:0, in this process.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use cma_auth_proxy::{Config, Running};
use cma_sim::{Account, FakeCma, FakeCmaBuilder};

pub mod tools;

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
    proxy_at(&fake.url(), server, rest).await
}

/// Starts the proxy in front of the upstream at `url`, configured as [`config_toml`] says.
pub async fn proxy_at(url: &str, server: &str, rest: &str) -> Proxy {
    let toml = config_toml(url, server, rest);
    let config = Config::from_toml(&toml, Vec::new(), None).expect("test config is valid");
    let running = cma_auth_proxy::start(config).await.expect("proxy starts");
    Proxy::new(running)
}

/// A configuration with both listeners on free ports, in front of the upstream at `url`. `server`
/// is added to `[server]`; `rest` follows `[upstream]` (profiles, policy, …).
pub fn config_toml(url: &str, server: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n[upstream]\nurl = \"{url}\"\n{rest}"
    )
}

/// The default profile for [`EMAIL`] with a given password and extra profile keys.
pub fn profile(password: &str, extra: &str) -> String {
    format!("[profiles.default]\nemail = \"{EMAIL}\"\npassword = \"{password}\"\n{extra}\n")
}

/// The default profile for [`EMAIL`] reading its password from `file` (relative to the config
/// file's directory, or absolute), with extra profile keys.
pub fn profile_from_file(file: impl std::fmt::Display, extra: &str) -> String {
    format!("[profiles.default]\nemail = \"{EMAIL}\"\npassword_file = \"{file}\"\n{extra}\n")
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

/// A request body sent in 64 KiB chunks without a Content-Length, as a streaming client does.
pub fn streamed(data: bytes::Bytes) -> reqwest::Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
        .step_by(64 * 1024)
        .map(|i| Ok(data.slice(i..(i + 64 * 1024).min(data.len()))))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
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

/// The binary that the tests which start one run: the one cargo built for them, or the one that
/// `CMA_TESTS_BINARY` names (not a `CMA_AUTH_PROXY_` name, which the binary would read as a
/// configuration key and refuse). CI runs those tests again against the image's build, the
/// laid-out production binary (docs/design.md#performance), which has no `dev` subcommand: only
/// `run`, `check` and `oauth login` go through here.
pub fn proxy_binary() -> std::ffi::OsString {
    std::env::var_os("CMA_TESTS_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_cma-auth-proxy").into())
}

/// The real binary, `run` with a config file, its stderr collected line by line (or written to a
/// file of the test's choosing, see [`Binary::start_logging_to`]).
pub struct Binary {
    pub child: std::process::Child,
    pub url: String,
    pub admin: String,
    lines: LogLines,
    /// Every line read so far (piped stderr only; a log file is read with [`Binary::log_text`]).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// The directory of its configuration and secrets, when the binary owns it (see
    /// [`Binary::owning`]): removed once the process is gone.
    dir: Option<TempDir>,
}

enum LogLines {
    Piped(std::sync::mpsc::Receiver<String>),
    /// The process writes its stderr into this file; `offset` is how far `wait_for_line` has read.
    File {
        path: std::path::PathBuf,
        offset: u64,
        partial: Vec<u8>,
        complete: std::collections::VecDeque<String>,
    },
}

impl Binary {
    /// Starts `cma-auth-proxy run --config path` and waits for its start-up log line, which names
    /// the bound addresses (the config should listen on port 0).
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Binary {
        Self::start_command(Self::command(config, env))
    }

    /// Like [`Binary::start`], on the CPUs `cpus` only, as in a container with a cpuset of its
    /// own: `taskset -c` sets the affinity mask and runs the binary in the same process.
    pub fn start_on_cpus(config: &std::path::Path, cpus: &[usize]) -> Binary {
        let list: Vec<String> = cpus.iter().map(ToString::to_string).collect();
        let mut command = std::process::Command::new("taskset");
        command.args(["-c", &list.join(",")]).arg(proxy_binary());
        Self::start_command(Self::arguments(command, config, &[]))
    }

    fn start_command(mut command: std::process::Command) -> Binary {
        use std::io::BufRead;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log_writer.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Self::started(child, LogLines::Piped(lines), log)
    }

    /// Like [`Binary::start`], but the process writes its log straight into `log_file` (created or
    /// truncated), as `run ... 2>>proxy.log` does; nothing of it is held in memory.
    pub fn start_logging_to(
        config: &std::path::Path,
        env: &[(&str, &str)],
        log_file: &std::path::Path,
    ) -> Binary {
        let file = std::fs::File::create(log_file).unwrap();
        let child = Self::command(config, env).stderr(file).spawn().unwrap();
        let lines = LogLines::File {
            path: log_file.to_owned(),
            offset: 0,
            partial: Vec::new(),
            complete: Default::default(),
        };
        Self::started(child, lines, Arc::default())
    }

    fn command(config: &std::path::Path, env: &[(&str, &str)]) -> std::process::Command {
        Self::arguments(std::process::Command::new(proxy_binary()), config, env)
    }

    fn arguments(
        mut command: std::process::Command,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> std::process::Command {
        command
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null());
        command
    }

    fn started(
        child: std::process::Child,
        lines: LogLines,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> Binary {
        let mut binary = Binary {
            child,
            url: String::new(),
            admin: String::new(),
            lines,
            log,
            dir: None,
        };
        let started = binary.wait_for_line("cma-auth-proxy started");
        binary.url = format!("http://{}", field(&started, "listen"));
        binary.admin = format!("http://{}", field(&started, "admin"));
        binary
    }

    /// Keeps `dir` (its configuration's) until the binary is dropped, and so stopped.
    pub fn owning(mut self, dir: TempDir) -> Binary {
        self.dir = Some(dir);
        self
    }

    /// Waits (at most 30 s) for a log line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let line = match &mut self.lines {
                LogLines::Piped(lines) => lines
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .ok(),
                LogLines::File {
                    path,
                    offset,
                    partial,
                    complete,
                } => next_line_of_file(path, offset, partial, complete, deadline),
            };
            let Some(line) = line else {
                panic!(
                    "no log line with {needle:?} within 30 s; log: {}",
                    self.log_tail()
                )
            };
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Like [`Binary::wait_for_line`], but also finds a line read already (by `start`, or by an
    /// earlier wait): for events the proxy may log before the line a test last waited for.
    pub fn wait_for_logged(&mut self, needle: &str) -> String {
        match self.log_text().lines().find(|l| l.contains(needle)) {
            Some(line) => line.to_owned(),
            None => self.wait_for_line(needle),
        }
    }

    /// The end of the log, for failure messages (a runaway log file can be huge).
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let start = text.len().saturating_sub(16 * 1024);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log_text(&self) -> String {
        match &self.lines {
            LogLines::Piped(_) => self.log.lock().unwrap().join("\n"),
            LogLines::File { path, .. } => {
                String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
            }
        }
    }
}

/// The next complete line of a log file another process appends to, read from `offset` in bounded
/// chunks; `None` once `deadline` has passed.
fn next_line_of_file(
    path: &std::path::Path,
    offset: &mut u64,
    partial: &mut Vec<u8>,
    complete: &mut std::collections::VecDeque<String>,
    deadline: std::time::Instant,
) -> Option<String> {
    use std::io::{Read, Seek};
    loop {
        if let Some(line) = complete.pop_front() {
            return Some(line);
        }
        let mut file = std::fs::File::open(path).unwrap();
        file.seek(std::io::SeekFrom::Start(*offset)).unwrap();
        let mut chunk = Vec::new();
        let read = file.take(1 << 20).read_to_end(&mut chunk).unwrap();
        *offset += read as u64;
        partial.extend_from_slice(&chunk);
        if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
            let rest = partial.split_off(end + 1);
            complete.extend(
                String::from_utf8_lossy(&partial[..end])
                    .split('\n')
                    .map(str::to_owned),
            );
            *partial = rest;
        } else if read == 0 {
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` (text logs, ANSI colours stripped) or `"key":"value"` (JSON logs).
fn field(line: &str, key: &str) -> String {
    let plain = strip_ansi(line);
    for pattern in [format!("{key}="), format!("\"{key}\":\"")] {
        if let Some(start) = plain.find(&pattern) {
            let rest = &plain[start + pattern.len()..];
            let end = rest.find([' ', '"', ',']).unwrap_or(rest.len());
            return rest[..end].to_owned();
        }
    }
    panic!("no {key} in {line}");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A directory of one test's own, removed with everything in it when dropped, so that the files a
/// test writes (configurations, password and key files, sockets) do not outlive it. It reads as
/// its path (`dir.join(..)`, `&dir` where a `&Path` is taken).
pub struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        self.0.path()
    }
}

pub fn tempdir() -> TempDir {
    TempDir(
        tempfile::Builder::new()
            .prefix("cma-test-")
            .tempdir()
            .unwrap(),
    )
}

/// Parses Prometheus text into (series, value) pairs, e.g. `cma_auth_proxy_logins_total{profile="default",outcome="success"}`.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Fetches and parses `/metrics`.
/// One series' value, 0 while it does not exist yet (a counter not yet incremented).
pub async fn metric(admin: &str, series: &str) -> f64 {
    metrics(admin).await.get(series).copied().unwrap_or(0.0)
}

/// Waits until the counter `series` reads at least `at_least`, then returns what it reads. For
/// counters the proxy increments just after the event a test observed (a connection's end, a
/// logout's answer), where a plain read would race.
pub async fn counter_reaching(admin: &str, series: &str, at_least: f64) -> f64 {
    eventually(5, &format!("{series} >= {at_least}"), || async move {
        metric(admin, series).await >= at_least
    })
    .await;
    metric(admin, series).await
}

pub async fn metrics(admin: &str) -> std::collections::HashMap<String, f64> {
    parse_metrics(&text(&format!("{admin}/metrics")).await)
}

/// The body of `GET url`, as text (an admin page: `/status`, `/metrics`).
pub async fn text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// What an unchanged login/logout script (an SDK's or the CLI's) must have left behind, run
/// through session emulation: it passed, it logged in as the service account, the shared session
/// was never logged out, no login but the proxy's own reached Contentstack, none of the script's
/// own credentials (`script_secrets`) nor the placeholder went upstream, and one emulated login
/// and one logout were counted.
pub async fn assert_unchanged_script_kept_the_session(
    ran: &tools::Ran,
    fake: &FakeCma,
    admin: &str,
    script_secrets: &[&str],
) {
    assert_eq!(ran.code, Some(0), "the script failed; its output is above");
    assert!(ran.stdout.contains("all steps passed"));
    assert!(ran.stdout.contains(&format!("logged in as {EMAIL}")));
    assert!(
        fake.logouts().is_empty(),
        "the shared session was logged out"
    );
    assert!(
        fake.login_attempts()
            .iter()
            .all(|a| a.email == EMAIL && a.tfa_token.is_none()),
        "a login other than the proxy's own reached the simulator: {:?}",
        fake.login_attempts()
    );
    let upstream = format!("{:?}", fake.requests());
    for secret in script_secrets.iter().chain(&["cma-auth-proxy-session-"]) {
        assert!(!upstream.contains(secret), "{secret} reached the simulator");
    }
    let counted = |action: &str| {
        format!(r#"cma_auth_proxy_emulated_sessions_total{{profile="default",action="{action}"}}"#)
    };
    assert_eq!(metric(admin, &counted("login")).await, 1.0);
    assert_eq!(metric(admin, &counted("logout")).await, 1.0);
}

/// The Kubernetes layout of a mounted Secret: `dir/..data -> ..TIMESTAMP/`, `dir/KEY -> ..data/KEY`.
pub struct SecretVolume {
    pub dir: TempDir,
    generation: u32,
}

impl SecretVolume {
    pub fn new(files: &[(&str, &str)]) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempdir(),
            generation: 0,
        };
        volume.update(files);
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.dir.join(key)).unwrap();
        }
        volume
    }

    /// Writes a new timestamped directory and swaps `..data` to it atomically, as the kubelet does.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let versioned = format!(
            "..2026_11_27_00_00_{:02}.{}",
            self.generation,
            rand::random::<u32>()
        );
        std::fs::create_dir(self.dir.join(&versioned)).unwrap();
        for (key, value) in files {
            std::fs::write(self.dir.join(&versioned).join(key), value).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&versioned, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    pub fn path(&self, key: &str) -> std::path::PathBuf {
        self.dir.join(key)
    }
}

/// A client that speaks HTTP/2 without negotiating it first (the proxy's plain listener takes both).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// Asserts that `response` is the proxy's own answer: `status`, and `reason` in
/// `x-cma-auth-proxy-error`.
#[track_caller]
pub fn assert_proxy_answer(response: &reqwest::Response, status: u16, reason: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-cma-auth-proxy-error"], reason);
}

/// Starts the proxy from a config file, reloading it live (docs/design.md#reload-and-rotation).
pub async fn proxy_from_file(path: &std::path::Path) -> Proxy {
    let config = Config::load(path, Vec::new()).expect("test config is valid");
    let mut running = cma_auth_proxy::start(config).await.expect("proxy starts");
    running.watch_config(path.to_owned());
    Proxy::new(running)
}

/// For a test whose prerequisite (`missing`, with how to install it) is not there: fails under
/// `CI` (which installs everything), else says SKIPPED where a person sees it (straight to the
/// process's stderr, which the test harness does not capture) and lets the test return.
pub fn skip_unless_ci(test: &str, missing: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {missing}; CI is set, so this test may not be skipped"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {test}: {missing} ***\n");
}

/// Whether `redis-server` can be started; when it cannot, [`skip_unless_ci`].
pub fn redis_server_or_skip(test: &str) -> bool {
    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        skip_unless_ci(
            test,
            "redis-server is not installed (Debian: redis-server; .ci/run installs it)",
        );
    }
    installed
}

/// A `redis-server` of the test's own on a free loopback port (no persistence).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// With TLS only (`rediss://`): the directory holding `ca.pem` (the server's self-signed
    /// certificate, for clients to trust) and `key.pem`.
    pub tls: Option<TempDir>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// [`RedisServer::start`], or `None` (the test returns) when `redis-server` is not installed
    /// and `CI` is not set; see [`skip_unless_ci`].
    pub fn start_or_skip() -> Option<RedisServer> {
        redis_server_or_skip("a test of the fleet store").then(Self::start)
    }

    /// [`RedisServer::start_tls`], or `None` like [`RedisServer::start_or_skip`].
    pub fn start_tls_or_skip() -> Option<RedisServer> {
        redis_server_or_skip("a test of the fleet store over TLS").then(Self::start_tls)
    }

    /// A server that speaks only TLS, with a certificate for 127.0.0.1 from a fresh private CA.
    pub fn start_tls() -> RedisServer {
        let dir = tempdir();
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(dir.join("ca.pem"), key.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
        Self::start_with(Some(dir))
    }

    fn start_with(tls: Option<TempDir>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            tls,
        };
        server.restart();
        server
    }

    fn port_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        match &self.tls {
            None => vec!["--port".into(), port],
            Some(dir) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                dir.join("ca.pem").display().to_string(),
                "--tls-key-file".into(),
                dir.join("key.pem").display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        }
    }

    /// Starts it again on the same port (after [`RedisServer::stop`]), empty.
    pub fn restart(&mut self) {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(self.port_args())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("redis-server became ready");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = std::process::Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(dir) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(dir.join("ca.pem"));
        }
        let out = command.args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of a Redis, to partition one replica from it while the others still
/// reach it: it can fall silent (connections stay open and nothing passes either way, as when a
/// NAT forgets the flow) or be cut (every connection is closed, and new ones at once).
pub struct Relay {
    pub url: String,
    silent: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cut_watch) = tokio::sync::watch::channel(false);
        let silent_flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_watch.borrow() {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                    let (silent, cut) = (silent_flag.clone(), cut_watch.clone());
                    tokio::spawn(Self::pass(from, to, silent, cut));
                }
            }
        });
        Relay { url, silent, cut }
    }

    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        silent: Arc<std::sync::atomic::AtomicBool>,
        mut cut: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(n @ 1..) => n,
                    _ => return,
                },
                _ = cut.wait_for(|cut| *cut) => return,
            };
            let silent = silent.load(std::sync::atomic::Ordering::SeqCst);
            if !silent && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Nothing passes either way while `silent`, but every connection stays open.
    pub fn silence(&self, silent: bool) {
        self.silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection, and every new one at once, while `cut`.
    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}
