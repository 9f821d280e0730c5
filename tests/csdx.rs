//! Contentstack's CLI (`@contentstack/cli`, pinned in `tests/csdx/package.json` and its lockfile)
//! against the proxy, exactly as the README's recipe runs it: the proxy serves TLS for the host
//! name `cma-auth-proxy` in front of the simulated CMA, and the CLI is pointed at it with
//! `config:set:region`, logs in (answered by the proxy), says who it is, exports content types
//! and entries, and logs out (ending nothing).
//!
//! The CLI only speaks HTTPS to a host name. The name resolves to 127.0.0.1 through a `--require`
//! shim (`tests/support/resolve-shim.cjs`) that also refuses every other name, so nothing leaves
//! the machine and `/etc/hosts` is not touched; the CLI's state lives in a directory of the test's
//! own. The CLI exits 0 even when a command fails, so the test reads what it printed and wrote.
//!
//! Needs `node` and `npm`; the first run installs the CLI with `npm ci --prefix tests/csdx` (about
//! 300 MB). Without them the test says SKIPPED and passes, except when `CI` is set.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cma_sim::DEMO_API_KEY;
use common::tools::{Ran, npm_packages, run, skip_unless};
use common::*;
use serde_json::{Value, json};

const HOST: &str = "cma-auth-proxy";
const CLI_VERSION: &str = "1.60.1";
/// What the person at the keyboard types into `auth:login`: none of it may reach the simulator.
const TYPED_EMAIL: &str = "person+csdx@client.example";
const TYPED_PASSWORD: &str = "typed-Pw-4471-never-forwarded";
/// Start-up alone takes a few seconds on a busy machine.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// The content types seeded, with their entry counts (one with none at all).
const CONTENT: [(&str, usize); 3] = [("blog", 3), ("page", 1), ("author", 0)];

#[tokio::test(flavor = "multi_thread")]
async fn csdx_logs_in_exports_and_logs_out_through_the_proxy() {
    let cli_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/csdx");
    let missing = npm_packages(&cli_dir, "@contentstack/cli/package.json");
    if !skip_unless(
        "csdx_logs_in_exports_and_logs_out_through_the_proxy",
        missing,
        "`npm ci --prefix tests/csdx` (needs node 20+)",
    ) {
        return;
    }
    let work = tempdir();
    let key = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
    let ca = work.join("ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    std::fs::write(work.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
    let fake = fake().await;
    let tls = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        ca.display().to_string(),
        work.join("key.pem").display().to_string()
    );
    let proxy = proxy(&fake, &tls, &profile(PASSWORD, "")).await;
    let addr = proxy.running.as_ref().unwrap().proxy_addr().tcp().unwrap();
    let base = format!("https://{HOST}:{}", addr.port());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap())
        .resolve(HOST, addr)
        .build()
        .unwrap();
    seed(&client, &base).await;

    let cli = Cli::new(&cli_dir, &work, &ca);
    let region = cli
        .run(&[
            "config:set:region",
            "--cma",
            &base,
            "--cda",
            "https://cdn.contentstack.io",
            "--ui-host",
            "https://app.contentstack.com",
            "--name",
            HOST,
        ])
        .await;
    assert!(region.stdout.contains(&base), "{region}");

    let logins_before = fake.login_requests();
    let login = cli
        .run(&["auth:login", "-u", TYPED_EMAIL, "-p", TYPED_PASSWORD])
        .await;
    assert!(login.stdout.contains("Successfully logged in"), "{login}");
    let state = cli.state();
    let placeholder = state["authtoken"].as_str().unwrap().to_owned();
    assert!(
        placeholder.starts_with("cma-auth-proxy-session-"),
        "{state}"
    );
    assert_eq!(
        state["email"], EMAIL,
        "the service account's, from the proxy"
    );
    assert_eq!(
        fake.login_requests(),
        logins_before,
        "the CLI's login reached the simulator"
    );

    let whoami = cli.run(&["auth:whoami"]).await;
    assert!(whoami.stdout.contains(EMAIL), "{whoami}");

    let export_dir = work.join("export");
    let export = cli
        .run(&[
            "cm:stacks:export",
            "--stack-api-key",
            DEMO_API_KEY,
            "--data-dir",
            &export_dir.display().to_string(),
            "--module",
            "entries",
        ])
        .await;
    assert!(!export.stdout.contains("ERROR"), "{export}");
    assert!(export.stdout.contains("exported successfully"), "{export}");
    for (uid, entries) in CONTENT {
        let content_type = read_json(&export_dir.join(format!("content_types/{uid}.json")));
        assert_eq!(content_type["uid"], uid);
        assert_eq!(exported_entries(&export_dir, uid), entries, "{uid}");
    }

    let logout = cli.run(&["auth:logout", "-y"]).await;
    assert!(
        logout.stdout.contains("Successfully logged out"),
        "{logout}"
    );
    assert!(
        fake.logouts().is_empty(),
        "the shared session was logged out"
    );
    // The CLI kept its placeholder nowhere but its own state, and the session serves on.
    let after = client
        .get(format!("{base}/v3/user"))
        .header("authtoken", &placeholder)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);

    let upstream = format!("{:?}{:?}", fake.requests(), fake.login_attempts());
    for secret in [TYPED_EMAIL, TYPED_PASSWORD, placeholder.as_str()] {
        assert!(!upstream.contains(secret), "{secret} reached the simulator");
    }
    assert!(fake.login_attempts().iter().all(|a| a.email == EMAIL));
    let names = std::fs::read_to_string(work.join("dns.log")).unwrap_or_default();
    assert!(
        names.lines().all(|l| l == format!("{HOST} -> 127.0.0.1")),
        "the CLI tried to reach other hosts:\n{names}"
    );
    let counted = |action: &str| {
        format!(r#"cma_auth_proxy_emulated_sessions_total{{profile="default",action="{action}"}}"#)
    };
    assert_eq!(metric(&proxy.admin, &counted("login")).await, 1.0);
    assert_eq!(metric(&proxy.admin, &counted("logout")).await, 1.0);
}

/// Content types and entries of [`CONTENT`], through the proxy.
async fn seed(client: &reqwest::Client, base: &str) {
    for (uid, entries) in CONTENT {
        let content_type = json!({ "content_type": {
            "title": uid.to_uppercase(), "uid": uid,
            "schema": [{ "display_name": "Title", "uid": "title", "data_type": "text", "mandatory": true, "unique": true }],
        }});
        let created = client
            .post(format!("{base}/v3/content_types"))
            .header("api_key", DEMO_API_KEY)
            .json(&content_type)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
        for n in 0..entries {
            let entry = json!({ "entry": { "title": format!("{uid} {n}") } });
            let created = client
                .post(format!("{base}/v3/content_types/{uid}/entries"))
                .header("api_key", DEMO_API_KEY)
                .json(&entry)
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }
    }
}

/// The entries the export wrote for a content type: `entries/<uid>/<locale>/*-entries.json`, each
/// an object keyed by entry uid.
fn exported_entries(export_dir: &Path, uid: &str) -> usize {
    let dir = export_dir.join("entries").join(uid).join("en-us");
    let Ok(files) = std::fs::read_dir(&dir) else {
        return 0;
    };
    files
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-entries.json"))
        .map(|p| read_json(&p).as_object().map_or(0, |o| o.len()))
        .sum()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The pinned CLI with a home, configuration, logs and working directory of its own, the proxy's
/// certificate trusted and `cma-auth-proxy` resolved by the shim.
struct Cli {
    bin: PathBuf,
    work: PathBuf,
    ca: PathBuf,
    shim: PathBuf,
}

impl Cli {
    fn new(cli_dir: &Path, work: &Path, ca: &Path) -> Cli {
        for dir in ["home", "config", "logs", "cwd"] {
            std::fs::create_dir_all(work.join(dir)).unwrap();
        }
        // The version check (a request to the npm registry) is marked done, far into the future.
        let seeded = json!({ "versionUpgradeWarningCache": {
            "lastChecked": 4_102_444_800_000_u64, "lastWarnedDate": "", "latestVersion": CLI_VERSION,
        }});
        std::fs::write(
            work.join("config/contentstack_cli.json"),
            seeded.to_string(),
        )
        .unwrap();
        Cli {
            bin: cli_dir.join("node_modules/.bin/csdx"),
            work: work.to_owned(),
            ca: ca.to_owned(),
            shim: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/resolve-shim.cjs"),
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(args)
            .current_dir(self.work.join("cwd"))
            .env("HOME", self.work.join("home"))
            .env("XDG_CONFIG_HOME", self.work.join("home/.config"))
            .env("CS_CLI_CONFIG_PATH", self.work.join("config"))
            .env("CS_CLI_LOG_PATH", self.work.join("logs"))
            // Plain JSON, so the test can read what the CLI keeps.
            .env("ENCRYPT_CONF", "false")
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .env("NODE_OPTIONS", format!("--require {}", self.shim.display()))
            .env("RESOLVE_SHIM_HOSTS", format!("{HOST}=127.0.0.1"))
            .env("RESOLVE_SHIM_ONLY", "1")
            .env("RESOLVE_SHIM_LOG", self.work.join("dns.log"))
            .env_remove("CONTENTSTACK_MFA_SECRET");
        let ran = run(command, COMMAND_DEADLINE).await;
        println!("--- csdx {}\n{ran}", args.join(" "));
        ran
    }

    /// What the CLI keeps between commands.
    fn state(&self) -> Value {
        read_json(&self.work.join("config/contentstack_cli.json"))
    }
}
