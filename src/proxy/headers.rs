//! Small, named header operations of the request path (docs/design.md#the-request-path). Pure.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::{BadRequest, ERROR_HEADER, ProxyError};
use crate::policy::ClientCredentials;
use crate::proxy::target::{Name, classify_name};

/// The header a client may use to pick a profile; never forwarded.
pub const PROFILE_HEADER: &str = "x-cma-profile";
pub const AUTHTOKEN: &str = "authtoken";
/// [`AUTHTOKEN`] as a name to look up by value (a `&str` is parsed at every lookup).
pub static AUTHTOKEN_NAME: HeaderName = HeaderName::from_static(AUTHTOKEN);

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `expect`, which the proxy answers itself; then the
/// proxy's own response headers, which say what the proxy did, never what an upstream claims.
/// Requests lose the first [`HOP_BY_HOP`], responses all of them. `connection` comes first (see
/// [`remove_named`]).
static REMOVED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static(ERROR_HEADER),
    HeaderName::from_static(super::reads::CACHE_HEADER),
];
const HOP_BY_HOP: usize = 9;

/// Where `name` is in [`REMOVED`]: a `match` on the text, which compiles to a switch on the length
/// and one comparison, instead of a comparison with each name.
fn removed_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        ERROR_HEADER => 9,
        super::reads::CACHE_HEADER => 10,
        _ => return None,
    })
}

/// [`removed_index`] for a name in any case, as `Connection` may list it: a comparison with each
/// name, most of them settled by the length alone; nothing copied.
fn removed_index_in_any_case(name: &str) -> Option<usize> {
    REMOVED
        .iter()
        .position(|removed| removed.as_str().eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers and every header that `Connection` names. On a request this runs
/// before anything reads the headers: what a client marks as hop-by-hop never goes upstream, so it
/// must not route or otherwise decide anything either.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_named(headers, HOP_BY_HOP);
}

/// Prepares an upstream response for the client: hop-by-hop headers removed, and
/// `x-cma-auth-proxy-error` and `x-cma-auth-proxy-cache` too, so those headers always mean "the
/// proxy itself answered".
pub fn prepare_response(headers: &mut HeaderMap) {
    remove_named(headers, REMOVED.len());
}

/// Removes the first `count` headers of [`REMOVED`] and, when `Connection` is there, every header
/// it names. One pass over the (few) headers a message has, instead of a hash lookup per name: most
/// messages carry none but `connection: keep-alive`, whose `keep-alive` names a header already
/// looked for, so nothing else is looked up or allocated.
fn remove_named(headers: &mut HeaderMap, count: usize) {
    let mut present = [false; REMOVED.len()];
    let mut any = false;
    // Whether a `Connection` value may name more than a header looked for here; the usual value,
    // `keep-alive`, names only one that is.
    let mut names_more = false;
    for (name, value) in headers.iter() {
        if let Some(i) = removed_index(name.as_str()).filter(|&i| i < count) {
            present[i] = true;
            any = true;
            names_more |= i == 0 && !value.as_bytes().eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if !any {
        return;
    }
    // Names in `Connection` other than the ones looked for above, and only those the message
    // carries: `close` names none.
    let named: Vec<HeaderName> = if names_more {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| removed_index_in_any_case(name).is_none_or(|i| i >= count))
            .filter(|name| headers.contains_key(*name))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for (name, _) in REMOVED.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// What a client's header means to [`screen_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientHeader {
    Credential,
    /// Asks a server to run another method or path than the one the policy judged.
    Override,
    /// Read by the proxy (`cookie` for credentials), then forwarded.
    Cookie,
    /// Read or answered by the proxy, not forwarded: `host`, `expect`, `x-cma-profile`.
    Dropped,
    /// `api_key`: read by the profile selection, then forwarded.
    StackKey,
    /// A header the proxy acts on (the ones above, and `api_key`, framing, hop-by-hop and
    /// `x-forwarded-for`), spelled with `_` for `-` or the reverse.
    Misspelled,
    Forwarded,
}

/// The headers the proxy acts on, each in the one spelling it accepts. Servers that read `_` and
/// `-` as the same character (CGI, PHP, Rack, Django, nginx with `underscores_in_headers`) would
/// read another spelling as the header itself, behind the proxy's back: `api-key` for the stack
/// key, `x_http_method_override` for an override, `transfer_encoding` for the framing. So names
/// are compared in a canonical form (lower case, `_` as `-`), and a name that matches one of these
/// only there is refused.
static ACTED_ON: [(&str, ClientHeader); 28] = [
    (AUTHTOKEN, ClientHeader::Credential),
    ("authorization", ClientHeader::Credential),
    // Rack and Express turn a POST into a DELETE with these; IIS and Symfony route by the URL ones.
    ("x-http-method-override", ClientHeader::Override),
    ("x-http-method", ClientHeader::Override),
    ("x-method-override", ClientHeader::Override),
    ("x-original-url", ClientHeader::Override),
    ("x-rewrite-url", ClientHeader::Override),
    // Gateways (Traefik, Envoy, ingress-nginx auth hooks) and frameworks read these as the request's
    // method or path, to route or to build URLs.
    ("x-original-method", ClientHeader::Override),
    ("x-forwarded-method", ClientHeader::Override),
    ("x-original-uri", ClientHeader::Override),
    ("x-forwarded-uri", ClientHeader::Override),
    ("x-envoy-original-path", ClientHeader::Override),
    ("x-forwarded-prefix", ClientHeader::Override),
    ("cookie", ClientHeader::Cookie),
    ("host", ClientHeader::Dropped),
    ("expect", ClientHeader::Dropped),
    (PROFILE_HEADER, ClientHeader::Dropped),
    ("api_key", ClientHeader::StackKey),
    ("content-length", ClientHeader::Forwarded),
    ("x-forwarded-for", ClientHeader::Forwarded),
    // Removed before this runs; only their other spellings can still be here.
    ("connection", ClientHeader::Forwarded),
    ("keep-alive", ClientHeader::Forwarded),
    ("proxy-connection", ClientHeader::Forwarded),
    ("proxy-authorization", ClientHeader::Forwarded),
    ("te", ClientHeader::Forwarded),
    ("trailer", ClientHeader::Forwarded),
    ("transfer-encoding", ClientHeader::Forwarded),
    ("upgrade", ClientHeader::Forwarded),
];

fn classify(name: &HeaderName) -> ClientHeader {
    let name = name.as_str();
    for &(known, class) in &ACTED_ON {
        if name.len() != known.len() {
            continue;
        }
        if name == known {
            return class;
        }
        if same_canonical(name, known) {
            return match class {
                ClientHeader::Override => ClientHeader::Override,
                _ => ClientHeader::Misspelled,
            };
        }
    }
    ClientHeader::Forwarded
}

/// Whether two lower-case header names are the same once `_` and `-` read alike.
fn same_canonical(a: &str, b: &str) -> bool {
    let dash = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().map(dash).eq(b.bytes().map(dash))
}

/// What [`screen_request`] found: what [`strip_request`] removes, and which of the headers that
/// choose a profile the request carries (so that the profile selection looks up only those).
#[derive(Debug, Default, Clone, Copy)]
pub struct Screened {
    credentials: bool,
    cookie_credentials: bool,
    /// Which of [`DROPPED`] the request carries.
    dropped: [bool; 3],
    stack_key: bool,
}

impl Screened {
    /// Whether the request carries `x-cma-profile`.
    pub fn names_a_profile(&self) -> bool {
        self.dropped[2]
    }

    /// Whether the request carries an `api_key` header.
    pub fn carries_stack_key(&self) -> bool {
        self.stack_key
    }
}

/// The headers the proxy reads or answers itself and does not forward: `host` (the client sets the
/// upstream's), `expect` (the proxy has already accepted the body) and `x-cma-profile` (last: see
/// [`Screened::names_a_profile`]).
static DROPPED: [HeaderName; 3] = [
    header::HOST,
    header::EXPECT,
    HeaderName::from_static(PROFILE_HEADER),
];

/// Reads a client's request headers before anything acts on them: refuses overrides and misspelled
/// headers (400), and client credentials in `reject` mode (401), in headers and in cookies.
/// Credentials are refused before an override, so a client learns about the credentials first.
pub fn screen_request(
    headers: &HeaderMap,
    mode: ClientCredentials,
) -> Result<Screened, ProxyError> {
    // One pass to learn what the request carries; the removals only run for what is there.
    let mut found = Screened::default();
    let mut refused = None;
    for name in headers.keys() {
        match classify(name) {
            ClientHeader::Credential => found.credentials = true,
            ClientHeader::Override => {
                refused = Some(
                    "method- and URL-override headers are refused: send the real method and path",
                );
            }
            ClientHeader::Misspelled => {
                refused = Some(
                    "a header the proxy acts on is spelled with `_` for `-` (or the reverse), which some servers read as the header itself: use its usual spelling",
                );
            }
            ClientHeader::Cookie => found.cookie_credentials = cookies_carry_credentials(headers)?,
            ClientHeader::Dropped => {
                if let Some(i) = DROPPED.iter().position(|d| d == name) {
                    found.dropped[i] = true;
                }
            }
            ClientHeader::StackKey => found.stack_key = true,
            ClientHeader::Forwarded => {}
        }
    }
    if (found.credentials || found.cookie_credentials) && mode == ClientCredentials::Reject {
        return Err(ProxyError::ClientCredentialsRejected);
    }
    if let Some(why) = refused {
        return Err(BadRequest::Malformed(why).into());
    }
    Ok(found)
}

/// Removes what [`screen_request`] found: client credentials (headers and cookie pairs), `host`
/// (the client sets the upstream's), `expect` (the proxy has already accepted the body) and
/// `x-cma-profile`.
pub fn strip_request(headers: &mut HeaderMap, found: Screened) {
    if found.credentials {
        headers.remove(&AUTHTOKEN_NAME);
        headers.remove(header::AUTHORIZATION);
    }
    if found.cookie_credentials {
        strip_cookie_credentials(headers);
    }
    for (name, _) in DROPPED.iter().zip(found.dropped).filter(|(_, d)| *d) {
        headers.remove(name);
    }
}

/// The `name=value` pairs of a `Cookie` header value, trimmed.
fn cookie_pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
}

fn cookie_name(pair: &[u8]) -> &[u8] {
    let end = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
    let name = pair[..end].trim_ascii();
    // Some parsers take `"authtoken"=x` as the cookie `authtoken`.
    name.strip_prefix(b"\"")
        .and_then(|n| n.strip_suffix(b"\""))
        .unwrap_or(name)
}

/// What a cookie pair means to the most lenient server: the pair is read whole, and also split on
/// `,` as Python's `SimpleCookie` and older Java parsers do (`a=1, authtoken=x` carries a
/// credential to them); the most significant reading counts.
fn cookie_meaning(pair: &[u8]) -> Name {
    let mut meaning = Name::Other;
    for part in pair.split(|&b| b == b',') {
        match classify_name(cookie_name(part)) {
            Name::Other => {}
            Name::Credential => meaning = Name::Credential,
            refused => return refused,
        }
    }
    meaning
}

/// Whether the request's cookies carry a credential. Servers that merge cookies into request
/// parameters (PHP's `$_REQUEST`) would read an `api_key` or `_method` cookie as a parameter, so
/// those are refused (400) as the query parameters are.
fn cookies_carry_credentials(headers: &HeaderMap) -> Result<bool, BadRequest> {
    let mut credentials = false;
    for value in headers.get_all(header::COOKIE) {
        for pair in cookie_pairs(value) {
            match cookie_meaning(pair) {
                Name::Credential => credentials = true,
                Name::ApiKey | Name::ApiKeyLookalike | Name::MethodOverride => {
                    return Err(BadRequest::Malformed(
                        "a cookie named like `api_key` or `_method` is refused: some servers read cookies as request parameters",
                    ));
                }
                Name::Other => {}
            }
        }
    }
    Ok(credentials)
}

/// Rewrites the `Cookie` headers without their credential pairs; a header left empty goes.
fn strip_cookie_credentials(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = cookie_pairs(value)
                .filter(|pair| cookie_meaning(pair) != Name::Credential)
                .collect();
            // Parts of a valid header value, joined by "; ": still a valid header value.
            (!pairs.is_empty())
                .then(|| HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// Appends the client's address to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    // A static name: looking up or inserting by `&str` parses the name, and allocates it to insert.
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    // One lookup: the entry is read and written in place.
    match headers.entry(&XFF) {
        header::Entry::Vacant(entry) => {
            entry.insert(peer_value(peer));
        }
        header::Entry::Occupied(mut entry) => {
            // A prior value that is not text is replaced, as if there were none.
            let value = match entry.get().to_str() {
                Ok(prior) => HeaderValue::from_str(&format!("{prior}, {peer}")).ok(),
                Err(_) => Some(peer_value(peer)),
            };
            if let Some(value) = value {
                entry.insert(value);
            }
        }
    }
}

/// `peer` as a header value. A worker's clients are usually one address (the Pod's loopback), so
/// the last one is kept per thread rather than formatted for every request.
fn peer_value(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == peer => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&peer.to_string())
                .expect("an IP address is a valid header value");
            *last = Some((peer, value.clone()));
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("api_key", "blt1"),
            ("branch", "main"),
        ]);
        remove_hop_by_hop(&mut h);
        // The order of different field names carries no meaning (RFC 9110 §5.3).
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["api_key", "branch"]);
    }

    /// Screens and strips `h` as the request path does.
    fn prepare(h: &mut HeaderMap, mode: ClientCredentials) -> Result<(), ProxyError> {
        let found = screen_request(h, mode)?;
        strip_request(h, found);
        Ok(())
    }

    #[test]
    fn strips_client_credentials_and_profile_header() {
        let mut h = map(&[
            ("authtoken", "client-token"),
            ("authorization", "mgmt"),
            ("x-cma-profile", "a"),
            ("host", "evil.example"),
            ("expect", "100-continue"),
            ("organization_uid", "org1"),
        ]);
        prepare(&mut h, ClientCredentials::Strip).unwrap();
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["organization_uid"]);
    }

    #[test]
    fn reject_mode_refuses_credentials() {
        for (name, value) in [
            ("authtoken", "x"),
            ("authorization", "x"),
            ("cookie", "a=1; authtoken=x"),
            ("cookie", "AuthToken=x"),
        ] {
            let mut h = map(&[(name, value)]);
            assert!(
                matches!(
                    prepare(&mut h, ClientCredentials::Reject),
                    Err(ProxyError::ClientCredentialsRejected)
                ),
                "{name}: {value}"
            );
        }
        let mut h = map(&[("api_key", "x"), ("cookie", "a=1")]);
        assert!(prepare(&mut h, ClientCredentials::Reject).is_ok());
    }

    #[test]
    fn in_reject_mode_credentials_are_refused_before_a_method_override() {
        let mut h = map(&[("x-http-method-override", "DELETE"), ("authtoken", "x")]);
        assert!(matches!(
            prepare(&mut h, ClientCredentials::Reject),
            Err(ProxyError::ClientCredentialsRejected)
        ));
    }

    #[test]
    fn overrides_and_misspelled_headers_are_refused() {
        for name in [
            "x-http-method-override",
            "x_http_method_override",
            "x-http-method",
            "x_http-method",
            "x-method-override",
            "x_method_override",
            "x-original-url",
            "x_original_url",
            "x-rewrite-url",
            "x_rewrite_url",
            "x-original-method",
            "x-forwarded-method",
            "x-original-uri",
            "x_forwarded_uri",
            "x-envoy-original-path",
            "x-forwarded-prefix",
            // Headers the proxy acts on, spelled so some servers read them as those headers.
            "api-key",
            "x_cma_profile",
            "transfer_encoding",
            "content_length",
            "keep_alive",
            "proxy_connection",
            "x_forwarded_for",
        ] {
            let mut h = map(&[(name, "DELETE")]);
            assert!(
                matches!(
                    prepare(&mut h, ClientCredentials::Strip),
                    Err(ProxyError::BadRequest(_))
                ),
                "{name}"
            );
        }
        for name in [
            "api_key",
            "x-api-key",
            "x-cma-profile",
            "x_custom",
            "branch",
        ] {
            let mut h = map(&[(name, "x")]);
            assert!(prepare(&mut h, ClientCredentials::Strip).is_ok(), "{name}");
        }
    }

    #[test]
    fn cookie_credentials_are_stripped_pair_by_pair() {
        let mut h = map(&[
            ("cookie", "theme=dark; authtoken=x;Lang=en ;AUTHTOKEN=y"),
            ("cookie", "authorization=z"),
            ("cookie", "b=2"),
        ]);
        prepare(&mut h, ClientCredentials::Strip).unwrap();
        let cookies: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theme=dark; Lang=en", "b=2"]);
        // Cookies without credentials are left as they came.
        let mut h = map(&[("cookie", "a=1;b=2")]);
        prepare(&mut h, ClientCredentials::Strip).unwrap();
        assert_eq!(h["cookie"], "a=1;b=2");
        // Read whole, split on `,`, or with the name quoted.
        let mut h = map(&[("cookie", r#"a=1, AuthToken=x; "authtoken"=y; b=2,c=3"#)]);
        prepare(&mut h, ClientCredentials::Strip).unwrap();
        assert_eq!(h["cookie"], "b=2,c=3");
        for cookie in [
            "api_key=blt1",
            "API-KEY=blt1",
            "_method=DELETE",
            "a=1,api_key=blt1",
            r#""api_key"=blt1"#,
        ] {
            let mut h = map(&[("cookie", cookie)]);
            assert!(
                matches!(
                    prepare(&mut h, ClientCredentials::Strip),
                    Err(ProxyError::BadRequest(_))
                ),
                "{cookie}"
            );
        }
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_the_proxys_own_headers() {
        let mut h = map(&[
            ("x-cma-auth-proxy-error", "policy_denied"),
            ("x-cma-auth-proxy-cache", "hit"),
            (
                "connection",
                "keep-alive, X-Upstream-Hop, X-CMA-Auth-Proxy-Error",
            ),
            ("x-upstream-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "application/json"),
        ]);
        prepare_response(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
        // The proxy's own headers go even when no hop-by-hop header is there.
        let mut h = map(&[("x-cma-auth-proxy-error", "x"), ("etag", "1")]);
        prepare_response(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["etag"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1, ::1");
        // A prior value that is not text cannot hide the client's address: it is replaced.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1").unwrap(),
        );
        append_forwarded_for(&mut h, "10.0.0.9".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        // The per-thread cache of the last peer never hands out another peer's address.
        for peer in ["10.0.0.1", "10.0.0.2", "10.0.0.1"] {
            let mut h = HeaderMap::new();
            append_forwarded_for(&mut h, peer.parse().unwrap());
            assert_eq!(h["x-forwarded-for"], peer);
        }
    }

    #[test]
    fn headers_with_nothing_to_drop_are_left_as_they_are() {
        let mut h = map(&[("api_key", "blt1"), ("accept", "application/json")]);
        let before = h.clone();
        prepare(&mut h, ClientCredentials::Reject).unwrap();
        assert_eq!(h, before);
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn a_connection_named_header_goes_even_when_it_is_the_only_hop_by_hop_one() {
        let mut h = map(&[
            ("connection", "close, X-Hop"),
            ("x-hop", "1"),
            ("close", "named too"),
            ("api_key", "b"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["api_key"]);
    }

    /// `keep-alive` names nothing more, but a second `Connection` header still can.
    #[test]
    fn a_keep_alive_connection_value_does_not_hide_the_next_one() {
        for (first, second) in [("keep-alive", "X-Hop"), ("X-Hop", "Keep-Alive")] {
            let mut h = map(&[
                ("connection", first),
                ("connection", second),
                ("x-hop", "1"),
                ("api_key", "b"),
            ]);
            prepare_response(&mut h);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["api_key"], "{first}, {second}");
        }
    }

    /// The one-pass removal agrees with its plain definition, on requests and on responses: every
    /// hop-by-hop header (and, on a response, the proxy's own), and every header `Connection`
    /// names in any case, whichever of those a message carries.
    #[test]
    fn hop_by_hop_removal_agrees_with_its_definition() {
        fn plain(headers: &mut HeaderMap, response: bool) {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                .collect();
            let own = if response { REMOVED.len() } else { HOP_BY_HOP };
            for name in REMOVED[..own].iter().chain(&named) {
                headers.remove(name);
            }
        }
        let names = [
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "x-cma-auth-proxy-error",
            "x-cma-auth-proxy-cache",
            "x-hop",
            "x-a-name-longer-than-thirty-two-bytes",
            "content-type",
        ];
        let connections = [
            None,
            Some("close"),
            Some("keep-alive"),
            Some("Keep-Alive"),
            Some("Keep-Alive, X-Hop"),
            Some("TE, X-CMA-Auth-Proxy-Error , content-type"),
            Some("X-A-Name-Longer-Than-Thirty-Two-Bytes,x-cma-auth-proxy-cache"),
            Some("UPGRADE,,proxy-authorization"),
        ];
        for carried in 0..1u32 << names.len() {
            for connection in connections {
                let mut h = HeaderMap::new();
                for (i, name) in names.iter().enumerate() {
                    if carried & (1 << i) != 0 {
                        h.append(*name, HeaderValue::from_static("1"));
                    }
                }
                if let Some(c) = connection {
                    h.append(header::CONNECTION, HeaderValue::from_static(c));
                }
                for response in [false, true] {
                    let (mut ours, mut want) = (h.clone(), h.clone());
                    if response {
                        prepare_response(&mut ours);
                    } else {
                        remove_hop_by_hop(&mut ours);
                    }
                    plain(&mut want, response);
                    assert_eq!(ours, want, "{h:?} (response: {response})");
                }
            }
        }
    }
}
