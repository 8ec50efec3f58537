//! Single flight in this process: at most one caller per connection goes past
//! the cache at a time (to the store and, if need be, the provider); the
//! others wait for it and then find its result in the cache. Across replicas
//! the store's refresh lock does the same job.

use dashmap::DashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Mutex;
use uuid::Uuid;

/// The flights in progress, one per connection.
#[derive(Debug, Default)]
pub(super) struct Flights {
    active: DashMap<Uuid, Arc<Mutex<()>>>,
}

impl Flights {
    /// Runs `work` as connection `id`'s only flight: waits until an earlier
    /// flight of `id` has landed, then runs it; forgets the flight once no
    /// one waits for it.
    pub(super) async fn run<T>(&self, id: Uuid, work: impl Future<Output = T>) -> T {
        let flight = self
            .active
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let result = {
            let _guard = flight.lock().await;
            work.await
        };
        drop(flight);
        self.active.remove_if(&id, |_, f| Arc::strong_count(f) == 1);
        result
    }

    /// Connections with a flight in progress or waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn one_flight_per_connection_at_a_time_and_forgotten_after() {
        let flights = Flights::default();
        let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let id = Uuid::new_v4();
        let fly = || async {
            flights
                .run(id, async {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
                .await
        };
        tokio::join!(fly(), fly(), fly(), flights.run(Uuid::new_v4(), async {}));
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }
}
