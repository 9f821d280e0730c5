//! The content store's refusals: which status, `error_code` and wording the CMA answers for each,
//! rendered in Contentstack's shape by the crate's one error function.
use http::StatusCode;
use serde_json::json;

use super::{Object, SimResponse};

/// The error bodies of the CMA, in its shape `{"error_message","error_code","errors"}`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CmaError {
    /// Missing or unknown `api_key` header.
    StackNotFound,
    ContentTypeNotFound(String),
    ContentTypeRejected(Write, Invalid),
    EntryNotFound,
    EntryRejected(Write, Invalid),
    AssetNotFound,
    AssetRejected(Write, Invalid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Create,
    Update,
}

impl Write {
    pub(super) fn noun(self) -> &'static str {
        match self {
            Write::Create => "creation",
            Write::Update => "update",
        }
    }
}

/// Which field was refused and why, as the CMA words it in `errors`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid {
    field: String,
    reason: &'static str,
}

impl Invalid {
    pub(super) fn new(field: &str, reason: &'static str) -> Self {
        Self {
            field: field.to_owned(),
            reason,
        }
    }
}

impl CmaError {
    /// Sources: 109 (status 412) and its body are as measured against the live API and quoted in
    /// public projects; 118, 141 and 145 with these messages come from Contentstack's SDK tests and its
    /// API change log; 422 for the rest is the CMA's status for semantic errors (the official SDK's
    /// tests accept 404 or 422 for unknown uids). 119 is what the CMA answers for invalid entry data;
    /// the asset rejection wording is this simulator's own, no public source quotes one.
    pub(super) fn into_response(self) -> SimResponse {
        let (status, code, message, invalid) = match self {
            CmaError::StackNotFound => (
                StatusCode::PRECONDITION_FAILED,
                109,
                "We can't find that Stack. Please try again.".to_owned(),
                Invalid::new("api_key", "is not valid."),
            ),
            CmaError::ContentTypeNotFound(uid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                118,
                format!("The Content Type '{uid}' was not found. Please try again."),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::ContentTypeRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                118,
                format!("Content Type {} failed. Please try again.", write.noun()),
                invalid,
            ),
            CmaError::EntryNotFound => (
                StatusCode::UNPROCESSABLE_ENTITY,
                141,
                "The requested object doesn't exist.".to_owned(),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::EntryRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                119,
                format!("Entry {} failed. Please enter valid data.", write.noun()),
                invalid,
            ),
            CmaError::AssetNotFound => (
                StatusCode::UNPROCESSABLE_ENTITY,
                145,
                "Asset was not found.".to_owned(),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::AssetRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                145,
                format!("Asset {} failed. Please try again.", write.noun()),
                invalid,
            ),
        };
        let mut errors = Object::new();
        errors.insert(invalid.field, json!([invalid.reason]));
        SimResponse {
            status,
            body: crate::reply::error_body(code, &message, errors.into()),
        }
    }
}
