//! Maps driver errors to [`StoreError`]: connection trouble is `Unavailable`
//! (the caller may retry elsewhere or later), undecodable data `Corrupt`, the
//! rest `Database`.

use crate::store::StoreError;

/// Maps a driver error: connection trouble is `Unavailable`, the rest `Database`.
pub(in crate::store) fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL SQLSTATEs have five characters: 08xxx connection
            // exceptions, 57P0x shutdown, 53xxx resources. SQLite codes are
            // numbers whose low byte 5/6 means busy/locked.
            let unavailable = if code.len() == 5 {
                code.starts_with("08") || code.starts_with("57P0") || code.starts_with("53")
            } else {
                code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
            };
            if unavailable {
                StoreError::Unavailable(db.message().to_owned())
            } else {
                StoreError::Database(db.message().to_owned())
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Database(error.to_string()),
    }
}
