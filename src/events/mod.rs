//! The event log and its consumers. Lifecycle changes record [`Event`]s in
//! their own transaction (through the store's `Trail`); [`EventHub`] serves
//! `WatchEvents` (replay after a cursor, then live, with heartbeats) and
//! wakes on `NOTIFY` from any replica; [`webhook`] manages the tenants'
//! endpoints and delivers each event to them at least once, signed by the
//! Standard Webhooks scheme.
//!
//! | file | holds |
//! |---|---|
//! | `event.rs` | event types, the typed payload, [`Event`] |
//! | `hub.rs` | [`EventHub`]: the wake-up signal and `WatchEvents` streams |
//! | `webhook/` | endpoints (address policy, secrets), signatures, the delivery worker |

mod event;
mod hub;
pub mod webhook;

pub use event::{grant_changes, Event, EventAccount, EventData, EventType};
pub use hub::{EventHub, WatchError, WatchItem, WatchRequest, WatchSettings};
