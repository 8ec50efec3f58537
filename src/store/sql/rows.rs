//! Reading records out of result rows: the column list each record is
//! selected with, next to the one [`FromAnyRow`] that maps it, so every
//! statement that returns a record reads it the same way. Columns decode by
//! the type they are read into ([`Column`]: text ids, integer milliseconds,
//! bytes, space-separated scopes).

use super::error::map_err;
use crate::clock::from_millis;
use crate::events::{Event, EventType};
use crate::store::{
    scopes_from_text, AccessTokenRecord, AuditEvent, Connection, ConnectionStatus, ConsentRecord, ConsentState,
    DeliveryStatus, KekEpoch, OutboxEntry, ProviderRevocation, RevocationState, ScopeSet, Sealed, StoreError, User,
    WebhookAttempt, WebhookDelivery, WebhookEndpoint, WrappedDataKey,
};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::str::FromStr;
use uuid::Uuid;

/// A record that can be read from one result row.
pub(in crate::store) trait FromAnyRow: Sized {
    /// Reads the record; a missing or undecodable column is [`StoreError::Corrupt`].
    fn from_row(row: &AnyRow) -> Result<Self, StoreError>;
}

/// A value read from one column in its stored form.
pub(in crate::store) trait Column: Sized {
    /// Reads `column` of `row`; a missing or undecodable column is [`StoreError::Corrupt`].
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError>;
}

/// Types the driver decodes as they are.
macro_rules! decoded_columns {
    ($($type:ty),*) => {
        $(impl Column for $type {
            fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
                row.try_get(column).map_err(map_err)
            }
        })*
    };
}

decoded_columns!(String, Option<String>, i64, Option<i64>, Vec<u8>, Option<Vec<u8>>);

/// A UUID stored as text.
impl Column for Uuid {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        parse_uuid(column, &String::read(row, column)?)
    }
}

/// A nullable UUID stored as text.
impl Column for Option<Uuid> {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        let text = Option::<String>::read(row, column)?;
        text.map(|t| parse_uuid(column, &t)).transpose()
    }
}

/// A time stored as milliseconds since the epoch.
impl Column for DateTime<Utc> {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        Ok(from_millis(i64::read(row, column)?))
    }
}

/// A nullable time stored as milliseconds since the epoch.
impl Column for Option<DateTime<Utc>> {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        Ok(Option::<i64>::read(row, column)?.map(from_millis))
    }
}

/// A nullable ciphertext.
impl Column for Option<Sealed> {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        Ok(Option::<Vec<u8>>::read(row, column)?.map(Sealed))
    }
}

/// A scope set stored space-separated.
impl Column for ScopeSet {
    fn read(row: &AnyRow, column: &str) -> Result<Self, StoreError> {
        Ok(scopes_from_text(&String::read(row, column)?))
    }
}

fn parse_uuid(column: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::from_str(text).map_err(|_| StoreError::Corrupt(format!("{column} is not a UUID")))
}

/// One row's columns, read by the type they are read into.
pub(in crate::store) struct Columns<'r>(pub(in crate::store) &'r AnyRow);

impl Columns<'_> {
    /// Reads `column` as a `T`.
    pub(in crate::store) fn read<T: Column>(&self, column: &str) -> Result<T, StoreError> {
        T::read(self.0, column)
    }
}

/// Builds a record from `columns`, like a struct literal with field-init
/// shorthand: a bare `field` reads the column of the same name, `field: value`
/// gives the value. Fields are read in the order written.
macro_rules! from_columns {
    (@value $columns:ident, $field:ident, $value:expr) => {
        $value
    };
    (@value $columns:ident, $field:ident) => {
        $columns.read(stringify!($field))?
    };
    ($columns:ident => $record:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        $record { $($field: from_columns!(@value $columns, $field $(, $value)?)),* }
    };
}

/// The columns [`User`] is read from.
pub(in crate::store) const USER_COLUMNS: &str = "tenant_id, user_id, created_at, deleted_at, purge_at";

impl FromAnyRow for User {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(from_columns!(c => User { tenant_id, user_id, created_at, deleted_at, purge_at }))
    }
}

/// The columns [`Connection`] is read from (with [`CONNECTION_FROM`]).
pub(in crate::store) const CONNECTION_COLUMNS: &str = "c.id, c.tenant_id, c.user_id, c.provider, c.granted_scopes, \
     c.status, c.status_reason, c.dek_id, c.refresh_token, c.token_version, c.created_at, c.updated_at, \
     c.last_used_at, c.provider_revocation, c.provider_revocation_at, c.provider_revocation_detail, \
     c.provider_revocation_page, c.provider_revocation_error_kind, c.account_subject, c.account_display, \
     u.deleted_at AS user_deleted_at, u.purge_at AS user_purge_at";
/// The tables [`CONNECTION_COLUMNS`] come from: the connection and its user.
pub(in crate::store) const CONNECTION_FROM: &str =
    "FROM connections c JOIN users u ON u.tenant_id = c.tenant_id AND u.user_id = c.user_id";

impl FromAnyRow for Connection {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let status: String = c.read("status")?;
        Ok(from_columns!(c => Connection {
            id, tenant_id, user_id, provider, granted_scopes,
            stored_status: ConnectionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status `{status}`")))?,
            status_reason, dek_id, refresh_token, token_version, created_at, updated_at, last_used_at,
            user_deleted_at,
            purge_at: c.read("user_purge_at")?,
            provider_revocation: provider_revocation(&c)?,
            account_subject, account_display,
        }))
    }
}

/// The provider-revocation columns of a connection row.
fn provider_revocation(c: &Columns<'_>) -> Result<Option<ProviderRevocation>, StoreError> {
    let Some(state) = c.read::<Option<String>>("provider_revocation")? else {
        return Ok(None);
    };
    let state = RevocationState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown provider revocation state `{state}`")))?;
    Ok(Some(ProviderRevocation {
        state,
        at: c
            .read::<Option<DateTime<Utc>>>("provider_revocation_at")?
            .unwrap_or_default(),
        detail: c.read("provider_revocation_detail")?,
        user_page: c.read("provider_revocation_page")?,
        error_kind: c.read("provider_revocation_error_kind")?,
    }))
}

/// The columns [`AccessTokenRecord`] is read from, prefixed `t_` so they can
/// sit next to [`CONNECTION_COLUMNS`] (table alias `t`).
pub(in crate::store) const ACCESS_TOKEN_COLUMNS: &str = "t.connection_id AS t_connection_id, \
     t.scope_key AS t_scope_key, t.token AS t_token, t.token_type AS t_token_type, t.scopes AS t_scopes, \
     t.expires_at AS t_expires_at, t.token_version AS t_token_version, t.created_at AS t_issued_at";

/// An access token read from [`ACCESS_TOKEN_COLUMNS`]: `None` where the row
/// has no token (a `LEFT JOIN` that matched nothing).
impl FromAnyRow for Option<AccessTokenRecord> {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let Some(token) = c.read("t_token")? else {
            return Ok(None);
        };
        Ok(Some(AccessTokenRecord {
            connection_id: c.read("t_connection_id")?,
            scope_key: c.read("t_scope_key")?,
            token,
            token_type: c.read("t_token_type")?,
            scopes: c.read("t_scopes")?,
            expires_at: c.read("t_expires_at")?,
            token_version: c.read("t_token_version")?,
            issued_at: c.read("t_issued_at")?,
        }))
    }
}

/// Two records read from one joined row.
impl<A: FromAnyRow, B: FromAnyRow> FromAnyRow for (A, B) {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok((A::from_row(row)?, B::from_row(row)?))
    }
}

/// The columns [`ConsentRecord`] is read from (and inserted in this order).
pub(in crate::store) const CONSENT_COLUMNS: &str = "id, state_hash, tenant_id, user_id, provider, capabilities, \
     requested_scopes, asked_scopes, incremental, return_url, redirect_uri, dek_id, pkce_verifier, state, \
     connection_id, error, created_at, expires_at, completed_at, actor, start_hash, binding_hash, completion_hash, \
     pending_grant, account_subject, account_display, target_connection_id, account_hint";

impl FromAnyRow for ConsentRecord {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let state: String = c.read("state")?;
        let incremental: i64 = c.read("incremental")?;
        Ok(from_columns!(c => ConsentRecord {
            id, state_hash, tenant_id, user_id, provider,
            capabilities: c.read::<String>("capabilities")?.split_whitespace().map(str::to_owned).collect(),
            requested_scopes, asked_scopes,
            incremental: incremental != 0,
            return_url, redirect_uri, dek_id, pkce_verifier,
            state: ConsentState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown consent state `{state}`")))?,
            connection_id, error, created_at, expires_at, completed_at, actor, start_hash, binding_hash,
            completion_hash, pending_grant, account_subject, account_display, target_connection_id,
            account_hint,
        }))
    }
}

/// The columns [`AuditEvent`] is read from (and inserted in this order).
pub(in crate::store) const AUDIT_COLUMNS: &str =
    "id, occurred_at, tenant_id, user_id, connection_id, actor, action, outcome, detail, request_id";

impl FromAnyRow for AuditEvent {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let detail: String = c.read("detail")?;
        Ok(from_columns!(c => AuditEvent {
            id, occurred_at, tenant_id, user_id, connection_id, actor, action, outcome,
            detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
            request_id,
        }))
    }
}

/// The columns [`OutboxEntry`] is read from (and inserted in this order).
pub(in crate::store) const OUTBOX_COLUMNS: &str = "id, connection_id, tenant_id, user_id, provider, dek_id, token, \
     token_type_hint, binding_record, attempts, next_attempt_at, give_up_at, status, last_error, created_at, \
     claim_token, purpose, rotation_uncertain, error_kind, binding_version";

impl FromAnyRow for OutboxEntry {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(from_columns!(c => OutboxEntry {
            id, connection_id, tenant_id, user_id, provider, dek_id, token, token_type_hint, binding_record,
            attempts, next_attempt_at, give_up_at, status, last_error, created_at, claim_token, purpose,
            rotation_uncertain: c.read::<i64>("rotation_uncertain")? != 0,
            error_kind, binding_version,
        }))
    }
}

/// The columns [`KekEpoch`] is read from.
pub(in crate::store) const KEK_EPOCH_COLUMNS: &str =
    "kek_id, backend, activated_at, retired_at, destroyed_at, gone_at, last_error";

impl FromAnyRow for KekEpoch {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(
            from_columns!(c => KekEpoch { kek_id, backend, activated_at, retired_at, destroyed_at, gone_at, last_error }),
        )
    }
}

/// The columns [`WrappedDataKey`] is read from.
pub(in crate::store) const DATA_KEY_COLUMNS: &str = "id, kek_id, wrapped, created_at";

impl FromAnyRow for WrappedDataKey {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(from_columns!(c => WrappedDataKey { id, kek_id, wrapped, created_at }))
    }
}

/// The columns [`Event`] is read from.
pub(in crate::store) const EVENT_COLUMNS: &str =
    "seq, id, event_type, tenant_id, user_id, connection_id, occurred_at, data";

impl FromAnyRow for Event {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let event_type: String = c.read("event_type")?;
        let data: String = c.read("data")?;
        Ok(from_columns!(c => Event {
            cursor: c.read("seq")?,
            id,
            event_type: EventType::parse(&event_type)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown event type `{event_type}`")))?,
            tenant_id, user_id, connection_id, occurred_at,
            data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?,
        }))
    }
}

/// The stored form of an endpoint's event types: `,a,b,` (empty: every type).
pub(in crate::store) fn event_types_to_text(types: &[EventType]) -> String {
    if types.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    format!(",{},", names.join(","))
}

/// The columns [`WebhookEndpoint`] is read from (and inserted in this order).
pub(in crate::store) const WEBHOOK_ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, dek_id, \
     secret, secret_version, previous_secret, previous_secret_version, previous_until, created_by, created_at, \
     updated_at";

impl FromAnyRow for WebhookEndpoint {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let types: String = c.read("event_types")?;
        let parsed = types
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| EventType::parse(t).ok_or_else(|| StoreError::Corrupt(format!("unknown event type `{t}`"))))
            .collect::<Result<_, _>>()?;
        Ok(from_columns!(c => WebhookEndpoint {
            id, tenant_id, url, description, event_types: parsed, dek_id,
            secret: Sealed(c.read("secret")?),
            secret_version, previous_secret, previous_secret_version, previous_until, created_by, created_at,
            updated_at,
        }))
    }
}

/// The columns [`WebhookDelivery`] is read from.
pub(in crate::store) const WEBHOOK_DELIVERY_COLUMNS: &str = "endpoint_id, event_id, tenant_id, status, attempts, \
     next_attempt_at, created_at, finished_at, last_status_code, last_error, claim_token";

impl FromAnyRow for WebhookDelivery {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        let status: String = c.read("status")?;
        Ok(from_columns!(c => WebhookDelivery {
            endpoint_id, event_id, tenant_id,
            status: DeliveryStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery status `{status}`")))?,
            attempts, next_attempt_at, created_at, finished_at, last_status_code, last_error, claim_token,
        }))
    }
}

/// The columns [`WebhookAttempt`] is read from (and inserted in this order).
pub(in crate::store) const WEBHOOK_ATTEMPT_COLUMNS: &str =
    "id, endpoint_id, event_id, attempted_at, status_code, latency_ms, error";

impl FromAnyRow for WebhookAttempt {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let c = Columns(row);
        Ok(
            from_columns!(c => WebhookAttempt { id, endpoint_id, event_id, attempted_at, status_code, latency_ms, error }),
        )
    }
}
