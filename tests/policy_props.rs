//! Property tests for path normalization and rule matching (issue 4): no input panics, normalizing is
//! idempotent, the decision is the same for a path and its normalized form, and no spelling of the
//! session endpoint or of a denied path gets through. The last two are checked against a model of how
//! upstream servers read a path (decode once or twice, merge slashes or not, drop `;params` or not,
//! trim trailing dots, treat `\` as `/`, decode overlong UTF-8, strip a `.json` format suffix): when
//! any of those readings lands on a denied resource, the proxy must refuse the request.
//!
//! And the forwarding rule (issue 10): the target sent upstream is exactly the one the policy judged.
//! For any accepted request target, the target [`target::judge`] sends, read by a strict reader and by
//! lenient ones (`//` as an authority, `..` resolved or not, `;params` cut or kept, percent-decoding
//! once or twice, case folded for deny rules), gets the decision the proxy made; and its query,
//! read as the most lenient server reads names, carries no credential, no method override and no
//! `api_key` the proxy did not route by.
//!
//! Runs inside `cargo test` (and so in `.ci/run`); the case counts keep it to a few seconds in debug
//! builds.
use std::sync::LazyLock;

use std::collections::BTreeSet;

use cma_auth_proxy::policy::{ClientCredentials, Denial, Policy, normalize};
use cma_auth_proxy::proxy::target;
use http::{Method, Uri};
use proptest::prelude::*;

/// Pieces paths are made of, biased towards what attacks on a path normalizer use.
const TOKENS: &[&str] = &[
    "/",
    "/",
    "/",
    "//",
    ".",
    "..",
    "/./",
    "/../",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%25",
    "%",
    "%3b",
    "%3B",
    ";",
    ";x=1",
    "%00",
    "%09",
    "%0a",
    " ",
    "%20",
    "%c0%ae",
    "%C0%AF",
    "%e0%80%ae",
    "%75",
    "%55",
    "%73",
    "%2d",
    "u",
    "U",
    "s",
    "S",
    "e",
    "r",
    "-",
    "i",
    "o",
    "n",
    "session",
    "user-session",
    "USER-SESSION",
    "v3",
    "V3",
    "v2",
    "assets",
    "content_types",
    "blog",
    ".json",
    "a",
    "f",
    "F",
    "0",
    "2",
    "5",
    "7",
    "9",
    "é",
    "%c3%a9",
    "%3f",
    "%23",
    "*",
    "~",
    "_",
    "x",
];

fn token_path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(&["/", "/v3/", "/v3/x/", "", "//"][..]);
    let tokens = prop::collection::vec(prop::sample::select(TOKENS), 0..14);
    (prefix, tokens).prop_map(|(prefix, tokens)| format!("{prefix}{}", tokens.concat()))
}

/// Whole segments that servers read differently, to be strung together.
const SEGMENTS: &[&str] = &[
    ".",
    "..",
    "%2e",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%252e%252e",
    "%25%32%65%25%32%65",
    "..;",
    "..;x=1",
    "%2e%2e%3b",
    ".;",
    ";x",
    "",
    "...",
    "..%00",
    "%c0%ae%c0%ae",
    "..%20",
    "..\\..",
    "..%5c..",
    "..%2f..",
    "%2e%2e%2f%2e%2e",
    "%252f",
    "v3",
    "V3",
    "user-session",
    "%75ser-session",
    "%2575ser-session",
    "user-session.json",
    "user-session.",
    "user-session%20",
    "USER-SESSION",
    "user-session;x",
    "user-session%3Bx",
    "stacks",
    "stacks.",
    "stacks;x",
    "%73tacks",
    "assets",
    "content_types",
    "blog",
    "entries",
    "x",
    "x.json",
];

/// Paths strung from [`SEGMENTS`] and token soup, with `/` or `//` between segments.
fn segment_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => prop::sample::select(SEGMENTS).prop_map(str::to_owned),
        1 => prop::collection::vec(prop::sample::select(TOKENS), 1..4).prop_map(|t| t.concat()),
    ];
    let separator = prop::sample::select(&["/", "/", "/", "//"][..]);
    let prefix = prop::sample::select(&["", "/v3", "/v3/assets", "/v3/content_types/blog"][..]);
    (prefix, prop::collection::vec((separator, segment), 0..8)).prop_map(|(prefix, parts)| {
        let mut path = prefix.to_owned();
        for (separator, segment) in parts {
            path.push_str(separator);
            path.push_str(&segment);
        }
        if path.is_empty() {
            "/".to_owned()
        } else {
            path
        }
    })
}

/// Any text at all, and token soup.
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => token_path(),
        3 => segment_path(),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
        1 => any::<String>(),
    ]
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "delete", "Delete", "OPTIONS",
];

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(METHODS).prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap())
}

fn policy(allow: &[&str], deny: &[&str]) -> Policy {
    let s = |v: &[&str]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    Policy::new(&s(allow), &s(deny), ClientCredentials::Strip).unwrap()
}

/// Policies from the documented examples, plus "everything" and "nothing special".
static POLICIES: LazyLock<Vec<Policy>> = LazyLock::new(|| {
    vec![
        policy(&[], &[]),
        policy(&["* /**"], &[]),
        policy(&["GET /v3/**"], &[]),
        policy(
            &[
                "GET /v3/content_types",
                "GET /v3/content_types/*",
                "* /v3/content_types/*/entries",
                "* /v3/content_types/*/entries/**",
                "* /v3/assets",
                "* /v3/assets/**",
            ],
            &[],
        ),
        policy(
            &["* /v3/**"],
            &["DELETE /v3/content_types/**", "* /v3/stacks/**"],
        ),
    ]
});

/// The whole decision for a request path: `Err` = 400, `Ok(Err)` = 403, `Ok(Ok)` = forwarded.
fn decide(policy: &Policy, method: &Method, path: &str) -> Result<Result<(), Denial>, ()> {
    normalize(path)
        .map(|n| policy.check(method, &n))
        .map_err(|_| ())
}

fn is_session(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == "/v3/user-session" || lower.starts_with("/v3/user-session/")
}

/// How upstream servers may read a path, each reading resolved to `/a/b` form.
fn upstream_readings(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for decode_twice in [false, true] {
        for overlong in [false, true] {
            let once = decode(path.as_bytes(), overlong);
            let bytes = if decode_twice {
                decode(&once, overlong)
            } else {
                once
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            for backslash_is_slash in [false, true] {
                let text = if backslash_is_slash {
                    text.replace('\\', "/")
                } else {
                    text.clone()
                };
                for merge_slashes in [false, true] {
                    for strip_params in [false, true] {
                        for trim_dots in [false, true] {
                            let reading =
                                resolve(&text, merge_slashes, strip_params, trim_dots, true);
                            if let Some(stripped) = without_format(&reading) {
                                out.push(stripped);
                            }
                            out.push(reading);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Percent-decoding as lenient servers do it: bad escapes kept literally; with `overlong`, two-byte
/// overlong UTF-8 (`%C0%AE`) read as the ASCII character it spells.
fn decode(input: &[u8], overlong: bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match (
            input[i],
            input.get(i + 1).copied().and_then(hex),
            input.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    if !overlong {
        return out;
    }
    let mut folded = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if matches!(out[i], 0xC0 | 0xC1) && i + 1 < out.len() {
            folded.push(((out[i] & 0x1F) << 6) | (out[i + 1] & 0x3F));
            i += 2;
        } else {
            folded.push(out[i]);
            i += 1;
        }
    }
    folded
}

/// RFC 3986 dot removal (clamped at the root) when `resolve_dots`, optionally after merging slashes,
/// dropping `;params` or trimming trailing dots and spaces; the result has no empty segments (routers
/// merge them).
fn resolve(
    text: &str,
    merge_slashes: bool,
    strip_params: bool,
    trim_dots: bool,
    resolve_dots: bool,
) -> String {
    let mut stack: Vec<String> = Vec::new();
    for raw in text.split('/').skip(1) {
        let mut segment = raw.to_owned();
        if strip_params && let Some(i) = segment.find(';') {
            segment.truncate(i);
        }
        if trim_dots && !segment.chars().all(|c| c == '.') {
            segment = segment.trim_end_matches(['.', ' ']).to_owned();
        }
        match segment.as_str() {
            "" if merge_slashes => {}
            "." if resolve_dots => {}
            ".." if resolve_dots => {
                stack.pop();
            }
            _ => stack.push(segment),
        }
    }
    let kept: Vec<&str> = stack
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    format!("/{}", kept.join("/"))
}

fn without_format(path: &str) -> Option<String> {
    let last = path.rfind('/')? + 1;
    let dot = path[last..].find('.').filter(|&i| i > 0)?;
    Some(path[..last + dot].to_owned())
}

/// `/v3/user-session` with random noise that servers remove: encodings, case, dot segments, extra
/// slashes, parameters, a format suffix.
fn session_spelling() -> impl Strategy<Value = String> {
    spelling(&["v3", "user-session"])
}

fn spelling(segments: &'static [&'static str]) -> impl Strategy<Value = String> {
    let n: usize = segments.iter().map(|s| s.len()).sum();
    (
        prop::collection::vec(0u8..8, n),
        prop::collection::vec(0u8..8, segments.len()),
        prop::collection::vec(0u8..6, segments.len()),
        0u8..4,
    )
        .prop_map(move |(chars, before, after, end)| {
            let mut out = String::new();
            let mut c = chars.iter();
            for (i, segment) in segments.iter().enumerate() {
                out.push_str(match before[i] {
                    0 | 1 => "/",
                    2 => "//",
                    3 => "/./",
                    4 => "/zz/../",
                    5 => "/%2e/",
                    6 => "/zz/%2E%2e/",
                    _ => "/zz;p=/../",
                });
                for ch in segment.chars() {
                    match c.next().copied().unwrap_or(0) {
                        0..=3 => out.push(ch),
                        4 => out.push(ch.to_ascii_uppercase()),
                        5 => out.push_str(&format!("%{:02x}", ch as u8)),
                        6 => out.push_str(&format!("%{:02X}", ch as u8)),
                        _ => out.push_str(&format!("%{:02X}", ch.to_ascii_uppercase() as u8)),
                    }
                }
                out.push_str(match after[i] {
                    0..=2 => "",
                    3 => ";x=1",
                    4 => "%3Bx",
                    _ => ";",
                });
            }
            out.push_str(match end {
                0 => "",
                1 => "/",
                2 => ".json",
                _ => "/below",
            });
            out
        })
}

proptest! {
    // No regression file in the source tree: cases found once belong in the unit tables of
    // `src/policy.rs`.
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn nothing_panics(path in any_path(), method in method()) {
        for policy in POLICIES.iter() {
            let _ = decide(policy, &method, &path);
        }
    }

    #[test]
    fn normalize_is_idempotent(path in any_path()) {
        if let Ok(once) = normalize(&path) {
            let again = normalize(&once);
            prop_assert_eq!(again.as_deref(), Ok(&*once));
            prop_assert!(once.is_ascii() && once.starts_with('/'), "{once:?}");
        }
    }

    #[test]
    fn a_path_and_its_normal_form_get_the_same_decision(path in any_path(), method in method()) {
        if let Ok(normal) = normalize(&path) {
            for policy in POLICIES.iter() {
                prop_assert_eq!(decide(policy, &method, &path), decide(policy, &method, &normal));
            }
        }
    }

    #[test]
    fn whatever_normalizes_to_the_session_endpoint_is_denied(path in any_path(), method in method()) {
        if let Ok(normal) = normalize(&path).map(|n| n.to_ascii_lowercase())
            && (normal == "/v3/user-session" || normal.starts_with("/v3/user-session/"))
        {
            for policy in POLICIES.iter() {
                prop_assert_eq!(decide(policy, &method, &path), Ok(Err(Denial::SessionEndpoint)));
            }
        }
    }

    #[test]
    fn spellings_of_the_session_endpoint_never_get_through(path in session_spelling(), method in method()) {
        for policy in POLICIES.iter() {
            let decision = decide(policy, &method, &path);
            prop_assert!(
                matches!(decision, Err(()) | Ok(Err(Denial::SessionEndpoint))),
                "{method} {path}: {decision:?}"
            );
        }
    }

    #[test]
    fn spellings_of_a_denied_path_never_get_through(path in spelling(&["v3", "content_types", "blog"])) {
        let deny = &POLICIES[4];
        for method in ["DELETE", "delete", "Delete"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let decision = decide(deny, &method, &path);
            prop_assert!(matches!(decision, Err(()) | Ok(Err(_))), "{method} {path}: {decision:?}");
        }
    }

    /// The differential check: whatever the proxy forwards, every upstream reading of it is a request
    /// the same policy admits, so no server's reading reaches the session endpoint, a denied path or
    /// anything outside the allow rules.
    #[test]
    fn every_upstream_reading_of_a_forwarded_path_is_admitted(
        path in prop_oneof![
            1 => token_path(),
            3 => segment_path(),
        ],
        method in method(),
    ) {
        let readings = upstream_readings(&path);
        for policy in POLICIES.iter() {
            if decide(policy, &method, &path) != Ok(Ok(())) {
                continue;
            }
            for reading in &readings {
                prop_assert!(!is_session(reading), "{method} {path} reaches the session as {reading}");
                let decision = policy.check(&method, reading);
                prop_assert_eq!(decision, Ok(()), "{} {} forwarded, but read upstream as {}", method, path, reading);
            }
        }
    }
}

/// Query parameters, biased towards names that servers read as `api_key`, a credential or a method
/// override, spelled in every way a lenient server still reads them so.
const PARAMS: &[&str] = &[
    "x=1",
    "include_count=true",
    "q=a+b",
    "",
    "api_key=blt_a",
    "api_key=blt%5Fa",
    "api_key=blt%255Fa",
    "api_key=a+b",
    "API_KEY=blt_b",
    "api-key=blt_b",
    "api.key=blt_b",
    "api+key=blt_b",
    "api%5Fkey=blt_b",
    "api%255Fkey=blt_b",
    "api_key[]=blt_b",
    "api_key%5B%5D=blt_b",
    "apikey=blt_b",
    "authtoken=t",
    "AuthToken=t",
    "auth%74oken=t",
    "authtoken[]=t",
    "authorization=t",
    "AUTHORIZATION",
    "_method=DELETE",
    "_METHOD=DELETE",
    "%5Fmethod=DELETE",
    "%255Fmethod=DELETE",
    "-method=DELETE",
    "x-http-method-override=DELETE",
    "method=GET",
    "a=%26authtoken%3Dt",
    "a=%2F..%2Fuser-session",
    // Structure in escapes: a decode-then-parse reader sees another parameter.
    "api_key%3Dblt_b",
    "x=1%26api_key%3Dblt_b",
    "x=1%3Bapi_key%3Dblt_b",
    "x=%2526api_key%253Dblt_b",
    "x=%26_method%3DDELETE",
    "api_key=blt_a%26api_key%3Dblt_b",
    "x=%23",
    // PHP reads an unmatched `[` in a name as `_`.
    "api[key=blt_b",
    "api%5Bkey=blt_b",
    "auth[token=t",
    "_method[=DELETE",
    "api_key[x]=blt_b",
];

fn query() -> impl Strategy<Value = String> {
    let param = (
        prop::sample::select(&["&", "&", ";"][..]),
        prop::sample::select(PARAMS),
    );
    prop::collection::vec(param, 1..5).prop_map(|params| {
        let mut out = String::new();
        for (i, (separator, param)) in params.into_iter().enumerate() {
            if i > 0 {
                out.push_str(separator);
            }
            out.push_str(param);
        }
        out
    })
}

/// Request targets: the paths above, now and then behind a `//x` that a server may read as an
/// authority, with a query or not.
fn request_target() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        1 => token_path(),
        3 => segment_path(),
        1 => segment_path().prop_map(|p| format!("//x{p}")),
    ];
    (path, prop::option::of(query())).prop_map(|(path, query)| match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    })
}

/// How servers may read a path the proxy sends: strictly as it is, and leniently (`//` read as an
/// authority and a path, percent-decoded once or twice, the decoded text parsed again so that a
/// decoded `?` or `#` ends the path, `..` resolved or not, slashes merged or not, `;params` cut or
/// kept, a `.json` suffix dropped). Each reading in `/a/b` form.
fn sent_readings(sent: &str) -> BTreeSet<String> {
    let mut starts = vec![sent.to_owned()];
    if let Some(rest) = sent.strip_prefix("//") {
        starts.push(
            rest.find('/')
                .map_or("/".to_owned(), |i| rest[i..].to_owned()),
        );
    }
    let mut out = BTreeSet::from([sent.to_owned()]);
    for start in &starts {
        let once = decode(start.as_bytes(), false);
        for bytes in [decode(&once, false), once] {
            let decoded = String::from_utf8_lossy(&bytes).into_owned();
            // Decode, then parse: what a decoded `?` or `#` follows is a query or a fragment.
            let parsed = decoded
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_owned();
            for (text, resolve_dots) in [false, true]
                .into_iter()
                .flat_map(|r| [(decoded.clone(), r), (parsed.clone(), r)])
            {
                for merge_slashes in [false, true] {
                    for strip_params in [false, true] {
                        let reading =
                            resolve(&text, merge_slashes, strip_params, false, resolve_dots);
                        if let Some(stripped) = without_format(&reading) {
                            out.insert(stripped);
                        }
                        out.insert(reading);
                    }
                }
            }
        }
    }
    out
}

/// The parameters of a query as `(name, value)` pairs, read the ways servers read them: as the
/// proxy does (split on `&` and `;`, then each part decoded), and decoded once or twice before
/// being split (Java's `URLDecoder.decode(getQueryString())`, hand-rolled gateways), where an
/// encoded `&`, `=`, `;` or `#` is structure.
fn query_readings(query: &str) -> Vec<Vec<(String, String)>> {
    let split = |text: &str| -> Vec<(String, String)> {
        text.split('#')
            .next()
            .unwrap_or_default()
            .split(['&', ';'])
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    };
    let once = String::from_utf8_lossy(&decode(query.as_bytes(), false)).into_owned();
    let twice = String::from_utf8_lossy(&decode(once.as_bytes(), false)).into_owned();
    vec![split(query), split(&once), split(&twice)]
}

/// A parameter or cookie name as the most lenient servers read it: decoded until it no longer
/// changes (`+` as a space), trimmed, in lower case, `-`, `.` and spaces read as `_`; then cut at
/// `[` (`api_key[]`), and, where a `[` has no `]` after it, with that `[` read as `_` as PHP does
/// (`api[key` is `api_key`).
fn lenient_names(raw: &str) -> Vec<String> {
    let mut name = raw.replace('+', " ").into_bytes();
    loop {
        let decoded = decode(&name, false);
        if decoded == name {
            break;
        }
        name = String::from_utf8_lossy(&decoded)
            .replace('+', " ")
            .into_bytes();
    }
    let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
    let read = |name: &str| name.trim().replace(['-', '.', ' '], "_");
    let mut out = vec![read(name.split('[').next().unwrap_or_default())];
    if let Some(open) = name.find('[')
        && !name[open..].contains(']')
    {
        out.push(read(&format!("{}_{}", &name[..open], &name[open + 1..])));
    }
    out
}

proptest! {
    // No regression file in the source tree: cases found once belong in the unit tables of
    // `src/policy.rs` and `src/proxy/target.rs`.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// What is sent is what was judged, and every reading of it gets the proxy's decision: no
    /// server reads a forwarded target as the session endpoint, a denied path or anything outside
    /// the allow rules.
    #[test]
    fn the_sent_target_reads_as_it_was_judged(raw in request_target(), method in method()) {
        // A target `http::Uri` refuses never reaches the proxy: hyper answers 400 itself.
        let Ok(uri) = raw.parse::<Uri>() else { return Ok(()) };
        let Ok(judged) = target::judge(&method, &uri, ClientCredentials::Strip) else {
            return Ok(());
        };
        let sent = judged.path_and_query().expect("a judged target serializes");
        prop_assert_eq!(sent.path(), &*judged.path, "{}", raw);
        prop_assert_eq!(sent.query(), judged.query.as_deref(), "{}", raw);
        prop_assert_eq!(judged.method.as_str(), method.as_str().to_ascii_uppercase());
        let readings = sent_readings(sent.path());
        for policy in POLICIES.iter() {
            let decision = policy.check(&judged.method, &judged.path);
            // The strict reader: the proxy's own normalizer finds nothing left to change.
            let strict = normalize(sent.path()).map(|p| policy.check(&judged.method, &p));
            prop_assert_eq!(strict, Ok(decision), "{} {}", method, raw);
            if decision.is_err() {
                continue; // refused: nothing is sent
            }
            for reading in &readings {
                prop_assert_eq!(
                    policy.check(&judged.method, reading),
                    Ok(()),
                    "{} {} sent as {}, read as {}", method, raw, sent, reading
                );
                // Deny rules and the session endpoint match in any case.
                let folded = policy.check(&judged.method, &reading.to_ascii_lowercase());
                prop_assert!(
                    !matches!(folded, Err(Denial::SessionEndpoint | Denial::DenyRule)),
                    "{} {} sent as {}, read as {} in another case", method, raw, sent, reading
                );
            }
        }
    }

    /// The query sent carries nothing the proxy did not judge, under any reading: no credential,
    /// no method override, and an `api_key` only as the one the request was routed by.
    #[test]
    fn the_sent_query_carries_nothing_unjudged(raw in request_target()) {
        let Ok(uri) = raw.parse::<Uri>() else { return Ok(()) };
        let Ok(judged) = target::judge(&Method::GET, &uri, ClientCredentials::Strip) else {
            return Ok(());
        };
        let sent = judged.path_and_query().expect("a judged target serializes");
        for (reading, params) in query_readings(sent.query().unwrap_or_default()).iter().enumerate() {
            for (name, value) in params {
                for read in lenient_names(name) {
                    prop_assert!(
                        !matches!(
                            read.as_str(),
                            "authtoken" | "authorization" | "_method" | "x_http_method_override"
                        ),
                        "{} sent with {}={} (reading {})", raw, name, value, reading
                    );
                    if read == "api_key" {
                        prop_assert_eq!(name, "api_key", "{} (reading {})", raw, reading);
                        // The proxy's own reading decodes the value once; the others have.
                        let value = if reading == 0 {
                            String::from_utf8_lossy(&decode(value.as_bytes(), false)).into_owned()
                        } else {
                            value.clone()
                        };
                        prop_assert_eq!(
                            Some(value.as_str()),
                            judged.api_key.as_deref(),
                            "{} (reading {})", raw, reading
                        );
                    }
                }
            }
        }
        // Only credentials are taken out of a query.
        let kept = |q: &str| -> Vec<String> {
            q.split(['&', ';'])
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let name = p.split_once('=').map_or(*p, |(n, _)| n);
                    !lenient_names(name)
                        .iter()
                        .any(|n| matches!(n.as_str(), "authtoken" | "authorization"))
                })
                .map(str::to_owned)
                .collect()
        };
        let received = uri.query().map(kept).unwrap_or_default();
        prop_assert_eq!(sent.query().map(kept).unwrap_or_default(), received, "{}", raw);
    }
}
