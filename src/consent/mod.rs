//! Consent: the provider catalog, the mapping of requested capabilities to
//! the fewest provider scopes that serve them, PKCE and state, the flow, and
//! the return-URL policy.

pub mod catalog;
pub mod flow;
pub mod return_url;

pub use flow::{CallbackParams, Completion, ConsentError, ConsentFlow, Outcome, StartRequest, Started};
