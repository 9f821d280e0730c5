//! Access policy: path normalization and `"METHOD /glob"` rules (SPEC §3 `[policy]`, §4 steps 2–3).
//!
//! Rules are checked against a *normalized* path so that spellings the upstream reads as the same
//! resource (`/v3//user-session`, `/v3/./user-session`, `/v3/%75ser-session`, `/v3/x;p/../user-session`)
//! cannot slip past a rule. What is forwarded stays the original path; a path whose meaning is
//! ambiguous (encoded `/` or `\`, NUL, `..` above the root, bad escapes) is refused instead.
//! This module is pure: no I/O, no logging.
use globset::{GlobBuilder, GlobMatcher};
use http::Method;

/// The session endpoint: no client may log the shared session in or out, or see a login response.
const SESSION_PATH: &str = "/v3/user-session";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCredentials {
    /// Remove `authtoken`/`authorization` sent by a client.
    Strip,
    /// Refuse a request that carries them, with 401.
    Reject,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("rule {rule:?}: {problem}")]
    BadRule { rule: String, problem: &'static str },
}

/// Why a path could not be normalized: it is refused with 400.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error(
        "the path has an encoded '/', '\\' or NUL, or a raw '\\', whose meaning differs between servers"
    )]
    Ambiguous,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

#[derive(Debug)]
struct Rule {
    /// `None` = any method.
    method: Option<Method>,
    glob: GlobMatcher,
}

impl Rule {
    fn parse(text: &str, case_insensitive: bool) -> Result<Rule, PolicyError> {
        let bad = |problem| PolicyError::BadRule {
            rule: text.to_owned(),
            problem,
        };
        let mut parts = text.split_whitespace();
        let (Some(method), Some(glob), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(
                "expected \"METHOD /path/glob\", e.g. \"GET /v3/content_types/**\"",
            ));
        };
        let method = match method {
            "*" => None,
            m => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| bad("the method is not a valid HTTP method"))?,
            ),
        };
        if !glob.starts_with('/') {
            return Err(bad("the path glob must start with '/'"));
        }
        // Normalized paths have no trailing slash, so neither may the glob.
        let glob = match glob.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        let glob = GlobBuilder::new(glob)
            .literal_separator(true)
            .case_insensitive(case_insensitive)
            .backslash_escape(false)
            .build()
            .map_err(|_| bad("the path glob is malformed"))?
            .compile_matcher();
        Ok(Rule { method, glob })
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.glob.is_match(path)
    }
}

/// Why a request was refused by policy, for the error body and the `denied_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    SessionEndpoint,
    DenyRule,
    NotAllowed,
    /// The request's `api_key` is not among the selected profile's `stacks`.
    StackNotServed,
}

#[derive(Debug)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    pub client_credentials: ClientCredentials,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow: Vec::new(),
            deny: Vec::new(),
            client_credentials: ClientCredentials::Strip,
        }
    }
}

impl Policy {
    /// Deny rules match case-insensitively and allow rules exactly: an unusual spelling can be refused
    /// by a deny rule but never widens what an allow rule admits.
    pub fn new(
        allow: &[String],
        deny: &[String],
        client_credentials: ClientCredentials,
    ) -> Result<Policy, PolicyError> {
        Ok(Policy {
            allow: allow
                .iter()
                .map(|r| Rule::parse(r, false))
                .collect::<Result<_, _>>()?,
            deny: deny
                .iter()
                .map(|r| Rule::parse(r, true))
                .collect::<Result<_, _>>()?,
            client_credentials,
        })
    }

    /// Checks a request; `path` must come from [`normalize`].
    pub fn check(&self, method: &Method, path: &str) -> Result<(), Denial> {
        let lower = path.to_ascii_lowercase();
        if lower == SESSION_PATH || lower.starts_with(&format!("{SESSION_PATH}/")) {
            return Err(Denial::SessionEndpoint);
        }
        if self.deny.iter().any(|r| r.matches(method, path)) {
            return Err(Denial::DenyRule);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.matches(method, path)) {
            return Err(Denial::NotAllowed);
        }
        Ok(())
    }
}

/// Normalizes a request path (without query) for rule matching: percent-escapes of unreserved
/// characters decoded and other escapes upper-cased, `;params` dropped from segments, `.` and `..`
/// resolved, empty segments and the trailing slash removed.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Ambiguous);
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let decoded = decode_segment(raw)?;
        // Matrix parameters (`;x=1`) are dropped by some servers before routing.
        let segment = match decoded.find(';') {
            Some(i) => &decoded[..i],
            None => &decoded[..],
        };
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s.to_owned()),
        }
    }
    if segments.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    Ok(out)
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathError::BadEscape)?;
        match value {
            b'/' | b'\\' | 0 => return Err(PathError::Ambiguous),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(v as char)
            }
            v => out.push_str(&format!("%{v:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::new(&s(allow), &s(deny), ClientCredentials::Strip).unwrap()
    }

    fn check(p: &Policy, method: &str, path: &str) -> Result<(), String> {
        let path = normalize(path).map_err(|e| format!("400 {e}"))?;
        p.check(&Method::from_bytes(method.as_bytes()).unwrap(), &path)
            .map_err(|d| format!("403 {d:?}"))
    }

    #[test]
    fn normalization_table() {
        for (input, want) in [
            ("/", "/"),
            ("/v3/content_types", "/v3/content_types"),
            ("/v3/content_types/", "/v3/content_types"),
            ("/v3//content_types", "/v3/content_types"),
            ("/v3/./content_types", "/v3/content_types"),
            ("/v3/x/../content_types", "/v3/content_types"),
            ("/v3/%63ontent_types", "/v3/content_types"),
            ("/v3/a%2eb", "/v3/a.b"),
            ("/v3/%2e%2E/v3/x", "/v3/x"),
            ("/v3/a%3fb", "/v3/a%3Fb"),
            ("/v3/stacks;x=/../user", "/v3/user"),
            ("/v3/user-session;jsessionid=1", "/v3/user-session"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        for (input, want) in [
            ("v3/x", PathError::NotAbsolute),
            ("/v3/%zz", PathError::BadEscape),
            ("/v3/%4", PathError::BadEscape),
            ("/v3/a%2fb", PathError::Ambiguous),
            ("/v3/a%5Cb", PathError::Ambiguous),
            ("/v3/a\\b", PathError::Ambiguous),
            ("/v3/%00", PathError::Ambiguous),
            ("/..", PathError::AboveRoot),
            ("/v3/../../x", PathError::AboveRoot),
        ] {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn session_endpoint_is_always_denied_in_every_spelling() {
        let open = policy(&[], &[]);
        for path in [
            "/v3/user-session",
            "/v3/user-session/",
            "/v3//user-session",
            "/v3/./user-session",
            "/v3/x/../user-session",
            "/v3/%75ser-session",
            "/v3/%75SER-session",
            "/V3/user-session",
            "/v3/USER-SESSION",
            "/v3/stacks;x=/../user-session",
            "/v3/user-session;x=1",
            "/v3/user-session/anything/below",
            "//v3/user-session",
        ] {
            for method in ["GET", "POST", "DELETE", "PUT", "get"] {
                assert_eq!(
                    check(&open, method, path),
                    Err("403 SessionEndpoint".to_owned()),
                    "{method} {path}"
                );
            }
        }
        assert!(check(&open, "GET", "/v3/user-sessions-report").is_ok());
        assert!(check(&open, "GET", "/v3/user").is_ok());
    }

    #[test]
    fn read_only_policy() {
        let p = policy(&["GET /v3/**"], &[]);
        assert!(check(&p, "GET", "/v3/content_types").is_ok());
        assert!(check(&p, "GET", "/v3/content_types/blog/entries/e1").is_ok());
        assert!(check(&p, "POST", "/v3/content_types").is_err());
        assert!(check(&p, "DELETE", "/v3/assets/a1").is_err());
        assert!(check(&p, "GET", "/v2/x").is_err());
    }

    #[test]
    fn deny_first_and_single_segment_star() {
        let p = policy(
            &["* /v3/**"],
            &["DELETE /v3/content_types/*", "* /v3/stacks/**"],
        );
        assert!(check(&p, "DELETE", "/v3/content_types/blog").is_err());
        assert!(check(&p, "DELETE", "/v3/content_types/blog/entries/e1").is_ok());
        assert!(check(&p, "GET", "/v3/stacks/settings").is_err());
        assert!(check(&p, "GET", "/v3/STACKS/settings").is_err());
        assert!(check(&p, "GET", "/v3/x/../stacks/settings").is_err());
        assert!(check(&p, "GET", "/v3/%73tacks/settings").is_err());
        assert!(check(&p, "GET", "/v3/content_types").is_ok());
    }

    #[test]
    fn allow_rules_do_not_widen_by_case() {
        let p = policy(&["GET /v3/content_types/blog/**"], &[]);
        assert!(check(&p, "GET", "/v3/content_types/blog/entries").is_ok());
        assert!(check(&p, "GET", "/v3/content_types/BLOG/entries").is_err());
        assert!(check(&p, "GET", "/v3/content_types/other/entries").is_err());
    }

    #[test]
    fn bad_rules_are_config_errors() {
        for rule in ["/v3/**", "GET v3/**", "GET /v3/** extra", "G(T /v3"] {
            assert!(
                Policy::new(&[rule.to_owned()], &[], ClientCredentials::Strip).is_err(),
                "{rule}"
            );
        }
    }
}
