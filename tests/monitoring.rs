//! What monitoring reads (docs/design.md#observability): `/metrics` in the format the scraper
//! asked for, proven by strict parsers that follow the declared type (`promtool check metrics` for
//! the text format, `prometheus_client`'s OpenMetrics parser for OpenMetrics); series an alert
//! needs, present at 0 from the start and for a profile a reload adds; and the alert rules and the
//! dashboard of `deploy/monitoring/`, which may use only metric names a live proxy exports.
//!
//! The external checkers are skipped with a loud message where they are not installed, except
//! under `CI`, where a missing one fails the test (`.ci/run` installs them).
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::{config_toml, eventually, fake, proxy_from_file, tempdir};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

/// `program` if it runs; otherwise `None` after saying so loudly, or a failure under `CI`.
fn checker(program: &str, args: &[&str], what: &str) -> Option<String> {
    let found = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(program.to_owned());
    }
    common::skip_unless_ci(
        "a check of tests/monitoring.rs",
        &format!("{what} is not installed (.ci/run installs it)"),
    );
    None
}

/// Runs `program args` with `input` on its standard input; panics with its output unless it
/// succeeds.
fn run_with_input(program: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

async fn scrape(admin: &str, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{admin}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// A proxy that has answered a request, logged in, and refused one, so that every kind of family
/// has samples. Its fleet store is configured but refuses connections (nothing listens on port
/// 1), so that the store's families have samples too, without a Redis.
async fn busy_proxy() -> (cma_sim::FakeCma, common::Proxy) {
    let fake = fake().await;
    let store =
        "[token_store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nallow_plaintext = true\n";
    let proxy = common::proxy(
        &fake,
        "",
        &format!(
            "{store}{}",
            common::profile(common::PASSWORD, "[profiles.default.rate_limit]\n")
        ),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    assert_eq!(
        proxy.get("/v3/user-session").send().await.unwrap().status(),
        403
    );
    (fake, proxy)
}

#[tokio::test]
async fn metrics_come_in_the_format_the_scraper_accepts_and_strict_parsers_read_them() {
    let (_fake, proxy) = busy_proxy().await;

    let (content_type, open) = scrape(&proxy.admin, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(content_type, OPENMETRICS);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE cma_auth_proxy_requests counter\n"));

    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (content_type, text) = scrape(&proxy.admin, accept).await;
        assert_eq!(content_type, TEXT, "{accept:?}");
        // The text format types a counter under its sample's name.
        assert!(
            text.contains("# TYPE cma_auth_proxy_requests_total counter\n")
                && text.contains("# HELP cma_auth_proxy_requests_total "),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    let (_, text) = scrape(&proxy.admin, None).await;
    if let Some(promtool) = checker("promtool", &["--version"], "promtool (Debian: prometheus)") {
        // promtool reads the exposition from its standard input; lint problems fail it too.
        run_with_input(&promtool, &["check", "metrics"], &text);
    }
    let python = std::env::var("METRICS_PYTHON").unwrap_or_else(|_| "python3".into());
    let parser = "from prometheus_client.openmetrics.parser import text_string_to_metric_families";
    if let Some(python) = checker(
        &python,
        &["-c", parser],
        "Python's prometheus_client (pip; METRICS_PYTHON names the interpreter)",
    ) {
        let program = format!(
            "import sys\n{parser}\nfamilies = list(text_string_to_metric_families(sys.stdin.read()))\n\
             print(sum(1 for f in families if f.type == 'counter'), 'counters')"
        );
        let printed = run_with_input(&python, &["-c", &program], &open);
        // Read as counters, not as untyped families: the parser followed the declared types.
        let counters: u32 = printed.split(' ').next().unwrap().trim().parse().unwrap();
        assert!(counters >= 10, "{printed}");
    }
}

/// The series that alerts take `increase()` of are there at 0 before their first event, and so
/// are the profile's readiness and backoff; a profile added by a reload gets its own at once.
#[tokio::test]
async fn series_an_alert_needs_exist_at_zero_from_the_start() {
    let fake = fake().await;
    let dir = tempdir();
    let path = dir.join("config.toml");
    let config = |profiles: &str| config_toml(&fake.url(), "", profiles);
    let first = common::profile(common::PASSWORD, "[profiles.default.rate_limit]\n");
    std::fs::write(&path, config(&first)).unwrap();
    let proxy = proxy_from_file(&path).await;
    let (_, text) = scrape(&proxy.admin, None).await;
    for series in [
        r#"cma_auth_proxy_logins_total{profile="default",outcome="rejected"} 0"#,
        r#"cma_auth_proxy_logins_total{profile="default",outcome="transient"} 0"#,
        r#"cma_auth_proxy_reauth_total{profile="default",trigger="401"} 0"#,
        r#"cma_auth_proxy_reauth_total{profile="default",trigger="rotate"} 0"#,
        r#"cma_auth_proxy_reauth_backoffs_total{profile="default",trigger="401"} 0"#,
        r#"cma_auth_proxy_logouts_total{profile="default"} 0"#,
        r#"cma_auth_proxy_rate_limit_waits_total{profile="default"} 0"#,
        r#"cma_auth_proxy_config_reloads_total{outcome="error"} 0"#,
        r#"cma_auth_proxy_config_reloads_total{outcome="success"} 0"#,
        r#"cma_auth_proxy_replays_total{outcome="replayed"} 0"#,
        r#"cma_auth_proxy_replays_total{outcome="login_failed"} 0"#,
        r#"cma_auth_proxy_denied_total{reason="policy_denied"} 0"#,
        r#"cma_auth_proxy_denied_total{reason="rate_limited"} 0"#,
        r#"cma_auth_proxy_login_backoff_seconds{profile="default"} 0"#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    assert!(
        text.contains(r#"cma_auth_proxy_profile_ready{profile="default"} "#),
        "{text}"
    );

    let second = "[profiles.second]\nemail = \"other@example.com\"\npassword = \"x\"\n";
    std::fs::write(&path, config(&format!("{first}{second}"))).unwrap();
    eventually(10, "the reloaded profile's series", || async {
        let (_, text) = scrape(&proxy.admin, None).await;
        text.contains(r#"cma_auth_proxy_logins_total{profile="second",outcome="rejected"} 0"#)
            || text
                .contains(r#"cma_auth_proxy_logins_total{profile="second",outcome="rejected"} 1"#)
    })
    .await;
    let (_, text) = scrape(&proxy.admin, None).await;
    assert!(
        text.contains(r#"cma_auth_proxy_profile_ready{profile="second"} "#),
        "{text}"
    );
}

/// Metric names in `text` (PromQL or a dashboard), by their prefix.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cma_auth_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names a scrape declares, with the sample names of histograms.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_use_only_series_the_proxy_exports() {
    let (_fake, proxy) = busy_proxy().await;
    let (_, text) = scrape(&proxy.admin, None).await;
    let exported = exported_names(&text);

    let rules = std::fs::read_to_string(format!("{MONITORING}/alerts.yml")).unwrap();
    let alerts = rules.matches("- alert: ").count();
    assert!(alerts > 0);
    assert_eq!(
        rules.matches("\n          runbook: ").count(),
        alerts,
        "every alert has a runbook annotation"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{MONITORING}/dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    for query in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = query["query"].as_str() {
            expressions.push_str(query);
        }
    }
    for (file, text) in [("alerts.yml", &rules), ("dashboard.json", &expressions)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses {unknown:?}, which the proxy does not export"
        );
    }

    if let Some(promtool) = checker("promtool", &["--version"], "promtool (Debian: prometheus)") {
        let out = Command::new(&promtool)
            .args(["check", "rules", &format!("{MONITORING}/alerts.yml")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
