use super::*;

fn policy(allow: &[&str], deny: &[&str]) -> Policy {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Policy::new(&s(allow), &s(deny), ClientCredentials::Strip).unwrap()
}

/// Whether any reading of the normalized `path` is the user endpoint, as [`Policy::admit`] tells it.
fn is_user_endpoint(path: &str) -> bool {
    Policy::default()
        .admit(&Method::GET, path)
        .is_ok_and(|admitted| admitted.user_endpoint)
}

/// What the proxy answers for `method path`: `Ok` (forwarded), `403 …` or `400 …`.
fn check(p: &Policy, method: &str, path: &str) -> Result<(), String> {
    let path = normalize(path).map_err(|e| format!("400 {e:?}"))?;
    p.check(&Method::from_bytes(method.as_bytes()).unwrap(), &path)
        .map_err(|d| format!("403 {d:?}"))
}

#[test]
fn normalization_table() {
    for (input, want) in [
        ("/", "/"),
        ("//", "/"),
        ("/v3/content_types", "/v3/content_types"),
        // Trailing slash, repeated slashes, dot segments.
        ("/v3/content_types/", "/v3/content_types"),
        ("/v3//content_types", "/v3/content_types"),
        ("//v3/content_types", "/v3/content_types"),
        ("/v3/./content_types", "/v3/content_types"),
        ("/v3/x/../content_types", "/v3/content_types"),
        ("/v3/x/..", "/v3"),
        ("/v3/x/../", "/v3"),
        ("/v3/x/./../content_types", "/v3/content_types"),
        // Unreserved characters decoded, in either hex case; dot segments spelled with escapes.
        ("/v3/%63ontent_types", "/v3/content_types"),
        ("/v3/%63ONTENT%5ftypes", "/v3/cONTENT_types"),
        ("/v3/a%2eb", "/v3/a.b"),
        ("/v3/%2e%2E/v3/x", "/v3/x"),
        ("/v3/%2E/x", "/v3/x"),
        ("/v3/x/%2e%2e/y", "/v3/y"),
        ("/v3/%7e%2D", "/v3/~-"),
        // Sub-delimiters, ':' and '@' read the same encoded or not: decoded.
        ("/v3/a%40b%3Ac%2B", "/v3/a@b:c+"),
        ("/v3/a@b:c+", "/v3/a@b:c+"),
        // Everything else stays encoded, in upper case, whichever way it came.
        ("/v3/a%20b", "/v3/a%20b"),
        ("/v3/a\"b{c}", "/v3/a%22b%7Bc%7D"),
        ("/v3/a[b]|^", "/v3/a%5Bb%5D%7C%5E"),
        ("/v3/100%25", "/v3/100%25"),
        ("/v3/%25zz", "/v3/%25zz"),
        ("/v3/%25%25", "/v3/%25%25"),
        // Non-ASCII: raw and encoded UTF-8 are the same canonical escape.
        ("/v3/caf\u{e9}", "/v3/caf%C3%A9"),
        ("/v3/caf%c3%a9", "/v3/caf%C3%A9"),
        // Matrix parameters kept (`check` weighs both readings); `%3B` is `;`.
        ("/v3/stacks;x=/../user", "/v3/user"),
        (
            "/v3/user-session;jsessionid=1",
            "/v3/user-session;jsessionid=1",
        ),
        ("/v3/user-session%3Bx", "/v3/user-session;x"),
        ("/v3/user-session%3bx", "/v3/user-session;x"),
        ("/v3/a;b;%63/d", "/v3/a;b;c/d"),
        ("/v3/a;b%20c", "/v3/a;b%20c"),
        // A dot inside a name is a name.
        ("/v3/user-session.json", "/v3/user-session.json"),
        ("/v3/.well-known", "/v3/.well-known"),
        ("/v3/..x", "/v3/..x"),
    ] {
        assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        assert_eq!(normalize(want).as_deref(), Ok(want), "idempotent: {want}");
    }
}

#[test]
fn ambiguous_and_malformed_paths_are_refused() {
    use PathError::*;
    for (input, want) in [
        ("", NotAbsolute),
        ("v3/x", NotAbsolute),
        ("*", NotAbsolute),
        // Malformed escapes; `from_str_radix` alone would take "+f" as hex.
        ("/v3/%zz", BadEscape),
        ("/v3/%4", BadEscape),
        ("/v3/%", BadEscape),
        ("/v3/%+f", BadEscape),
        ("/v3/%-1", BadEscape),
        // Not UTF-8 once decoded: overlong '.' and '/', stray bytes.
        ("/v3/%c0%ae%c0%ae/user-session", BadEscape),
        ("/v3/%C0%AF", BadEscape),
        ("/v3/%e0%80%ae", BadEscape),
        ("/v3/%ff", BadEscape),
        ("/v3/%c3", BadEscape),
        // Separators that some servers honour and others treat as data.
        ("/v3/a%3fb", EncodedDelimiter),
        ("/v3/user-session%3F", EncodedDelimiter),
        ("/v3/a%23b", EncodedDelimiter),
        ("/v3/a%2fb", EncodedSeparator),
        ("/v3/user-session%2F", EncodedSeparator),
        ("/v3/a%5Cb", EncodedSeparator),
        ("/v3/a\\b", EncodedSeparator),
        ("/v3\\user-session", EncodedSeparator),
        // Decoded twice, these are other characters.
        ("/v3/%2575ser-session", DoubleEncoded),
        ("/v3/%252e%252e/user-session", DoubleEncoded),
        ("/v3/%25%32%65", DoubleEncoded),
        ("/v3/x%252F", DoubleEncoded),
        // Controls.
        ("/v3/%00", ControlCharacter),
        ("/v3/user-session%00", ControlCharacter),
        ("/v3/a%09b", ControlCharacter),
        ("/v3/user-session%0d%0a", ControlCharacter),
        ("/v3/a\tb", ControlCharacter),
        ("/v3/%7F", ControlCharacter),
        // Parameters that change the structure in one reading only.
        ("/v3/..;/user-session", AmbiguousSegment),
        ("/v3/x/..;x=1/user-session", AmbiguousSegment),
        ("/v3/%2e%2e;/user-session", AmbiguousSegment),
        ("/v3/..%3B/user-session", AmbiguousSegment),
        ("/v3/.;x/user-session", AmbiguousSegment),
        ("/v3/;x/user-session", AmbiguousSegment),
        // Trailing dots and spaces, dropped by Windows-style servers.
        ("/v3/user-session.", AmbiguousSegment),
        ("/v3/user-session%2e", AmbiguousSegment),
        ("/v3/user-session...", AmbiguousSegment),
        ("/v3/.../user-session", AmbiguousSegment),
        ("/v3/user-session%20", AmbiguousSegment),
        ("/v3/..%20/user-session", AmbiguousSegment),
        ("/v3/%20user-session", AmbiguousSegment),
        ("/v3/user-session.;x", AmbiguousSegment),
        ("/v3/user-session;x.", AmbiguousSegment),
        ("/v3/user-session;x%20", AmbiguousSegment),
        // '..' after an empty segment: nginx and RFC 3986 disagree.
        ("/v3//../user-session", AmbiguousDotSegment),
        ("/v3/user-session//..", AmbiguousDotSegment),
        ("/v3/x//%2e%2e/y", AmbiguousDotSegment),
        ("/v3/x/.//../y", AmbiguousDotSegment),
        // Above the root.
        ("/..", AboveRoot),
        ("/%2e%2e/v3/user-session", AboveRoot),
        ("/v3/../../x", AboveRoot),
        ("//../v3/x", AboveRoot),
    ] {
        assert_eq!(normalize(input), Err(want), "{input:?}");
    }
}

#[test]
fn session_endpoint_is_always_denied_in_every_spelling() {
    let open = policy(&["* /**"], &[]);
    for path in [
        "/v3/user-session",
        "/v3/user-session/",
        "/v3//user-session",
        "//v3/user-session",
        "/v3/./user-session",
        "/v3/x/../user-session",
        "/v3/%2e/user-session",
        "/v3/x/%2E%2E/user-session",
        "/v3/%75ser-session",
        "/v3/%75SER-session",
        "/v3/%75%73%65%72%2d%73%65%73%73%69%6f%6e",
        "/V3/user-session",
        "/v3/USER-SESSION",
        "/v3/User-Session",
        "/v3/stacks;x=/../user-session",
        "/v3/user-session;x=1",
        "/v3/user-session%3Bx=1",
        "/v3/user-session.json",
        "/v3/user-session.xml;x",
        "/v3/user-session/anything/below",
        "/v3/user-session/x/..",
        "/v2/user-session",
        "/V10/user-session",
        "/user-session",
    ] {
        for method in [
            "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "get", "Delete",
        ] {
            assert_eq!(
                check(&open, method, path),
                Err("403 SessionEndpoint".to_owned()),
                "{method} {path}"
            );
        }
    }
    for path in [
        "/v3/user-sessions-report",
        "/v3/user",
        "/v3/users/user-session",
        "/v3/xuser-session",
        "/v3/user-session-x",
        "/v3/.user-session",
    ] {
        assert_eq!(check(&open, "GET", path), Ok(()), "{path}");
    }
}

#[test]
fn read_only_policy() {
    let p = policy(&["GET /v3/**"], &[]);
    assert!(check(&p, "GET", "/v3/content_types").is_ok());
    assert!(check(&p, "GET", "/v3/content_types/blog/entries/e1").is_ok());
    for (method, path) in [
        ("POST", "/v3/content_types"),
        ("PUT", "/v3/content_types/blog"),
        ("DELETE", "/v3/assets/a1"),
        ("PATCH", "/v3/assets/a1"),
        // Allow rules are exact: a method in another case or HEAD is not GET.
        ("get", "/v3/content_types"),
        ("HEAD", "/v3/content_types"),
        ("GET", "/v2/x"),
        ("GET", "/"),
        ("GET", "/v3"),
        // Case is exact too.
        ("GET", "/V3/content_types"),
    ] {
        assert_eq!(
            check(&p, method, path),
            Err("403 NotAllowed".to_owned()),
            "{method} {path}"
        );
    }
}

#[test]
fn deny_rules_catch_every_spelling() {
    let p = policy(
        &["* /v3/**"],
        &[
            "DELETE /v3/content_types/*",
            "* /v3/stacks/**",
            "GET /v3/stacks",
            "POST /v3/content_types",
            "PUT /v3/content_types/blog",
        ],
    );
    for (method, path) in [
        ("DELETE", "/v3/content_types/blog"),
        ("DELETE", "/v3/content_types/blog/"),
        ("DELETE", "/v3//content_types//blog"),
        ("DELETE", "/v3/./content_types/blog"),
        ("DELETE", "/v3/x/../content_types/blog"),
        ("DELETE", "/v3/x/%2e%2e/content_types/blog"),
        ("DELETE", "/v3/%63ontent_types/blog"),
        ("DELETE", "/v3/%63ONTENT_TYPES/blog"),
        ("DELETE", "/V3/CONTENT_TYPES/BLOG"),
        ("DELETE", "/v3/content_types;x=1/blog"),
        ("DELETE", "/v3/content_types/blog;x=1"),
        ("DELETE", "/v3/content_types/blog%3Bx"),
        ("PUT", "/v3/content_types/blog;x"),
        ("DELETE", "/v3/content_types%3B/blog"),
        ("DELETE", "/v3/content_types/blog.json"),
        ("delete", "/v3/content_types/blog"),
        ("Delete", "/v3/content_types/blog"),
        ("GET", "/v3/stacks/settings"),
        ("GET", "/v3/STACKS/settings"),
        ("GET", "/v3/%73tacks/settings"),
        ("GET", "/v3/stacks"),
        ("GET", "/v3/stacks.json"),
        ("HEAD", "/v3/stacks"),
        ("head", "/v3/stacks"),
        ("POST", "/v3/content_types.json"),
        ("POST", "/v3/content_types/"),
    ] {
        assert_eq!(
            check(&p, method, path),
            Err("403 DenyRule".to_owned()),
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("DELETE", "/v3/content_types/blog/entries/e1"),
        ("DELETE", "/v3/content_types"),
        ("GET", "/v3/content_types/blog"),
        ("GET", "/v3/content_types"),
        ("POST", "/v3/content_types/blog/entries"),
        ("GET", "/v3/stacksx"),
    ] {
        assert_eq!(check(&p, method, path), Ok(()), "{method} {path}");
    }
    // `**` is below the directory, not the directory itself.
    let p = policy(&[], &["* /v3/assets/**"]);
    assert!(check(&p, "GET", "/v3/assets/a1").is_err());
    assert!(check(&p, "GET", "/v3/assets").is_ok());
}

#[test]
fn allow_rules_do_not_widen_by_spelling() {
    let p = policy(
        &[
            "GET /v3/content_types/blog/**",
            "* /v3/assets",
            "* /v3/assets/*",
        ],
        &[],
    );
    for (method, path) in [
        ("GET", "/v3/content_types/blog/entries"),
        ("GET", "/v3/content_types/%62log/entries"),
        ("POST", "/v3/assets"),
        ("DELETE", "/v3/assets/a1"),
        ("DELETE", "/v3/assets/a1;x"),
        ("GET", "/v3/assets/logo.png"),
    ] {
        assert_eq!(check(&p, method, path), Ok(()), "{method} {path}");
    }
    for (method, path) in [
        ("GET", "/v3/content_types/BLOG/entries"),
        ("GET", "/v3/content_types/other/entries"),
        ("GET", "/v3/content_types/blog/entries/../../other/entries"),
        ("GET", "/v3/content_types/blog/%2e%2e/other"),
        ("GET", "/v3/content_types/blog"),
        ("get", "/v3/content_types/blog/entries"),
        ("POST", "/v3/assets.json"),
        ("DELETE", "/v3/assets/a1/../../stacks"),
        ("DELETE", "/v3/assets/a1/x"),
        // Every reading must be admitted: `/v3/assets;x` is not `/v3/assets` to all servers.
        ("POST", "/v3/assets;x"),
        ("GET", "/v3/content_types/blog;x/entries"),
    ] {
        assert_eq!(
            check(&p, method, path),
            Err("403 NotAllowed".to_owned()),
            "{method} {path}"
        );
    }
    // A suffix glob admits `a.json`, but a Rails router reads it as `a`, which it does not admit.
    let p = policy(&["GET /v3/exports/*.json"], &[]);
    assert_eq!(
        check(&p, "GET", "/v3/exports/a.json"),
        Err("403 NotAllowed".to_owned())
    );
}

#[test]
fn bad_rules_are_config_errors() {
    for rule in [
        "/v3/**",
        "GET v3/**",
        "GET /v3/** extra",
        "G(T /v3",
        "GET /v3/{a",
        // Never matched by a normalized path, so the rule would silently never fire.
        "DELETE /v3//content_types/**",
        "DELETE /v3/./content_types/**",
        "DELETE /v3/x/../content_types/**",
        "DELETE /v3/%63ontent_types/**",
        "DELETE /v3/a%3fb",
        "DELETE /v3/a%2Fb",
        "DELETE /v3/a%3Bb",
        "DELETE /v3/a;b",
        "DELETE /v3/a\\b",
        "DELETE /v3/caf\u{e9}",
        "DELETE /v3/blog.",
        "DELETE /v3/%zz",
    ] {
        assert!(
            Policy::new(&[rule.to_owned()], &[], ClientCredentials::Strip).is_err(),
            "{rule}"
        );
    }
    for rule in [
        "GET /",
        "GET /v3/",
        "get /v3/**",
        "* /v3/content_types/*/entries/**",
        "GET /v3/a%20b",
        "GET /v3/{assets,content_types}/**",
        "GET /v3/a@b:c+",
    ] {
        assert!(
            Policy::new(
                &[rule.to_owned()],
                &[rule.to_owned()],
                ClientCredentials::Strip
            )
            .is_ok(),
            "{rule}"
        );
    }
}

#[test]
fn rule_written_with_a_trailing_slash_or_lower_case_method_still_applies() {
    let p = policy(&["get /v3/content_types/"], &[]);
    assert!(check(&p, "GET", "/v3/content_types").is_ok());
    assert!(check(&p, "GET", "/v3/content_types/").is_ok());
}

#[test]
fn every_reading_of_the_user_endpoint_is_known() {
    for path in [
        "/v3/user",
        "/v3/USER",
        "/v3/user.json",
        "/v3/user;x=1",
        "/v2/user",
        "/user",
    ] {
        assert!(is_user_endpoint(path), "{path}");
    }
    for path in [
        "/v3/users",
        "/v3/user/activate",
        "/v3/user-session",
        "/v3/stacks/user",
        "/v3",
        "/",
        "/user/x",
        "/v/user",
        "/v3x/user",
    ] {
        assert!(!is_user_endpoint(path), "{path}");
    }
}

#[test]
fn a_path_has_up_to_four_readings_and_most_have_one() {
    let all = |path| {
        readings(path)
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("/v3/content_types"), ["/v3/content_types"]);
    assert_eq!(all("/v3/stacks.json"), ["/v3/stacks.json", "/v3/stacks"]);
    assert_eq!(all("/v3/user;x=1"), ["/v3/user;x=1", "/v3/user"]);
    assert_eq!(
        all("/v3;a/user.json;b"),
        [
            "/v3;a/user.json;b",
            "/v3/user.json",
            "/v3;a/user",
            "/v3/user"
        ]
    );
    assert!(is_user_endpoint("/v3;a/user.json;b"));
}

/// The readings and endpoint found with byte scans on the stack agree with the plain reading of
/// their definition (split on `/` and `;`, a `Vec` of readings) on every short path built from the
/// pieces that matter: versions, the user and session segments, `;params`, format suffixes and
/// empty segments. A spelling one misses and the other finds would leak the token or reach the
/// session.
#[test]
fn readings_and_endpoint_agree_with_their_definition() {
    fn plain_readings(path: &str) -> Vec<String> {
        let mut out = vec![path.to_owned()];
        if path.contains(';') {
            let cut: Vec<&str> = path
                .split('/')
                .map(|s| s.split(';').next().unwrap_or_default())
                .collect();
            out.push(cut.join("/"));
        }
        for i in 0..out.len() {
            let last = out[i].rfind('/').map_or(0, |i| i + 1);
            if let Some(dot) = out[i][last..].find('.').filter(|&d| d > 0) {
                out.push(out[i][..last + dot].to_owned());
            }
        }
        out
    }
    fn plain_endpoint(path: &str) -> (String, bool) {
        let mut segments = path.split('/').skip(1);
        let first = segments.next().unwrap_or_default();
        let is_version = first.len() > 1
            && first.starts_with(['v', 'V'])
            && first[1..].bytes().all(|b| b.is_ascii_digit());
        let target = if is_version {
            segments.next().unwrap_or_default()
        } else {
            first
        };
        (target.to_owned(), segments.next().is_some())
    }
    let pieces = [
        "",
        "v3",
        "V2",
        "v",
        "v3x",
        "user",
        "USER",
        "user-session",
        "user.json",
        "user;x",
        "v3;a",
        "users",
        ".json",
        "a.b.c",
    ];
    let mut paths = vec![String::new(), "/".to_owned()];
    for a in pieces {
        for b in pieces {
            for c in ["", "user", "x", ";p", "user.json;q", "activate"] {
                paths.push(format!("/{a}/{b}/{c}"));
                paths.push(format!("/{a}/{b}"));
                paths.push(format!("/{a}"));
                paths.push(format!("{a}/{b}{c}"));
            }
        }
    }
    for path in &paths {
        let plain = plain_readings(path);
        let ours: Vec<String> = readings(path).iter().map(|r| r.to_string()).collect();
        assert_eq!(ours, plain, "readings of {path:?}");
        for reading in &plain {
            let (target, below) = endpoint(reading);
            assert_eq!(
                (target.to_owned(), below),
                plain_endpoint(reading),
                "{reading:?}"
            );
        }
        let user = plain.iter().any(|r| {
            let (target, below) = plain_endpoint(r);
            target.eq_ignore_ascii_case("user") && !below
        });
        let session = plain
            .iter()
            .any(|r| plain_endpoint(r).0.eq_ignore_ascii_case("user-session"));
        let admitted = Policy::default().admit(&Method::GET, path);
        match admitted {
            Err(Denial::SessionEndpoint) => assert!(session, "{path:?}"),
            Ok(a) => {
                assert!(!session, "{path:?}");
                assert_eq!(a.user_endpoint, user, "{path:?}");
            }
            Err(other) => panic!("{path:?}: {other:?}"),
        }
    }
}

/// The plain-path shortcut of [`normalize`] answers what the segment-by-segment normalization
/// answers, on every path up to six bytes over the bytes that matter to either (so the shortcut can
/// never let a path through in a form the full reading would change or refuse).
#[test]
fn the_plain_path_shortcut_agrees_with_the_full_normalization() {
    const BYTES: &[u8] = b"/a-_.%;A9";
    let mut paths = vec![String::new()];
    let mut plain = 0;
    for _ in 0..6 {
        let mut longer = Vec::with_capacity(paths.len() * BYTES.len());
        for path in &paths {
            for &b in BYTES {
                let mut next = path.clone();
                next.push(b as char);
                if is_plain(&next) {
                    plain += 1;
                    assert_eq!(
                        normalize_segments(&next).as_deref(),
                        Ok(next.as_str()),
                        "{next:?}"
                    );
                }
                longer.push(next);
            }
        }
        paths = longer;
    }
    assert!(plain > 1000, "{plain} plain paths");
}
