//! Keeping the credential out of answers (docs/design.md#answers-that-carry-the-token): Contentstack
//! puts the session's `authtoken` into the user object it answers `/v3/user` with. Such an answer
//! is read whole (bounded in size and time) and every occurrence of the credential replaced by the
//! placeholder before a client, the cache or a follower sees it; and no answer's header that
//! carries the credential reaches a client. Pure apart from reading the body.
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use hyper::body::Incoming;

use super::error::ProxyError;

/// The most of a user object the proxy reads (it is a few KiB).
pub(super) const USER_LIMIT: usize = 1 << 20;

/// The secret in a credential header's value: an `authtoken` as it is, an OAuth access token
/// without its `Bearer ` scheme.
pub(super) fn secret(credential: &HeaderValue) -> &[u8] {
    let value = credential.as_bytes();
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => value,
    }
}

/// Removes every header whose value contains `secret`: an upstream (or something in front of it)
/// that echoes the credential does not pass it on.
pub(super) fn drop_headers_carrying(headers: &mut HeaderMap, secret: &[u8]) {
    // Nearly always none: then nothing is collected.
    if secret.is_empty() || !headers.values().any(|v| contains(v.as_bytes(), secret)) {
        return;
    }
    let carrying: Vec<header::HeaderName> = headers
        .iter()
        .filter(|(_, v)| contains(v.as_bytes(), secret))
        .map(|(name, _)| name.clone())
        .collect();
    for name in carrying {
        headers.remove(name);
    }
}

/// Whether `needle` occurs in `haystack` (a header value). Offsets are ruled out by their first
/// byte before the rest is compared: a slice comparison at each offset would call `memcmp` once per
/// byte of every value as long as the token. (Searchers such as `memchr::memmem` cost more to set
/// up than a header value takes to scan.)
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    (0..=last_start).any(|i| haystack[i] == first && haystack[i + 1..i + needle.len()] == *rest)
}

/// The body of an answer that may carry the credential, read whole, with each occurrence of
/// `secret` replaced by `placeholder`. An answer the proxy cannot read whole (compressed though it
/// asked for none, larger than [`USER_LIMIT`], broken off) is refused rather than passed on.
pub(super) async fn body(
    headers: &HeaderMap,
    body: Incoming,
    secret: &[u8],
    placeholder: &str,
    deadline: Duration,
) -> Result<Bytes, ProxyError> {
    use http_body_util::BodyExt;
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ProxyError::UnreadableUser(
            "is compressed, though the proxy asked for no encoding",
        ));
    }
    let read = http_body_util::Limited::new(body, USER_LIMIT).collect();
    let bytes = match tokio::time::timeout(deadline, read).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(deadline)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ProxyError::UnreadableUser("is larger than 1 MiB"));
        }
        Ok(Err(_)) => return Err(ProxyError::UnreadableUser("broke off before its end")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(replace(bytes, secret, placeholder.as_bytes()))
}

fn replace(bytes: Bytes, secret: &[u8], with: &[u8]) -> Bytes {
    if secret.is_empty() {
        return bytes;
    }
    // One scan; occurrences do not overlap, and each is replaced whole. Nearly always there is
    // none: then nothing is copied (an empty `Vec` allocates nothing).
    let found: Vec<usize> = memchr::memmem::find_iter(&bytes, secret).collect();
    if found.is_empty() {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for at in found {
        out.extend_from_slice(&bytes[copied..at]);
        out.extend_from_slice(with);
        copied = at + secret.len();
    }
    out.extend_from_slice(&bytes[copied..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced() {
        let body =
            Bytes::from_static(b"{\"user\":{\"authtoken\":\"blt123\",\"x\":\"blt123blt123\"}}");
        assert_eq!(
            &replace(body, b"blt123", b"P")[..],
            b"{\"user\":{\"authtoken\":\"P\",\"x\":\"PP\"}}"
        );
        let clean = Bytes::from_static(b"{\"user\":{}}");
        assert_eq!(replace(clean.clone(), b"blt123", b"P"), clean);
    }

    #[test]
    fn contains_finds_the_needle_anywhere_and_only_whole() {
        for (haystack, found) in [
            (&b"bltabc"[..], true),
            (b"xbltabc", true),
            (b"bltabcx", true),
            (b"blbltabc", true),
            (b"bltab", false),
            (b"bltabd bltab", false),
            (b"", false),
        ] {
            assert_eq!(contains(haystack, b"bltabc"), found, "{haystack:?}");
        }
        assert!(contains(b"x", b""));
    }

    #[test]
    fn the_secret_of_a_bearer_credential_is_its_token() {
        assert_eq!(secret(&HeaderValue::from_static("Bearer abc")), b"abc");
        assert_eq!(secret(&HeaderValue::from_static("bltabc")), b"bltabc");
    }

    #[test]
    fn headers_carrying_the_secret_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("token=bltabc; x"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        drop_headers_carrying(&mut headers, b"bltabc");
        assert!(headers.get("x-echo").is_none());
        assert!(headers.get("content-type").is_some());
    }
}
