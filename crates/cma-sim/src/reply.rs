//! What the simulator answers, and how it goes on the wire: JSON (gzip-compressed for clients that
//! accept it, as Contentstack compresses its JSON, errors included), bytes as they are, or the
//! download endpoint's bytes generated while they are sent. [`error_body`] is the one place that
//! writes Contentstack's error shape.
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use serde_json::{Value, json};

use crate::SimBytes;

/// The body of every response the simulator sends.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// How much of a download is generated at a time (a multiple of 4, see [`SimBytes::fill`]).
const DOWNLOAD_CHUNK: usize = 64 << 10;

/// Contentstack's error body: `{"error_message","error_code","errors"}`. Every refusal the
/// simulator answers in JSON, from the session layer and from the content store, is written here.
pub(crate) fn error_body(code: i64, message: &str, errors: Value) -> Value {
    json!({ "error_message": message, "error_code": code, "errors": errors })
}

pub(crate) enum Answer {
    Json(Value),
    /// Bytes of this content type, sent as they are.
    Raw(Bytes, &'static str),
    /// This many bytes of [`crate::sim_bytes`], generated while they are sent.
    Download(usize),
}

/// One answer of the simulator: status, headers, body.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Answer,
}

impl Reply {
    pub fn json(status: StatusCode, value: Value) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Answer::Json(value),
        }
    }

    pub fn ok(value: Value) -> Reply {
        Reply::json(StatusCode::OK, value)
    }

    /// A refusal in Contentstack's shape.
    pub fn error(status: StatusCode, code: i64, message: &str, errors: Value) -> Reply {
        Reply::json(status, error_body(code, message, errors))
    }

    pub fn raw(bytes: Bytes, content_type: &'static str) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Answer::Raw(bytes, content_type),
        }
    }

    /// `len` bytes of [`crate::sim_bytes`].
    pub fn download(len: usize) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Answer::Download(len),
        }
    }

    /// The response to send; `gzip` when the client accepts a gzip-compressed body.
    pub fn into_response(self, gzip: bool) -> Response<Body> {
        let mut headers = self.headers;
        let body = match self.body {
            Answer::Json(value) => {
                let text = value.to_string();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                let bytes = if gzip {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(text.as_bytes()).expect("writing to memory");
                    Bytes::from(enc.finish().expect("writing to memory"))
                } else {
                    Bytes::from(text)
                };
                Full::new(bytes).boxed()
            }
            Answer::Raw(bytes, content_type) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                Full::new(bytes).boxed()
            }
            Answer::Download(len) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                Download {
                    bytes: SimBytes::default(),
                    remaining: len,
                }
                .boxed()
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// A download body: its length is known up front (so it is sent with `content-length`), its
/// bytes are made one chunk at a time, so a 100 MiB download does not sit in memory.
struct Download {
    bytes: SimBytes,
    remaining: usize,
}

impl hyper::body::Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(DOWNLOAD_CHUNK);
        let mut chunk = Vec::with_capacity(len);
        self.bytes.fill(&mut chunk, len);
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(chunk.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The download endpoint sends exactly what `sim_bytes` makes, which tests compare against.
    #[tokio::test]
    async fn a_download_is_sim_bytes_in_chunks() {
        for len in [0, 3, DOWNLOAD_CHUNK, 2 * DOWNLOAD_CHUNK + 7] {
            let response = Reply::download(len).into_response(false);
            let size = hyper::body::Body::size_hint(response.body()).exact();
            assert_eq!(size, Some(len as u64));
            let body = response.into_body().collect().await.unwrap().to_bytes();
            // Not assert_eq: a failure would print megabytes.
            assert!(body == crate::sim_bytes(len), "the {len} bytes differ");
        }
    }
}
