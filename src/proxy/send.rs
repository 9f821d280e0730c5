//! Step 5's sending (docs/design.md#rate-budget): one request upstream within its profile's
//! budget, the read Contentstack answered with 429 sent again once the budget allows, and what the
//! budget learns from each answer.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::{AccessRecord, Outbound, Proxy, after};
use crate::body::Relay;
use crate::config::ProfileConfig;
use crate::ratelimit::{Decision, RateLimiter, RequestKind};

/// A profile's request budget, with the profile's name for the budget's metrics.
pub(super) struct Budget {
    pub(super) limiter: Arc<RateLimiter>,
    pub(super) profile: Arc<str>,
}

impl Proxy {
    /// The budget of `profile`, which has one only if its settings say so: most set none, and
    /// then the budgets are not even looked at.
    pub(super) fn budget(&self, profile: &ProfileConfig) -> Option<Budget> {
        profile.rate_limit.as_ref()?;
        let limiters = self.limiters.load();
        let (_, limiter) = limiters.get(&profile.name)?;
        Some(Budget {
            limiter: limiter.clone(),
            profile: profile.name.clone(),
        })
    }

    /// Sends one request upstream within the profile's budget. A read Contentstack answers with
    /// 429 is sent again once the budget allows, within `max_wait` of that first 429 (reads are
    /// idempotent); anything else it answers is the answer.
    ///
    /// A plain function: the send starts here and is boxed, and the future returned keeps only
    /// what the answer needs, not the headers and body it was given (docs/design.md#performance).
    pub(super) fn send<'a>(
        &'a self,
        outbound: &'a Outbound,
        headers: HeaderMap,
        body: Relay,
        record: &'a mut AccessRecord,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'a {
        let retry = outbound.kind == RequestKind::Read && hyper::body::Body::is_end_stream(&body);
        // Boxed: the sending future would otherwise be copied into each future above it.
        let first = Box::pin(self.send_once(outbound, headers, body, false));
        async move {
            // The answer is not kept beside the retry, which has it (see `Proxy::dispatch`).
            let again = {
                let response = record.upstream_took(first.await)?;
                match &outbound.budget {
                    Some(budget) if retry && response.status() == StatusCode::TOO_MANY_REQUESTS => {
                        // Boxed: rare, and as large as a send of its own.
                        Box::pin(self.send_again(outbound, budget, response, record))
                    }
                    _ => return Ok(response),
                }
            };
            again.await
        }
    }

    /// Sends a read Contentstack answered with 429 again once the budget allows, within `max_wait`
    /// of that first 429, with the headers [`Outbound::headers_to_send`] kept for it.
    async fn send_again(
        &self,
        outbound: &Outbound,
        budget: &Budget,
        response: Response<Incoming>,
        record: &mut AccessRecord,
    ) -> Result<Response<Incoming>, ProxyError> {
        let limiter = &budget.limiter;
        let deadline = Instant::now() + limiter.max_wait();
        let mut response = response;
        while response.status() == StatusCode::TOO_MANY_REQUESTS {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let wait = match limiter.acquire_within(outbound.kind, left).await {
                Decision::Now => Duration::ZERO,
                Decision::After(wait) => wait,
                Decision::Refuse(_) => break,
            };
            self.metrics.rate_limit_wait(&budget.profile);
            tokio::time::sleep(wait).await;
            let headers = outbound.headers.clone();
            let again = self.send_once(outbound, headers, Relay::empty(), true);
            response = record.upstream_took(again.await)?;
        }
        Ok(response)
    }

    /// One request upstream, and how long the upstream took with it (`None` when the budget
    /// refused it before it went); `slot_taken` when the caller already waited for its slot of the
    /// budget.
    ///
    /// A plain function: the future keeps the headers and body where they were put, and keeps
    /// nothing of the answer beside what the budget learns from it (docs/design.md#performance).
    fn send_once<'a>(
        &'a self,
        outbound: &'a Outbound,
        headers: HeaderMap,
        body: Relay,
        slot_taken: bool,
    ) -> impl Future<Output = (Result<Response<Incoming>, ProxyError>, Option<Duration>)> + Send + 'a
    {
        let fault = body.fault();
        async move {
            if let (Some(budget), false) = (&outbound.budget, slot_taken) {
                // Boxed, like what the budget learns below: with a fleet store each is a Redis
                // call, large, and only for profiles with a budget (docs/design.md#performance).
                if let Err(e) = Box::pin(self.take_slot(outbound, budget)).await {
                    return (Err(e), None);
                }
            }
            let started = Instant::now();
            // The request goes to its connection here; the future keeps no room for it
            // (docs/design.md#performance).
            let sent = self
                .clients
                .send(outbound.request(headers, body), outbound.pinned.as_deref());
            // The answer is taken apart inside a block, so that nothing is kept of it beside what
            // the budget learns (see `Proxy::dispatch`).
            let (response, learning, took) = {
                let result = tokio::time::timeout(outbound.timeout, sent).await;
                let took = Some(started.elapsed());
                match result {
                    Err(_) => return (Err(ProxyError::UpstreamTimeout(outbound.timeout)), took),
                    // The client's body failing (too large, stalled) is the client's error, not
                    // Contentstack's.
                    Ok(Err(e)) => {
                        let error = fault
                            .and_then(|fault| fault.error())
                            .map_or(ProxyError::UpstreamUnreachable(e), ProxyError::from);
                        return (Err(error), took);
                    }
                    Ok(Ok(response)) => {
                        let learning = learning(outbound, &response);
                        (response, learning, took)
                    }
                }
            };
            match learning {
                Some(learning) => (after(learning, Ok(response)).await, took),
                None => (Ok(response), took),
            }
        }
    }

    /// Waits for the request's slot of its profile's budget, or refuses it (429).
    async fn take_slot(&self, outbound: &Outbound, budget: &Budget) -> Result<(), ProxyError> {
        match budget.limiter.acquire(outbound.kind).await {
            Decision::Now => Ok(()),
            Decision::After(wait) => {
                self.metrics.rate_limit_wait(&budget.profile);
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Decision::Refuse(wait) => Err(ProxyError::RateLimited(wait)),
        }
    }
}

/// What the profile's budget learns from an answer: that Contentstack limited the request (429),
/// or that its window is used up (`x-ratelimit-remaining: 0`). Boxed: with a fleet store it is a
/// Redis call, and only a profile with a budget has it.
fn learning<'a>(
    outbound: &'a Outbound,
    response: &Response<Incoming>,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
    let limiter = &outbound.budget.as_ref()?.limiter;
    let kind = outbound.kind;
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        Some(Box::pin(limiter.upstream_limited(kind)))
    } else if response
        .headers()
        .get("x-ratelimit-remaining")
        .is_some_and(|v| v.as_bytes() == b"0")
    {
        Some(Box::pin(limiter.upstream_full(kind)))
    } else {
        None
    }
}
