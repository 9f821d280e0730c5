//! Graceful shutdown of the real binary (docs/design.md#shutdown): SIGTERM under load drains, logs
//! out, exits 0; a second signal exits at once.
mod common;

use std::sync::Arc;

use common::*;

/// A configuration and its password in a directory of their own: the directory and the file.
fn write_config(fake_url: &str, extra: &str) -> (TempDir, std::path::PathBuf) {
    write_config_with_grace(fake_url, extra, "20s")
}

fn write_config_with_grace(
    fake_url: &str,
    extra: &str,
    grace: &str,
) -> (TempDir, std::path::PathBuf) {
    let dir = tempdir();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        config_toml(
            fake_url,
            &format!("shutdown_grace = \"{grace}\"\n{extra}"),
            &profile_from_file("password", ""),
        ),
    )
    .unwrap();
    (dir, path)
}

async fn wait_ready(admin: &str) {
    eventually(30, "readiness", || async {
        reqwest::get(format!("{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_fifty_requests_in_flight_drains_logs_out_and_exits_0() {
    let fake = Arc::new(fake().await);
    let (_dir, config) = write_config(&fake.url(), "");
    let mut binary = Binary::start(&config, &[]);
    wait_ready(&binary.admin).await;

    let client = reqwest::Client::new();
    // Fifty different reads, so that each is a request of its own upstream (not coalesced).
    let in_flight: Vec<_> = (0..50)
        .map(|i| {
            let request = client
                .get(format!("{}/v3/_sim/slow?ms=1500&n={i}", binary.url))
                .send();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    eventually(30, "all 50 requests reached the CMA", || async {
        fake.requests()
            .iter()
            .filter(|r| r.path == "/v3/_sim/slow")
            .count()
            == 50
    })
    .await;

    binary.signal("TERM");
    binary.wait_for_line("draining: not ready");
    // Draining: not ready, and no new connections.
    let readyz = reqwest::get(format!("{}/readyz", binary.admin))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    eventually(10, "the proxy port refuses new connections", || async {
        reqwest::Client::new()
            .get(format!("{}/v3/user", binary.url))
            .header("connection", "close")
            .send()
            .await
            .is_err()
    })
    .await;

    for request in in_flight {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let code = tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(
        fake.logouts(),
        fake.issued_tokens(),
        "the one session was logged out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once() {
    let fake = Arc::new(fake().await);
    let (_dir, config) = write_config(&fake.url(), "");
    let mut binary = Binary::start(&config, &[]);
    wait_ready(&binary.admin).await;
    let slow = reqwest::Client::new()
        .get(format!("{}/v3/_sim/slow?ms=60000", binary.url))
        .send();
    let slow = tokio::spawn(slow);
    eventually(30, "the slow request reached the CMA", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/slow")
    })
    .await;
    binary.signal("TERM");
    binary.wait_for_line("draining: not ready");
    // The subject here is time itself: a signal within a second of the first is the same one.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    binary.signal("INT");
    let code = tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(1), "a cut shutdown is not a clean exit");
    assert!(
        slow.await.unwrap().is_err(),
        "the 60 s request was cut, not awaited"
    );
}

/// `timeout -s INT` and a terminal's Ctrl-C signal the whole process group; with a wrapper that
/// forwards the signal too, the proxy gets it twice within a moment. That is one request to stop:
/// it drains (the request in flight is answered) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_delivered_twice_in_a_moment_counts_once() {
    let fake = Arc::new(fake().await);
    let (_dir, config) = write_config(&fake.url(), "");
    let mut binary = Binary::start(&config, &[]);
    wait_ready(&binary.admin).await;
    let slow = reqwest::Client::new()
        .get(format!("{}/v3/_sim/slow?ms=1500", binary.url))
        .send();
    let slow = tokio::spawn(slow);
    eventually(30, "the slow request reached the CMA", || async {
        fake.requests().iter().any(|r| r.path == "/v3/_sim/slow")
    })
    .await;
    binary.signal("INT");
    // Once the first has been taken (a second one before it would merge with it anyway).
    binary.wait_for_line("shutting down");
    binary.signal("INT");
    let code = tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "one stop, drained");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
}

/// A login still in flight at shutdown finishes (within the grace period) and its session is logged
/// out, rather than left among the account's 20.
#[tokio::test]
async fn a_login_in_flight_at_shutdown_is_waited_for_and_its_session_logged_out() {
    let fake = fake().await;
    fake.set_login_delay(Some(std::time::Duration::from_secs(1)));
    let mut proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    // `start` begins the first login at once.
    eventually(5, "the first login is in flight", || async {
        fake.login_requests() == 1
    })
    .await;
    assert!(proxy.shutdown().await);
    assert_eq!(fake.logins(), 1, "the login in flight finished first");
    assert_eq!(
        fake.logouts(),
        fake.issued_tokens(),
        "its session was logged out"
    );
}

/// What the access log says of a request that ends during a drain: a client that hangs up is
/// `client_gone` (499), as at any other time; a request still in flight when `shutdown_grace` ends
/// is cut off by the proxy, `shutting_down` (503), and its line is written before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_tells_a_client_that_left_from_a_request_it_cut() {
    use std::io::Write;
    let fake = Arc::new(fake().await);
    let (_dir, config) = write_config_with_grace(&fake.url(), "", "2s");
    let mut binary = Binary::start(&config, &[]);
    wait_ready(&binary.admin).await;
    let address = binary.url.trim_start_matches("http://").to_owned();
    // Two requests held by Contentstack until their clients hang up: a write and a read.
    let mut held = Vec::new();
    for (n, head) in [
        "POST /v3/_sim/gate HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}",
        "GET /v3/_sim/gate HTTP/1.1\r\nhost: a\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        eventually(10, "the request upstream", || async {
            fake.requests_to("/v3/_sim/gate") == n + 1
        })
        .await;
        held.push(stream);
    }

    binary.signal("TERM");
    binary.wait_for_line("draining: not ready");
    // The write's client leaves while the proxy drains.
    drop(held.remove(0));
    let left = binary.wait_for_line(" path=/v3/_sim/gate ");
    assert!(left.contains("method=POST"), "{left}");
    assert!(left.contains("status=499"), "{left}");
    assert!(left.contains("error=\"client_gone\""), "{left}");
    // The read's client stays; the grace ends and the proxy cuts the request.
    let cut = binary.wait_for_line(" path=/v3/_sim/gate ");
    assert!(cut.contains("method=GET"), "{cut}");
    assert!(cut.contains("status=503"), "{cut}");
    assert!(cut.contains("error=\"shutting_down\""), "{cut}");
    let code = tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM ends in a clean exit, cut requests or not"
    );
    drop(held);
}
