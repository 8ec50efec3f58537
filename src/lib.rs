//! tokenvault: an OAuth integration broker with a token vault.
//!
//! See `DESIGN.md`-derived docs in the README: consent with the fewest scopes,
//! refresh tokens sealed under per-connection data keys, short-lived access
//! tokens for agent workers over gRPC, revocation and deletion that reach the
//! provider too.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aged_cache;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consent;
pub mod events;
pub mod keyed_limiter;
pub mod lifecycle;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod vault;

pub mod provider;

/// Generated gRPC types and services of `proto/tokenvault/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokenvault.v1");

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokenvault_descriptor");
}
