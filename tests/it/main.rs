//! Integration tests: one binary, the real server over sockets, real
//! PostgreSQL and SQLite databases (a fresh one per test).

mod support;

mod abuse;
mod broker;
mod consent;
mod faults;
mod lifecycle;
mod process;
mod server;
mod store;
mod tls;
mod vault;
