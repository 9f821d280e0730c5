//! Session emulation (docs/design.md#session-emulation): a client's own `POST /v3/user-session`
//! and `DELETE /v3/user-session` are answered by the proxy, with the service account's user object
//! and a placeholder token that the proxy then treats as no credential at all. Nothing the client
//! sent reaches the simulator; the shared session is never logged out; everything else on the
//! session endpoint stays refused; bad input gets Contentstack's error shape.
mod common;

use cma_sim::{Account, FakeCma};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What a client types into its own login: distinctive, so it can be searched for anywhere.
const CLIENT_EMAIL: &str = "someone.else+emulated@client.example";
const CLIENT_PASSWORD: &str = "client-pw-Zq81-never-forwarded";
const CLIENT_TFA: &str = "918273";

fn login_body() -> Value {
    json!({ "user": { "email": CLIENT_EMAIL, "password": CLIENT_PASSWORD, "tfa_token": CLIENT_TFA } })
}

async fn login(proxy: &Proxy) -> reqwest::Response {
    proxy
        .request(Method::POST, "/v3/user-session")
        .json(&login_body())
        .send()
        .await
        .unwrap()
}

/// Logs in through the proxy and returns the placeholder it handed out.
async fn placeholder(proxy: &Proxy) -> String {
    let response = login(proxy).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["user"]["authtoken"].as_str().unwrap().to_owned()
}

/// Upstream requests whose path is `path`.
fn seen(fake: &FakeCma, method: &Method, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == *method && r.path == path)
        .count()
}

#[tokio::test]
async fn a_login_is_answered_with_the_service_accounts_user_and_a_placeholder() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let response = login(&proxy).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-cma-auth-proxy-error").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["notice"], "Login Successful.");
    let user = &body["user"];
    assert_eq!(
        user["email"], EMAIL,
        "the service account, not the client's"
    );
    assert!(user["uid"].as_str().unwrap().starts_with("blt"));
    let token = user["authtoken"].as_str().unwrap();
    assert!(token.starts_with("cma-auth-proxy-session-"), "{token}");
    for issued in fake.issued_tokens() {
        assert!(!body.to_string().contains(&issued), "the real token leaked");
    }
    // Upstream: the proxy's own login with its own account, and one GET /v3/user; nothing else.
    assert!(
        fake.login_attempts().iter().all(|a| a.email == EMAIL),
        "{:?}",
        fake.login_attempts()
    );
    assert_eq!(fake.login_requests(), fake.logins());
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 1);
    assert_eq!(fake.requests().len(), fake.login_requests() + 1);
    let log = format!("{:?}{:?}", fake.requests(), fake.login_attempts());
    for secret in [CLIENT_EMAIL, CLIENT_PASSWORD, CLIENT_TFA] {
        assert!(!log.contains(secret), "{secret} reached the simulator");
    }
    // The placeholder was handed out: any other token would be the same placeholder.
    assert_eq!(placeholder(&proxy).await, token);
}

#[tokio::test]
async fn the_placeholder_is_no_credential_even_in_reject_mode() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &format!(
            "{}[policy]\nclient_credentials = \"reject\"\n",
            profile(PASSWORD, "")
        ),
    )
    .await;
    let token = placeholder(&proxy).await;
    let real = fake.issued_tokens()[0].clone();
    for request in [
        proxy.get("/v3/user").header("authtoken", &token),
        proxy
            .get("/v3/user")
            .header("cookie", format!("theme=dark; authtoken={token}")),
        proxy.get(&format!("/v3/user?authtoken={token}&x=1")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let sent = fake.requests().last().unwrap().clone();
        assert_eq!(sent.headers["authtoken"], real.as_str());
        assert_eq!(sent.query.as_deref().unwrap_or("x=1"), "x=1");
        assert!(
            sent.headers.get("cookie").is_none_or(|c| c == "theme=dark"),
            "{sent:?}"
        );
    }
    // Only the exact value: anything else is a client credential, refused in this mode.
    for value in [
        format!("{token}x"),
        token[..token.len() - 1].to_owned(),
        token.to_uppercase(),
        "cma-auth-proxy-session-00000000000000000000000000000000".to_owned(),
    ] {
        let response = proxy
            .get("/v3/user")
            .header("authtoken", &value)
            .send()
            .await
            .unwrap();
        assert_proxy_answer(&response, 401, "client_credentials_rejected");
    }
    assert!(
        !format!("{:?}", fake.requests()).contains(&token),
        "the placeholder went upstream"
    );
}

#[tokio::test]
async fn in_strip_mode_a_wrong_placeholder_is_stripped_like_any_credential() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let token = placeholder(&proxy).await;
    for value in [token.clone(), format!("{token}0")] {
        let response = proxy
            .get("/v3/user")
            .header("authtoken", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(!format!("{:?}", fake.requests()).contains(&token));
}

#[tokio::test]
async fn a_logout_is_answered_and_the_shared_session_lives_on() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let token = placeholder(&proxy).await;
    let response = proxy
        .request(Method::DELETE, "/v3/user-session")
        .header("authtoken", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "notice": "You've logged out successfully!" }));
    assert!(fake.logouts().is_empty());
    assert_eq!(seen(&fake, &Method::DELETE, "/v3/user-session"), 0);
    // The next request, placeholder and all, still works on the same session.
    let response = proxy
        .get("/v3/user")
        .header("authtoken", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.live_sessions(EMAIL).len(), 1);
}

#[tokio::test]
async fn everything_else_on_the_session_endpoint_stays_refused() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    let before = fake.requests().len();
    for (method, path) in [
        ("GET", "/v3/user-session"),
        ("PUT", "/v3/user-session"),
        ("PATCH", "/v3/user-session"),
        ("HEAD", "/v3/user-session"),
        ("OPTIONS", "/v3/user-session"),
        ("post", "/v3/user-session"),
        ("Delete", "/v3/user-session"),
        ("POST", "/v3/user-session/"),
        ("POST", "/v3/user-session/x"),
        ("DELETE", "/v3/user-session/x"),
        ("POST", "/v3//user-session"),
        ("DELETE", "/v3/%75ser-session"),
        ("POST", "/V3/USER-SESSION"),
        ("POST", "/v2/user-session"),
        ("POST", "/user-session"),
        ("POST", "/v3/user-session;x=1"),
        ("DELETE", "/v3/user-session.json"),
    ] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let response = proxy
            .request(method.clone(), path)
            .json(&login_body())
            .send()
            .await
            .unwrap();
        assert_proxy_answer(&response, 403, "policy_denied");
    }
    assert_eq!(
        fake.requests().len(),
        before,
        "a refused request went upstream"
    );
    let series = r#"cma_auth_proxy_emulated_sessions_total{profile="default",action="login"}"#;
    assert_eq!(metric(&proxy.admin, series).await, 0.0);
    // While the exact spelling is answered.
    assert_eq!(login(&proxy).await.status(), 200);
    assert_eq!(metric(&proxy.admin, series).await, 1.0);
}

#[tokio::test]
async fn session_endpoint_deny_refuses_logins_and_logouts() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &format!(
            "{}[policy]\nsession_endpoint = \"deny\"\n",
            profile(PASSWORD, "")
        ),
    )
    .await;
    assert_proxy_answer(&login(&proxy).await, 403, "policy_denied");
    let response = proxy
        .request(Method::DELETE, "/v3/user-session")
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&response, 403, "policy_denied");
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 0);
}

#[tokio::test]
async fn a_malformed_login_gets_contentstacks_422_shape_without_an_echo() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let big = format!(
        r#"{{"user":{{"email":"{CLIENT_EMAIL}","password":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    for body in [
        String::new(),
        format!("email={CLIENT_EMAIL}&password={CLIENT_PASSWORD}"),
        "{}".to_owned(),
        format!(r#"{{"user":"{CLIENT_EMAIL}"}}"#),
        format!(r#"{{"user":{{"email":"{CLIENT_EMAIL}"}}}}"#),
        format!(r#"{{"user":{{"email":"{CLIENT_EMAIL}","password":["{CLIENT_PASSWORD}"]}}}}"#),
        format!(r#"{{"user":{{"email":"{CLIENT_EMAIL}","password":"{CLIENT_PASSWORD}"#),
        big,
    ] {
        let response = proxy
            .request(Method::POST, "/v3/user-session")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_proxy_answer(&response, 422, "malformed_login");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error_code"], 914);
        assert_eq!(answer["errors"]["cma_auth_proxy"][0], "malformed_login");
        let text = answer.to_string();
        for secret in [CLIENT_EMAIL, CLIENT_PASSWORD] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 0);
}

#[tokio::test]
async fn a_profile_that_cannot_log_in_fails_the_emulated_login_loudly() {
    let fake = fake().await;
    let refused = proxy(&fake, "", &profile("wrong password", "")).await;
    let response = login(&refused).await;
    assert_proxy_answer(&response, 503, "login_rejected");
    assert!(response.headers().get("retry-after").is_some());

    let failing = fake_with(FakeCma::builder().account(account()).without_rate_limit()).await;
    failing.set_login_outage(Some(StatusCode::BAD_GATEWAY));
    let unavailable = proxy(&failing, "", &profile(PASSWORD, "")).await;
    assert_proxy_answer(&login(&unavailable).await, 503, "login_unavailable");
}

#[tokio::test]
async fn the_user_object_is_read_once_per_session() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    placeholder(&proxy).await;
    placeholder(&proxy).await;
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 1);
    // While the proxy takes its session for live, logins are answered from the cache. A new
    // session (the old one evicted, and found dead by the next request) is read anew.
    fake.evict_sessions(EMAIL);
    placeholder(&proxy).await;
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 1);
    let request = proxy
        .get("/v3/content_types")
        .header("api_key", cma_sim::DEMO_API_KEY);
    assert_eq!(request.send().await.unwrap().status(), 200);
    assert_eq!(fake.logins(), 2);
    placeholder(&proxy).await;
    placeholder(&proxy).await;
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 2);
}

#[tokio::test]
async fn a_session_found_dead_is_replaced_before_the_login_answers() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    eventually(10, "the first login", || async { fake.logins() == 1 }).await;
    fake.evict_sessions(EMAIL);
    let response = login(&proxy).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.logins(), 2);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["user"]["email"], EMAIL);
}

#[tokio::test]
async fn a_management_token_profile_has_no_user_to_log_in_as() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        "[profiles.default]\nmanagement_token = \"cs-management-token\"\n",
    )
    .await;
    let response = login(&proxy).await;
    // Contentstack's answer to `GET /v3/user` with that token, relayed: no placeholder.
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("x-cma-auth-proxy-error").is_none());
    assert!(
        !response
            .text()
            .await
            .unwrap()
            .contains("cma-auth-proxy-session-")
    );
    let sent = fake.requests().last().unwrap().clone();
    assert_eq!((sent.method, sent.path.as_str()), (Method::GET, "/v3/user"));
    assert_eq!(sent.headers["authorization"], "cs-management-token");
}

#[tokio::test]
async fn a_login_shows_no_more_than_the_policy_lets_a_client_see() {
    let fake = fake().await;
    let proxy = proxy(
        &fake,
        "",
        &format!(
            "{}[policy]\nallow = [\"GET /v3/content_types\"]\n",
            profile(PASSWORD, "")
        ),
    )
    .await;
    assert_proxy_answer(&login(&proxy).await, 403, "policy_denied");
    assert_eq!(seen(&fake, &Method::GET, "/v3/user"), 0);
    // A logout shows nothing and does nothing.
    let response = proxy
        .request(Method::DELETE, "/v3/user-session")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_profile_is_chosen_as_for_any_request() {
    const OTHER: &str = "other@example.com";
    let fake = fake_with(
        FakeCma::builder()
            .account(account())
            .account(Account::new(OTHER, "other password"))
            .without_rate_limit(),
    )
    .await;
    let profiles = format!(
        "{}[profiles.other]\nemail = \"{OTHER}\"\npassword = \"other password\"\nstacks = [\"blt_other\"]\n",
        profile(PASSWORD, "")
    );
    let proxy = proxy(&fake, "", &profiles).await;
    let email = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["user"]["email"].as_str().unwrap().to_owned()
    };
    assert_eq!(email(login(&proxy).await).await, EMAIL);
    let by_header = proxy
        .request(Method::POST, "/v3/user-session")
        .header("x-cma-profile", "other")
        .json(&login_body())
        .send()
        .await
        .unwrap();
    assert_eq!(email(by_header).await, OTHER);
    let by_stack = proxy
        .request(Method::POST, "/v3/user-session")
        .header("api_key", "blt_other")
        .json(&login_body())
        .send()
        .await
        .unwrap();
    assert_eq!(email(by_stack).await, OTHER);
    let unknown = proxy
        .request(Method::POST, "/v3/user-session")
        .header("x-cma-profile", "nobody")
        .json(&login_body())
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&unknown, 400, "bad_request");
    // Override headers are refused here as everywhere.
    let overridden = proxy
        .request(Method::POST, "/v3/user-session")
        .header("x-http-method-override", "DELETE")
        .json(&login_body())
        .send()
        .await
        .unwrap();
    assert_proxy_answer(&overridden, 400, "bad_request");
}

#[tokio::test]
async fn emulated_logins_and_logouts_are_counted() {
    let fake = fake().await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let series = |action: &str| {
        format!(r#"cma_auth_proxy_emulated_sessions_total{{profile="default",action="{action}"}}"#)
    };
    let before = metrics(&proxy.admin).await;
    assert_eq!(
        before.get(&series("login")),
        Some(&0.0),
        "zero before the first"
    );
    assert_eq!(before.get(&series("logout")), Some(&0.0));
    placeholder(&proxy).await;
    placeholder(&proxy).await;
    proxy
        .request(Method::DELETE, "/v3/user-session")
        .send()
        .await
        .unwrap();
    assert_eq!(
        counter_reaching(&proxy.admin, &series("login"), 2.0).await,
        2.0
    );
    assert_eq!(
        counter_reaching(&proxy.admin, &series("logout"), 1.0).await,
        1.0
    );
}

/// The real binary at trace level: the client's e-mail, password and code appear nowhere it
/// writes or answers, nor anywhere the simulator recorded, nor in `/status` and `/metrics`.
#[tokio::test]
async fn the_clients_credentials_are_never_forwarded_logged_or_echoed() {
    let fake = fake().await;
    let dir = tempdir();
    let config = dir.join("config.toml");
    std::fs::write(dir.join("password"), PASSWORD).unwrap();
    std::fs::write(
        &config,
        config_toml(
            &fake.url(),
            "",
            &(profile_from_file("password", "") + "[log]\nlevel = \"trace\"\n"),
        ),
    )
    .unwrap();
    let binary = Binary::start(&config, &[("RUST_LOG", "trace")]);
    let client = reqwest::Client::new();
    let mut answers = String::new();
    let bad = format!(r#"{{"user":{{"email":"{CLIENT_EMAIL}","password":{CLIENT_TFA}}}}}"#);
    for (body, status) in [(login_body().to_string(), 200), (bad, 422)] {
        let response = client
            .post(format!("{}/v3/user-session", binary.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        answers.push_str(&format!("{:?}", response.headers()));
        answers.push_str(&response.text().await.unwrap());
    }
    let h2 = h2_client()
        .post(format!("{}/v3/user-session", binary.url))
        .json(&login_body())
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), 200);
    answers.push_str(&h2.text().await.unwrap());
    for path in ["/status", "/metrics"] {
        answers.push_str(
            &client
                .get(format!("{}{path}", binary.admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let log = binary.log_text();
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert!(log.contains("user-session"), "the requests were logged");
    let upstream = format!("{:?}{:?}", fake.requests(), fake.login_attempts());
    for secret in [CLIENT_EMAIL, CLIENT_PASSWORD, CLIENT_TFA] {
        assert!(!answers.contains(secret), "{secret} echoed: {answers}");
        assert!(!log.contains(secret), "{secret} logged");
        assert!(!upstream.contains(secret), "{secret} forwarded");
    }
}
