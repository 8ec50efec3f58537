//! Test support shipped with the crate, for integration tests and benchmarks:
//! a fake OAuth provider that speaks real HTTP on `127.0.0.1`, and the server
//! binary run as its own process.

pub mod fake_provider;
pub mod server_process;
