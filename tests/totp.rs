//! Two-factor accounts: the TOTP code is computed per login, and a time step is never sent twice
//! (Contentstack accepts each code once).
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cma_sim::{Account, FakeCma};
use common::*;

const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

#[tokio::test]
async fn totp_account_logs_in_and_two_logins_in_one_step_never_reuse_a_code() {
    let fake = fake_with(
        FakeCma::builder()
            .account(Account::new(EMAIL, PASSWORD).with_totp(SECRET))
            .without_rate_limit(),
    )
    .await;
    // Start early in a 30 s step so that the re-login below falls in the same step as the first.
    let into_step = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 30;
    if into_step > 20 {
        tokio::time::sleep(Duration::from_secs(30 - into_step)).await;
    }
    let proxy = proxy(
        &fake,
        "",
        &profile(PASSWORD, &format!("totp_secret = \"{SECRET}\"")),
    )
    .await;
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);
    fake.evict_sessions(EMAIL);
    // The re-login must wait for the next step rather than resend the code.
    assert_eq!(proxy.get("/v3/user").send().await.unwrap().status(), 200);

    let attempts = fake.login_attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.status == 200), "{attempts:?}");
    let codes: Vec<_> = attempts
        .iter()
        .map(|a| a.tfa_token.clone().unwrap())
        .collect();
    assert_ne!(codes[0], codes[1]);
}

#[tokio::test]
async fn totp_account_without_secret_is_rejected_by_code_294() {
    let fake = fake_with(
        FakeCma::builder()
            .account(Account::new(EMAIL, PASSWORD).with_totp(SECRET))
            .without_rate_limit(),
    )
    .await;
    let proxy = proxy(&fake, "", &profile(PASSWORD, "")).await;
    let response = proxy.get("/v3/user").send().await.unwrap();
    // The simulator answers 294 with HTTP status 294, as Contentstack has been seen to.
    assert_proxy_answer(&response, 503, "login_rejected");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error_message"].as_str().unwrap().contains("294"));
    assert_eq!(fake.login_attempts().len(), 1);
}
