//! Reading a small upstream error body, decompressed, to find Contentstack's `error_code`. Bounded:
//! at most [`super::ERROR_PEEK_LIMIT`] bytes come out, whatever went in.
use http::{HeaderMap, header};

use super::ERROR_PEEK_LIMIT;

/// The body of a small upstream response, decoded; `None` when its encoding is not one the proxy
/// reads (then the caller asks Contentstack instead of guessing).
pub(super) fn decode(headers: &HeaderMap, raw: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let limit = ERROR_PEEK_LIMIT as u64;
    let ok = match encoding.as_str() {
        "identity" | "" => return Some(raw.to_vec()),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        "deflate" => flate2::read::ZlibDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        "br" => brotli_decompressor::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        _ => false,
    };
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn decodes_error_bodies() {
        use std::io::Write;
        let json = br#"{"error_code":105}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode(&headers, &gz.finish().unwrap()).unwrap(), json);
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(decode(&headers, json), None);
        assert_eq!(decode(&HeaderMap::new(), json).unwrap(), json);
    }
}
