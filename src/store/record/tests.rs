use super::*;

const ACCOUNT: &str = "acct";

fn sealed() -> Codec {
    Codec::new(Some(&EncryptionKey([7; 32])))
}

fn token(obtained: SystemTime) -> SharedToken {
    SharedToken {
        header: HeaderValue::from_static("blt-token"),
        obtained_at: obtained,
        expires_at: None,
    }
}

fn profile() -> ProfileConfig {
    crate::config::tests::login_profile("rejected_retry = \"5m\"\nmax_backoff = \"1m\"\n")
}

fn failure(rejected: bool, failed_at: SystemTime, retry_in: Duration) -> SharedFailure {
    SharedFailure {
        rejected,
        http_status: 422,
        error_code: Some(104),
        failed_at_ms: unix_ms(failed_at),
        retry_at_ms: unix_ms(failed_at + retry_in),
        credentials_tag: Some("tag".into()),
    }
}

#[test]
fn a_sealed_token_round_trips_and_shows_nothing() {
    let now = SystemTime::now();
    let codec = sealed();
    let value = codec.token(ACCOUNT, &token(now));
    assert!(!value.contains("blt-token"), "{value}");
    let back = codec.open_token(ACCOUNT, value.as_bytes(), now).unwrap();
    assert_eq!(back.header, "blt-token");
    assert_eq!(unix_ms(back.obtained_at), unix_ms(now));
    // Another account's value, another key, no key: refused.
    assert_eq!(
        codec
            .open_token("other", value.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    let other_key = Codec::new(Some(&EncryptionKey([8; 32])));
    assert_eq!(
        other_key
            .open_token(ACCOUNT, value.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    assert_eq!(
        Codec::new(None)
            .open_token(ACCOUNT, value.as_bytes(), now)
            .unwrap_err(),
        Invalid::OtherSetting
    );
}

#[test]
fn the_seal_covers_the_date_and_the_digest() {
    let now = SystemTime::now();
    let codec = sealed();
    let value = codec.token(ACCOUNT, &token(now));
    let fields: Vec<&str> = value.splitn(4, ':').collect();
    let redated = format!(
        "{}:{}:{}:{}",
        fields[0],
        unix_ms(now) - 3_600_000,
        fields[2],
        fields[3]
    );
    assert_eq!(
        codec
            .open_token(ACCOUNT, redated.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    let other_digest = format!(
        "{}:{}:{}:{}",
        sha256_hex(b"another"),
        fields[1],
        fields[2],
        fields[3]
    );
    assert_eq!(
        codec
            .open_token(ACCOUNT, other_digest.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
}

#[test]
fn a_plaintext_token_is_read_only_without_a_key_and_only_if_consistent() {
    let now = SystemTime::now();
    let plain = Codec::new(None);
    let value = plain.token(ACCOUNT, &token(now));
    assert!(value.ends_with(":p:blt-token"), "{value}");
    assert!(plain.open_token(ACCOUNT, value.as_bytes(), now).is_ok());
    assert_eq!(
        sealed()
            .open_token(ACCOUNT, value.as_bytes(), now)
            .unwrap_err(),
        Invalid::OtherSetting
    );
    let mismatched = value.replace(":p:blt-token", ":p:blt-other");
    assert_eq!(
        plain
            .open_token(ACCOUNT, mismatched.as_bytes(), now)
            .unwrap_err(),
        Invalid::Malformed
    );
}

#[test]
fn values_from_the_future_or_too_large_are_refused() {
    let now = SystemTime::now();
    let plain = Codec::new(None);
    let soon = plain.token(ACCOUNT, &token(now + MAX_CLOCK_SKEW / 2));
    assert!(plain.open_token(ACCOUNT, soon.as_bytes(), now).is_ok());
    let tomorrow = plain.token(ACCOUNT, &token(now + Duration::from_secs(86_400)));
    assert_eq!(
        plain
            .open_token(ACCOUNT, tomorrow.as_bytes(), now)
            .unwrap_err(),
        Invalid::FromTheFuture
    );
    let huge = vec![b'a'; MAX_VALUE + 1];
    assert_eq!(
        plain.open_token(ACCOUNT, &huge, now).unwrap_err(),
        Invalid::TooLarge
    );
    assert_eq!(
        plain.open_failure(ACCOUNT, &huge, now).unwrap_err(),
        Invalid::TooLarge
    );
    let late = failure(true, now + Duration::from_secs(86_400), Duration::ZERO);
    let value = plain.failure(ACCOUNT, &late);
    assert_eq!(
        plain
            .open_failure(ACCOUNT, value.as_bytes(), now)
            .unwrap_err(),
        Invalid::FromTheFuture
    );
}

#[test]
fn a_failure_round_trips_sealed_and_a_forged_one_is_refused() {
    let now = SystemTime::now();
    let codec = sealed();
    let f = failure(true, now, Duration::from_secs(300));
    let value = codec.failure(ACCOUNT, &f);
    assert!(value.starts_with("s:") && !value.contains("422"), "{value}");
    assert_eq!(
        codec.open_failure(ACCOUNT, value.as_bytes(), now),
        Ok(f.clone())
    );
    let forged = Codec::new(None).failure(ACCOUNT, &f);
    assert_eq!(
        codec
            .open_failure(ACCOUNT, forged.as_bytes(), now)
            .unwrap_err(),
        Invalid::OtherSetting
    );
    let mut altered = value.into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    assert!(codec.open_failure(ACCOUNT, &altered, now).is_err());
}

#[test]
fn a_failure_holds_back_no_longer_than_our_own_settings() {
    let p = profile();
    let now = SystemTime::now();
    let ours = Some("tag");
    let loaded = now - Duration::from_secs(3600);
    // A refused login: at most rejected_retry (5m) after it happened.
    let forever = failure(true, now, Duration::from_secs(2_306_489_079));
    assert_eq!(
        forever.hold(ours, loaded, &p, now),
        Some(Duration::from_secs(300))
    );
    // A transient one: at most max_backoff (1m).
    let transient = failure(false, now, Duration::from_secs(3600));
    assert_eq!(
        transient.hold(ours, loaded, &p, now),
        Some(Duration::from_secs(60))
    );
    // Counted from the failure, not from the read: an old record is over.
    let old = failure(
        true,
        now - Duration::from_secs(301),
        Duration::from_secs(3600),
    );
    assert_eq!(old.hold(ours, loaded, &p, now), None);
    // Shorter than ours: the writer's time counts.
    let short = failure(true, now, Duration::from_secs(10));
    assert_eq!(
        short.hold(ours, loaded, &p, now),
        Some(Duration::from_secs(10))
    );
    // Other credentials: none of our business.
    assert_eq!(forever.hold(Some("other"), loaded, &p, now), None);
}

#[test]
fn without_a_key_only_failures_after_our_credentials_were_loaded_count() {
    let p = profile();
    let now = SystemTime::now();
    let f = failure(
        true,
        now - Duration::from_secs(10),
        Duration::from_secs(300),
    );
    let before = now - Duration::from_secs(60);
    assert!(f.hold(None, before, &p, now).is_some());
    // Loaded (rotated) after the failure: these credentials have not failed yet.
    assert_eq!(f.hold(None, now, &p, now), None);
}

#[test]
fn the_credentials_tag_needs_the_key_and_tells_credentials_apart() {
    let codec = sealed();
    let a = codec.credentials_tag("a@b.c", "pw", None).unwrap();
    assert_eq!(codec.credentials_tag("a@b.c", "pw", None).unwrap(), a);
    assert_ne!(codec.credentials_tag("a@b.c", "pw2", None).unwrap(), a);
    assert_ne!(codec.credentials_tag("a@b.cp", "w", None).unwrap(), a);
    assert_ne!(
        codec.credentials_tag("a@b.c", "pw", Some(b"totp")).unwrap(),
        a
    );
    let other_key = Codec::new(Some(&EncryptionKey([8; 32])));
    assert_ne!(other_key.credentials_tag("a@b.c", "pw", None).unwrap(), a);
    assert_eq!(Codec::new(None).credentials_tag("a@b.c", "pw", None), None);
}

#[test]
fn an_expiring_token_keeps_its_lifetime_under_the_seal() {
    let now = SystemTime::now();
    for codec in [sealed(), Codec::new(None)] {
        let shared = SharedToken {
            expires_at: Some(now + Duration::from_secs(3600)),
            ..token(now)
        };
        let value = codec.token(ACCOUNT, &shared);
        let back = codec.open_token(ACCOUNT, value.as_bytes(), now).unwrap();
        assert_eq!(back.expires_at.map(unix_ms), Some(unix_ms(now) + 3_600_000));
    }
    // A longer lifetime written in is refused, sealed or not; so is a changed one under a seal.
    let codec = sealed();
    let value = codec.token(
        ACCOUNT,
        &SharedToken {
            expires_at: Some(now + Duration::from_secs(60)),
            ..token(now)
        },
    );
    let stretched = value.replacen("+60000:", "+86400000:", 1);
    assert_ne!(stretched, value);
    assert_eq!(
        codec
            .open_token(ACCOUNT, stretched.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    let plain = Codec::new(None);
    let forever = format!(
        "{}:{}+{}:p:blt-token",
        sha256_hex(b"blt-token"),
        unix_ms(now),
        MAX_LIFETIME.as_millis() + 1
    );
    assert_eq!(
        plain
            .open_token(ACCOUNT, forever.as_bytes(), now)
            .unwrap_err(),
        Invalid::Malformed
    );
}

#[test]
fn a_kept_refresh_token_round_trips_sealed_and_shows_nothing() {
    use secrecy::{ExposeSecret, SecretString};
    let now = SystemTime::now();
    let grant = SharedGrant {
        refresh_token: SecretString::from("rt-secret-1".to_owned()),
        issued_at: now,
        origin: "abc".into(),
        generation: 7,
        user_uid: Some("blt-user".into()),
        organization_uid: Some("blt-org".into()),
    };
    let codec = sealed();
    let value = codec.grant(ACCOUNT, &grant);
    assert!(!value.contains("rt-secret-1"), "{value}");
    let back = codec.open_grant(ACCOUNT, value.as_bytes(), now).unwrap();
    assert_eq!(back.refresh_token.expose_secret(), "rt-secret-1");
    assert_eq!((back.generation, back.origin.as_str()), (7, "abc"));
    // Redated, or moved to another account: refused.
    let (date, rest) = value.split_once(':').unwrap();
    let redated = format!("{}:{rest}", date.parse::<u64>().unwrap() - 1);
    assert_eq!(
        codec
            .open_grant(ACCOUNT, redated.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    assert_eq!(
        codec
            .open_grant("other", value.as_bytes(), now)
            .unwrap_err(),
        Invalid::NotSealedByUs
    );
    assert_eq!(
        Codec::new(None)
            .open_grant(ACCOUNT, value.as_bytes(), now)
            .unwrap_err(),
        Invalid::OtherSetting
    );
    // Dated ahead of this replica's clock: refused, whoever wrote it.
    let plain = Codec::new(None);
    let future = plain.grant(
        ACCOUNT,
        &SharedGrant {
            issued_at: now + Duration::from_secs(3600),
            ..grant.clone()
        },
    );
    assert_eq!(
        plain
            .open_grant(ACCOUNT, future.as_bytes(), now)
            .unwrap_err(),
        Invalid::FromTheFuture
    );
    let debug = format!("{grant:?}");
    assert!(!debug.contains("rt-secret-1"), "{debug}");
}
