//! Bodies: [`Relay`], the one body type the listeners answer with and the forwarder sends upstream,
//! and [`take_request_body`], which keeps small request bodies so they can be replayed after a
//! re-login (as long as kept bodies fit their [`ReplayBudget`]) and streams the others. Every buffer here has a bound, and every wait for a client's
//! body a deadline ([`BodyWatch`]); [`read_while`] is the one loop that reads a body up to a bound.
//! A leaf: it knows nothing of configuration or of the proxy's errors ([`BodyError`] says what
//! went wrong, the forwarder decides the answer).
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::server::ReceivingBody;

mod budget;
mod pace;

pub use budget::{Held, ReplayBudget};
pub use pace::{BodyPace, BodyTimeout, BodyWatch};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a client's request body could not be read (the forwarder answers each with the client's
/// error: 413, 408 or 400).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than `server.max_body`, by its `Content-Length` or as it streamed.
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Timeout(#[from] BodyTimeout),
    /// The client's stream broke off in the middle of the body.
    #[error("the request body ended abruptly")]
    Cut,
}

/// A frame of a body as `Incoming` gives it: `None` at the end.
type NextFrame = Option<Result<Frame<Bytes>, hyper::Error>>;

/// The next frame of a client's request body, or the timeout when the client stalls.
fn poll_client_frame(
    body: &mut Incoming,
    watch: &mut BodyWatch,
    cx: &mut Context<'_>,
) -> Poll<Result<NextFrame, BodyTimeout>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(frame) => {
            let bytes = match &frame {
                Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => 0,
            };
            watch.progress(bytes);
            Poll::Ready(Ok(frame))
        }
        Poll::Pending => watch.poll_stalled(cx).map(Err),
    }
}

async fn next_client_frame(
    body: &mut Incoming,
    watch: &mut BodyWatch,
) -> Result<NextFrame, BodyTimeout> {
    std::future::poll_fn(|cx| poll_client_frame(body, watch, cx)).await
}

/// Why a client's request body failed while it was being sent upstream. HTTP/1 hands a body's
/// error back in the request's error, but HTTP/2 only resets the stream and the cause is lost; so
/// the relay records it here, and the forwarder answers with the client's error (413, 408) instead
/// of blaming Contentstack (502), whichever protocol the upstream speaks.
#[derive(Clone, Default)]
pub struct BodyFault(Arc<OnceLock<ClientFault>>);

#[derive(Debug, Clone, Copy)]
enum ClientFault {
    TooLarge(u64),
    Stalled(BodyTimeout),
}

impl BodyFault {
    /// The client's error, if its body failed.
    pub fn error(&self) -> Option<BodyError> {
        self.0.get().map(|fault| match *fault {
            ClientFault::TooLarge(limit) => BodyError::TooLarge { limit },
            ClientFault::Stalled(timeout) => BodyError::Timeout(timeout),
        })
    }

    /// Records `fault` and returns it as the body's error, for the upstream client.
    fn record(&self, fault: ClientFault) -> BoxError {
        let _ = self.0.set(fault);
        match fault {
            ClientFault::TooLarge(limit) => BodyError::TooLarge { limit }.into(),
            ClientFault::Stalled(timeout) => timeout.into(),
        }
    }
}

/// What a client's request body carries besides its bytes: its pace, where its failure goes, and
/// the replay budget its chunks read ahead hold until they are sent.
pub struct ClientBody {
    watch: BodyWatch,
    fault: BodyFault,
    held: Option<Held<Arc<ReplayBudget>>>,
    /// Keeps the client connection from taking the body's bytes for idleness or a head
    /// (`server::ReceivingBody`) until the body is relayed or drained.
    _receiving: Option<ReceivingBody>,
}

pub enum Relay {
    Full(Option<Bytes>),
    /// Chunks already read, then the rest of a body, counted against `limit`.
    Stream {
        prefix: VecDeque<Bytes>,
        /// `None` once a request body was abandoned or handed to [`linger`] on drop.
        rest: Option<Incoming>,
        seen: u64,
        limit: u64,
        /// Only for a client's request body. Dropped unfinished, such a body is drained for a
        /// while (see [`linger`]).
        client: Option<Box<ClientBody>>,
    },
}

/// A request body the proxy stopped reading because its answer came early (413 mid-stream, 502,
/// 503) is read and thrown away for a while, so the client finishes sending and reads the answer
/// instead of a reset connection. Bounded in bytes and time, and by the body's pace: a client that
/// stops sending does not hold its connection through the drain.
const LINGER_BYTES: u64 = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(10);

async fn linger(mut body: Incoming, mut client: Box<ClientBody>) {
    let drain = async {
        let mut read = 0u64;
        while let Ok(Some(Ok(frame))) = next_client_frame(&mut body, &mut client.watch).await {
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
        if let Relay::Stream { rest, client, .. } = self
            && let (Some(body), Some(client)) = (rest.take(), client.take())
            && !body.is_end_stream()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(linger(body, client));
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
        Self::stream(prefix, rest, u64::MAX, None)
    }

    /// A client's request body, after the chunks already read (which `held` counts until they
    /// are sent), limited to `max_body` in all and kept to its pace by `watch`.
    pub fn request(
        prefix: VecDeque<Bytes>,
        rest: Incoming,
        max_body: u64,
        watch: BodyWatch,
        held: Option<Held<Arc<ReplayBudget>>>,
        receiving: Option<ReceivingBody>,
    ) -> Relay {
        let client = ClientBody {
            watch,
            fault: BodyFault::default(),
            held,
            _receiving: receiving,
        };
        Self::stream(prefix, rest, max_body, Some(Box::new(client)))
    }

    fn stream(
        prefix: VecDeque<Bytes>,
        rest: Incoming,
        limit: u64,
        client: Option<Box<ClientBody>>,
    ) -> Relay {
        let seen = prefix.iter().map(|b| b.len() as u64).sum();
        Relay::Stream {
            prefix,
            rest: Some(rest),
            seen,
            limit,
            client,
        }
    }

    /// Puts `chunks`, read off the front of this body, back in front of what is left of it.
    pub fn prepend(&mut self, mut chunks: VecDeque<Bytes>) {
        match self {
            // Each byte was counted against the limit once, when it was first read.
            Relay::Stream { prefix, .. } => {
                chunks.append(prefix);
                *prefix = chunks;
            }
            Relay::Full(data) => {
                chunks.extend(data.take());
                *self = Relay::Stream {
                    prefix: chunks,
                    rest: None,
                    seen: 0,
                    limit: u64::MAX,
                    client: None,
                };
            }
        }
    }

    /// Where a client's streamed request body records why it failed; `None` for other bodies.
    pub fn fault(&self) -> Option<BodyFault> {
        match self {
            Relay::Stream {
                client: Some(client),
                ..
            } => Some(client.fault.clone()),
            _ => None,
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
                client,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    if prefix.is_empty()
                        && let Some(client) = client
                    {
                        // Handed on: no longer the proxy's to keep.
                        client.held = None;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                // Trailers are dropped, both ways: the CMA uses none, and a trailer could carry
                // what the proxy removes from headers (a client's `authtoken`, an upstream's
                // `x-cma-auth-proxy-error`). Only data goes through.
                loop {
                    let frame = match client {
                        None => std::task::ready!(Pin::new(&mut *body).poll_frame(cx)),
                        Some(client) => {
                            match std::task::ready!(poll_client_frame(body, &mut client.watch, cx))
                            {
                                Ok(frame) => frame,
                                Err(timeout) => {
                                    // Abandoned: nothing left to drain on drop.
                                    *rest = None;
                                    let error = client.fault.record(ClientFault::Stalled(timeout));
                                    return Poll::Ready(Some(Err(error)));
                                }
                            }
                        }
                    };
                    return match frame {
                        Some(Ok(frame)) => {
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            *seen += data.len() as u64;
                            if *seen > *limit {
                                let error = match client {
                                    Some(client) => {
                                        client.fault.record(ClientFault::TooLarge(*limit))
                                    }
                                    None => BodyError::TooLarge { limit: *limit }.into(),
                                };
                                return Poll::Ready(Some(Err(error)));
                            }
                            Poll::Ready(Some(Ok(frame)))
                        }
                        Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                        None => Poll::Ready(None),
                    };
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
pub enum RequestBody<'b> {
    /// Read in full (at most `replay_body_limit`, and within the replay budget, which it holds
    /// while the forwarder does): can be sent again after a re-login.
    Replayable(Bytes, Held<&'b ReplayBudget>),
    /// Too large to keep, or past the budget: sent once.
    Streaming(Relay),
}

/// Reads up to `replay_limit` bytes of `body`. A body that ends within the limit is kept whole, if
/// it fits `budget`; a longer one, or one past the budget, continues as a stream behind what was
/// read. `Content-Length` above `max_body` is refused before anything is read; a body that does
/// not keep `pace` is abandoned. `receiving` (none for a body that had ended when its request
/// began) goes with a body that continues as a stream, and is dropped with one read in full.
///
/// A plain function: a request without a body, or one that streams from the start, is taken at
/// once; only a body to read has a future, boxed, kept out of the request's own.
pub fn take_request_body<'b>(
    body: Incoming,
    receiving: Option<ReceivingBody>,
    content_length: Option<u64>,
    replay_limit: u64,
    max_body: u64,
    pace: BodyPace,
    budget: &'b Arc<ReplayBudget>,
) -> Taking<'b> {
    if content_length.is_some_and(|n| n > max_body) {
        return Taking::Taken(std::future::ready(Err(BodyError::TooLarge {
            limit: max_body,
        })));
    }
    let mut held = Held::none(&**budget);
    if body.is_end_stream() {
        return Taking::Taken(std::future::ready(Ok(RequestBody::Replayable(
            Bytes::new(),
            held,
        ))));
    }
    let watch = BodyWatch::new(pace);
    // With its length known, a body is counted in the budget once, up front; otherwise chunk by
    // chunk as it comes, and it stops being kept where the budget runs out.
    let stream_now = match content_length {
        Some(n) => n > replay_limit || !held.reserve(n),
        None => false,
    };
    if stream_now {
        return Taking::Taken(std::future::ready(Ok(RequestBody::Streaming(
            Relay::request(VecDeque::new(), body, max_body, watch, None, receiving),
        ))));
    }
    Taking::Reading(Box::pin(read_request_body(
        body,
        receiving,
        content_length,
        replay_limit,
        max_body,
        watch,
        held,
        budget,
    )))
}

/// A request body as [`take_request_body`] leaves it: taken, or being read.
pub enum Taking<'b> {
    Taken(std::future::Ready<Result<RequestBody<'b>, BodyError>>),
    Reading(Pin<Box<dyn Future<Output = Result<RequestBody<'b>, BodyError>> + Send + 'b>>),
}

impl<'b> Future for Taking<'b> {
    type Output = Result<RequestBody<'b>, BodyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Taking::Taken(taken) => Pin::new(taken).poll(cx),
            Taking::Reading(reading) => reading.as_mut().poll(cx),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_request_body<'b>(
    mut body: Incoming,
    receiving: Option<ReceivingBody>,
    content_length: Option<u64>,
    replay_limit: u64,
    max_body: u64,
    mut watch: BodyWatch,
    mut held: Held<&'b ReplayBudget>,
    budget: &'b Arc<ReplayBudget>,
) -> Result<RequestBody<'b>, BodyError> {
    let mut client = ClientChunks {
        body: &mut body,
        watch: &mut watch,
    };
    let mut within_budget = true;
    let (chunks, ended) = read_while(&mut client, |read, chunk| {
        if content_length.is_none() && chunk > 0 {
            within_budget = held.count(chunk);
        }
        read <= replay_limit && within_budget
    })
    .await?;
    Ok(if ended && within_budget {
        RequestBody::Replayable(concat(chunks), held)
    } else {
        let held = held.move_to(budget.clone());
        RequestBody::Streaming(Relay::request(
            chunks,
            body,
            max_body,
            watch,
            Some(held),
            receiving,
        ))
    })
}

/// Where [`read_while`] reads from: the data of a body, chunk by chunk. Non-data frames
/// (trailers) are skipped: the CMA uses none.
pub trait Chunks {
    type Error;

    /// The next chunk of data; `None` at the end of the body.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, Self::Error>>;
}

/// An upstream response body.
impl Chunks for Incoming {
    type Error = hyper::Error;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// A body the proxy answers with (an upstream response being shared).
impl Chunks for Relay {
    type Error = BoxError;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// A client's request body, kept to its pace.
struct ClientChunks<'a> {
    body: &'a mut Incoming,
    watch: &'a mut BodyWatch,
}

impl Chunks for ClientChunks<'_> {
    type Error = BodyError;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            match next_client_frame(self.body, self.watch).await? {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(_)) => return Err(BodyError::Cut),
                None => return Ok(None),
            }
        }
    }
}

/// Reads `body` until it ends or more than `limit` bytes are in. Returns the chunks and whether the
/// body ended; it holds at most `limit` bytes plus one chunk. When the body did not end, the
/// caller sends the chunks followed by the rest, or gives up on it.
pub async fn read_up_to<C: Chunks>(
    body: &mut C,
    limit: u64,
) -> Result<(VecDeque<Bytes>, bool), C::Error> {
    read_while(body, |read, _| read <= limit).await
}

/// The one bounded reader: reads `body` chunk by chunk for as long as `more(bytes read, size of
/// the last chunk)` says, or until it ends. Returns the chunks and whether the body ended.
pub async fn read_while<C: Chunks>(
    body: &mut C,
    mut more: impl FnMut(u64, u64) -> bool,
) -> Result<(VecDeque<Bytes>, bool), C::Error> {
    let mut chunks = VecDeque::new();
    let (mut read, mut last) = (0u64, 0u64);
    while more(read, last) {
        match body.next_chunk().await? {
            Some(data) => {
                last = data.len() as u64;
                read += last;
                chunks.push_back(data);
            }
            None => return Ok((chunks, true)),
        }
    }
    Ok((chunks, false))
}

/// The chunks as one `Bytes`; a single chunk is passed on without a copy.
pub fn concat(mut chunks: VecDeque<Bytes>) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let len = chunks.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(len);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}
