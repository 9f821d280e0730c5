//! The placeholder token of an emulated login (docs/design.md#session-emulation): what a client
//! holds after `POST /v3/user-session` instead of a token, and its removal from a request before
//! anything else reads it.
//!
//! The placeholder is the proxy's own value, one per process. A request that carries exactly it
//! where a credential goes (the `authtoken` or `authorization` header, a cookie or query parameter
//! of such a name) has it removed, so the request is as credential-free as one that never had it,
//! also with `client_credentials = "reject"`; it is never sent upstream. Any other value there is a
//! client credential as before, judged by the usual rules. Pure: no I/O, no logging.
use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};

use super::headers;
use super::target::{Name, classify_name, params};

const PREFIX: &str = "cma-auth-proxy-session-";

/// `cma-auth-proxy-session-` and 128 random bits in hex: recognizable in a client's configuration,
/// and never a token Contentstack issued.
pub(super) struct Placeholder(String);

impl Placeholder {
    pub(super) fn new() -> Placeholder {
        Placeholder(format!("{PREFIX}{:032x}", rand::random::<u128>()))
    }

    fn is(&self, value: &[u8]) -> bool {
        value == self.0.as_bytes()
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// Removes the placeholder from every place a client may carry a credential, and nothing else.
    /// Cheap when it is absent: one pass over the header names (most requests carry no credential
    /// header and no cookie, and are looked up no further), a comparison per credential header, a
    /// substring search of the cookies and the query.
    pub(super) fn remove_from(&self, parts: &mut Parts) {
        let (mut credentials, mut cookies) = (false, false);
        for name in parts.headers.keys() {
            credentials |= *name == header::AUTHORIZATION || *name == headers::AUTHTOKEN_NAME;
            cookies |= *name == header::COOKIE;
        }
        if credentials {
            for name in [&header::AUTHORIZATION, &headers::AUTHTOKEN_NAME] {
                self.remove_from_header(&mut parts.headers, name);
            }
        }
        if cookies {
            self.remove_from_cookies(&mut parts.headers);
        }
        self.remove_from_query(&mut parts.uri);
    }

    fn remove_from_header(&self, headers: &mut HeaderMap, name: &HeaderName) {
        if !headers.get_all(name).iter().any(|v| self.is(v.as_bytes())) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(name)
            .iter()
            .filter(|v| !self.is(v.as_bytes()))
            .cloned()
            .collect();
        headers.remove(name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }

    fn remove_from_cookies(&self, headers: &mut HeaderMap) {
        let carries = |v: &HeaderValue| super::scrub::contains(v.as_bytes(), self.0.as_bytes());
        if !headers.get_all(header::COOKIE).iter().any(carries) {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| {
                let pairs: Vec<&[u8]> = value
                    .as_bytes()
                    .split(|&b| b == b';')
                    .map(<[u8]>::trim_ascii)
                    .filter(|pair| !pair.is_empty() && !self.is_placeholder_pair(pair))
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

    /// `name=placeholder` where `name` is read as a credential; the value must be exact (not
    /// decoded, not trimmed).
    fn is_placeholder_pair(&self, pair: &[u8]) -> bool {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return false;
        };
        classify_name(pair[..eq].trim_ascii()) == Name::Credential && self.is(&pair[eq + 1..])
    }

    fn remove_from_query(&self, uri: &mut Uri) {
        let Some(query) = uri.query() else {
            return;
        };
        if !query.contains(self.0.as_str()) {
            return;
        }
        // The parameters as the judge splits them, so that what is left is judged as usual.
        let mut kept = String::with_capacity(query.len());
        for (separator, param) in params(query) {
            if self.is_placeholder_pair(param.as_bytes()) {
                continue;
            }
            if !kept.is_empty() {
                kept.push(separator.unwrap_or('&'));
            }
            kept.push_str(param);
        }
        let mut target = uri.path().to_owned();
        if !kept.is_empty() {
            target.push('?');
            target.push_str(&kept);
        }
        let mut parts = uri.clone().into_parts();
        // A valid target less whole parameters is still valid; if it somehow were not, the
        // placeholder stays and is judged as a client credential: stripped or refused.
        if let Ok(path_and_query) = PathAndQuery::from_maybe_shared(Bytes::from(target)) {
            parts.path_and_query = Some(path_and_query);
            if let Ok(new) = Uri::from_parts(parts) {
                *uri = new;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::policy::ClientCredentials;
    use crate::proxy::error::ProxyError;

    fn parts(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_placeholder_is_random_and_recognizable() {
        let (a, b) = (Placeholder::new(), Placeholder::new());
        assert_ne!(a.0, b.0);
        assert!(a.0.starts_with(PREFIX));
        assert_eq!(a.0.len(), PREFIX.len() + 32);
        assert!(a.is(a.0.as_bytes()));
        assert!(!a.is(format!("{} ", a.0).as_bytes()));
        assert!(!a.is(&a.0.as_bytes()[1..]));
    }

    /// The request after the placeholder is removed: its query, and every header as text.
    fn cleaned(target: &str, headers: &[(&str, &str)]) -> (Option<String>, Vec<(String, String)>) {
        let placeholder = Placeholder::new();
        let ph = placeholder.0.clone();
        let target = target.replace("PH", &ph);
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(n, v)| (*n, v.replace("PH", &ph)))
            .collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut p = parts("GET", &target, &headers);
        placeholder.remove_from(&mut p);
        let left = p
            .headers
            .iter()
            .map(|(n, v)| {
                let v = v.to_str().unwrap().replace(&ph, "PH");
                (n.to_string(), v)
            })
            .collect();
        (p.uri.query().map(|q| q.replace(&ph, "PH")), left)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_placeholder_is_removed_wherever_a_credential_goes() {
        assert_eq!(
            cleaned(
                "/v3/user?a=1&authtoken=PH;b=2",
                &[("authtoken", "PH"), ("api_key", "blt1")]
            ),
            (Some("a=1;b=2".into()), pairs(&[("api_key", "blt1")]))
        );
        assert_eq!(cleaned("/v3/user?AuthToken=PH", &[]), (None, vec![]));
        assert_eq!(
            cleaned("/v3/user", &[("authorization", "PH")]),
            (None, vec![])
        );
        assert_eq!(
            cleaned(
                "/v3/user",
                &[
                    ("cookie", "theme=dark; authtoken=PH"),
                    ("cookie", "authtoken=PH")
                ]
            ),
            (None, pairs(&[("cookie", "theme=dark")]))
        );
    }

    #[test]
    fn anything_but_the_exact_placeholder_is_left_to_the_credential_rules() {
        for headers in [
            [("authtoken", "PHx")],
            [("authtoken", "xPH")],
            [("authtoken", "other")],
            [("authorization", "Bearer PH")],
            [("cookie", "authtoken=PH0")],
            [("cookie", "authtoken= PH")],
            [("cookie", "theme=PH")],
        ] {
            assert_eq!(
                cleaned("/v3/user", &headers),
                (None, pairs(&headers)),
                "{headers:?}"
            );
        }
        for query in [
            "authtoken=PH%30",
            "authtoken=%63ma-auth-proxy-session-0",
            "theme=PH",
            "authtoken=PHPH",
        ] {
            let (left, _) = cleaned(&format!("/v3/user?{query}"), &[]);
            assert_eq!(left.as_deref(), Some(query));
        }
        let (left, _) = cleaned("/v3/user?authtoken=PH&authtoken=y", &[]);
        assert_eq!(left.as_deref(), Some("authtoken=y"));
        // What is left is judged as usual: a real credential beside the placeholder is refused.
        let placeholder = Placeholder::new();
        let mut p = parts(
            "GET",
            "/v3/user",
            &[("authtoken", placeholder.0.as_str()), ("authtoken", "real")],
        );
        placeholder.remove_from(&mut p);
        assert_eq!(p.headers.get_all("authtoken").iter().count(), 1);
        assert!(matches!(
            headers::screen_request(&p.headers, ClientCredentials::Reject),
            Err(ProxyError::ClientCredentialsRejected)
        ));
    }
}
