//! The command line (SPEC §2): exit codes, `check`, and `dev` whose printed curl commands work as
//! printed.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cma-auth-proxy");

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cma-cli-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempdir();
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::write(dir.join("password"), "pw\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

#[test]
fn check_accepts_a_valid_config_and_refuses_bad_ones_with_64() {
    let valid = "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n";
    let (code, out) = check(valid, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration valid"), "{out}");

    for (config, needle) in [
        (
            "[server]\nlisten_port = 1\n[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
            "listen_port",
        ),
        (
            "[server]\nshutdown_grace = \"a while\"\n[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
            "shutdown_grace",
        ),
        ("[profiles.default]\nemail = \"a@b.c\"\n", "neither"),
        (
            "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"missing-file\"\n",
            "missing-file",
        ),
        (
            "[server]\nmax_body = \"big\"\n[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
            "server.max_body",
        ),
    ] {
        let (code, out) = check(config, &[]);
        assert_eq!(code, 64, "{config}: {out}");
        assert!(out.contains(needle), "{needle} not in: {out}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let valid = "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n";
    let (code, out) = check(valid, &[("CMA_AUTH_PROXY_UPSTREAM__REGION", "mars")]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("mars"), "{out}");
}

#[test]
fn example_config_is_valid_once_its_secret_exists() {
    let dir = tempdir();
    std::fs::write(dir.join("password"), "pw").unwrap();
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/cma-auth-proxy.example.toml"
            ),
        ])
        .env(
            "CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD_FILE",
            dir.join("password"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_64_and_version_exits_0() {
    let out = Command::new(BIN).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn dev_prints_curl_commands_that_work_as_printed_and_exits_0_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // A failing assertion below must not leave `dev` running.
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut curls = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dev prints its banner");
        if let Some(cmd) = line.trim().strip_prefix("curl ") {
            curls.push(format!("curl {cmd}"));
        }
        if line.contains("stop with Ctrl-C") {
            break;
        }
    }
    assert_eq!(curls.len(), 2, "{curls:?}");
    for cmd in &curls {
        let out = Command::new("sh")
            .args(["-c", &format!("{cmd} -w '\\n%{{http_code}}'")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim_end().ends_with("200"), "{cmd} answered: {text}");
        let body = text.trim_end().rsplit_once('\n').unwrap().0;
        serde_json::from_str::<serde_json::Value>(body)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {body}"));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
