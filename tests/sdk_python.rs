//! The official Python SDK (`contentstack-management`, pinned in `tests/sdk/python/requirements.txt`)
//! running a script written as if there were no sidecar (`tests/sdk/python/unchanged_test.py`):
//! `login(email, password, mfa_secret=…)`, get user, entry CRUD, `logout()`, one more request. Only
//! its host points at the proxy. The simulator must see none of the script's credentials, no login
//! of its own and no logout.
//!
//! Needs `python3` with `venv`; the first run makes a venv under the target directory and installs
//! the pinned packages with pip. Without them the test says SKIPPED and passes, except when `CI` is
//! set.
mod common;

use std::path::Path;
use std::time::Duration;

use cma_sim::DEMO_API_KEY;
use common::tools::{python_venv, run, skip_unless};
use common::*;

const SCRIPT_EMAIL: &str = "migration-bot@client.example";
const SCRIPT_PASSWORD: &str = "script-Pw-5530-never-forwarded";
const SCRIPT_MFA_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

#[tokio::test(flavor = "multi_thread")]
async fn a_python_sdk_script_written_without_the_sidecar_works_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python");
    let python = python_venv("sdk-python-venv", &dir.join("requirements.txt"));
    if !skip_unless(
        "a_python_sdk_script_written_without_the_sidecar_works_unchanged",
        python.as_ref().err().cloned(),
        "python3 with venv and pip (Debian: python3-venv)",
    ) {
        return;
    }
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let mut command = tokio::process::Command::new(python.unwrap());
    command
        .arg(dir.join("unchanged_test.py"))
        .env(
            "CONTENTSTACK_HOST",
            proxy.url.strip_prefix("http://").unwrap(),
        )
        .env("CONTENTSTACK_SCHEME", "http://")
        .env("CONTENTSTACK_API_KEY", DEMO_API_KEY)
        .env("CONTENTSTACK_EMAIL", SCRIPT_EMAIL)
        .env("CONTENTSTACK_PASSWORD", SCRIPT_PASSWORD)
        .env("CONTENTSTACK_MFA_SECRET", SCRIPT_MFA_SECRET)
        .env_remove("MFA_SECRET");
    let ran = run(command, Duration::from_secs(120)).await;
    println!("--- python unchanged_test.py\n{ran}");
    assert_unchanged_script_kept_the_session(
        &ran,
        &fake,
        &proxy.admin,
        &[SCRIPT_EMAIL, SCRIPT_PASSWORD],
    )
    .await;
}
