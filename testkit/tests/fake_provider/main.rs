//! The fake OAuth provider's own protocol tests: real HTTP requests against a
//! running [`FakeProvider`](tokenvault_testkit::fake_provider::FakeProvider),
//! one module per endpoint or concern.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

mod authorize;
mod bearer_revocation;
mod client_auth;
mod controls;
mod faults;
mod grant_deletion;
mod revocation;
mod token;
