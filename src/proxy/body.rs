//! Bodies on the request path: [`Relay`], the one body type sent upstream and returned to clients,
//! and [`take_request_body`], which keeps small request bodies so they can be replayed after a
//! re-login and streams large ones. Every buffer here has a bound.
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::error::ProxyError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body grew past `server.max_body`.
#[derive(Debug, thiserror::Error)]
#[error("body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

pub enum Relay {
    Full(Option<Bytes>),
    /// Chunks already read, then the rest of a body, counted against `limit`.
    Stream {
        prefix: VecDeque<Bytes>,
        /// `None` only once a request body was handed to [`linger`] on drop.
        rest: Option<Incoming>,
        seen: u64,
        limit: u64,
        /// A client's request body: dropped unfinished, it is drained for a while (see [`linger`]).
        request: bool,
    },
}

/// A request body the proxy stopped reading because its answer came early (413 mid-stream, 502,
/// 503) is read and thrown away for a while, so the client finishes sending and reads the answer
/// instead of a reset connection. Bounded in bytes and time.
const LINGER_BYTES: u64 = 64 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

async fn linger(mut body: Incoming) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Relay::Stream {
            rest,
            request: true,
            ..
        } = self
            && let Some(body) = rest.take()
            && !body.is_end_stream()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(linger(body));
        }
    }
}

impl Relay {
    pub fn empty() -> Relay {
        Relay::Full(None)
    }

    pub fn full(bytes: Bytes) -> Relay {
        Relay::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// An upstream response body, after the chunks already read.
    pub fn response(prefix: VecDeque<Bytes>, rest: Incoming) -> Relay {
        Self::stream(prefix, rest, u64::MAX, false)
    }

    /// A client's request body, after the chunks already read, limited to `max_body` in all.
    pub fn request(prefix: VecDeque<Bytes>, rest: Incoming, max_body: u64) -> Relay {
        Self::stream(prefix, rest, max_body, true)
    }

    fn stream(prefix: VecDeque<Bytes>, rest: Incoming, limit: u64, request: bool) -> Relay {
        let seen = prefix.iter().map(|b| b.len() as u64).sum();
        Relay::Stream {
            prefix,
            rest: Some(rest),
            seen,
            limit,
            request,
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Relay::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Relay::Stream {
                prefix,
                rest,
                seen,
                limit,
                ..
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let Some(rest) = rest else {
                    return Poll::Ready(None);
                };
                match std::task::ready!(Pin::new(rest).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(TooLarge(*limit).into())));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Relay::Full(data) => data.is_none(),
            Relay::Stream { prefix, rest, .. } => {
                prefix.is_empty() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Relay::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Relay::Stream { prefix, rest, .. } => {
                let buffered: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let hint = rest.as_ref().map(|r| r.size_hint()).unwrap_or_default();
                let mut total = SizeHint::new();
                total.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    total.set_upper(upper + buffered);
                }
                total
            }
        }
    }
}

/// A request body as the forwarder holds it.
pub enum RequestBody {
    /// Read in full (at most `replay_body_limit`): can be sent again after a re-login.
    Replayable(Bytes),
    /// Too large to keep: sent once.
    Streaming(Relay),
}

/// Reads up to `replay_limit` bytes of `body`. A body that ends within the limit is kept whole;
/// a longer one continues as a stream behind what was read. `Content-Length` above `max_body`
/// is refused before anything is read.
pub async fn take_request_body(
    mut body: Incoming,
    content_length: Option<u64>,
    replay_limit: u64,
    max_body: u64,
) -> Result<RequestBody, ProxyError> {
    if content_length.is_some_and(|n| n > max_body) {
        return Err(ProxyError::BodyTooLarge { limit: max_body });
    }
    if body.is_end_stream() {
        return Ok(RequestBody::Replayable(Bytes::new()));
    }
    if content_length.is_some_and(|n| n > replay_limit) {
        return Ok(RequestBody::Streaming(Relay::request(
            VecDeque::new(),
            body,
            max_body,
        )));
    }
    let mut chunks = VecDeque::new();
    let mut read = 0u64;
    while read <= replay_limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                // Trailers are dropped: the CMA uses none.
                if let Ok(data) = frame.into_data() {
                    read += data.len() as u64;
                    chunks.push_back(data);
                }
            }
            Some(Err(_)) => {
                return Err(
                    crate::error::BadRequest::Malformed("the request body ended abruptly").into(),
                );
            }
            None => return Ok(RequestBody::Replayable(concat(chunks, read))),
        }
    }
    Ok(RequestBody::Streaming(Relay::request(
        chunks, body, max_body,
    )))
}

fn concat(mut chunks: VecDeque<Bytes>, len: u64) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

/// Reads at most `limit` bytes of a (small) upstream body. Returns the bytes and whether the body
/// ended; when it did not, the caller sends the chunks followed by the rest.
pub async fn read_prefix(
    body: &mut Incoming,
    limit: usize,
) -> Result<(VecDeque<Bytes>, bool), hyper::Error> {
    let mut chunks = VecDeque::new();
    let mut read = 0;
    while read <= limit {
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    read += data.len();
                    chunks.push_back(data);
                }
            }
            None => return Ok((chunks, true)),
        }
    }
    Ok((chunks, false))
}

pub fn concat_all(chunks: &VecDeque<Bytes>) -> Bytes {
    let len = chunks.iter().map(|c| c.len() as u64).sum();
    concat(chunks.clone(), len)
}
