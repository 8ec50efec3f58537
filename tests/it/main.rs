//! Integration tests: one binary, the real server over sockets, real
//! PostgreSQL and SQLite databases (a fresh one per test).

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

mod abuse;
mod accounts;
mod audit;
mod binding;
mod broker;
mod consent;
mod epochs;
mod events;
mod export;
mod faults;
mod hsm;
mod kms;
mod lifecycle;
mod lockout;
mod outbox;
mod presets;
mod process;
mod refresh;
mod replaced;
mod retention;
mod revocation_methods;
mod sealed;
mod server;
mod startup;
mod stepup;
mod store;
mod tls;
mod upgrade;
mod vault;
mod webhooks;
mod workload;
