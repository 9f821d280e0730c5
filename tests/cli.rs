//! The command line (docs/design.md#the-command-line): exit codes, `check`, and `dev` (plain and
//! `--tls`) whose printed commands work as printed.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::tempdir;

const BIN: &str = env!("CARGO_BIN_EXE_cma-auth-proxy");

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
    assert!(
        out.contains("environment variable CMA_AUTH_PROXY_UPSTREAM__REGION (`upstream.region`): expected one of \"na\""),
        "{out}"
    );
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

/// Every option says what it takes.
#[test]
fn every_option_has_help() {
    for (command, options) in [
        ("run", &["--config <FILE>"][..]),
        ("check", &["--config <FILE>", "--login"]),
        ("dev", &["--listen <ADDR>", "--admin-listen <ADDR>"]),
    ] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for option in options {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(option))
                .unwrap_or_else(|| panic!("{option} not in {help}"));
            // The option, then its description on the same line.
            let described = line.trim_start()[option.len()..].trim();
            assert!(described.len() > 10, "{command} {option}: {line:?}");
        }
    }
}

#[test]
fn dev_prints_curl_commands_that_work_as_printed_and_exits_0_on_sigterm() {
    let (mut child, banner) = start_dev(&[]);
    assert!(
        banner.iter().any(|l| l.contains("two-factor on")),
        "{banner:?}"
    );
    let curls = run_printed_curls(&banner);
    assert_eq!(curls, 2, "{banner:?}");
    terminate(&mut child);
}

/// `dev --tls`: the printed commands work as printed over TLS (the curl ones here; the CLI ones
/// in tests/csdx.rs), the certificate is for `cma-auth-proxy` from the printed CA, and the
/// directory that holds them is gone once `dev` has exited.
#[test]
fn dev_tls_serves_the_cli_recipe_it_prints_and_removes_its_certificates_on_exit() {
    let (mut child, banner) = start_dev(&["--tls"]);
    assert_eq!(run_printed_curls(&banner), 2, "{banner:?}");
    let after = |marker: &str| {
        banner
            .iter()
            .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("no {marker:?} in {banner:?}"))
    };
    let port = after("proxy listening on https://127.0.0.1:");
    let ca = after("export NODE_EXTRA_CA_CERTS=");
    assert!(std::path::Path::new(&ca).is_file(), "{ca}");
    let region = after("csdx config:set:region ");
    assert!(
        region.starts_with(&format!("--cma https://cma-auth-proxy:{port} ")),
        "{region}"
    );
    for command in [
        "csdx auth:login",
        "csdx auth:whoami",
        "csdx cm:stacks:export",
    ] {
        assert!(banner.iter().any(|l| l.contains(command)), "{command}");
    }
    // The name the CLI uses, verified against the printed CA: an emulated login answers.
    let out = Command::new("curl")
        .args(["-s", "--resolve"])
        .arg(format!("cma-auth-proxy:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&ca)
        .args(["-H", "content-type: application/json", "-d"])
        .arg(r#"{"user":{"email":"a@b.c","password":"typed"}}"#)
        .arg(format!("https://cma-auth-proxy:{port}/v3/user-session"))
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["user"]["email"], cma_sim::DEMO_EMAIL);
    let dir = std::path::Path::new(&ca).parent().unwrap().to_owned();
    terminate(&mut child);
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

/// `dev` on ephemeral ports, and every line it printed up to "stop with Ctrl-C".
fn start_dev(extra: &[&str]) -> (KillOnDrop, Vec<String>) {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // A failing assertion must not leave `dev` running.
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dev prints its banner");
        let done = line.contains("stop with Ctrl-C");
        banner.push(line);
        if done {
            return (child, banner);
        }
    }
}

/// Runs every printed `curl` command as printed; each must answer 200 with JSON. Returns how many.
fn run_printed_curls(banner: &[String]) -> usize {
    let curls: Vec<String> = banner
        .iter()
        .filter_map(|line| line.trim().strip_prefix("curl "))
        .map(|cmd| format!("curl {cmd}"))
        .collect();
    for cmd in &curls {
        let out = Command::new("sh")
            .args(["-c", &format!("{cmd} -w '\\n%{{http_code}}'")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim_end().ends_with("200"), "{cmd} answered: {text}");
        let body = text.trim_end().rsplit_once('\n').unwrap().0;
        let body = serde_json::from_str::<serde_json::Value>(body)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {body}"));
        // The banner's "two-factor on" is what the account says of itself.
        if cmd.contains("/v3/user") {
            assert_eq!(body["user"]["tfa_enabled"], true, "{body}");
        }
    }
    curls.len()
}

/// SIGTERM; `dev` must exit 0.
fn terminate(child: &mut KillOnDrop) {
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

fn run_check(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every way a secret's line can be wrong: `check` says where (line, or environment variable) and
/// what was expected, and never prints the line or the value.
#[test]
fn check_errors_point_at_the_line_or_variable_and_never_print_a_secret() {
    const SECRET: &str = "s3cret-value-7781";
    let profile = "[profiles.default]\nemail = \"a@b.c\"\n";
    // (config, environment variable set to the secret, what the message must hold)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (format!("{profile}password = \"{SECRET}\n"), None, "line 3"),
        (format!("{profile}password = '{SECRET}\n"), None, "line 3"),
        // Unterminated, a multi-line string runs to the end of the file.
        (
            format!("{profile}password = \"\"\"{SECRET}\n"),
            None,
            "line 4, column 1",
        ),
        (
            format!("{profile}password = \"{SECRET}\\q\"\n"),
            None,
            "line 3",
        ),
        (format!("{profile}password = {SECRET}\n"), None, "line 3"),
        (
            format!("{profile}password = \"{SECRET}\" \"x\"\n"),
            None,
            "line 3",
        ),
        (format!("{profile}password = [77811234]\n"), None, "line 3"),
        (
            format!("{profile}password = [\"{SECRET}\"]\n"),
            None,
            "line 3",
        ),
        (
            format!("{profile}totp_secret = {{ s = \"{SECRET}\" }}\npassword = \"x\"\n"),
            None,
            "line 3",
        ),
        (
            format!("{profile}management_token = [7781.5]\n"),
            None,
            "line 3",
        ),
        (
            format!(
                "[token_store]\nkind = \"redis\"\nurl = [\"redis://:{SECRET}@h\"]\n{profile}password = \"x\"\n"
            ),
            None,
            "line 3",
        ),
        (
            format!("{profile}password_file = \"p\"\n"),
            Some("CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__X"),
            "CMA_AUTH_PROXY_PROFILES__DEFAULT__PASSWORD__X",
        ),
        (
            format!("{profile}password_file = \"p\"\n"),
            Some("CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS"),
            "CMA_AUTH_PROXY_SERVER__MAX_CONNECTIONS",
        ),
    ];
    for (config, var, needle) in cases {
        let env: Vec<(&str, &str)> = var.into_iter().map(|var| (var, SECRET)).collect();
        let (code, out) = check(&config, &env);
        assert_eq!(code, 64, "{config}: {out}");
        assert!(out.contains(needle), "{needle} not in: {out}");
        assert!(
            !out.contains("s3cret") && !out.contains("7781"),
            "{config}: {out}"
        );
    }
}

/// A secret file is read with a bound: a device, a pipe or a huge file is refused at once rather
/// than read until memory runs out.
#[test]
fn check_refuses_secret_files_that_are_too_large_or_not_files() {
    let dir = tempdir();
    std::fs::write(dir.join("huge"), vec![b'a'; 65 * 1024]).unwrap();
    for (file, needle) in [
        (dir.join("huge"), "larger than 64 KiB"),
        ("/dev/zero".into(), "not a regular file"),
        (dir.to_path_buf(), "not a regular file"),
    ] {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"{}\"\n",
                file.display()
            ),
        )
        .unwrap();
        let (code, stdout, stderr) = run_check(&config, &[]);
        assert_eq!(code, 64, "{stdout}{stderr}");
        assert!(
            stderr.contains("profiles.default.password_file") && stderr.contains(needle),
            "{stderr}"
        );
    }
}

/// `check` says what `run` would warn about: secret and config files other users can read,
/// secrets written inline or passed in the environment, a plain listener beyond loopback.
#[test]
fn check_warns_about_open_files_inline_secrets_and_a_plain_listener_beyond_loopback() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(dir.join("password"), "pw-in-a-file\n").unwrap();
    std::fs::set_permissions(dir.join("password"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::write(
        &config,
        "[server]\nlisten = \"0.0.0.0:8080\"\n\
         [profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n\
         [profiles.inline]\nemail = \"i@b.c\"\npassword = \"inline-pw-1234\"\n\
         [profiles.env]\nemail = \"e@b.c\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stdout, stderr) = run_check(
        &config,
        &[("CMA_AUTH_PROXY_PROFILES__ENV__PASSWORD", "env-pw-5678")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    let expect = [
        format!("{} (mode 0604) is readable by every user", dir.join("password").display()),
        format!("{} (mode 0644) is readable by every user", config.display()),
        "`profiles.inline.password` is written in the configuration file (line 8".to_owned(),
        "`profiles.env.password` comes from the environment variable CMA_AUTH_PROXY_PROFILES__ENV__PASSWORD".to_owned(),
        "`server.listen` 0.0.0.0:8080 reaches beyond loopback without TLS".to_owned(),
    ];
    for e in &expect {
        assert!(
            warnings.iter().any(|w| w.contains(e.as_str())),
            "{e:?} not in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
    for secret in ["pw-in-a-file", "inline-pw-1234", "env-pw-5678"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // Fixed: private files (a group-readable one too, when the group is one of this process's, as
    // a Kubernetes Secret volume with `defaultMode: 0440` and the Pod's `fsGroup` gives), secrets
    // in files, loopback. No warning is left.
    std::fs::set_permissions(dir.join("password"), std::fs::Permissions::from_mode(0o440)).unwrap();
    std::fs::write(
        &config,
        "[profiles.default]\nemail = \"a@b.c\"\npassword_file = \"password\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stdout, stderr) = run_check(&config, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.contains("configuration valid"), "{stdout}");
}

/// `run` and `check` where no configuration was written yet: the answer says where it looked and
/// how to get one.
#[test]
fn without_a_configuration_run_and_check_say_how_to_get_one() {
    let dir = tempdir();
    for command in ["run", "check"] {
        let out = Command::new(BIN)
            .arg(command)
            .current_dir(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "no configuration file at {}; copy config/cma-auth-proxy.example.toml there and edit it",
                dir.canonicalize().unwrap().join("config/cma-auth-proxy.toml").display()
            )) && stderr.contains("`cma-auth-proxy dev` needs no configuration"),
            "{command}: {stderr}"
        );
    }
}

/// README's "First real run", step by step, against the simulator (whose address replaces the
/// example's region through the environment, as an operator could): the example copied, the
/// password file written with mode 0600, `check --login`, `run`.
#[test]
fn the_first_real_run_works_as_the_readme_says() {
    use std::os::unix::fs::PermissionsExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(common::fake());
    let dir = tempdir();
    std::fs::create_dir(dir.join("config")).unwrap();
    let config = dir.join("config/cma-auth-proxy.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/cma-auth-proxy.example.toml"
        ),
        &config,
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The example's e-mail is the simulator account's; a real run edits it.
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(&format!("email = \"{}\"", common::EMAIL))
    );
    let upstream = ("CMA_AUTH_PROXY_UPSTREAM__URL", fake.url());
    let cma_auth_proxy = |args: &[&str], env: &[(&str, String)]| {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    };

    // Before the password file exists, `check` says how to create it.
    let out = cma_auth_proxy(&["check", "--login"], std::slice::from_ref(&upstream))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let password = dir.canonicalize().unwrap().join("config/password");
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`install -m 600 /dev/null {}`",
            password.display()
        )),
        "{stderr}"
    );
    std::fs::write(&password, format!("{}\n", common::PASSWORD)).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = cma_auth_proxy(&["check", "--login"], std::slice::from_ref(&upstream))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(
        stdout.contains("profile default: ok: logged in as svc@example.com"),
        "{stdout}"
    );

    let mut child = cma_auth_proxy(
        &["run"],
        &[
            upstream,
            ("CMA_AUTH_PROXY_SERVER__LISTEN", "127.0.0.1:0".into()),
            ("CMA_AUTH_PROXY_SERVER__ADMIN_LISTEN", "127.0.0.1:0".into()),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = lines
        .iter()
        .find(|line| line.contains("cma-auth-proxy started"))
        .expect("run starts");
    let listen = started
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .expect("the start line names the listener");
    let status = runtime.block_on(async {
        reqwest::get(format!("http://{listen}/v3/user"))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200, "{:?}", lines.try_iter().collect::<Vec<_>>());
    drop(child);
}
