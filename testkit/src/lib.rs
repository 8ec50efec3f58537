//! tokenvault's test kit: what integration tests, benchmarks and examples
//! need around the server, kept out of the shipped crate and binary.
//!
//! - [`fake_provider`]: a fake OAuth 2.0 provider that speaks real HTTP on
//!   `127.0.0.1` (authorization code + PKCE, refresh, RFC 7009 revocation,
//!   injected faults), driven and inspected by the test;
//! - [`server_process`]: `tokenvault serve` as its own operating-system
//!   process, configured for the fake.
//!
//! It does not depend on the `tokenvault` crate: it speaks to the server only
//! over the network and its configuration file, as an operator's tools would.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fake_provider;
pub mod server_process;
