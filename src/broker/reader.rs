//! Cache-miss reads of connections, coalesced: calls that arrive while the
//! database is busy with earlier reads are answered together by one query.
//!
//! A few reader tasks share one queue. Each takes whatever has queued up
//! (up to [`MAX_BATCH`]) and reads it in one round trip, so at low load a read
//! goes out at once, alone, and under load the number of queries per second
//! stays bounded by the readers while each query serves many callers.

use crate::store::{AccessTokenRecord, Connection, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// Most connections read by one query.
pub const MAX_BATCH: usize = 64;
/// Calls waiting for a reader before new ones wait to be queued.
const QUEUE: usize = 4096;

/// What a read returns: the connection and its stored token, or `None`.
pub type ReadResult = Result<Option<(Connection, Option<AccessTokenRecord>)>, StoreError>;

struct ReadRequest {
    id: Uuid,
    scope_key: String,
    reply: oneshot::Sender<ReadResult>,
}

/// Coalescing reader of connections and their stored access tokens.
#[derive(Debug, Clone)]
pub struct ConnectionReader {
    queue: mpsc::Sender<ReadRequest>,
}

impl std::fmt::Debug for ReadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRequest")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionReader {
    /// Starts `readers` reader tasks over `store` (at least one). They end
    /// when the last handle is dropped. Must be called inside a Tokio runtime.
    pub fn start(store: Arc<dyn Store>, readers: usize) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..readers.max(1) {
            tokio::spawn(read_batches(store.clone(), receiver.clone()));
        }
        Self { queue }
    }

    /// Reads connection `id` (any tenant) and its stored token for `scope_key`.
    pub async fn read(&self, id: Uuid, scope_key: &str) -> ReadResult {
        let (reply, answer) = oneshot::channel();
        let request = ReadRequest {
            id,
            scope_key: scope_key.to_owned(),
            reply,
        };
        self.queue
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable("the connection reader has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the connection reader has stopped".to_owned()))?
    }
}

/// One reader: takes what has queued, answers it, repeats.
async fn read_batches(store: Arc<dyn Store>, receiver: Arc<Mutex<mpsc::Receiver<ReadRequest>>>) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch
        };
        answer(&*store, batch).await;
    }
}

/// Reads a batch, one query per distinct scope key (almost always one).
async fn answer(store: &dyn Store, batch: Vec<ReadRequest>) {
    let mut by_scope: HashMap<String, Vec<ReadRequest>> = HashMap::new();
    for request in batch {
        by_scope.entry(request.scope_key.clone()).or_default().push(request);
    }
    for (scope_key, requests) in by_scope {
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
        match store.connections_with_token(&ids, &scope_key).await {
            Ok(rows) => {
                let found: HashMap<Uuid, (Connection, Option<AccessTokenRecord>)> =
                    rows.into_iter().map(|row| (row.0.id, row)).collect();
                for request in requests {
                    // Several callers may ask for one id: each gets its own copy.
                    let _ = request.reply.send(Ok(found.get(&request.id).cloned()));
                }
            }
            Err(error) => {
                for request in requests {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
