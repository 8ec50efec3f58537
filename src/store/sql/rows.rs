//! Reading records out of result rows: the column list each record is
//! selected with, typed column readers ([`Columns`]), and one [`FromAnyRow`]
//! per record type, so every statement that returns a record maps it the
//! same way.

use super::error::map_err;
use crate::clock::from_millis;
use crate::store::{
    scopes_from_text, AccessTokenRecord, AuditEvent, Connection, ConnectionStatus, ConsentRecord, ConsentState,
    OutboxEntry, ScopeSet, Sealed, StoreError, User, WrappedDataKey,
};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, Decode, Row, Type};
use std::str::FromStr;
use uuid::Uuid;

// The select lists: one per record, in the order inserts bind them too.

/// The columns [`User`] is read from.
pub(in crate::store) const USER_COLUMNS: &str = "tenant_id, user_id, created_at, deleted_at, purge_at";

/// The columns [`Connection`] is read from (with [`CONNECTION_FROM`]).
pub(in crate::store) const CONNECTION_COLUMNS: &str = "c.id, c.tenant_id, c.user_id, c.provider, c.granted_scopes, \
     c.status, c.status_reason, c.dek_id, c.refresh_token, c.token_version, c.created_at, c.updated_at, \
     c.last_used_at, u.deleted_at AS user_deleted_at, u.purge_at AS user_purge_at";
/// The tables [`CONNECTION_COLUMNS`] come from: the connection and its user.
pub(in crate::store) const CONNECTION_FROM: &str =
    "FROM connections c JOIN users u ON u.tenant_id = c.tenant_id AND u.user_id = c.user_id";

/// The columns [`AccessTokenRecord`] is read from, prefixed `t_` so they can
/// sit next to [`CONNECTION_COLUMNS`] (table alias `t`).
pub(in crate::store) const ACCESS_TOKEN_COLUMNS: &str = "t.connection_id AS t_connection_id, \
     t.scope_key AS t_scope_key, t.token AS t_token, t.token_type AS t_token_type, t.scopes AS t_scopes, \
     t.expires_at AS t_expires_at, t.token_version AS t_token_version";

/// The columns [`ConsentRecord`] is read from (and inserted in this order).
pub(in crate::store) const CONSENT_COLUMNS: &str = "id, state_hash, tenant_id, user_id, provider, capabilities, \
     requested_scopes, asked_scopes, incremental, return_url, redirect_uri, dek_id, pkce_verifier, state, \
     connection_id, error, created_at, expires_at, completed_at, actor";

/// The columns [`AuditEvent`] is read from (and inserted in this order).
pub(in crate::store) const AUDIT_COLUMNS: &str =
    "id, occurred_at, tenant_id, user_id, connection_id, actor, action, outcome, detail, request_id";

/// The columns [`OutboxEntry`] is read from (and inserted in this order).
pub(in crate::store) const OUTBOX_COLUMNS: &str = "id, connection_id, tenant_id, user_id, provider, dek_id, token, \
     token_type_hint, binding_record, attempts, next_attempt_at, give_up_at, status, last_error, created_at";

/// The columns [`WrappedDataKey`] is read from.
pub(in crate::store) const DATA_KEY_COLUMNS: &str = "id, kek_id, wrapped, created_at";

/// A record that can be read from one result row.
pub(in crate::store) trait FromAnyRow: Sized {
    /// Reads the record; a missing or undecodable column is [`StoreError::Corrupt`].
    fn from_row(row: &AnyRow) -> Result<Self, StoreError>;
}

/// Typed reads of one row's columns, in the stored forms (text ids, integer
/// milliseconds, bytes).
pub(in crate::store) struct Columns<'r>(pub(in crate::store) &'r AnyRow);

impl<'r> Columns<'r> {
    /// A column as the driver decodes it (text, integers, bytes, and their `Option`s).
    pub(in crate::store) fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: Decode<'r, Any> + Type<Any>,
    {
        self.0.try_get(column).map_err(map_err)
    }

    /// A UUID stored as text.
    pub(in crate::store) fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        parse_uuid(column, &self.get::<String>(column)?)
    }

    /// A nullable UUID stored as text.
    pub(in crate::store) fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        let text: Option<String> = self.get(column)?;
        text.map(|t| parse_uuid(column, &t)).transpose()
    }

    /// A time stored as milliseconds since the epoch.
    pub(in crate::store) fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(from_millis(self.get(column)?))
    }

    /// A nullable time stored as milliseconds since the epoch.
    pub(in crate::store) fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let millis: Option<i64> = self.get(column)?;
        Ok(millis.map(from_millis))
    }

    /// A nullable ciphertext.
    pub(in crate::store) fn opt_sealed(&self, column: &str) -> Result<Option<Sealed>, StoreError> {
        let bytes: Option<Vec<u8>> = self.get(column)?;
        Ok(bytes.map(Sealed))
    }

    /// A scope set stored space-separated.
    pub(in crate::store) fn scopes(&self, column: &str) -> Result<ScopeSet, StoreError> {
        Ok(scopes_from_text(&self.get::<String>(column)?))
    }
}

fn parse_uuid(column: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::from_str(text).map_err(|_| StoreError::Corrupt(format!("{column} is not a UUID")))
}

impl FromAnyRow for User {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(User {
            tenant_id: c.get("tenant_id")?,
            user_id: c.get("user_id")?,
            created_at: c.time("created_at")?,
            deleted_at: c.opt_time("deleted_at")?,
            purge_at: c.opt_time("purge_at")?,
        })
    }
}

impl FromAnyRow for Connection {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let status: String = c.get("status")?;
        Ok(Connection {
            id: c.uuid("id")?,
            tenant_id: c.get("tenant_id")?,
            user_id: c.get("user_id")?,
            provider: c.get("provider")?,
            granted_scopes: c.scopes("granted_scopes")?,
            stored_status: ConnectionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status `{status}`")))?,
            status_reason: c.get("status_reason")?,
            dek_id: c.opt_uuid("dek_id")?,
            refresh_token: c.opt_sealed("refresh_token")?,
            token_version: c.get("token_version")?,
            created_at: c.time("created_at")?,
            updated_at: c.time("updated_at")?,
            last_used_at: c.opt_time("last_used_at")?,
            user_deleted_at: c.opt_time("user_deleted_at")?,
            purge_at: c.opt_time("user_purge_at")?,
        })
    }
}

/// An access token read from [`ACCESS_TOKEN_COLUMNS`]: `None` where the row
/// has no token (a `LEFT JOIN` that matched nothing).
impl FromAnyRow for Option<AccessTokenRecord> {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let Some(token) = c.opt_sealed("t_token")? else {
            return Ok(None);
        };
        Ok(Some(AccessTokenRecord {
            connection_id: c.uuid("t_connection_id")?,
            scope_key: c.get("t_scope_key")?,
            token,
            token_type: c.get("t_token_type")?,
            scopes: c.scopes("t_scopes")?,
            expires_at: c.time("t_expires_at")?,
            token_version: c.get("t_token_version")?,
        }))
    }
}

/// Two records read from one joined row.
impl<A: FromAnyRow, B: FromAnyRow> FromAnyRow for (A, B) {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok((A::from_row(row)?, B::from_row(row)?))
    }
}

impl FromAnyRow for ConsentRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let state: String = c.get("state")?;
        let incremental: i64 = c.get("incremental")?;
        Ok(ConsentRecord {
            id: c.uuid("id")?,
            state_hash: c.get("state_hash")?,
            tenant_id: c.get("tenant_id")?,
            user_id: c.get("user_id")?,
            provider: c.get("provider")?,
            capabilities: c
                .get::<String>("capabilities")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            requested_scopes: c.scopes("requested_scopes")?,
            asked_scopes: c.scopes("asked_scopes")?,
            incremental: incremental != 0,
            return_url: c.get("return_url")?,
            redirect_uri: c.get("redirect_uri")?,
            dek_id: c.uuid("dek_id")?,
            pkce_verifier: c.opt_sealed("pkce_verifier")?,
            state: ConsentState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown consent state `{state}`")))?,
            connection_id: c.opt_uuid("connection_id")?,
            error: c.get("error")?,
            created_at: c.time("created_at")?,
            expires_at: c.time("expires_at")?,
            completed_at: c.opt_time("completed_at")?,
            actor: c.get("actor")?,
        })
    }
}

impl FromAnyRow for AuditEvent {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let detail: String = c.get("detail")?;
        Ok(AuditEvent {
            id: c.uuid("id")?,
            occurred_at: c.time("occurred_at")?,
            tenant_id: c.get("tenant_id")?,
            user_id: c.get("user_id")?,
            connection_id: c.opt_uuid("connection_id")?,
            actor: c.get("actor")?,
            action: c.get("action")?,
            outcome: c.get("outcome")?,
            detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
            request_id: c.get("request_id")?,
        })
    }
}

impl FromAnyRow for OutboxEntry {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(OutboxEntry {
            id: c.uuid("id")?,
            connection_id: c.uuid("connection_id")?,
            tenant_id: c.get("tenant_id")?,
            user_id: c.get("user_id")?,
            provider: c.get("provider")?,
            dek_id: c.uuid("dek_id")?,
            token: c.opt_sealed("token")?,
            token_type_hint: c.get("token_type_hint")?,
            binding_record: c.get("binding_record")?,
            attempts: c.get("attempts")?,
            next_attempt_at: c.time("next_attempt_at")?,
            give_up_at: c.time("give_up_at")?,
            status: c.get("status")?,
            last_error: c.get("last_error")?,
            created_at: c.time("created_at")?,
        })
    }
}

impl FromAnyRow for WrappedDataKey {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(WrappedDataKey {
            id: c.uuid("id")?,
            kek_id: c.get("kek_id")?,
            wrapped: c.get("wrapped")?,
            created_at: c.time("created_at")?,
        })
    }
}
