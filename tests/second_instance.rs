//! A second cma-auth-proxy started on the addresses of a running one (issue 10, item 11): it exits
//! with "address in use (another cma-auth-proxy?)", and the first keeps all the traffic.
mod common;

use std::time::{Duration, Instant};

use common::*;

fn write_config(
    dir: &std::path::Path,
    name: &str,
    fake_url: &str,
    listen: &str,
    admin: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n\
             [upstream]\nurl = \"{fake_url}\"\n{}",
            profile(PASSWORD, "")
        ),
    )
    .unwrap();
    path
}

/// Runs the binary to its exit (at most 20 s, then it is killed and the test fails), returning its
/// exit code and what it wrote to stderr.
fn run_to_exit(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cma-auth-proxy"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second instance is still running: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_ports_exits_and_the_first_keeps_serving() {
    let fake = fake().await;
    let dir = tempdir();
    let first = Binary::start(
        &write_config(
            &dir,
            "first.toml",
            &fake.url(),
            "127.0.0.1:0",
            "127.0.0.1:0",
        ),
        &[],
    );
    let proxy_addr = first.url.trim_start_matches("http://").to_owned();
    let admin_addr = first.admin.trim_start_matches("http://").to_owned();

    for (name, listen, admin) in [
        ("same proxy port", proxy_addr.as_str(), "127.0.0.1:0"),
        ("same admin port", "127.0.0.1:0", admin_addr.as_str()),
    ] {
        let config = write_config(&dir, "second.toml", &fake.url(), listen, admin);
        let (code, stderr) =
            run_to_exit(&["run".as_ref(), "--config".as_ref(), config.as_os_str()]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("another cma-auth-proxy?"),
            "{name}: {stderr}"
        );
        let taken = if listen == "127.0.0.1:0" {
            admin
        } else {
            listen
        };
        assert!(stderr.contains(taken), "{name}: {stderr}");
    }
    let (code, stderr) = run_to_exit(&[
        "dev".as_ref(),
        "--listen".as_ref(),
        proxy_addr.as_ref(),
        "--admin-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    assert_eq!(code, Some(1), "dev: {stderr}");
    assert!(stderr.contains("another cma-auth-proxy?"), "dev: {stderr}");

    // The first instance answers every request and probe, on fresh connections.
    for _ in 0..20 {
        let client = reqwest::Client::new();
        let user = client
            .get(format!("{}/v3/user", first.url))
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), 200);
        let livez = client
            .get(format!("{}/livez", first.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(livez.status(), 200);
    }
}
