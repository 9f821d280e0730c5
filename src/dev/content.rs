//! Stack content of the simulated CMA: content types, entries and assets.
//!
//! The session layer (`dev/mod.rs`) authenticates the request first; this module only sees requests
//! whose `authtoken` was valid, and answers them from an in-memory store.
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

/// One authenticated request, already read in full.
pub struct SimRequest<'a> {
    pub method: &'a Method,
    /// The path as sent, e.g. `/v3/content_types/blog/entries`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The account whose authtoken authenticated the request.
    pub user_email: &'a str,
}

/// A JSON answer.
pub struct SimResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Content of every simulated stack, keyed by the stack's `api_key`.
#[derive(Default)]
pub struct ContentStore {}

impl ContentStore {
    /// A store with the given stacks (`api_key`, name) and nothing in them.
    pub fn new(_stacks: &[(&str, &str)]) -> Self {
        Self {}
    }

    /// Answers a content route, or `None` when the path is not one this module serves.
    pub fn handle(&mut self, _req: SimRequest<'_>) -> Option<SimResponse> {
        None
    }
}
