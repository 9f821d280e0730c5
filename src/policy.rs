//! Access policy: path normalization and `"METHOD /glob"` rules (docs/design.md#policy).
//!
//! Rules are checked against a *normalized* path so that spellings the upstream reads as the same
//! resource (`/v3//user-session`, `/v3/./user-session`, `/v3/%75ser-session`, `/V3/USER-SESSION`,
//! `/v3/x;p/../user-session`) cannot slip past a rule. The request path sends upstream exactly the
//! target the policy judged, re-serialized from the normalized form, or refuses the request as
//! ambiguous: a path whose structure servers read in more than one way (an encoded `/`, a
//! double-encoded escape, an encoded `?` or `#`, `..;`, `//..`, a trailing dot, bytes that are not
//! UTF-8) is refused with 400 rather than checked in one reading and executed in another. Where
//! servers differ only in how they read a segment (`;params` cut or kept, a `.json` format suffix),
//! every reading is weighed: the session endpoint and deny rules refuse if any reading matches (deny
//! rules also in any case, and `HEAD` for `GET`); allow rules admit only if every reading matches,
//! exactly, so no spelling widens what they admit. This module is pure: no I/O, no logging, and
//! nothing of the crate above it.
use std::borrow::Cow;
use std::fmt::Write as _;

use globset::{GlobBuilder, GlobMatcher};
use http::Method;

/// The session endpoint's segment: no client may log the shared session in or out, or see a login
/// response, under any API version.
const SESSION_SEGMENT: &str = "user-session";
const USER_SEGMENT: &str = "user";

/// `policy.client_credentials`: what to do with credentials a client sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCredentials {
    /// Remove `authtoken`/`authorization` sent by a client.
    Strip,
    /// Refuse a request that carries them, with 401.
    Reject,
}

/// `policy.session_endpoint`: what the proxy does with a client's own login and logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionEndpoint {
    /// Answer exactly `POST /v3/user-session` and `DELETE /v3/user-session` itself, with the
    /// service account's user object and a placeholder token; nothing is forwarded.
    Emulate,
    /// Refuse them with 403, like every other request to the session endpoint.
    Deny,
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
    #[error("the path has a malformed percent-escape, or escapes that do not decode to UTF-8")]
    BadEscape,
    #[error(
        "the path has an encoded '/' or '\\', or a raw '\\', whose meaning differs between servers"
    )]
    EncodedSeparator,
    #[error(
        "the path has '%25' followed by two hex digits, which a server that decodes twice reads as another character"
    )]
    DoubleEncoded,
    #[error(
        "the path has an encoded '?' or '#', which a server that decodes before it parses reads as the end of the path"
    )]
    EncodedDelimiter,
    #[error("the path has a control character (NUL, tab, CR, LF, ...)")]
    ControlCharacter,
    #[error(
        "the path has a segment that servers read differently: '..;x', '.;x' or ';x', or one that ends in '.' or starts or ends with a space"
    )]
    AmbiguousSegment,
    #[error("the path has '..' after an empty segment ('//..'), which servers resolve differently")]
    AmbiguousDotSegment,
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
        // A glob that no normalized path can match would be a rule that silently never fires.
        if let Some(problem) = unnormalized_glob(glob) {
            return Err(bad(problem));
        }
        let glob = GlobBuilder::new(glob)
            .literal_separator(true)
            .case_insensitive(case_insensitive)
            .backslash_escape(false)
            .build()
            .map_err(|_| bad("the path glob is malformed"))?
            .compile_matcher();
        Ok(Rule { method, glob })
    }

    /// Allow rules: the exact method.
    fn admits(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.glob.is_match(path)
    }

    /// Deny rules: the method in any case, and `HEAD` where `GET` is named (routers run the `GET`
    /// handler for `HEAD`).
    fn refuses(&self, method: &Method, path: &str) -> bool {
        let method_matches = self.method.as_ref().is_none_or(|m| {
            let asked = method.as_str();
            m.as_str().eq_ignore_ascii_case(asked)
                || (*m == Method::GET && asked.eq_ignore_ascii_case("HEAD"))
        });
        method_matches && self.glob.is_match(path)
    }
}

/// Why a rule's glob could never match a normalized path, if it could not.
fn unnormalized_glob(glob: &str) -> Option<&'static str> {
    if glob == "/" {
        return None;
    }
    for segment in glob[1..].split('/') {
        if matches!(segment, "" | "." | "..") {
            return Some(
                "the path glob has an empty, '.' or '..' segment; write it as requests are normalized (\"/v3/a/b\")",
            );
        }
        if segment.ends_with('.') || !carries_only_canonical_text(segment) {
            return Some(
                "the path glob has ';', '\\', a space, a trailing '.', non-ASCII text or a percent-escape that normalized paths never contain (rules also match paths with their ;params cut, so leave those out); escape only characters outside [A-Za-z0-9-._~!$&'()*+,;=:@], in upper case (\"%20\")",
            );
        }
    }
    None
}

/// Whether a glob segment has only what a normalized path can carry: escapes in upper case of bytes
/// that normalization keeps encoded, and no `\`, space, control or non-ASCII (nor `;`).
fn carries_only_canonical_text(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let encoded = bytes.get(i + 1..i + 3).and_then(upper_hex);
                if !encoded.is_some_and(|b| stays_encoded(b) && !refused_byte(b)) {
                    return false;
                }
                i += 3;
            }
            b if refused_byte(b) || !b.is_ascii_graphic() => return false,
            _ => i += 1,
        }
    }
    true
}

/// Bytes a rule's glob may not name: separators and controls, which no normalized path carries, and
/// `;`, since rules also match the reading with `;params` cut.
fn refused_byte(b: u8) -> bool {
    matches!(b, b'/' | b'\\' | b';') || b < 0x20 || b == 0x7F
}

fn upper_hex(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// Rules in the policy's syntax that select requests rather than refuse them (the cache's
/// `paths`): matched like allow rules, exactly, against the normalized path that is sent.
#[derive(Debug)]
pub struct PathRules(Vec<Rule>);

impl PathRules {
    pub fn new(rules: &[String]) -> Result<PathRules, PolicyError> {
        rules
            .iter()
            .map(|r| Rule::parse(r, false))
            .collect::<Result<_, _>>()
            .map(PathRules)
    }

    /// Whether every rule names `GET` (or any method).
    pub fn only_get(&self) -> bool {
        self.0
            .iter()
            .all(|r| r.method.as_ref().is_none_or(|m| *m == Method::GET))
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.0.iter().any(|r| r.admits(method, path))
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
    /// Read by the request path before the policy: [`Policy::check`] refuses the session endpoint
    /// whatever this says.
    pub session_endpoint: SessionEndpoint,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow: Vec::new(),
            deny: Vec::new(),
            client_credentials: ClientCredentials::Strip,
            session_endpoint: SessionEndpoint::Emulate,
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
            session_endpoint: SessionEndpoint::Emulate,
        })
    }

    /// Checks a request; `path` must come from [`normalize`]. The session endpoint and deny rules
    /// refuse a request if any reading of its path matches; allow rules admit it only if every
    /// reading is admitted.
    pub fn check(&self, method: &Method, path: &str) -> Result<(), Denial> {
        self.admit(method, path).map(|_| ())
    }

    /// [`Policy::check`], and what else the request path needs to know of the path, from one
    /// reading of it.
    pub fn admit(&self, method: &Method, path: &str) -> Result<Admitted, Denial> {
        let readings = readings(path);
        // Each reading's endpoint is found once, for the session endpoint and the user endpoint.
        // `/user-session`, `/v3/user-session` or `/v2/USER-SESSION` and anything below: the
        // session stays out of reach whatever older API versions the upstream still routes.
        let mut user_endpoint = false;
        for reading in readings.iter() {
            let (target, below) = endpoint(reading);
            if target.eq_ignore_ascii_case(SESSION_SEGMENT) {
                return Err(Denial::SessionEndpoint);
            }
            user_endpoint |= target.eq_ignore_ascii_case(USER_SEGMENT) && !below;
        }
        if self
            .deny
            .iter()
            .any(|r| readings.iter().any(|p| r.refuses(method, p)))
        {
            return Err(Denial::DenyRule);
        }
        let admitted = |p: &Cow<'_, str>| self.allow.iter().any(|r| r.admits(method, p));
        if !self.allow.is_empty() && !readings.iter().all(admitted) {
            return Err(Denial::NotAllowed);
        }
        Ok(Admitted { user_endpoint })
    }
}

/// What [`Policy::admit`] learned of a request it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// A server may read the path as the user endpoint, `/v3/user` (any version, any case,
    /// `;params`, a format suffix): its answer, the user object, carries the session's token
    /// (docs/design.md#answers-that-carry-the-token).
    pub user_endpoint: bool,
}

/// The ways servers read a normalized path: as it is; with `;params` cut from every segment (Tomcat,
/// Spring, some proxies); and each of those without a `.json`-style format suffix on the last
/// segment (Rails routes `/v3/stacks.json` to `/v3/stacks`). At most four, kept on the stack: nearly
/// every path has only the first, and this runs for every request (docs/design.md#performance).
fn readings(path: &str) -> Readings<'_> {
    let mut out = Readings([Some(Cow::Borrowed(path)), None, None, None]);
    let mut len = 1;
    if path.as_bytes().contains(&b';') {
        let cut: Vec<&str> = path
            .split('/')
            .map(|s| s.split(';').next().unwrap_or_default())
            .collect();
        out.0[len] = Some(Cow::Owned(cut.join("/")));
        len += 1;
    }
    let cut = len;
    for i in 0..cut {
        let bare = out.0[i]
            .as_deref()
            .and_then(without_format)
            .map(str::to_owned);
        if let Some(bare) = bare {
            out.0[len] = Some(Cow::Owned(bare));
            len += 1;
        }
    }
    out
}

/// The readings of one path (see [`readings`]).
struct Readings<'a>([Option<Cow<'a, str>>; 4]);

impl<'a> Readings<'a> {
    fn iter(&self) -> impl Iterator<Item = &Cow<'a, str>> {
        self.0.iter().flatten()
    }
}

/// The segment that names the endpoint, after an API version if the path starts with one
/// (`v3`, `V2`), and whether segments follow it.
fn endpoint(path: &str) -> (&str, bool) {
    /// The first segment of `rest`, and what follows its `/`, if one does.
    fn segment(rest: &str) -> (&str, Option<&str>) {
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        }
    }
    // What comes before the first `/` (nothing, in a normalized path) names no endpoint.
    let Some(rest) = segment(path).1 else {
        return ("", false);
    };
    let (first, rest) = segment(rest);
    let is_version = first.len() > 1
        && first.starts_with(['v', 'V'])
        && first[1..].bytes().all(|b| b.is_ascii_digit());
    match (is_version, rest) {
        (false, rest) => (first, rest.is_some()),
        (true, Some(rest)) => {
            let (target, below) = segment(rest);
            (target, below.is_some())
        }
        (true, None) => ("", false),
    }
}

fn without_format(path: &str) -> Option<&str> {
    let last = path.bytes().rposition(|b| b == b'/')? + 1;
    let dot = path[last..]
        .bytes()
        .position(|b| b == b'.')
        .filter(|&i| i > 0)?;
    Some(&path[..last + dot])
}

/// Normalizes a request path (without query) for rule matching, or refuses it (400) when servers
/// could read it in different ways. Each segment is percent-decoded once (as the upstream does),
/// checked, and re-encoded canonically (`%XX` in upper case for every byte outside
/// `[A-Za-z0-9-._~!$&'()*+,;=:@]`; `;params` are kept for [`Policy::check`] to weigh); then `.` and
/// `..` are resolved and empty segments and the trailing slash removed. The result is ASCII, and
/// normalizing it again returns it unchanged.
///
/// The result is also what goes upstream: the target sent upstream is exactly the one the policy
/// judged (re-serialized from this normalized form), or the request is refused as ambiguous. So no
/// upstream ever sees a dot segment, a repeated slash or an escape the policy did not read. A leading
/// `//` is one more repeated slash: `//x/v3/user-session` is judged, and forwarded, as
/// `/x/v3/user-session`. Merging it (rather than refusing it) is safe because the forwarded form
/// never starts with `//`, so no server can read `x` as an authority; and it keeps clients working
/// whose base URL ends in `/` (`http://proxy:8080/` + `/v3/…`).
///
/// Borrowed when the path is already in normal form (nearly all traffic): nothing is allocated.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_segments(path)
}

/// The common case, `/v3/content_types/blog/entries`: letters, digits, `-`, `_` and single
/// slashes are already canonical, so [`normalize`] skips the per-segment work. One pass: each byte
/// is one of those, and no `/` follows a `/`.
fn is_plain(path: &str) -> bool {
    path.len() > 1
        && path.starts_with('/')
        && !path.ends_with('/')
        && path.as_bytes().windows(2).all(|pair| match pair[1] {
            b'/' => pair[0] != b'/',
            b => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'),
        })
}

/// [`normalize`] segment by segment.
fn normalize_segments(path: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let segments = rest
        .split('/')
        .map(canonical_segment)
        .collect::<Result<Vec<_>, _>>()?;
    // nginx merges slashes before it resolves dot segments; RFC 3986 resolution (WHATWG URL parsers,
    // e.g. Node's `new URL`) counts the empty segment: `/a//../b` is `/b` to one and `/a/b` to the
    // other. Refuse when the two disagree.
    let merged = resolve_dots(segments.iter().filter(|s| !s.is_empty()))?;
    let kept = resolve_dots(segments.iter())?;
    if !kept.iter().filter(|s| !s.is_empty()).eq(merged.iter()) {
        return Err(PathError::AmbiguousDotSegment);
    }
    if merged.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let mut out = String::with_capacity(path.len());
    for s in merged {
        out.push('/');
        out.push_str(s);
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

fn resolve_dots<'s>(segments: impl Iterator<Item = &'s String>) -> Result<Vec<&'s str>, PathError> {
    let mut out = Vec::new();
    for segment in segments {
        match segment.as_str() {
            "." => {}
            // nginx answers 400 where RFC 3986 would stop at the root; refusing is the safe reading.
            ".." => {
                out.pop().ok_or(PathError::AboveRoot)?;
            }
            s => out.push(s),
        }
    }
    Ok(out)
}

/// One segment in canonical form, or why it has none.
fn canonical_segment(raw: &str) -> Result<String, PathError> {
    let decoded = percent_decode(raw)?;
    // Decoded once, as the upstream does. `%2F` and `%5C` are separators to some servers and data to
    // others; `\` is a separator to some.
    if decoded.iter().any(|&b| b == b'/' || b == b'\\') {
        return Err(PathError::EncodedSeparator);
    }
    // `%3F` and `%23` are data to a strict server, but one that decodes the target before parsing
    // it (a gateway reusing nginx's `$uri`, a hand-rolled router) reads `/v3/user-session%3F` as
    // `/v3/user-session` and a query. No CMA path carries them.
    if decoded.iter().any(|&b| b == b'?' || b == b'#') {
        return Err(PathError::EncodedDelimiter);
    }
    // CR, LF and tab are trimmed or split on by some servers and never part of a CMA path.
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7F) {
        return Err(PathError::ControlCharacter);
    }
    // `%2575` is `%75` to us and `u` to a server that decodes twice. No CMA path has a literal `%`
    // before two hex digits, so refusing costs nothing; a `%` before anything else is kept as `%25`.
    if decoded
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(PathError::DoubleEncoded);
    }
    // Overlong forms (`%C0%AE` for `.`) and stray bytes are not UTF-8; some decoders map them to ASCII.
    let text = String::from_utf8(decoded).map_err(|_| PathError::BadEscape)?;
    // Matrix parameters (`;x=1`) are cut by some servers before routing and kept by others, so
    // they stay in the normalized path and `Policy::check` weighs both readings. `%3B` becomes `;`:
    // servers differ on whether they decode before or after cutting. Where the readings differ in
    // structure (`..;x` is `..` to one server and a name to another), the path is refused.
    let name = text.split(';').next().unwrap_or_default();
    let is_dot_segment = matches!(name, "." | "..");
    if name.len() < text.len() && (name.is_empty() || is_dot_segment) {
        return Err(PathError::AmbiguousSegment);
    }
    // Windows-style servers drop a trailing dot or space (`user-session.`), others keep them; no CMA
    // path segment ends or starts so.
    let odd_end = |s: &str| s.ends_with('.') || s.starts_with(' ') || s.ends_with(' ');
    if !is_dot_segment && (odd_end(name) || odd_end(&text)) {
        return Err(PathError::AmbiguousSegment);
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if stays_encoded(b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    Ok(out)
}

/// Bytes a canonical segment carries percent-encoded: all but unreserved characters, sub-delimiters,
/// `:` and `@`. Those are carried decoded, as the upstream reads them, so each has one spelling for
/// rules to match; the rest (space, `?`, `#`, `%`, non-ASCII, ...) has one spelling encoded.
fn stays_encoded(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b))
}

/// Decodes every `%XX` escape once; hex digits in either case.
fn percent_decode(raw: &str) -> Result<Vec<u8>, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let value = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathError::BadEscape)?;
        out.push(value);
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
