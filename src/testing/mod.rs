//! Test support shipped with the crate: a fake OAuth provider that speaks real
//! HTTP on `127.0.0.1`, for integration tests and benchmarks.

pub mod fake_provider;
