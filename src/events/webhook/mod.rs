//! Webhooks: a tenant's endpoints ([`Webhooks`]: create, list, delete,
//! rotate the secret, list deliveries), the address policy that keeps them
//! off private networks ([`AddressPolicy`]), the Standard Webhooks
//! signature ([`signature`]), and the worker that delivers each queued
//! event at least once ([`DeliveryWorker`]).
//!
//! | file | holds |
//! |---|---|
//! | `address.rs` | [`AddressPolicy`]: `https` only, no private or link-local address unless allowed; the checked DNS resolver |
//! | `signature.rs` | signing secrets (`whsec_…`) and `webhook-signature` values |
//! | `endpoints.rs` | [`Webhooks`]: endpoint management, secrets sealed in the vault |
//! | `delivery.rs` | [`DeliveryWorker`]: claim, sign, POST, record, retry with backoff, give up |

mod address;
mod delivery;
mod endpoints;
pub mod signature;

pub use address::{AddressPolicy, EndpointUrlError};
pub use delivery::{DeliveryWorker, WebhookBody};
pub use endpoints::{CreatedEndpoint, DeliveryReport, WebhookError, Webhooks};
