//! The official JavaScript SDK (`@contentstack/management`) against the real binary: `cma-auth-proxy dev`
//! serves the simulated CMA, and `tests/sdk/js/sdk.test.mjs` drives the SDK through the proxy with no
//! credentials of its own (get user; content type; entry create, fetch, update, delete; asset upload).
//! Then a script written as if there were no sidecar (`tests/sdk/js/unchanged.test.mjs`: login with
//! an e-mail, password and MFA secret, get user, entry CRUD, logout, one more request) runs against
//! a proxy in this process, so the test can check that the simulator saw none of its credentials,
//! no login of its own and no logout.
//!
//! Needs `node` and `npm` on PATH; the first run installs the pinned SDK with `npm ci --prefix
//! tests/sdk/js`. Without them the test says SKIPPED and passes, except when the `CI` environment
//! variable is set: then it fails.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// From spawning `dev` to both of its address lines on stdout.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// For the whole SDK script; each SDK call has its own 30 s timeout besides.
const SDK_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn javascript_sdk_works_through_the_proxy() {
    let sdk_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/js");
    let missing = common::tools::npm_packages(&sdk_dir, "@contentstack/management/package.json");
    if !common::tools::skip_unless(
        "javascript_sdk_works_through_the_proxy",
        missing,
        "`npm ci --prefix tests/sdk/js` (needs node 20+)",
    ) {
        return;
    }

    let dev = DevProxy::start();
    let sdk = run_sdk_script(&sdk_dir, &dev.url, &dev.api_key);
    println!(
        "--- node sdk.test.mjs (exit {:?}) ---\n{}{}",
        sdk.code, sdk.stdout, sdk.stderr
    );
    assert_eq!(
        sdk.code,
        Some(0),
        "the SDK script failed; its output is above"
    );
}

/// `cma-auth-proxy dev` on ephemeral ports, killed when dropped.
struct DevProxy {
    child: Child,
    url: String,
    api_key: String,
}

impl DevProxy {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cma-auth-proxy"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cma-auth-proxy dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Both pipes are drained for the child's whole life, so it never blocks on a full pipe; its
        // output is echoed into the test's captured output.
        let lines = forward_lines(stdout, "dev stdout");
        forward_lines(stderr, "dev stderr");

        let mut dev = DevProxy {
            child,
            url: String::new(),
            api_key: String::new(),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while dev.url.is_empty() || dev.api_key.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "`dev` did not print its proxy address and demo api_key within {STARTUP_TIMEOUT:?}"
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "`dev` closed its stdout before printing its proxy address and demo api_key: {:?}",
                        dev.child.wait()
                    )
                }
            };
            if let Some(url) = word_after(&line, "proxy listening on ") {
                dev.url = url;
            }
            if let Some(key) = word_after(&line, "demo stack api_key: ") {
                dev.api_key = key;
            }
        }
        assert!(
            dev.url.starts_with("http://"),
            "unexpected proxy address {:?}",
            dev.url
        );
        dev
    }
}

impl Drop for DevProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends every line read from `pipe` to the returned channel (until nobody listens) and echoes it.
fn forward_lines(pipe: impl Read + Send + 'static, label: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            println!("[{label}] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// The whitespace-delimited word following `marker` in `line`, e.g. the URL in
/// `proxy listening on http://127.0.0.1:8080`.
fn word_after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next().map(str::to_owned)
}

struct ScriptRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_sdk_script(sdk_dir: &Path, url: &str, api_key: &str) -> ScriptRun {
    let mut child = Command::new("node")
        .arg("sdk.test.mjs")
        .current_dir(sdk_dir)
        .env("CMA_PROXY_URL", url)
        .env("CMA_API_KEY", api_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let (tx, rx) = mpsc::channel();
    for (name, pipe) in [
        (
            "stdout",
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        ),
        ("stderr", Box::new(child.stderr.take().expect("piped"))),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(pipe).read_to_string(&mut text);
            let _ = tx.send((name, text));
        });
    }

    // Both pipes reach end of file when node exits.
    let mut run = ScriptRun {
        code: None,
        stdout: String::new(),
        stderr: String::new(),
    };
    let deadline = Instant::now() + SDK_TIMEOUT;
    for _ in 0..2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(("stdout", text)) => run.stdout = text,
            Ok((_, text)) => run.stderr = text,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node sdk.test.mjs did not finish within {SDK_TIMEOUT:?}; killed it");
            }
        }
    }
    run.code = child.wait().expect("wait for node").code();
    run
}

const SCRIPT_EMAIL: &str = "sync-job@client.example";
const SCRIPT_PASSWORD: &str = "script-Pw-0927-never-forwarded";
const SCRIPT_MFA_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_sdk_script_written_without_the_sidecar_works_unchanged() {
    use common::*;
    let sdk_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/js");
    let missing = tools::npm_packages(&sdk_dir, "@contentstack/management/package.json");
    if !tools::skip_unless(
        "a_javascript_sdk_script_written_without_the_sidecar_works_unchanged",
        missing,
        "`npm ci --prefix tests/sdk/js` (needs node 20+)",
    ) {
        return;
    }
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let addr = proxy.url.strip_prefix("http://").unwrap();
    let port = addr.rsplit_once(':').unwrap().1;
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/resolve-shim.cjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg("unchanged.test.mjs")
        .current_dir(&sdk_dir)
        .env(
            "CONTENTSTACK_ENDPOINT",
            format!("http://cma-auth-proxy:{port}/v3"),
        )
        .env("CONTENTSTACK_API_KEY", cma_sim::DEMO_API_KEY)
        .env("CONTENTSTACK_EMAIL", SCRIPT_EMAIL)
        .env("CONTENTSTACK_PASSWORD", SCRIPT_PASSWORD)
        .env("CONTENTSTACK_MFA_SECRET", SCRIPT_MFA_SECRET)
        // The host name a Pod's hostAliases would give, without touching /etc/hosts.
        .env("NODE_OPTIONS", format!("--require {}", shim.display()))
        .env("RESOLVE_SHIM_HOSTS", "cma-auth-proxy=127.0.0.1");
    let ran = tools::run(command, SDK_TIMEOUT).await;
    println!("--- node unchanged.test.mjs\n{ran}");
    assert_unchanged_script_kept_the_session(
        &ran,
        &fake,
        &proxy.admin,
        &[SCRIPT_EMAIL, SCRIPT_PASSWORD],
    )
    .await;
}
