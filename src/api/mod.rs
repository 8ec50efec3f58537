//! The transport layer: tonic services and the HTTP listener. Each handler
//! decodes and validates, authorizes, calls the domain, and maps errors in
//! one place ([`status`]).

mod admin;
mod connection;
mod consent;
mod context;
mod convert;
pub mod http;
pub mod server;
pub mod status;
pub mod tls;
mod token;
pub mod validate;

pub use admin::AdminApi;
pub use connection::ConnectionApi;
pub use consent::ConsentApi;
pub use context::CallContext;
pub use server::{start, ServerHandle};
pub use token::TokenApi;
