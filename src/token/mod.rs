//! Session tokens: one current token per profile with a session (a login's `authtoken`, or an
//! OAuth app's access token), obtained once no matter how many requests need it, dropped only by
//! compare-and-swap, and guarded by the login discipline (docs/design.md#the-login-discipline):
//! refused credentials wait `rejected_retry`, transient failures back off, and so do tokens
//! rejected right after they were obtained (`backoff::RejectionStreak`).
//!
//! One job per file: the token and its leases (`authtoken.rs`), a profile's state, the single
//! source of truth about it (`state.rs`), how it obtains tokens, by login or by OAuth refresh, the
//! one place the two differ (`source.rs`), the manager that hands out tokens and runs the single
//! flight (`manager.rs`), background care (`care.rs`), retiring sessions (`retire.rs`), the fleet
//! store's part (`fleet.rs`), the session calls themselves (`session.rs`), backoff arithmetic
//! (`backoff.rs`), TOTP codes (`totp.rs`), and the one account call that is not about the session:
//! the organization's plan limits (`plan.rs`); for OAuth profiles, the token endpoint's calls
//! (`oauth.rs`), the authorization and its newest refresh token (`grant.rs`), the refresh that
//! keeps the new refresh token first (`refresh.rs`) and the state file it is kept in without a
//! fleet (`state_file.rs`). This module decides *when* to obtain a token; `session.rs` and
//! `oauth.rs` perform the calls. Nothing here logs a token, only its fingerprint.
//! Management-token profiles never come here: they have nothing to obtain.
mod authtoken;
pub mod backoff;
mod care;
mod failure;
mod fleet;
mod grant;
mod manager;
pub mod oauth;
mod plan;
mod refresh;
mod retire;
pub mod session;
mod source;
mod state;
mod state_file;
pub mod totp;

pub use authtoken::{Token, TokenKind, TokenLease};
pub use failure::{LoginFailure, TransientCause};
pub use grant::first_of_chain;
pub use manager::TokenManager;
pub use plan::OrganizationPlan;
pub use refresh::{Identity, KeepError, keep_authorization};
pub use session::{AuthClient, Validity, Verdict};
pub use state::{LoginError, ProfileStatus};
pub use state_file::StateFileError;
