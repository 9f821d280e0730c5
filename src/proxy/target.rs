//! Judging a request's target: the method, path and query that the policy checks are the ones that
//! go upstream. [`judge`] is one pure step, so the two cannot drift apart.
//!
//! The rule: **the target sent upstream is exactly the one the policy judged (re-serialized from the
//! normalized form), or the request is refused as ambiguous.** The method is sent in upper case, as
//! it was judged (`delete` is not judged as one method and run as another); the path is sent in the
//! form [`normalize`] gives it, which the policy checked; the query is sent as received, less the
//! client credentials it carried. Query parameter names are read as the most lenient server reads
//! them (decoded more than once, any case, `-`, `.` or a space for `_`, `[]` cut, an unmatched `[`
//! read as `_`): a name that such a server reads as `api_key` but that is spelled otherwise, and
//! `_method` in any spelling, are refused, since the upstream might read them where the proxy did
//! not. So is a query that, percent-decoded before it is split, reads as carrying any of those or
//! another `api_key`.
//!
//! Pure: no I/O, no logging. Nothing is allocated for a target already in normal form.
use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::{Method, Uri};

use super::error::{BadRequest, ProxyError};
use crate::policy::{ClientCredentials, normalize};

/// What the policy judges and what goes upstream, one and the same.
#[derive(Debug)]
pub struct Target<'r> {
    /// In upper case.
    pub method: Method,
    /// In normal form ([`normalize`]).
    pub path: Cow<'r, str>,
    /// The query to send: as received, less client credentials; `None` when nothing is left.
    pub query: Option<Cow<'r, str>>,
    /// The `api_key` query parameter, decoded, when there is one.
    pub api_key: Option<Cow<'r, str>>,
    /// As received; sent as it is when it already says exactly `path?query`.
    raw: &'r PathAndQuery,
}

impl Target<'_> {
    /// The path and query sent upstream, re-serialized from what was judged.
    pub fn path_and_query(&self) -> Result<PathAndQuery, BadRequest> {
        let unchanged = self.raw.as_str().starts_with('/')
            && self.path == self.raw.path()
            && self.query.as_deref() == self.raw.query();
        if unchanged {
            // Shares the received bytes: the usual case allocates nothing.
            return Ok(self.raw.clone());
        }
        let mut text = String::with_capacity(self.raw.as_str().len());
        text.push_str(&self.path);
        if let Some(query) = &self.query {
            text.push('?');
            text.push_str(query);
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(text))
            .map_err(|_| BadRequest::Malformed("the request target is not a valid URI"))
    }
}

/// Judges a request's method and target: the normalized method, path and query to check and to
/// forward, or why the request is refused (405 for `CONNECT`/`TRACE`/`TRACK` in any case, 400 for
/// an ambiguous path or query, 401 for credentials in the query when `credentials` is `Reject`).
pub fn judge<'r>(
    method: &Method,
    uri: &'r Uri,
    credentials: ClientCredentials,
) -> Result<Target<'r>, ProxyError> {
    let method = normalize_method(method)?;
    let raw = uri
        .path_and_query()
        .ok_or(BadRequest::Malformed("the request target must be a path"))?;
    let path = normalize(raw.path()).map_err(BadRequest::Path)?;
    let query = judge_query(raw.query(), credentials)?;
    Ok(Target {
        method,
        path,
        query: query.forward,
        api_key: query.api_key,
        raw,
    })
}

/// The method in upper case, unless it is one the proxy never forwards.
fn normalize_method(method: &Method) -> Result<Method, ProxyError> {
    let method = if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        // Upper-casing keeps a token a token.
        Method::from_bytes(method.as_str().to_ascii_uppercase().as_bytes())
            .map_err(|_| BadRequest::Malformed("the method is not a valid token"))?
    } else {
        method.clone()
    };
    // CONNECT would make an open tunnel; TRACE (and IIS's TRACK) would echo the injected token back.
    if method == Method::CONNECT || method == Method::TRACE || method.as_str() == "TRACK" {
        return Err(ProxyError::MethodNotAllowed(method));
    }
    Ok(method)
}

/// What a query parameter or cookie name means to a lenient server, and so to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// Exactly `api_key`.
    ApiKey,
    /// Read as `api_key` by some servers, but spelled otherwise (`API_KEY`, `api-key`, `api%5Fkey`,
    /// `api_key[]`).
    ApiKeyLookalike,
    /// `authtoken` or `authorization`, in any spelling.
    Credential,
    /// `_method` (Rails, Laravel, Express's method-override) or a method-override header's name as a
    /// parameter, in any spelling.
    MethodOverride,
    Other,
}

/// Classifies a parameter or cookie name as the most lenient server reads it.
pub fn classify_name(raw: &[u8]) -> Name {
    let plain = raw
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        // Lower-case letters, digits and `_` read the same to every server.
        return meaning(raw, raw);
    }
    let decoded = decoded_name(raw);
    // PHP and `qs` read `api_key[]` as `api_key`: the name ends at the first `[`.
    let open = decoded.iter().position(|&b| b == b'[');
    let name = meaning(raw, &lenient(&decoded[..open.unwrap_or(decoded.len())]));
    match open {
        // PHP reads a `[` with no `]` after it as `_` and keeps the rest: `api[key` is `api_key`.
        Some(open) if name == Name::Other && !decoded[open..].contains(&b']') => {
            let mut php = decoded[..open].to_vec();
            php.push(b'_');
            let rest = &decoded[open + 1..];
            php.extend_from_slice(
                &rest[..rest.iter().position(|&b| b == b'[').unwrap_or(rest.len())],
            );
            meaning(raw, &lenient(&php))
        }
        _ => name,
    }
}

/// What a name, as `read` by some server, means when the client spelled it `raw`.
fn meaning(raw: &[u8], read: &[u8]) -> Name {
    match read {
        b"api_key" if raw == b"api_key" => Name::ApiKey,
        b"api_key" => Name::ApiKeyLookalike,
        b"authtoken" | b"authorization" => Name::Credential,
        b"_method" | b"x_http_method_override" | b"x_http_method" | b"x_method_override" => {
            Name::MethodOverride
        }
        _ => Name::Other,
    }
}

/// A name decoded until it no longer changes (`+` is a space), cut at a NUL.
fn decoded_name(raw: &[u8]) -> Vec<u8> {
    let mut name = raw.to_vec();
    // Each pass that changes something shrinks the name or turns a `+` into a space, so a few
    // passes reach the fixed point of any real name; the bound is only a backstop.
    for _ in 0..8 {
        let decoded = form_decode(&name);
        if decoded == name {
            break;
        }
        name = decoded;
    }
    if let Some(end) = name.iter().position(|&b| b == 0) {
        name.truncate(end);
    }
    name
}

/// A decoded name as the most lenient reader sees it: trimmed, in lower case, with `-`, `.` and
/// spaces read as `_` (PHP turns `.` and spaces into `_`).
fn lenient(name: &[u8]) -> Vec<u8> {
    let start = name
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    name[start..end]
        .iter()
        .map(|&b| match b.to_ascii_lowercase() {
            b'-' | b'.' | b' ' => b'_',
            b => b,
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding as lenient servers do it: `+` is a space, a valid
/// `%XX` is its byte, anything else is kept as it is.
fn form_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(input.get(i + 1)), hex(input.get(i + 2)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(if input[i] == b'+' { b' ' } else { input[i] });
        i += 1;
    }
    out
}

#[derive(Default)]
struct Query<'r> {
    forward: Option<Cow<'r, str>>,
    api_key: Option<Cow<'r, str>>,
}

/// The query's `api_key`, and the query to forward. Parameters are separated by `&`, and also by
/// `;`, which some servers (older CGI and Python stacks) read as a separator too.
fn judge_query(
    query: Option<&str>,
    credentials: ClientCredentials,
) -> Result<Query<'_>, ProxyError> {
    let Some(query) = query else {
        return Ok(Query::default());
    };
    let mut api_key = None;
    let mut api_keys = 0;
    let (mut carries_credentials, mut overrides, mut lookalike) = (false, false, false);
    for (_, param) in params(query) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match classify_name(name.as_bytes()) {
            Name::ApiKey => {
                api_keys += 1;
                api_key = Some(value);
            }
            Name::ApiKeyLookalike => lookalike = true,
            Name::Credential => carries_credentials = true,
            Name::MethodOverride => overrides = true,
            Name::Other => {}
        }
    }
    if carries_credentials && credentials == ClientCredentials::Reject {
        return Err(ProxyError::ClientCredentialsRejected);
    }
    // Rack and Express turn a POST into a DELETE with `_method`: the policy would judge one method
    // and the upstream run another.
    if overrides {
        return Err(BadRequest::Malformed(
            "method-override parameters (`_method`) are refused: send the real method",
        )
        .into());
    }
    if lookalike {
        return Err(BadRequest::Malformed(
            "a query parameter that some servers read as `api_key` is spelled otherwise (case, `-`, `.`, `[]` or an escape): send the stack key as `api_key`",
        )
        .into());
    }
    if api_keys > 1 {
        return Err(BadRequest::Malformed("more than one api_key query parameter").into());
    }
    let forward = if carries_credentials {
        without_credentials(query)
    } else {
        Some(Cow::Borrowed(query))
    };
    let api_key = api_key.map(api_key_value).transpose()?;
    if let Some(sent) = &forward
        && sent.contains('%')
    {
        judge_decoded_readings(sent, api_key.as_deref())?;
    }
    Ok(Query { forward, api_key })
}

/// The query as servers read it that percent-decode it once or twice before splitting it (Java's
/// `URLDecoder.decode(getQueryString())`, gateways that decode the whole target): there an encoded
/// `&`, `;`, `=` or `#` is structure, and `x=1%26api_key%3Db` carries a second `api_key`. Under
/// such a reading the query sent must carry no credential, no override, no `api_key` spelled
/// otherwise, and at most the one `api_key` the request is routed by; anything else is refused,
/// since the proxy would have judged one query and the upstream read another.
fn judge_decoded_readings(sent: &str, routed_by: Option<&str>) -> Result<(), BadRequest> {
    const HIDDEN: &str = "the query hides a parameter in escapes (an encoded `&`, `;`, `=` or `#`) that a server decoding the query before splitting it reads as `api_key`, a credential or `_method`: send it unencoded";
    let mut text = sent.as_bytes().to_vec();
    for _ in 0..2 {
        let decoded = form_decode(&text);
        if decoded == text {
            break;
        }
        text = decoded;
        let params = text.split(|&b| b == b'#').next().unwrap_or_default();
        let mut api_keys = 0;
        for param in params.split(|&b| b == b'&' || b == b';') {
            let (name, value) = match param.iter().position(|&b| b == b'=') {
                Some(i) => (&param[..i], &param[i + 1..]),
                None => (param, &b""[..]),
            };
            match classify_name(name) {
                Name::Other => {}
                Name::ApiKey => {
                    api_keys += 1;
                    if api_keys > 1 || routed_by.map(str::as_bytes) != Some(value) {
                        return Err(BadRequest::Malformed(HIDDEN));
                    }
                }
                Name::ApiKeyLookalike | Name::Credential | Name::MethodOverride => {
                    return Err(BadRequest::Malformed(HIDDEN));
                }
            }
        }
    }
    Ok(())
}

/// The query without its credential parameters; `None` when nothing is left.
fn without_credentials(query: &str) -> Option<Cow<'_, str>> {
    let mut kept = String::with_capacity(query.len());
    for (separator, param) in params(query) {
        let name = param.split_once('=').map_or(param, |(name, _)| name);
        if classify_name(name.as_bytes()) == Name::Credential {
            continue;
        }
        if !kept.is_empty() {
            kept.push(separator.unwrap_or('&'));
        }
        kept.push_str(param);
    }
    (!kept.is_empty()).then_some(Cow::Owned(kept))
}

/// The parameters of a query, each with the separator before it.
pub(super) fn params(query: &str) -> impl Iterator<Item = (Option<char>, &str)> {
    let mut rest = Some(query);
    let mut separator = None;
    std::iter::from_fn(move || {
        let current = rest?;
        let before = separator;
        match current.find(['&', ';']) {
            Some(i) => {
                separator = Some(current.as_bytes()[i] as char);
                rest = Some(&current[i + 1..]);
                Some((before, &current[..i]))
            }
            None => {
                rest = None;
                Some((before, current))
            }
        }
    })
}

/// The `api_key` parameter's value, decoded once; refused when servers could read it differently.
fn api_key_value(raw: &str) -> Result<Cow<'_, str>, BadRequest> {
    if raw.contains('+') {
        return Err(BadRequest::Malformed(
            "`+` in the api_key query parameter is a space to some servers and a plus to others",
        ));
    }
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let once = form_decode(raw.as_bytes());
    if form_decode(&once) != once {
        return Err(BadRequest::Malformed(
            "the api_key query parameter is encoded twice; servers that decode twice read another key",
        ));
    }
    String::from_utf8(once)
        .map(Cow::Owned)
        .map_err(|_| BadRequest::Malformed("the api_key query parameter is not valid text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(method: &str, target: &str) -> Result<(String, String), String> {
        let uri: Uri = target.parse().unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let t =
            judge(&method, &uri, ClientCredentials::Strip).map_err(|e| e.reason().to_owned())?;
        let sent = t
            .path_and_query()
            .map_err(|_| "unserializable".to_owned())?;
        assert_eq!(sent.path(), t.path, "what is sent is what was judged");
        Ok((t.method.to_string(), sent.to_string()))
    }

    fn ok(method: &str, target: &str) -> (String, String) {
        (method.to_owned(), target.to_owned())
    }

    #[test]
    fn sends_the_normal_form_it_judged() {
        for (method, target, want) in [
            ("GET", "/v3/user?x=1", ok("GET", "/v3/user?x=1")),
            ("get", "/v3/user", ok("GET", "/v3/user")),
            (
                "Delete",
                "//x/v3/user-session",
                ok("DELETE", "/x/v3/user-session"),
            ),
            ("GET", "/v3//a/./b/../c/?q", ok("GET", "/v3/a/c?q")),
            ("GET", "/v3/%63t?a=%2e%2e", ok("GET", "/v3/ct?a=%2e%2e")),
            ("GET", "/v3/a%3bx", ok("GET", "/v3/a;x")),
            ("GET", "/?x", ok("GET", "/?x")),
            ("PROPFIND", "/v3", ok("PROPFIND", "/v3")),
            ("propfind", "/v3", ok("PROPFIND", "/v3")),
        ] {
            assert_eq!(judged(method, target), Ok(want), "{method} {target}");
        }
    }

    #[test]
    fn a_target_in_normal_form_is_sent_as_received() {
        let uri: Uri = "/v3/content_types/blog?include_count=true".parse().unwrap();
        let target = judge(&Method::GET, &uri, ClientCredentials::Strip).unwrap();
        assert!(matches!(target.path, Cow::Borrowed(_)));
        assert!(matches!(target.query, Some(Cow::Borrowed(_))));
        let sent = target.path_and_query().unwrap();
        // The same bytes, shared rather than copied.
        assert_eq!(
            sent.as_str().as_ptr(),
            uri.path_and_query().unwrap().as_str().as_ptr()
        );
    }

    #[test]
    fn refuses_what_it_cannot_judge() {
        for (method, target, reason) in [
            ("TRACE", "/v3", "method_not_allowed"),
            ("trace", "/v3", "method_not_allowed"),
            ("Track", "/v3", "method_not_allowed"),
            ("connect", "/v3", "method_not_allowed"),
            ("GET", "/v3/a%2fb", "bad_request"),
            ("GET", "/v3?_method=DELETE", "bad_request"),
            ("GET", "/v3?API_KEY=b", "bad_request"),
            ("GET", "/v3?api_key=a&api_key=a", "bad_request"),
            ("GET", "*", "bad_request"),
        ] {
            assert_eq!(
                judged(method, target),
                Err(reason.to_owned()),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn names_are_read_as_lenient_servers_read_them() {
        use Name::*;
        for (name, want) in [
            ("api_key", ApiKey),
            ("API_KEY", ApiKeyLookalike),
            ("Api_Key", ApiKeyLookalike),
            ("api-key", ApiKeyLookalike),
            ("api.key", ApiKeyLookalike),
            ("api+key", ApiKeyLookalike),
            ("api%20key", ApiKeyLookalike),
            ("api%5Fkey", ApiKeyLookalike),
            ("api%5fkey", ApiKeyLookalike),
            ("api%255Fkey", ApiKeyLookalike),
            ("api_key[]", ApiKeyLookalike),
            ("api_key[0]", ApiKeyLookalike),
            ("api_key%5B%5D", ApiKeyLookalike),
            ("api_key%00x", ApiKeyLookalike),
            // PHP: an unmatched `[` is `_`.
            ("api[key", ApiKeyLookalike),
            ("api%5Bkey", ApiKeyLookalike),
            ("API[KEY", ApiKeyLookalike),
            ("api[key[0]", Other),
            ("_method[", MethodOverride),
            ("api[x]key", Other),
            (" api_key", ApiKeyLookalike),
            ("authtoken", Credential),
            ("AuthToken", Credential),
            ("auth%74oken", Credential),
            ("authtoken[]", Credential),
            ("authorization", Credential),
            ("AUTHORIZATION", Credential),
            ("_method", MethodOverride),
            ("_METHOD", MethodOverride),
            ("-method", MethodOverride),
            ("%5Fmethod", MethodOverride),
            ("_method[]", MethodOverride),
            ("x-http-method-override", MethodOverride),
            ("X_HTTP_METHOD", MethodOverride),
            ("x-method-override", MethodOverride),
            ("apikey", Other),
            ("api_keys", Other),
            ("method", Other),
            ("auth_token", Other),
            ("include_count", Other),
            ("%zz", Other),
            ("", Other),
        ] {
            assert_eq!(classify_name(name.as_bytes()), want, "{name}");
        }
    }

    fn query(q: &str, mode: ClientCredentials) -> Result<(Option<String>, Option<String>), String> {
        judge_query(Some(q), mode)
            .map(|q| {
                (
                    q.forward.map(Cow::into_owned),
                    q.api_key.map(Cow::into_owned),
                )
            })
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn query_credentials_are_stripped_or_refused() {
        use ClientCredentials::*;
        let s = |v: &str| Some(v.to_owned());
        for (q, want) in [
            ("a=1&authtoken=x&b=2", (s("a=1&b=2"), None)),
            ("authtoken=x&b=2", (s("b=2"), None)),
            ("a=1;AuthToken=x;b=2", (s("a=1;b=2"), None)),
            ("authtoken=x", (None, None)),
            ("authtoken&authorization=y", (None, None)),
            ("a=%61uthtoken", (s("a=%61uthtoken"), None)),
            ("api_key=blt1&authtoken=x", (s("api_key=blt1"), s("blt1"))),
            ("api_key=blt%5F1", (s("api_key=blt%5F1"), s("blt_1"))),
            ("a&&b=", (s("a&&b="), None)),
            // Escapes that decode to no structure the proxy acts on pass as they came.
            ("q=a%20b%26c%3Dd", (s("q=a%20b%26c%3Dd"), None)),
            ("api_key=blt1&q=%23x", (s("api_key=blt1&q=%23x"), s("blt1"))),
        ] {
            assert_eq!(query(q, Strip), Ok(want), "{q}");
        }
        assert_eq!(
            query("a=1&authtoken=x", Reject),
            Err("client_credentials_rejected".to_owned())
        );
        assert_eq!(
            query("a=1&b=2", Reject),
            Ok((Some("a=1&b=2".to_owned()), None))
        );
    }

    #[test]
    fn ambiguous_api_keys_are_refused() {
        for q in [
            "api_key=a&api_key=b",
            "api_key=a;api_key=a",
            "api_key=a&Api_Key=b",
            "api_key=a+b",
            "api_key=blt%255F1",
            "api_key=%ff",
            // A second key, or another parameter, in escaped structure.
            "api_key%3Db",
            "x=1%26api_key%3Db",
            "api_key=a%26api_key%3Db",
            "api_key=a%3Bapi_key%3Da",
            "x=%2526api_key%253Db",
            "x=%26authtoken%3Dt",
            "x=%26_method%3DDELETE",
            "x=%26API_KEY%3Db",
        ] {
            assert_eq!(
                query(q, ClientCredentials::Strip),
                Err("bad_request".to_owned()),
                "{q}"
            );
        }
    }
}
