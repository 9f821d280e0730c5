//! Small, named header operations of the request path (SPEC §4 steps 4 and 6). Pure.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;
use crate::policy::ClientCredentials;

/// The header a client may use to pick a profile; never forwarded.
pub const PROFILE_HEADER: &str = "x-cma-profile";
pub const AUTHTOKEN: &str = "authtoken";

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `expect`, which the proxy answers itself.
const HOP_BY_HOP: [HeaderName; 9] = [
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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Prepares a client's request headers to go upstream: hop-by-hop and `Host` removed (the client
/// sets the upstream's), `expect` removed (the proxy has already accepted the body), `x-cma-profile`
/// removed, client credentials stripped or refused.
pub fn prepare_request(headers: &mut HeaderMap, mode: ClientCredentials) -> Result<(), ProxyError> {
    let has_credentials =
        headers.contains_key(AUTHTOKEN) || headers.contains_key(header::AUTHORIZATION);
    if has_credentials && mode == ClientCredentials::Reject {
        return Err(ProxyError::ClientCredentialsRejected);
    }
    // Rack and Express turn a POST into a DELETE with these: the policy would check one method and
    // the upstream run another.
    if METHOD_OVERRIDES.iter().any(|h| headers.contains_key(*h)) {
        return Err(crate::error::BadRequest::Malformed(
            "method-override headers are refused: send the real method",
        )
        .into());
    }
    remove_hop_by_hop(headers);
    headers.remove(AUTHTOKEN);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    headers.remove(PROFILE_HEADER);
    Ok(())
}

/// Appends the client's address to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    const XFF: &str = "x-forwarded-for";
    let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(XFF, value);
    }
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
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1, ::1");
    }
}
