//! cma-auth-proxy: a sidecar that logs in to Contentstack's Content Management API with a service
//! account and forwards credential-free local requests with the session token injected.
#![forbid(unsafe_code)]

pub mod dev;
