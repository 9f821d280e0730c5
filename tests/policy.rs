//! Policy end to end (issue 4): the documented policy examples against the simulated CMA, bypass
//! spellings of deny rules and of the session endpoint sent byte for byte, profiles as a token broker
//! with one account each, and client credentials in `reject` mode. What is refused must never appear
//! in the simulator's request log.
mod common;

use std::time::Duration;

use cma_sim::{Account, DEMO_API_KEY, FakeCma, Recorded};
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An account the tests use to put content in the simulator directly, not through the proxy.
const SEED_EMAIL: &str = "seed@example.com";
const SEED_PASSWORD: &str = "seed password";

/// Sends one HTTP/1.1 request exactly as written and returns its status and the proxy's error
/// reason (`""` for an upstream answer). HTTP clients such as reqwest resolve `.`/`..` and `%2e`
/// before sending, which would hide the spellings under test.
async fn raw(proxy: &Proxy, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let answer = exchange(proxy, method, target, headers).await;
    (answer.status, answer.reason)
}

/// What [`exchange`] read back.
struct Answer {
    status: u16,
    /// The proxy's error reason, `""` for an upstream answer.
    reason: String,
    body: String,
}

/// Sends one HTTP/1.1 request exactly as written and reads the whole answer.
async fn exchange(proxy: &Proxy, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let addr = proxy.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let reason = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-cma-auth-proxy-error")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Answer {
        status,
        reason,
        body,
    }
}

/// Asserts the proxy refused a request itself with `status` and `reason`.
async fn assert_refused(response: reqwest::Response, status: u16, reason: &str, what: &str) {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response.headers()["x-cma-auth-proxy-error"],
        reason,
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["cma_auth_proxy"][0], reason, "{what}");
}

/// Requests the simulator received, except logins and what the seed account sent.
fn forwarded(fake: &FakeCma) -> Vec<Recorded> {
    let seed_tokens = fake.live_sessions(SEED_EMAIL);
    fake.requests()
        .into_iter()
        .filter(|r| !(r.method == Method::POST && r.path == "/v3/user-session"))
        .filter(|r| {
            r.headers
                .get("authtoken")
                .and_then(|v| v.to_str().ok())
                .is_none_or(|t| !seed_tokens.iter().any(|s| s == t))
        })
        .collect()
}

fn method_and_path(r: &Recorded) -> (String, String) {
    (r.method.to_string(), r.path.clone())
}

fn header<'r>(r: &'r Recorded, name: &str) -> Option<&'r str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Creates the content type `blog` in a stack, directly on the simulator.
async fn seed_blog(fake: &FakeCma, api_key: &str) {
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{}/v3/user-session", fake.url()))
        .json(&json!({ "user": { "email": SEED_EMAIL, "password": SEED_PASSWORD } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["user"]["authtoken"].as_str().unwrap();
    let created = client
        .post(format!("{}/v3/content_types", fake.url()))
        .header("authtoken", token)
        .header("api_key", api_key)
        .json(
            &json!({ "content_type": { "title": "Blog", "uid": "blog", "schema": [
            { "uid": "title", "data_type": "text", "mandatory": true, "unique": true },
        ] } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
}

fn simulator(stacks: &[&str], accounts: Vec<Account>) -> cma_sim::FakeCmaBuilder {
    let mut builder = FakeCma::builder()
        .account(Account::new(SEED_EMAIL, SEED_PASSWORD))
        .without_rate_limit();
    for account in accounts {
        builder = builder.account(account);
    }
    for key in stacks {
        builder = builder.stack(key, key);
    }
    builder
}

fn with_policy(policy: &str) -> String {
    format!("{}[policy]\n{policy}\n", profile(PASSWORD, ""))
}

#[tokio::test]
async fn read_only_sidecar_forwards_reads_and_refuses_everything_else() {
    let fake = fake_with(simulator(&[], vec![account()])).await;
    seed_blog(&fake, DEMO_API_KEY).await;
    let proxy = proxy(&fake, "", &with_policy(r#"allow = ["GET /v3/**"]"#)).await;

    for path in ["/v3/user", "/v3/content_types", "/v3/content_types/blog"] {
        let response = proxy
            .get(path)
            .header("api_key", DEMO_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
    }
    let writes = [
        (Method::POST, "/v3/content_types"),
        (Method::PUT, "/v3/content_types/blog"),
        (Method::DELETE, "/v3/content_types/blog"),
        (Method::PATCH, "/v3/content_types/blog"),
        (Method::POST, "/v3/assets"),
        (Method::DELETE, "/v3/assets/blt0000000000000000"),
        (Method::POST, "/v3/content_types/blog/entries"),
    ];
    for (method, path) in writes {
        let response = proxy
            .request(method.clone(), path)
            .header("api_key", DEMO_API_KEY)
            .json(&json!({ "content_type": { "uid": "x", "title": "X" } }))
            .send()
            .await
            .unwrap();
        assert_refused(response, 403, "policy_denied", &format!("{method} {path}")).await;
    }
    // Allow rules are exact: neither a lower-case method nor HEAD is GET.
    for method in ["delete", "post", "HEAD"] {
        let (status, reason) = raw(&proxy, method, "/v3/content_types/blog", &[]).await;
        assert_eq!(
            (status, reason.as_str()),
            (403, "policy_denied"),
            "{method}"
        );
    }

    let seen: Vec<_> = forwarded(&fake).iter().map(method_and_path).collect();
    let get = |p: &str| ("GET".to_owned(), p.to_owned());
    assert_eq!(
        seen,
        [
            get("/v3/user"),
            get("/v3/content_types"),
            get("/v3/content_types/blog")
        ]
    );
}

/// A multipart body as the SDKs send an asset upload.
fn asset_form(title: &str) -> (String, Vec<u8>) {
    let boundary = "policy-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"asset[title]\"\r\n\r\n{title}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"asset[upload]\"; filename=\"logo.png\"\r\n\
         Content-Type: image/png\r\n\r\n\x7fPNG fake\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[tokio::test]
async fn scoped_sidecar_touches_only_entries_and_assets_of_its_stack() {
    let fake = fake_with(simulator(&["blt_a", "blt_b"], vec![account()])).await;
    seed_blog(&fake, "blt_a").await;
    seed_blog(&fake, "blt_b").await;
    let rest = format!(
        "{}[policy]\nallow = [{}]\n",
        profile(PASSWORD, r#"stacks = ["blt_a"]"#),
        [
            "GET /v3/content_types",
            "GET /v3/content_types/*",
            "* /v3/content_types/*/entries",
            "* /v3/content_types/*/entries/**",
            "* /v3/assets",
            "* /v3/assets/**",
        ]
        .map(|r| format!("{r:?}"))
        .join(", ")
    );
    let proxy = proxy(&fake, "", &rest).await;
    let call = |method: Method, path: &str, api_key: &str| {
        proxy.request(method, path).header("api_key", api_key)
    };

    // What the sidecar is for: entries and assets of blt_a.
    let entries = "/v3/content_types/blog/entries";
    let mut expected = Vec::new();
    let mut allowed =
        async |method: Method, path: &str, body: Option<(String, Vec<u8>)>, status| {
            let (content_type, body) =
                body.unwrap_or_else(|| ("application/json".into(), Vec::new()));
            let response = call(method.clone(), path, "blt_a")
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
            expected.push((method.to_string(), path.to_owned()));
            response.json::<Value>().await.unwrap()
        };
    let json = |v: Value| Some(("application/json".to_owned(), v.to_string().into_bytes()));
    allowed(Method::GET, "/v3/content_types", None, 200).await;
    allowed(Method::GET, "/v3/content_types/blog", None, 200).await;
    let created = allowed(
        Method::POST,
        entries,
        json(json!({ "entry": { "title": "Hello" } })),
        201,
    )
    .await;
    let entry = format!("{entries}/{}", created["entry"]["uid"].as_str().unwrap());
    allowed(Method::GET, entries, None, 200).await;
    let update = json(json!({ "entry": { "title": "Hello again" } }));
    allowed(Method::PUT, &entry, update, 200).await;
    allowed(Method::GET, &entry, None, 200).await;
    allowed(Method::DELETE, &entry, None, 200).await;
    let uploaded = allowed(Method::POST, "/v3/assets", Some(asset_form("Logo")), 201).await;
    let asset = format!("/v3/assets/{}", uploaded["asset"]["uid"].as_str().unwrap());
    allowed(Method::GET, "/v3/assets", None, 200).await;
    let retitle = json(json!({ "asset": { "title": "New logo" } }));
    allowed(Method::PUT, &asset, retitle, 200).await;
    allowed(Method::DELETE, &asset, None, 200).await;

    // Content types themselves, other endpoints and other stacks are out of reach.
    for (method, path, api_key) in [
        (Method::POST, "/v3/content_types", "blt_a"),
        (Method::PUT, "/v3/content_types/blog", "blt_a"),
        (Method::DELETE, "/v3/content_types/blog", "blt_a"),
        (Method::GET, "/v3/content_types/blog/export", "blt_a"),
        (Method::GET, "/v3/stacks", "blt_a"),
        (Method::GET, "/v3/user", "blt_a"),
        (Method::GET, "/v3/environments", "blt_a"),
        (Method::GET, "/v3/content_types", "blt_b"),
        (Method::GET, entries, "blt_b"),
        (Method::POST, entries, "blt_b"),
        (Method::GET, "/v3/assets", "blt_b"),
        (Method::DELETE, "/v3/content_types/blog", "blt_b"),
    ] {
        let response = call(method.clone(), path, api_key)
            .header("content-type", "application/json")
            .body(r#"{"entry":{"title":"x"},"content_type":{"uid":"x","title":"x"}}"#)
            .send()
            .await
            .unwrap();
        assert_refused(
            response,
            403,
            "policy_denied",
            &format!("{method} {path} {api_key}"),
        )
        .await;
    }

    let seen = forwarded(&fake);
    assert_eq!(
        seen.iter().map(method_and_path).collect::<Vec<_>>(),
        expected
    );
    assert!(seen.iter().all(|r| header(r, "api_key") == Some("blt_a")));
}

#[tokio::test]
async fn deny_rules_hold_against_bypass_spellings() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &with_policy(r#"deny = ["DELETE /v3/content_types/**"]"#),
    )
    .await;
    let key = [("api_key", DEMO_API_KEY)];
    for (method, target) in [
        ("DELETE", "/v3/content_types/blog"),
        ("DELETE", "/v3/content_types/blog/"),
        ("DELETE", "/v3/%63ontent_types/blog"),
        ("DELETE", "/v3/%63ONTENT_TYPES/blog"),
        ("DELETE", "/v3//content_types/blog"),
        ("DELETE", "//v3/content_types//blog"),
        ("DELETE", "/V3/CONTENT_TYPES/blog"),
        ("DELETE", "/v3/./content_types/blog"),
        ("DELETE", "/v3/%2e/content_types/blog"),
        ("DELETE", "/v3/x/../content_types/blog"),
        ("DELETE", "/v3/x/%2E%2e/content_types/blog"),
        ("DELETE", "/v3/stacks;x=/../content_types/blog"),
        ("DELETE", "/v3/content_types;x=1/blog"),
        ("DELETE", "/v3/content_types%3Bx/blog"),
        ("DELETE", "/v3/content_types/blog.json"),
        ("delete", "/v3/content_types/blog"),
        ("Delete", "/v3/content_types/blog"),
    ] {
        let (status, reason) = raw(&proxy, method, target, &key).await;
        assert_eq!(
            (status, reason.as_str()),
            (403, "policy_denied"),
            "{method} {target}"
        );
    }
    // Spellings servers read in more than one way are refused outright.
    for target in [
        "/v3/content_types%2fblog",
        "/v3/content_types%5Cblog",
        "/v3/content_types\\blog",
        "/v3/%2563ontent_types/blog",
        "/v3/x/%252e%252e/content_types/blog",
        "/v3/x//../content_types/blog",
        "/v3/x/..;/content_types/blog",
        "/v3/%c0%ae%c0%ae/v3/content_types/blog",
        "/v3/content_types./blog",
        "/v3/content_types%20/blog",
        "/v3/content_types/blog%00",
        "/v3/content_types/blog%0d%0a",
        "/v3/../../v3/content_types/blog",
        // An encoded `?` or `#`: a server that decodes the target before parsing it reads the path
        // as ending there.
        "/v3/content_types/blog%3F",
        "/v3/content_types/blog%3f",
        "/v3/content_types/blog%23x",
    ] {
        let (status, reason) = raw(&proxy, "DELETE", target, &key).await;
        assert_eq!(
            (status, reason.as_str()),
            (400, "bad_request"),
            "DELETE {target}"
        );
    }
    // What the rule does not name still goes through.
    let (status, reason) = raw(&proxy, "GET", "/v3/content_types", &key).await;
    assert_eq!((status, reason.as_str()), (200, ""));
    let (status, reason) = raw(&proxy, "DELETE", "/v3/assets/blt0000000000000000", &key).await;
    assert_eq!(
        (status, reason.as_str()),
        (422, ""),
        "the simulator's answer"
    );

    let seen: Vec<_> = forwarded(&fake).iter().map(method_and_path).collect();
    assert_eq!(
        seen,
        [
            ("GET".to_owned(), "/v3/content_types".to_owned()),
            (
                "DELETE".to_owned(),
                "/v3/assets/blt0000000000000000".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn session_endpoint_is_refused_in_spellings_clients_would_normalize() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    assert_eq!(raw(&proxy, "GET", "/v3/user", &[]).await.0, 200);
    let session_requests = || {
        fake.requests()
            .iter()
            .filter(|r| r.path.to_ascii_lowercase().contains("session"))
            .count()
    };
    let before = session_requests();
    for target in [
        "/v3/./user-session",
        "/v3/%2e/user-session",
        "/v3/x/../user-session",
        "/v3/x/%2e%2e/user-session",
        "/v3/stacks;x=/../user-session",
        "/v3/user-session%3Bx",
        "/v3/user-session.json",
        "/v3/User-Session",
        "/v2/user-session",
        "/v3/user-session//..",
        "/v3/%2575ser-session",
        "/v3/user-session.",
        "/v3/user-session%2f",
        "/v3/..;/v3/user-session",
        "/v3/user-session/../user-session",
        "/v3/user-session%3F",
        "/v3/user-session%3f.json",
        "/v3/user-session%23",
    ] {
        for method in ["POST", "DELETE", "GET", "delete"] {
            let (status, reason) = raw(&proxy, method, target, &[]).await;
            assert!(
                matches!(
                    (status, reason.as_str()),
                    (403, "policy_denied") | (400, "bad_request")
                ),
                "{method} {target}: {status} {reason}"
            );
        }
    }
    // A fragment is cut before the check and before forwarding alike.
    let (status, _) = raw(&proxy, "GET", "/v3/user#/../../v3/user-session", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(fake.requests().last().unwrap().path, "/v3/user");

    assert_eq!(
        session_requests(),
        before,
        "a refused request reached the CMA"
    );
    assert_eq!(fake.login_requests(), 1);
    assert!(fake.logouts().is_empty());
}

const ALPHA: &str = "alpha@example.com";
const BETA: &str = "beta@example.com";

fn two_profiles(alpha_password: &str) -> String {
    format!(
        "[profiles.alpha]\nemail = \"{ALPHA}\"\npassword = \"{alpha_password}\"\nstacks = [\"blt_a\"]\n\
         [profiles.beta]\nemail = \"{BETA}\"\npassword = \"beta password\"\nstacks = [\"blt_b\"]\n"
    )
}

fn two_accounts() -> Vec<Account> {
    vec![
        Account::new(ALPHA, "alpha password"),
        Account::new(BETA, "beta password").in_org("blt0other0org"),
    ]
}

#[tokio::test]
async fn profiles_broker_one_token_per_account() {
    let fake = fake_with(simulator(&["blt_a", "blt_b"], two_accounts())).await;
    let proxy = proxy(&fake, "", &two_profiles("alpha password")).await;

    // Cold start, both profiles at once: each logs in once, by header or by api_key.
    let client = proxy.client.clone();
    let url = proxy.url.clone();
    // Each request a target of its own, so that none shares another's upstream request.
    let statuses = concurrently(16, |i| {
        let request = match i % 4 {
            0 => client
                .get(format!("{url}/v3/user?n={i}"))
                .header("x-cma-profile", "alpha"),
            1 => client
                .get(format!("{url}/v3/user?n={i}"))
                .header("x-cma-profile", "beta"),
            2 => client
                .get(format!("{url}/v3/content_types?n={i}"))
                .header("api_key", "blt_a"),
            _ => client
                .get(format!("{url}/v3/content_types?n={i}"))
                .header("api_key", "blt_b"),
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["user"]["email"].as_str().map(str::to_owned))
        }
    })
    .await;
    for (i, (status, email)) in statuses.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}");
        let expected = [Some(ALPHA), Some(BETA), None, None][i % 4];
        assert_eq!(
            email.as_deref(),
            expected,
            "x-cma-profile picks the account"
        );
    }
    for email in [ALPHA, BETA] {
        let logins: Vec<_> = fake
            .login_attempts()
            .into_iter()
            .filter(|a| a.email == email)
            .collect();
        assert_eq!(logins.len(), 1, "{email}");
        assert_eq!(logins[0].status, 200);
    }
    let alpha_token = fake.live_sessions(ALPHA);
    let beta_token = fake.live_sessions(BETA);
    assert_eq!((alpha_token.len(), beta_token.len()), (1, 1));
    assert_ne!(alpha_token, beta_token);

    // Each request carried its own profile's token; the routing header never left the proxy.
    let seen = forwarded(&fake);
    assert_eq!(seen.len(), 16);
    for r in &seen {
        let token = header(r, "authtoken").unwrap();
        let by_header = header(r, "x-cma-profile");
        assert_eq!(by_header, None, "x-cma-profile was forwarded");
        let expected = if header(r, "api_key") == Some("blt_b") {
            &beta_token[0]
        } else if header(r, "api_key") == Some("blt_a") {
            &alpha_token[0]
        } else {
            continue;
        };
        assert_eq!(token, expected, "{} {:?}", r.path, header(r, "api_key"));
    }
    // `/v3/user` answers for the account whose token was sent.
    for (name, email) in [("alpha", ALPHA), ("beta", BETA)] {
        let user: Value = proxy
            .get("/v3/user")
            .header("x-cma-profile", name)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(user["user"]["email"], email);
    }

    // Stacks route and restrict.
    let reached = forwarded(&fake).len();
    for (headers, status, reason) in [
        (vec![("api_key", "blt_c")], 403, "policy_denied"),
        (
            vec![("x-cma-profile", "alpha"), ("api_key", "blt_b")],
            403,
            "policy_denied",
        ),
        (vec![], 400, "bad_request"),
        (vec![("x-cma-profile", "gamma")], 400, "bad_request"),
    ] {
        let mut request = proxy.get("/v3/content_types");
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        assert_refused(
            request.send().await.unwrap(),
            status,
            reason,
            &format!("{headers:?}"),
        )
        .await;
    }
    assert_eq!(
        forwarded(&fake).len(),
        reached,
        "a refused request reached the CMA"
    );
}

#[tokio::test]
async fn a_profile_with_rejected_credentials_leaves_the_other_serving() {
    let fake = fake_with(simulator(&["blt_a", "blt_b"], two_accounts())).await;
    let proxy = proxy(&fake, "", &two_profiles("wrong password")).await;
    for round in 0..3 {
        let alpha = proxy
            .get("/v3/content_types")
            .header("api_key", "blt_a")
            .send()
            .await
            .unwrap();
        assert!(alpha.headers().contains_key("retry-after"));
        assert_refused(
            alpha,
            503,
            "login_rejected",
            &format!("alpha, round {round}"),
        )
        .await;
        let beta = proxy
            .get("/v3/content_types")
            .header("api_key", "blt_b")
            .send()
            .await
            .unwrap();
        assert_eq!(beta.status(), 200, "beta, round {round}");
    }
    let attempts = |email: &str| {
        fake.login_attempts()
            .into_iter()
            .filter(|a| a.email == email)
            .map(|a| a.error_code)
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts(ALPHA), [Some(104)], "one attempt, then wait");
    assert_eq!(attempts(BETA), [None]);
    assert!(!fake.is_locked(ALPHA));
    let seen = forwarded(&fake);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| header(r, "api_key") == Some("blt_b")));

    let metrics = metrics(&proxy.admin).await;
    let logins = |profile: &str, outcome: &str| {
        metrics
            .get(&format!(
                r#"cma_auth_proxy_logins_total{{profile="{profile}",outcome="{outcome}"}}"#
            ))
            .copied()
    };
    assert_eq!(logins("alpha", "rejected"), Some(1.0));
    assert_eq!(
        logins("alpha", "success"),
        Some(0.0),
        "present from the start"
    );
    assert_eq!(logins("beta", "success"), Some(1.0));
}

#[tokio::test]
async fn reject_mode_refuses_every_client_credential_and_serves_clean_requests() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &with_policy(r#"client_credentials = "reject""#)).await;
    for (name, value) in [
        ("authorization", "Bearer client-oauth-token"),
        ("authorization", "client-management-token"),
        ("AuthToken", "client-token"),
    ] {
        let response = proxy
            .get("/v3/user")
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_refused(response, 401, "client_credentials_rejected", name).await;
    }
    let response = proxy.get("/v3/user").send().await.unwrap();
    assert_eq!(response.status(), 200);

    let seen = forwarded(&fake);
    assert_eq!(seen.len(), 1, "only the clean request reached the CMA");
    assert_eq!(
        header(&seen[0], "authtoken"),
        Some(fake.live_sessions(EMAIL)[0].as_str())
    );
    assert!(seen[0].headers.get("authorization").is_none());
}

/// The last request the simulator received other than a login.
fn last_forwarded(fake: &FakeCma) -> Recorded {
    forwarded(fake)
        .pop()
        .expect("a request reached the simulator")
}

/// Method, path and query as the simulator received them.
fn received(r: &Recorded) -> (String, String, Option<String>) {
    (r.method.to_string(), r.path.clone(), r.query.clone())
}

fn owned(method: &str, path: &str, query: Option<&str>) -> (String, String, Option<String>) {
    (method.to_owned(), path.to_owned(), query.map(str::to_owned))
}

#[tokio::test]
async fn a_leading_double_slash_is_judged_and_forwarded_as_one_path() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    // A server that reads `//x/v3/user-session` as authority `x` plus a path sees a logout of the
    // shared session: what goes upstream must be the path the policy judged, `/x/v3/user-session`.
    let (status, reason) = raw(&proxy, "DELETE", "//x/v3/user-session", &[]).await;
    assert_eq!(
        (status, reason.as_str()),
        (404, ""),
        "the simulator's answer"
    );
    assert_eq!(
        received(&last_forwarded(&fake)),
        owned("DELETE", "/x/v3/user-session", None)
    );
    // The method is judged and sent in one spelling too.
    let (status, _) = raw(&proxy, "get", "/v3//user/?include=x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        received(&last_forwarded(&fake)),
        owned("GET", "/v3/user", Some("include=x"))
    );
    assert!(fake.logouts().is_empty());
    assert_eq!(fake.live_sessions(EMAIL).len(), 1);
}

#[tokio::test]
async fn a_deny_rule_judges_the_path_that_is_forwarded() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &with_policy(r#"deny = ["DELETE /v3/content_types/**"]"#),
    )
    .await;
    let key = [("api_key", DEMO_API_KEY)];
    let (status, _) = raw(&proxy, "DELETE", "//x/v3/content_types/blog", &key).await;
    assert_eq!(status, 404, "the simulator's answer to /x/v3/…");
    let (status, reason) = raw(&proxy, "delete", "//v3/content_types/blog", &key).await;
    assert_eq!((status, reason.as_str()), (403, "policy_denied"));
    let (status, _) = raw(&proxy, "delete", "/v3/assets/./blt0000000000000000", &key).await;
    assert_eq!(status, 422, "the simulator's answer");
    let seen: Vec<_> = forwarded(&fake).iter().map(received).collect();
    assert_eq!(
        seen,
        [
            owned("DELETE", "/x/v3/content_types/blog", None),
            owned("DELETE", "/v3/assets/blt0000000000000000", None),
        ]
    );
}

#[tokio::test]
async fn an_allow_rule_admits_only_the_path_that_is_forwarded() {
    let fake = fake_with(simulator(&[], vec![account()])).await;
    seed_blog(&fake, DEMO_API_KEY).await;
    let proxy = proxy(
        &fake,
        "",
        &with_policy(r#"allow = ["GET /v3/content_types/*/entries"]"#),
    )
    .await;
    let key = [("api_key", DEMO_API_KEY)];
    let target = "/v3/content_types/blog/entries/e1/publish/%2e%2e/..?include_count=true";
    let (status, reason) = raw(&proxy, "GET", target, &key).await;
    assert_eq!((status, reason.as_str()), (200, ""));
    assert_eq!(
        received(&last_forwarded(&fake)),
        owned(
            "GET",
            "/v3/content_types/blog/entries",
            Some("include_count=true")
        )
    );
}

#[tokio::test]
async fn routing_reads_only_what_is_forwarded_and_one_api_key() {
    let fake = fake_with(simulator(&["blt_a", "blt_b"], two_accounts())).await;
    let proxy = proxy(&fake, "", &two_profiles("alpha password")).await;
    let email = |answer: &Answer| -> Value {
        serde_json::from_str::<Value>(&answer.body).unwrap()["user"]["email"].clone()
    };

    // `Connection: api_key` removes the header before it goes upstream, so it must not route either:
    // stack B is reached through profile beta, never through alpha.
    let answer = exchange(
        &proxy,
        "GET",
        "/v3/user?api_key=blt_b",
        &[("api_key", "blt_a"), ("connection", "api_key")],
    )
    .await;
    assert_eq!((answer.status, email(&answer)), (200, json!(BETA)));
    let sent = last_forwarded(&fake);
    assert_eq!(header(&sent, "api_key"), None);
    assert_eq!(sent.query.as_deref(), Some("api_key=blt_b"));
    assert_eq!(
        header(&sent, "authtoken"),
        Some(fake.live_sessions(BETA)[0].as_str())
    );
    // A query-only api_key routes like the header; the same key in both is one key.
    for (target, headers) in [
        ("/v3/user?api_key=blt_a", vec![]),
        ("/v3/user?x=1&api_key=blt_a", vec![("api_key", "blt_a")]),
    ] {
        let answer = exchange(&proxy, "GET", target, &headers).await;
        assert_eq!(
            (answer.status, email(&answer)),
            (200, json!(ALPHA)),
            "{target}"
        );
    }

    let reached = forwarded(&fake).len();
    // Header and query disagree, or the query says it twice, or in a spelling some servers read as
    // `api_key`: which stack is meant is a guess, so the request is refused.
    for (target, headers) in [
        ("/v3/user?api_key=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api_key=blt_a&api_key=blt_b", vec![]),
        ("/v3/user?api_key=blt_a&api_key=blt_a", vec![]),
        ("/v3/user?api_key=blt_a;api_key=blt_b", vec![]),
        ("/v3/user?API_KEY=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api%5Fkey=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api%255fkey=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api-key=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api.key=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api_key[]=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api_key%5B%5D=blt_b", vec![]),
        ("/v3/user?api_key=blt%255Fb", vec![]),
        ("/v3/user?api_key=blt+b", vec![]),
        ("/v3/user", vec![("api-key", "blt_b")]),
        // A second key in encoded structure, read by a server that decodes the query once before
        // parsing it, or by PHP, which reads an unmatched `[` in a name as `_`.
        ("/v3/user?api_key%3Dblt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?x=1%26api_key%3Dblt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?x=1%3Bapi_key%3Dblt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api_key=blt_a%26api_key%3Dblt_b", vec![]),
        ("/v3/user?api[key=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?api%5Bkey=blt_b", vec![("api_key", "blt_a")]),
        ("/v3/user?x=%26_method%3DDELETE", vec![]),
        ("/v3/user?x=%26authtoken%3Dt", vec![]),
    ] {
        let (status, reason) = raw(&proxy, "GET", target, &headers).await;
        assert_eq!(
            (status, reason.as_str()),
            (400, "bad_request"),
            "{target} {headers:?}"
        );
    }
    assert_eq!(
        forwarded(&fake).len(),
        reached,
        "a refused request reached the CMA"
    );
}

#[tokio::test]
async fn trace_and_track_are_refused_in_any_case() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    for method in [
        "TRACE", "trace", "Trace", "TRACK", "track", "tRaCk", "connect",
    ] {
        let (status, reason) = raw(&proxy, method, "/v3/user", &[]).await;
        assert_eq!(
            (status, reason.as_str()),
            (405, "method_not_allowed"),
            "{method}"
        );
    }
    assert!(forwarded(&fake).is_empty(), "{:?}", forwarded(&fake));
}

#[tokio::test]
async fn method_and_url_overrides_are_refused_in_every_spelling() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    for name in [
        "x-http-method-override",
        "x_http_method_override",
        "X-HTTP-Method",
        "x_http_method",
        "x-method-override",
        "x_method_override",
        "X-Original-URL",
        "x_original_url",
        "X-Rewrite-URL",
        "x_rewrite_url",
        // Read by gateways and frameworks for routing or for building URLs.
        "X-Original-Method",
        "X-Forwarded-Method",
        "X-Original-URI",
        "X-Forwarded-Uri",
        "X-Envoy-Original-Path",
        "X-Forwarded-Prefix",
        "x_forwarded_prefix",
    ] {
        let (status, reason) = raw(&proxy, "GET", "/v3/user", &[(name, "DELETE")]).await;
        assert_eq!((status, reason.as_str()), (400, "bad_request"), "{name}");
    }
    for query in [
        "_method=DELETE",
        "x=1&_method=DELETE",
        "x=1;_method=DELETE",
        "_METHOD=DELETE",
        "%5Fmethod=DELETE",
        "%255Fmethod=DELETE",
        "-method=DELETE",
        "_method[]=DELETE",
        "x-http-method-override=DELETE",
    ] {
        let (status, reason) = raw(&proxy, "GET", &format!("/v3/user?{query}"), &[]).await;
        assert_eq!((status, reason.as_str()), (400, "bad_request"), "{query}");
    }
    // A header the proxy routes by, in a spelling some servers read as the same header.
    let (status, reason) = raw(&proxy, "GET", "/v3/user", &[("x_cma_profile", "x")]).await;
    assert_eq!((status, reason.as_str()), (400, "bad_request"));
    assert!(forwarded(&fake).is_empty(), "{:?}", forwarded(&fake));
}

#[tokio::test]
async fn client_credentials_in_cookies_and_the_query_are_stripped() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let cookie = "theme=dark; authtoken=client-token; Lang=en; AuthToken=2; auth%74oken=3";
    let target = "/v3/user?include=1&authtoken=client-token&AUTHTOKEN=2;authorization=3&x=y";
    let (status, _) = raw(&proxy, "GET", target, &[("cookie", cookie)]).await;
    assert_eq!(status, 200);
    let sent = last_forwarded(&fake);
    assert_eq!(sent.query.as_deref(), Some("include=1&x=y"));
    assert_eq!(header(&sent, "cookie"), Some("theme=dark; Lang=en"));
    assert_eq!(
        header(&sent, "authtoken"),
        Some(fake.live_sessions(EMAIL)[0].as_str())
    );
    // A cookie header or a query with nothing else left is not sent at all.
    let (status, _) = raw(
        &proxy,
        "GET",
        "/v3/user?authtoken=1",
        &[("cookie", "authtoken=1")],
    )
    .await;
    assert_eq!(status, 200);
    let sent = last_forwarded(&fake);
    assert_eq!(
        (sent.query.as_deref(), header(&sent, "cookie")),
        (None, None)
    );
    // Some servers split cookies on `,` too, or take a quoted name: a pair that any of them reads
    // as a credential goes.
    let cookie = r#"a=1, authtoken=client-token; "authtoken"=2; b=2"#;
    let (status, _) = raw(&proxy, "GET", "/v3/user", &[("cookie", cookie)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&last_forwarded(&fake), "cookie"), Some("b=2"));
    let reached = forwarded(&fake).len();
    for cookie in ["a=1,api_key=B", r#""api_key"=B"#, "a=1, _method=DELETE"] {
        let (status, reason) = raw(&proxy, "GET", "/v3/user", &[("cookie", cookie)]).await;
        assert_eq!((status, reason.as_str()), (400, "bad_request"), "{cookie}");
    }
    assert_eq!(forwarded(&fake).len(), reached);
}

#[tokio::test]
async fn reject_mode_refuses_credentials_in_cookies_and_the_query() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &with_policy(r#"client_credentials = "reject""#)).await;
    for (target, headers) in [
        ("/v3/user", vec![("cookie", "a=1; authtoken=client-token")]),
        ("/v3/user", vec![("cookie", "Authtoken=client-token")]),
        ("/v3/user?authtoken=client-token", vec![]),
        ("/v3/user?x=1&Auth%54oken=client-token", vec![]),
        ("/v3/user?authorization=client-token", vec![]),
    ] {
        let (status, reason) = raw(&proxy, "GET", target, &headers).await;
        assert_eq!(
            (status, reason.as_str()),
            (401, "client_credentials_rejected"),
            "{target} {headers:?}"
        );
    }
    let (status, _) = raw(&proxy, "GET", "/v3/user", &[("cookie", "a=1")]).await;
    assert_eq!(status, 200);
    assert_eq!(forwarded(&fake).len(), 1, "only the clean request");
}
