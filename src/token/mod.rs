//! Session tokens: one current `authtoken` per login profile, obtained by a single login no matter
//! how many requests need it, dropped only by compare-and-swap, and guarded by the login
//! discipline (docs/design.md#the-login-discipline): refused credentials wait `rejected_retry`,
//! transient failures back off, and so do tokens rejected right after their login
//! (`backoff::RejectionStreak`).
//!
//! One job per file: the token and its leases (`authtoken.rs`), a profile's state, the single
//! source of truth about it (`state.rs`), the manager that hands out tokens and runs the single
//! flight (`manager.rs`), background care (`care.rs`), retiring sessions (`retire.rs`), the fleet
//! store's part (`fleet.rs`), the session calls themselves (`session.rs`), backoff arithmetic
//! (`backoff.rs`), TOTP codes (`totp.rs`), and the one account call that is not about the session:
//! the organization's plan limits (`plan.rs`). This module decides *when* to log in; `session.rs`
//! performs the calls. Nothing here logs a token, only its fingerprint. Management-token profiles
//! never come here: they have nothing to log in for.
mod authtoken;
pub mod backoff;
mod care;
mod fleet;
mod manager;
mod plan;
mod retire;
pub mod session;
mod state;
pub mod totp;

pub use authtoken::{Token, TokenLease};
pub use manager::TokenManager;
pub use plan::OrganizationPlan;
pub use session::{AuthClient, LoginFailure, TransientCause, Validity};
pub use state::{LoginError, ProfileStatus};
