//! Small, named header operations of the request path (SPEC §4 steps 4 and 6). Pure.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::{ERROR_HEADER, ProxyError};
use crate::policy::ClientCredentials;

/// The header a client may use to pick a profile; never forwarded.
pub const PROFILE_HEADER: &str = "x-cma-profile";
pub const AUTHTOKEN: &str = "authtoken";

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `expect`, which the proxy answers itself.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes hop-by-hop headers and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers a message has, instead of a lookup per hop-by-hop name:
    // most messages carry none but `connection: keep-alive`.
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // Only names the message carries (`close` and `keep-alive` usually name none): no
        // `HeaderName` is built, and nothing allocated, for the rest.
        .filter(|name| headers.contains_key(*name))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// Prepares an upstream response for the client: hop-by-hop headers removed, and
/// `x-cma-auth-proxy-error` too, so that header always means "the proxy itself answered".
pub fn prepare_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    // One hash lookup; upstream responses almost never carry it.
    headers.remove(ERROR_HEADER);
}

/// What a client's header means to [`prepare_request`].
enum ClientHeader {
    Credential,
    MethodOverride,
    HopByHop,
    /// Not forwarded either: `host`, `expect`, `x-cma-profile`.
    Dropped,
    Forwarded,
}

fn classify(name: &HeaderName) -> ClientHeader {
    if name == AUTHTOKEN || name == header::AUTHORIZATION {
        ClientHeader::Credential
    } else if METHOD_OVERRIDES.iter().any(|o| name == *o) {
        ClientHeader::MethodOverride
    } else if HOP_BY_HOP.contains(name) {
        ClientHeader::HopByHop
    } else if name == header::HOST || name == header::EXPECT || name == PROFILE_HEADER {
        ClientHeader::Dropped
    } else {
        ClientHeader::Forwarded
    }
}

/// Prepares a client's request headers to go upstream: hop-by-hop and `Host` removed (the client
/// sets the upstream's), `expect` removed (the proxy has already accepted the body), `x-cma-profile`
/// removed, client credentials stripped or refused.
pub fn prepare_request(headers: &mut HeaderMap, mode: ClientCredentials) -> Result<(), ProxyError> {
    // One pass to learn what the request carries; the removals below only run for what is there.
    let (mut credentials, mut method_override, mut hop_by_hop, mut dropped) =
        (false, false, false, false);
    for name in headers.keys() {
        match classify(name) {
            ClientHeader::Credential => credentials = true,
            ClientHeader::MethodOverride => method_override = true,
            // `remove_hop_by_hop` scans the headers again: only when there is one (every HTTP/1
            // request has `host`, few have hop-by-hop headers).
            ClientHeader::HopByHop => hop_by_hop = true,
            ClientHeader::Dropped => dropped = true,
            ClientHeader::Forwarded => {}
        }
    }
    if credentials && mode == ClientCredentials::Reject {
        return Err(ProxyError::ClientCredentialsRejected);
    }
    // Rack and Express turn a POST into a DELETE with these: the policy would check one method and
    // the upstream run another.
    if method_override {
        return Err(crate::error::BadRequest::Malformed(
            "method-override headers are refused: send the real method",
        )
        .into());
    }
    if credentials {
        headers.remove(AUTHTOKEN);
        headers.remove(header::AUTHORIZATION);
    }
    if hop_by_hop {
        remove_hop_by_hop(headers);
    }
    if dropped {
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        headers.remove(PROFILE_HEADER);
    }
    Ok(())
}

/// Appends the client's address to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    const XFF: &str = "x-forwarded-for";
    let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {peer}")).ok(),
        None => Some(peer_value(peer)),
    };
    if let Some(value) = value {
        headers.insert(XFF, value);
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
        prepare_request(&mut h, ClientCredentials::Strip).unwrap();
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["organization_uid"]);
    }

    #[test]
    fn reject_mode_refuses_credentials() {
        for name in ["authtoken", "authorization"] {
            let mut h = map(&[(name, "x")]);
            assert!(matches!(
                prepare_request(&mut h, ClientCredentials::Reject),
                Err(ProxyError::ClientCredentialsRejected)
            ));
        }
        let mut h = map(&[("api_key", "x")]);
        assert!(prepare_request(&mut h, ClientCredentials::Reject).is_ok());
    }

    #[test]
    fn in_reject_mode_credentials_are_refused_before_a_method_override() {
        let mut h = map(&[("x-http-method-override", "DELETE"), ("authtoken", "x")]);
        assert!(matches!(
            prepare_request(&mut h, ClientCredentials::Reject),
            Err(ProxyError::ClientCredentialsRejected)
        ));
    }

    #[test]
    fn method_override_headers_are_refused() {
        for name in METHOD_OVERRIDES {
            let mut h = map(&[(name, "DELETE")]);
            assert!(matches!(
                prepare_request(&mut h, ClientCredentials::Strip),
                Err(ProxyError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_the_proxys_error_header() {
        let mut h = map(&[
            ("x-cma-auth-proxy-error", "policy_denied"),
            ("connection", "close"),
            ("content-type", "application/json"),
        ]);
        prepare_response(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1, ::1");
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
        prepare_request(&mut h, ClientCredentials::Reject).unwrap();
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
        prepare_request(&mut h, ClientCredentials::Strip).unwrap();
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["api_key"]);
    }
}
