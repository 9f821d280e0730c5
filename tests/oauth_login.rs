//! `cma-auth-proxy oauth login` (PKCE, the loopback redirect, the state check, `--print`) and
//! `check --login` for OAuth profiles, with the real binary against the simulated OAuth app; the
//! test plays the browser by following the authorization page's redirect.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use cma_sim::{FakeCma, OAuthApp};
use common::*;

const APP: &str = "app0demo";
const CLIENT: &str = "client0demo";
const SECRET: &str = "client-secret-never-printed-42";

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    fake: FakeCma,
    dir: TempDir,
    config: std::path::PathBuf,
    redirect: String,
}

/// A confidential app (PKCE and a client secret) whose redirect URI is a free loopback port, and
/// a configuration for it with a state directory and `profile_extra` in the OAuth table.
async fn setup(profile_extra: &str) -> Setup {
    let redirect = format!("http://127.0.0.1:{}/callback", free_port());
    let fake = FakeCma::builder()
        .account(account())
        .oauth_app(OAuthApp::new(APP, CLIENT, &redirect, EMAIL).with_secret(SECRET))
        .without_rate_limit()
        .start()
        .await
        .unwrap();
    let dir = tempdir();
    std::fs::create_dir(dir.join("state")).unwrap();
    std::fs::write(dir.join("client-secret"), SECRET).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(
            &fake.url(),
            "",
            &format!(
                "[profiles.default.oauth]\napp_id = \"{APP}\"\nclient_id = \"{CLIENT}\"\n\
                 client_secret_file = \"client-secret\"\nredirect_uri = \"{redirect}\"\n\
                 state_dir = \"state\"\nauthorize_url = \"{url}/apps/{APP}/authorize\"\n{profile_extra}\n",
                url = fake.url(),
            ),
        ),
    )
    .unwrap();
    Setup {
        fake,
        dir,
        config,
        redirect,
    }
}

/// `oauth login` running, its stderr read line by line.
struct Login {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Login {
    fn start(config: &std::path::Path, extra: &[&str]) -> Login {
        let mut child = Command::new(proxy_binary())
            .args(["oauth", "login", "--profile", "default", "--config"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Login { child, lines }
    }

    /// The authorization URL it printed.
    fn url(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the authorization URL is printed");
            if line.starts_with("http") && line.contains("/authorize?") {
                return line;
            }
        }
    }

    /// Exit code, stdout and the rest of stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        use std::io::Read;
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let code = self.child.wait().unwrap().code();
        // The reader thread may still be forwarding the last lines when the exit is seen: take
        // them all, until the pipe has closed (the thread's end drops the sender).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stderr = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => stderr.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stderr still open 30 s after the exit"),
            }
        }
        (code, stdout, stderr.join("\n"))
    }
}

/// The browser: opens the authorization page (which approves at once) and follows its redirect
/// back to the command's loopback listener. Returns the listener's status.
async fn approve(url: &str) -> u16 {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser.get(url).send().await.unwrap();
    assert_eq!(page.status(), 302, "{:?}", page.text().await);
    let back = page.headers()["location"].to_str().unwrap().to_owned();
    browser.get(&back).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_login_authorizes_with_pkce_and_a_running_proxy_takes_the_refresh_token_it_keeps() {
    let setup = setup("").await;
    // A proxy without any refresh token yet: refused, and it says what to run.
    let config = cma_auth_proxy::Config::load(&setup.config, Vec::new()).unwrap();
    let proxy = cma_auth_proxy::start(config).await.unwrap();
    let url = format!("http://{}/v3/user", proxy.proxy_addr().tcp().unwrap());
    let response = reqwest::get(&url).await.unwrap();
    assert_proxy_answer(&response, 503, "login_rejected");
    let body = response.text().await.unwrap();
    assert!(body.contains("oauth login --profile"), "{body}");

    let login = Login::start(&setup.config, &[]);
    let authorization = login.url();
    assert!(
        authorization.contains("code_challenge_method=S256"),
        "{authorization}"
    );
    assert!(!authorization.contains(SECRET));
    // Something else on the loopback address, or a stale tab, with another state: refused, and the
    // command keeps waiting.
    let stray = reqwest::get(format!("{}?code=forged&state=not-ours", setup.redirect))
        .await
        .unwrap();
    assert_eq!(stray.status(), 400);
    assert_eq!(approve(&authorization).await, 200);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || login.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let kept = setup.dir.join("state").join("default.json");
    assert!(
        stdout.contains("profile default: authorized (user blt")
            && stdout.contains(&kept.display().to_string()),
        "{stdout}"
    );
    let issued = setup.fake.issued_oauth_tokens();
    for token in &issued {
        assert!(!stdout.contains(token) && !stderr.contains(token));
    }
    // The running proxy takes the kept token without waiting out its refused window.
    eventually(10, "the proxy serves", || async {
        reqwest::get(&url).await.unwrap().status() == 200
    })
    .await;
    let attempts = setup.fake.refresh_attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, 200);
    assert_eq!(&attempts[0].refresh_token, &issued[0], "the exchanged one");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_login_print_writes_only_the_refresh_token_to_stdout_and_keeps_nothing() {
    let setup = setup("").await;
    let login = Login::start(&setup.config, &["--print"]);
    assert_eq!(approve(&login.url()).await, 200);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || login.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let issued = setup.fake.issued_oauth_tokens();
    assert_eq!(
        stdout,
        format!("{}\n", issued[0]),
        "for a Secret: the token alone"
    );
    assert!(setup.fake.is_refresh_token_live(&issued[0]));
    assert_eq!(
        std::fs::read_dir(setup.dir.join("state")).unwrap().count(),
        0,
        "nothing kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_login_gives_up_after_its_wait_and_refuses_a_profile_it_cannot_serve() {
    let setup = setup("").await;
    let (code, _, stderr) = tokio::task::spawn_blocking({
        let config = setup.config.clone();
        move || Login::start(&config, &["--wait", "300ms"]).finish()
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no authorization arrived"), "{stderr}");
    let out = Command::new(proxy_binary())
        .args(["oauth", "login", "--profile", "nope", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no profile \"nope\""));
}

fn check_login(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(proxy_binary())
        .args(["check", "--login", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_login_refreshes_once_keeps_the_new_token_and_says_whom_it_acts_for() {
    let setup = setup("refresh_token_file = \"refresh-token\"").await;
    let bootstrap = setup.fake.authorize_oauth_app().unwrap();
    std::fs::write(setup.dir.join("refresh-token"), &bootstrap).unwrap();
    let config = setup.config.clone();
    let (code, out) = tokio::task::spawn_blocking(move || check_login(&config))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("profile default: ok: refreshed: user blt")
            && out.contains("organization blt0demo0org")
            && out.contains("access token valid for 3")
            && out.contains("token valid (GET /v3/user)")
            && out.contains("default.json"),
        "{out}"
    );
    for token in setup.fake.issued_oauth_tokens() {
        assert!(!out.contains(&token), "{out}");
    }
    assert!(!out.contains(SECRET));
    // The second check starts from the token the first one kept; the bootstrap is dead since.
    let config = setup.config.clone();
    let (code, out) = tokio::task::spawn_blocking(move || check_login(&config))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let attempts = setup.fake.refresh_attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].refresh_token, bootstrap);
    assert_ne!(attempts[1].refresh_token, bootstrap);
    assert!(!setup.fake.is_refresh_token_live(&bootstrap));
    // Revoked: the check fails and says what to do.
    setup.fake.revoke_oauth();
    let config = setup.config.clone();
    let (code, out) = tokio::task::spawn_blocking(move || check_login(&config))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("profile default: FAILED: ") && out.contains("oauth login"),
        "{out}"
    );
}
