//! The service layer: the tonic services and the HTTP routes (OAuth
//! callback, health, metrics). Each handler decodes and validates
//! ([`validate`]), authorizes, calls the domain, and maps errors in one place
//! ([`status`]). [`server`] assembles the services and hands them to
//! [`crate::transport`], which owns the listeners, TLS and peer identity.

mod admin;
mod connection;
mod consent;
mod context;
mod convert;
mod events;
mod export;
pub mod http;
pub mod server;
pub mod status;
mod tenant_limit;
mod token;
pub mod validate;

pub use admin::AdminApi;
pub use connection::ConnectionApi;
pub use consent::ConsentApi;
pub use context::CallContext;
pub use events::EventApi;
pub use server::{start, ServerHandle};
pub use tenant_limit::TenantRateLimit;
pub use token::TokenApi;
