//! A simulated Contentstack CMA, served by `cma-auth-proxy dev` and used by the tests.
pub mod content;
