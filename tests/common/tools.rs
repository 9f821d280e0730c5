//! External tools the end-to-end tests drive (node with an npm package, python with a venv): their
//! installation on first use, the skip when a tool is missing, and running them with a deadline.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether a tool-driven test may run. Without the tool it is skipped with a loud message, except
/// when the `CI` environment variable is set: then it fails, so CI cannot pass without it.
pub fn skip_unless(test: &str, missing: Option<String>, enable: &str) -> bool {
    let Some(missing) = missing else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {missing}; CI is set, so this test may not be skipped ({enable})"
    );
    // Written to the process's stderr directly: the test harness captures `eprintln!`, and a
    // skip must show in a passing run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {missing}. Enable it with {enable}."
    );
    false
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Installs the npm packages of `dir` from its lockfile (`npm ci`) unless `marker` (a path below
/// `dir/node_modules`) is there already. `None` when ready, else what is missing.
pub fn npm_packages(dir: &Path, marker: &str) -> Option<String> {
    if !runs("node", "--version") {
        return Some("`node` is not on PATH".to_owned());
    }
    let installed = dir.join("node_modules").join(marker);
    if !installed.exists() {
        // First run: install the pinned packages, so that `cargo test` is all it takes.
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .stdout(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) || !installed.exists() {
            return Some(format!(
                "{} is missing and `npm ci --prefix {}` could not install it",
                installed.display(),
                dir.display()
            ));
        }
    }
    None
}

/// A Python virtual environment under the target directory with the pinned `requirements` installed,
/// made on first use (again when the requirements change). `Ok(python)` or what is missing.
pub fn python_venv(name: &str, requirements: &Path) -> Result<PathBuf, String> {
    if !runs("python3", "--version") {
        return Err("`python3` is not on PATH".to_owned());
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let wanted = std::fs::read_to_string(requirements).map_err(|e| e.to_string())?;
    let stamp = venv.join("requirements.installed");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|had| had == wanted) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return Err("`python3 -m venv` failed (Debian: install python3-venv)".to_owned());
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(requirements)
        .status();
    if !installed.is_ok_and(|s| s.success()) {
        return Err(format!(
            "`pip install -r {}` failed",
            requirements.display()
        ));
    }
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

/// What a tool run printed, its ANSI colours stripped.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` with no input (a prompt then fails at once instead of waiting), killed if it
/// has not finished within `deadline`.
pub async fn run(mut command: tokio::process::Command, deadline: Duration) -> Ran {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{command:?}");
    let output = tokio::time::timeout(deadline, command.output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within {deadline:?}"))
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = |bytes: &[u8]| super::strip_ansi(&String::from_utf8_lossy(bytes));
    Ran {
        code: output.status.code(),
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
    }
}
