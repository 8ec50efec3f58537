//! Single flight in this process: at most one refresh per connection and
//! scope key is in the air at a time. A refresh is a task of its own, not
//! part of any caller's request: callers join it and wait for it as long as
//! their own deadline allows, and a caller that gives up (deadline,
//! disconnect, server timeout) leaves it running to its end, provider answer
//! and commit both. Across replicas the store's refresh lease does the same job.

use super::{BrokerError, CachedToken};
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// What a flight brings back.
#[derive(Debug, Clone)]
pub(super) struct Landed {
    /// The token.
    pub(super) token: Arc<CachedToken>,
    /// How it was obtained, for the issuance metric (`refreshed`, `store_hit`, `stale_fallback`).
    pub(super) outcome: &'static str,
}

/// A flight's result, shared by everyone waiting for it.
pub(super) type Landing = Shared<BoxFuture<'static, Result<Landed, BrokerError>>>;

/// The flights in the air: (connection, scope key) → its landing.
#[derive(Default)]
pub(super) struct Flights {
    active: DashMap<(Uuid, String), (u64, Landing)>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").field("active", &self.active.len()).finish()
    }
}

impl Flights {
    /// Joins the flight of `key`, or starts one: `start(id)` gives the work,
    /// which runs as its own task and must call [`Flights::land`] with `id`
    /// when it ends.
    pub(super) fn join<F, Fut>(&self, key: (Uuid, String), start: F) -> Landing
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<Landed, BrokerError>> + Send + 'static,
    {
        match self.active.entry(key) {
            dashmap::mapref::entry::Entry::Occupied(flight) => flight.get().1.clone(),
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(start(id));
                let landing = async move {
                    task.await.unwrap_or_else(|_| {
                        Err(BrokerError::ProviderUnavailable(
                            "the refresh task ended abnormally".to_owned(),
                        ))
                    })
                }
                .boxed()
                .shared();
                slot.insert((id, landing.clone()));
                landing
            }
        }
    }

    /// Forgets flight `id` of `key` (a later caller starts a new one).
    pub(super) fn land(&self, key: &(Uuid, String), id: u64) {
        self.active.remove_if(key, |_, (flight, _)| *flight == id);
    }

    /// Flights in the air.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use secrecy::SecretString;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn token() -> Landed {
        Landed {
            token: Arc::new(CachedToken::new(
                crate::broker::Owner {
                    tenant_id: "t",
                    user_id: "u",
                    provider: "p",
                },
                SecretString::from("a"),
                &Default::default(),
                &Default::default(),
                Utc::now(),
                Utc::now(),
            )),
            outcome: "refreshed",
        }
    }

    #[tokio::test]
    async fn one_flight_per_key_shared_by_its_waiters_and_finished_without_them() {
        let flights = Arc::new(Flights::default());
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let key = (Uuid::new_v4(), String::new());
        let start = |id: u64| {
            let (flights, started, finished, key) = (flights.clone(), started.clone(), finished.clone(), key.clone());
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                flights.land(&key, id);
                Ok(token())
            }
        };
        let first = flights.join(key.clone(), start);
        let second = flights.join(key.clone(), |_| async { unreachable!("joins the flight in the air") });
        // One waiter gives up at once; the flight goes on.
        assert!(tokio::time::timeout(Duration::from_millis(1), first).await.is_err());
        let landed = second.await.unwrap();
        assert_eq!(landed.outcome, "refreshed");
        assert_eq!(
            (started.load(Ordering::SeqCst), finished.load(Ordering::SeqCst)),
            (1, 1)
        );
        assert_eq!(flights.len(), 0);
        // Nobody waits at all: the work still runs to its end.
        drop(flights.join(key.clone(), start));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            (started.load(Ordering::SeqCst), finished.load(Ordering::SeqCst)),
            (2, 2)
        );
        assert_eq!(flights.len(), 0);
    }
}
