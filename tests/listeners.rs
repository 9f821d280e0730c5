//! Listeners beyond loopback TCP (issue 4): a unix socket with a file mode, and inbound TLS whose
//! certificate files are reloaded on change; a unix socket that a second instance cannot take over,
//! removed when the proxy exits (issue 10).
mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn unix_socket_listener_with_file_mode() {
    let fake = fake().await;
    let dir = tempdir();
    let socket = dir.join("proxy.sock");
    let toml = format!(
        "[server]\nlisten = \"unix:{}\"\nlisten_mode = \"0600\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n{}",
        socket.display(),
        fake.url(),
        profile(PASSWORD, "")
    );
    let config = cma_auth_proxy::Config::from_toml(&toml, Vec::new(), None).unwrap();
    let running = cma_auth_proxy::start(config).await.unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream
        .write_all(b"GET /v3/user HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains(EMAIL), "{answer}");
    // No peer address on a unix socket: nothing is appended to x-forwarded-for.
    let forwarded = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v3/user")
        .unwrap();
    assert!(forwarded.headers.get("x-forwarded-for").is_none());
    running.shutdown().await;
}

fn write_cert(dir: &std::path::Path) -> String {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = key.cert.pem();
    // Written aside and renamed in, as a Secret update would: never half a file.
    std::fs::write(dir.join("tls.crt.tmp"), &cert_pem).unwrap();
    std::fs::write(dir.join("tls.key.tmp"), key.signing_key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
    cert_pem
}

fn trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_tls_serves_https_and_picks_up_a_new_certificate() {
    let fake = fake().await;
    let dir = tempdir();
    let first = write_cert(&dir);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_toml(
            &fake.url(),
            "tls_cert_file = \"tls.crt\"\ntls_key_file = \"tls.key\"",
            &profile(PASSWORD, ""),
        ),
    )
    .unwrap();
    let proxy = proxy_from_file(&config).await;
    let port = proxy.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/v3/user");

    let response = trusting(&first).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        reqwest::get(proxy.url.clone() + "/v3/user").await.is_err(),
        "plain HTTP is not served"
    );

    let second = write_cert(&dir);
    eventually(15, "the new certificate is served", || async {
        trusting(&second).get(&url).send().await.is_ok()
    })
    .await;
    assert!(
        trusting(&first).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
    // The server counts a failed handshake when it sees the client give up, which can be just
    // after the client has returned its error.
    counter_reaching(
        &proxy.admin,
        r#"cma_auth_proxy_connection_limits_total{reason="tls_handshake_failed"}"#,
        1.0,
    )
    .await;
}

fn unix_config(socket: &std::path::Path, fake_url: &str) -> cma_auth_proxy::Config {
    let toml = format!(
        "[server]\nlisten = \"unix:{}\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{fake_url}\"\n{}",
        socket.display(),
        profile(PASSWORD, "")
    );
    cma_auth_proxy::Config::from_toml(&toml, Vec::new(), None).unwrap()
}

async fn get_user_over(socket: &std::path::Path) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(b"GET /v3/user HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

fn start_error(result: Result<cma_auth_proxy::Running, cma_auth_proxy::StartError>) -> String {
    match result {
        Ok(_) => panic!("a second instance started on the same socket"),
        Err(e) => cma_auth_proxy::error_text::error_chain_text(&e),
    }
}

#[tokio::test]
async fn a_live_unix_socket_is_not_taken_over_and_ours_is_removed_on_exit() {
    let fake = fake().await;
    let dir = tempdir();
    let socket = dir.join("proxy.sock");
    let first = cma_auth_proxy::start(unix_config(&socket, &fake.url()))
        .await
        .unwrap();

    let refused = start_error(cma_auth_proxy::start(unix_config(&socket, &fake.url())).await);
    assert!(refused.contains("another cma-auth-proxy?"), "{refused}");
    assert!(refused.contains(&socket.display().to_string()), "{refused}");
    assert!(get_user_over(&socket).await.starts_with("HTTP/1.1 200 OK"));

    first.shutdown().await;
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind after shutdown: {left:?}");

    // A socket file nobody accepts on (a crashed instance's) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let next = cma_auth_proxy::start(unix_config(&socket, &fake.url()))
        .await
        .unwrap();
    assert!(get_user_over(&socket).await.starts_with("HTTP/1.1 200 OK"));
    next.shutdown().await;
}

#[tokio::test]
async fn a_running_instance_keeps_its_socket_path_even_when_the_file_is_gone() {
    let fake = fake().await;
    let dir = tempdir();
    let socket = dir.join("proxy.sock");
    let first = cma_auth_proxy::start(unix_config(&socket, &fake.url()))
        .await
        .unwrap();
    // The moment between another starter's "nobody accepts here" and its bind: no socket file, but
    // the first instance still runs. The path stays the first instance's.
    std::fs::remove_file(&socket).unwrap();
    let refused = start_error(cma_auth_proxy::start(unix_config(&socket, &fake.url())).await);
    assert!(refused.contains("another cma-auth-proxy?"), "{refused}");
    first.shutdown().await;
}

/// A lock file planted as a symlink (in a directory others can write to) must not make the proxy
/// create or lock the file it points to.
#[tokio::test]
async fn a_lock_file_planted_as_a_symlink_is_refused() {
    let fake = fake().await;
    let dir = tempdir();
    let socket = dir.join("proxy.sock");
    let target = dir.join("somewhere-else");
    std::os::unix::fs::symlink(&target, dir.join("proxy.sock.lock")).unwrap();
    let toml = format!(
        "[server]\nlisten = \"unix:{}\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n{}",
        socket.display(),
        fake.url(),
        profile(PASSWORD, "")
    );
    let config = cma_auth_proxy::Config::from_toml(&toml, Vec::new(), None).unwrap();
    let Err(error) = cma_auth_proxy::start(config).await else {
        panic!("started with its lock file a symlink");
    };
    let error = cma_auth_proxy::error_text::error_chain_text(&error);
    assert!(error.contains("symbolic link"), "{error}");
    assert!(!target.exists(), "the symlink's target was created");
}
