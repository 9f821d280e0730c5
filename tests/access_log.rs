//! The access log (docs/design.md#observability), as the real binary writes it into a pipe: the
//! path that was judged and forwarded rather than the raw target, nothing a client sends able to
//! split or forge a line, durations to the microsecond, one spelling for "no profile", and no
//! colour codes outside a terminal.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// Sends `head` as it is (no client would send these targets) and reads the status line.
fn raw_request(proxy: &str, head: &[u8]) -> String {
    let address = proxy.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head).unwrap();
    let mut answer = vec![0; 512];
    let read = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The binary, logging into a pipe, in front of `fake` with the default profile; and the
/// directory of its configuration.
fn binary_in_front_of(fake: &cma_sim::FakeCma) -> (Binary, TempDir) {
    let dir = tempdir();
    let config = dir.join("config.toml");
    let toml = config_toml(&fake.url(), "", &profile(PASSWORD, ""));
    std::fs::write(&config, toml).unwrap();
    (Binary::start(&config, &[]), dir)
}

/// The value of `key=` in a text log line, up to the next space.
fn field<'l>(line: &'l str, key: &str) -> &'l str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[start..].split(' ').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_the_judged_path_and_nothing_a_client_can_forge() {
    let fake = fake().await;
    let (mut proxy, _dir) = binary_in_front_of(&fake);

    // Judged, and forwarded, as /x/v3/user-session (which Contentstack does not know): what the
    // log says.
    let status = raw_request(
        &proxy.url,
        b"DELETE //x/v3/user-session HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    assert!(status.contains(" 404 "), "{status}");
    let line = proxy.wait_for_line("status=404");
    assert_eq!(field(&line, "path"), "/x/v3/user-session", "{line}");

    // A bidi override, a quote that would end a quoted value, a fake field: judged, they are
    // escaped like any byte outside a path's alphabet.
    raw_request(
        &proxy.url,
        "GET /v3/a\u{202e}b HTTP/1.1\r\nhost: a\r\n\r\n".as_bytes(),
    );
    raw_request(
        &proxy.url,
        b"GET /v3/x\"status=200 HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    // Refused before it could be judged (an encoded `/`): logged as received, escaped.
    let status = raw_request(
        &proxy.url,
        "GET /v3/a%2Fb\u{202e}\"status=200 HTTP/1.1\r\nhost: a\r\n\r\n".as_bytes(),
    );
    assert!(status.contains(" 400 "), "{status}");
    let unknown = reqwest::Client::new()
        .get(format!("{}/v3/user", proxy.url))
        .header("x-cma-profile", "nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let ok = reqwest::get(format!("{}/v3/user", proxy.url))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let served = proxy.wait_for_line("status=200");
    let log = proxy.log_text();

    assert!(!log.contains('\u{1b}'), "colour codes in a pipe:\n{log}");
    assert!(!log.contains('\u{202e}'), "{log}");
    let requests: Vec<&str> = log.lines().filter(|l| l.contains(" request ")).collect();
    for path in [
        "/v3/a%E2%80%AEb",
        "/v3/x%22status=200",
        "/v3/a%2Fb\\u{202e}\\\"status=200",
    ] {
        assert!(
            requests.iter().any(|l| field(l, "path") == path),
            "{path} in {requests:#?}"
        );
    }
    for line in &requests {
        // Exactly one status per line: no forged field.
        assert_eq!(line.matches(" status=").count(), 1, "{line}");
        let duration = field(line, "duration_ms");
        let decimals = duration.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{line}");
    }
    let refused = requests
        .iter()
        .find(|l| l.contains("status=400") && l.contains("path=/v3/user"))
        .expect("the unknown profile's line");
    assert_eq!(field(refused, "profile"), "\"none\"", "{refused}");
    assert_eq!(field(&served, "profile"), "\"default\"", "{served}");
    let upstream = field(&served, "upstream_ms");
    assert!(
        upstream.split_once('.').map_or(0, |(_, d)| d.len()) <= 3,
        "{served}"
    );
    // The metrics spell it the same way (the unknown profile, the encoded `/`).
    let counted = metric(
        &proxy.admin,
        r#"cma_auth_proxy_requests_total{profile="none",method="GET",status="400"}"#,
    )
    .await;
    assert_eq!(counted, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_goes_away_still_gets_its_line() {
    let fake = fake().await;
    let (mut proxy, _dir) = binary_in_front_of(&fake);
    let address = proxy.url.trim_start_matches("http://").to_owned();
    // A read that may be shared and a write: each held by Contentstack until its client hangs up.
    for (n, head) in [
        "GET /v3/_sim/gate HTTP/1.1\r\nhost: a\r\n\r\n",
        "POST /v3/_sim/gate HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}",
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        eventually(10, "the request upstream", || async {
            fake.requests_to("/v3/_sim/gate") == n + 1
        })
        .await;
        drop(stream);
        let line = proxy.wait_for_line("status=499");
        assert_eq!(field(&line, "method"), &head[..head.find(' ').unwrap()]);
        assert_eq!(field(&line, "path"), "/v3/_sim/gate", "{line}");
        assert_eq!(field(&line, "error"), "\"client_gone\"", "{line}");
        assert_eq!(field(&line, "profile"), "\"default\"", "{line}");
    }
}
