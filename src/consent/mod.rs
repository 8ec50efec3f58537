//! Consent: the provider catalog, the mapping of requested capabilities to
//! the fewest provider scopes that serve them, PKCE and state, the binding
//! of a consent to its user, the flow, and the return-URL policy.

pub mod account;
pub mod binding;
pub mod catalog;
pub mod flow;
mod pending;
pub mod return_url;

pub use flow::{
    Bound, CallbackParams, Completer, Completion, ConsentError, ConsentFlow, Outcome, StartRequest, Started,
};
