//! Connections and their stored access tokens: [`ConnectionStore`], reading
//! (one, a batch with tokens, a list), creating, storing a consent's grant
//! (with the credential it replaces queued in the outbox), revoking (with the
//! provider revocation queued in the outbox), queueing a credential no
//! connection holds any more, usage stamps, and the purge of revoked rows.
//! Each change appends its [`Trail`] in the same transaction.

use super::notify::commit_notifying;
use super::outbox::insert_outbox_entry;
use super::sql::error::map_err;
use super::sql::query::{lock_suffix, placeholders, purge_where, AnyQuery, Fetch, ID_CHUNK};
use super::sql::rows::{ACCESS_TOKEN_COLUMNS, CONNECTION_COLUMNS, CONNECTION_FROM};
use super::sql::{Backend, SqlStore};
use super::trail::append_trail;
use super::{
    access_token_record, scopes_to_text, AccessTokenRecord, Connection, ConnectionFilter, ConnectionStatus,
    Invalidation, OutboxEntry, ProviderRevocation, RevocationPlan, RevocationState, ScopeSet, Sealed, SealedCredential,
    StoreError, TenantScope, Trail, TrailOf, UserStore,
};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Any, Transaction};
use std::str::FromStr;
use uuid::Uuid;

/// Rows per `last_used_at` statement (two parameters each, well within
/// both backends' limits).
const TOUCH_CHUNK: usize = 1000;

/// What revoking a connection left to do outside the database transaction.
#[derive(Debug, Clone)]
pub struct RevokeResult {
    /// The connection after revocation.
    pub connection: Connection,
    /// An outbox entry, when there was a token to revoke at the provider.
    pub outbox: Option<OutboxEntry>,
    /// A data key with nothing left under it, to destroy now.
    pub dek_to_destroy: Option<Uuid>,
    /// Whether this call changed anything (false when it was already revoked).
    pub changed: bool,
}

/// The `token_version` a connection at `version` has once a write that
/// replaces its refresh token is stored (a re-consent, a rotating refresh):
/// the version the new sealed values bind ([`crate::vault::Binding::version`]).
/// The store writes exactly this value, fenced on `version`.
pub fn next_token_version(version: i64) -> i64 {
    version.saturating_add(1)
}

/// The new tokens a consent stores on its connection, sealed for
/// [`next_token_version`] of `expected_version`.
#[derive(Debug, Clone)]
pub struct ConsentGrant {
    /// Connection id (from [`ConnectionStore::get_or_create_connection`]).
    pub connection_id: Uuid,
    /// The token version read before sealing; the write fails if it moved.
    pub expected_version: i64,
    /// The stored status read with it; the write fails if it changed (a
    /// refused refresh moves a connection to `needs_reauth` without a new
    /// version, and the grant's events depend on the status it replaces).
    pub expected_status: ConnectionStatus,
    /// The data key the tokens are sealed with.
    pub dek_id: Uuid,
    /// The sealed refresh token (`None` for providers that issue none).
    pub refresh_token: Option<Sealed>,
    /// Scopes the provider reported.
    pub granted_scopes: ScopeSet,
    /// The sealed access token for the full grant.
    pub access_token: AccessTokenRecord,
    /// The consent request this grant completes: marked `completed` (its
    /// verifier dropped) in the same transaction.
    pub consent_id: Option<Uuid>,
    /// The credential this grant replaces, queued for revocation at the
    /// provider in the same transaction (sealed under a data key of its own).
    pub replaced: Option<OutboxEntry>,
    /// The upstream account the grant belongs to, when learned (an unknown
    /// one leaves the connection's recorded account as it is).
    pub account_subject: Option<String>,
    /// Its display name.
    pub account_display: Option<String>,
}

/// The `connections` and `access_tokens` tables.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Reads a connection inside `scope`.
    async fn connection(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Connection>, StoreError>;
    /// Reads a connection and its stored access token for `scope_key` in one round trip.
    async fn connection_with_token(
        &self,
        scope: &TenantScope,
        id: Uuid,
        scope_key: &str,
    ) -> Result<Option<(Connection, Option<AccessTokenRecord>)>, StoreError>;
    /// Several connections (any tenant) with their stored access tokens for
    /// one `scope_key`, in one round trip; ids that do not exist are absent.
    async fn connections_with_token(
        &self,
        ids: &[Uuid],
        scope_key: &str,
    ) -> Result<Vec<(Connection, Option<AccessTokenRecord>)>, StoreError>;
    /// The connection of (tenant, user, provider), if any.
    async fn connection_for(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<Connection>, StoreError>;
    /// Every connection of (tenant, user, provider), one per upstream account, ordered by id.
    async fn connections_at(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Vec<Connection>, StoreError>;
    /// Lists connections, ordered by id.
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError>;
    /// Returns the connection of (tenant, user, provider) for the upstream
    /// account `account_subject` (`None`: the one whose account is not
    /// known), creating an empty one if needed.
    async fn get_or_create_connection(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
        account_subject: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Connection, StoreError>;
    /// Stores a completed consent's tokens (and completes its consent
    /// request), queueing the replaced credential's outbox entry and
    /// appending `trail` in the same transaction; `false` when the version
    /// moved (nothing stored, queued or recorded: the caller retries).
    async fn store_consent_grant(
        &self,
        grant: &ConsentGrant,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Revokes a connection: status `REVOKED`, tokens removed, an outbox
    /// entry for the provider, and `trail(result)` appended in the same
    /// transaction. A connection already revoked is left alone and
    /// `trail` is not called (`changed: false`).
    async fn revoke_connection(
        &self,
        id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
        plan: &RevocationPlan,
        trail: TrailOf<'_, RevokeResult>,
    ) -> Result<Option<RevokeResult>, StoreError>;
    /// Queues `entry` (a credential no connection holds any more, sealed
    /// under its own data key) for revocation at the provider, appending
    /// `trail` in the same transaction.
    async fn queue_revocation(&self, entry: &OutboxEntry, trail: &Trail) -> Result<(), StoreError>;
    /// Writes `last_used_at` for a batch of connections (never moves it backwards).
    async fn touch_connections(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), StoreError>;
    /// Ids of data keys still referenced by connections, consents or the outbox, among `ids`.
    async fn referenced_data_keys(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;
    /// Deletes revoked connections last changed before `before`, in bounded
    /// batches; returns how many (or would, on a dry run).
    async fn purge_revoked_connections(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
}

#[async_trait]
impl ConnectionStore for SqlStore {
    async fn connection(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Connection>, StoreError> {
        let sql = format!("SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.id = $1");
        let connection: Option<Connection> = sqlx::query(&sql).bind(id.to_string()).record(&self.pool).await?;
        Ok(connection.filter(|c| scope.allows(&c.tenant_id)))
    }

    async fn connection_with_token(
        &self,
        scope: &TenantScope,
        id: Uuid,
        scope_key: &str,
    ) -> Result<Option<(Connection, Option<AccessTokenRecord>)>, StoreError> {
        let row = self.connections_with_token(&[id], scope_key).await?.into_iter().next();
        Ok(row.filter(|(connection, _)| scope.allows(&connection.tenant_id)))
    }

    async fn connections_with_token(
        &self,
        ids: &[Uuid],
        scope_key: &str,
    ) -> Result<Vec<(Connection, Option<AccessTokenRecord>)>, StoreError> {
        let Some(last) = ids.last() else {
            return Ok(Vec::new());
        };
        // Padded to a power of two (repeating the last id) so that a few
        // prepared statements serve every batch size.
        let padded = ids.len().next_power_of_two();
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS}, {ACCESS_TOKEN_COLUMNS} {CONNECTION_FROM} \
             LEFT JOIN access_tokens t ON t.connection_id = c.id AND t.scope_key = $1 WHERE c.id IN ({})",
            placeholders(2, padded)
        );
        let mut query = sqlx::query(&sql).bind(scope_key.to_owned());
        for id in ids.iter().chain(std::iter::repeat(last)).take(padded) {
            query = query.bind(id.to_string());
        }
        query.records(&self.pool).await
    }

    async fn connection_for(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(self
            .connections_at(tenant_id, user_id, provider)
            .await?
            .into_iter()
            .next())
    }

    async fn connections_at(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Vec<Connection>, StoreError> {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.tenant_id = $1 AND c.user_id = $2 AND c.provider = $3 \
             ORDER BY c.id"
        );
        sqlx::query(&sql)
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .bind(provider.to_owned())
            .records(&self.pool)
            .await
    }

    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
        let mut sql = format!("SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.tenant_id = $1");
        let mut binds = vec![filter.tenant_id.clone()];
        if let Some(user) = &filter.user_id {
            binds.push(user.clone());
            sql.push_str(&format!(" AND c.user_id = ${}", binds.len()));
        }
        if let Some(provider) = &filter.provider {
            binds.push(provider.clone());
            sql.push_str(&format!(" AND c.provider = ${}", binds.len()));
        }
        if let Some(after) = filter.after_id {
            binds.push(after.to_string());
            sql.push_str(&format!(" AND c.id > ${}", binds.len()));
        }
        sql.push_str(&format!(" ORDER BY c.id LIMIT {}", filter.limit.max(1)));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        query.records(&self.pool).await
    }

    async fn get_or_create_connection(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
        account_subject: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Connection, StoreError> {
        self.ensure_user(tenant_id, user_id, now).await?;
        // The unique key is (tenant, user, provider, account or ''): a connection of that account wins.
        sqlx::query(
            "INSERT INTO connections (id, tenant_id, user_id, provider, granted_scopes, status, token_version, created_at, \
             updated_at, account_subject) VALUES ($1, $2, $3, $4, '', 'needs_reauth', 0, $5, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(provider.to_owned())
        .bind(to_millis(now))
        .bind(account_subject.map(str::to_owned))
        .run(&self.pool)
        .await?;
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.tenant_id = $1 AND c.user_id = $2 AND c.provider = $3 \
             AND COALESCE(c.account_subject, '') = $4"
        );
        sqlx::query(&sql)
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .bind(provider.to_owned())
            .bind(account_subject.unwrap_or_default().to_owned())
            .record(&self.pool)
            .await?
            .ok_or_else(|| StoreError::Database("connection vanished right after it was created".to_owned()))
    }

    async fn store_consent_grant(
        &self,
        grant: &ConsentGrant,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The version the grant's tokens are sealed for.
        let version = next_token_version(grant.expected_version);
        let updated = sqlx::query(
            "UPDATE connections SET granted_scopes = $1, status = 'active', status_reason = NULL, dek_id = $2, \
             refresh_token = $3, token_version = $4, updated_at = $5, refreshed_at = $5, \
             refresh_owner = NULL, refresh_started_at = NULL, refresh_lease_until = NULL, \
             account_subject = COALESCE($8, account_subject), account_display = COALESCE($9, account_display) \
             WHERE id = $6 AND token_version = $7 AND status = $10",
        )
        .bind(scopes_to_text(&grant.granted_scopes))
        .bind(grant.dek_id.to_string())
        .bind(grant.refresh_token.as_ref().map(|t| t.0.clone()))
        .bind(version)
        .bind(to_millis(now))
        .bind(grant.connection_id.to_string())
        .bind(grant.expected_version)
        .bind(grant.account_subject.clone())
        .bind(grant.account_display.clone())
        .bind(grant.expected_status.as_str())
        .run(&mut *tx)
        .await?;
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(false);
        }
        delete_access_tokens(grant.connection_id).run(&mut *tx).await?;
        let mut record = grant.access_token.clone();
        record.token_version = version;
        upsert_access_token(&record, now).run(&mut *tx).await?;
        if let Some(consent_id) = grant.consent_id {
            // A request that ended meanwhile (cancelled, expired) keeps its end: nothing is stored.
            if complete_consent(consent_id, grant.connection_id, now)
                .run(&mut *tx)
                .await?
                != 1
            {
                tx.rollback().await.map_err(map_err)?;
                return Err(StoreError::Conflict(format!(
                    "consent request {consent_id} ended before its grant was stored"
                )));
            }
        }
        if let Some(entry) = &grant.replaced {
            insert_outbox_entry(&mut tx, entry).await?;
        }
        append_trail(&mut tx, trail).await?;
        let invalidation = Invalidation::Connection {
            id: grant.connection_id,
        };
        commit_notifying(tx, self, &invalidation).await?;
        Ok(true)
    }

    async fn revoke_connection(
        &self,
        id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
        plan: &RevocationPlan,
        trail: TrailOf<'_, RevokeResult>,
    ) -> Result<Option<RevokeResult>, StoreError> {
        let mut tx = self.begin().await?;
        let sql = select_connection_for_update(self.backend);
        let connection: Option<Connection> = sqlx::query(&sql).bind(id.to_string()).record(&mut *tx).await?;
        let Some(mut connection) = connection else {
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        };
        if connection.stored_status == ConnectionStatus::Revoked {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Some(RevokeResult {
                connection,
                outbox: None,
                dek_to_destroy: None,
                changed: false,
            }));
        }
        let credential = match plan {
            RevocationPlan::Queue => revocation_credential(&mut tx, &connection).await?,
            RevocationPlan::Unsupported { .. } => None,
        };
        let outcome = match (plan, &credential) {
            (RevocationPlan::Unsupported { reason, user_page }, _) => ProviderRevocation {
                state: RevocationState::Unsupported,
                at: now,
                detail: Some(reason.clone()),
                user_page: user_page.clone(),
                error_kind: None,
            },
            (RevocationPlan::Queue, Some(_)) => ProviderRevocation {
                state: RevocationState::Pending,
                at: now,
                detail: None,
                user_page: None,
                error_kind: None,
            },
            (RevocationPlan::Queue, None) => ProviderRevocation {
                state: RevocationState::Done,
                at: now,
                detail: Some("nothing to revoke: tokenvault held no credential for this connection".to_owned()),
                user_page: None,
                error_kind: None,
            },
        };
        sqlx::query(
            "UPDATE connections SET status = 'revoked', status_reason = $1, refresh_token = NULL, dek_id = NULL, \
             token_version = token_version + 1, updated_at = $2, provider_revocation = $3, \
             provider_revocation_at = $2, provider_revocation_detail = $4, provider_revocation_page = $5 WHERE id = $6",
        )
        .bind(reason.to_owned())
        .bind(to_millis(now))
        .bind(outcome.state.as_str())
        .bind(outcome.detail.clone())
        .bind(outcome.user_page.clone())
        .bind(id.to_string())
        .run(&mut *tx)
        .await?;
        delete_access_tokens(id).run(&mut *tx).await?;
        let outbox = match credential {
            Some(credential) => {
                let entry =
                    OutboxEntry::pending(Uuid::now_v7(), &connection, credential, "revocation", now, give_up_at);
                insert_outbox_entry(&mut tx, &entry).await?;
                Some(entry)
            }
            None => None,
        };
        connection.provider_revocation = Some(outcome);
        let dek_to_destroy = if outbox.is_none() { connection.dek_id } else { None };
        connection.stored_status = ConnectionStatus::Revoked;
        connection.status_reason = Some(reason.to_owned());
        connection.refresh_token = None;
        connection.dek_id = None;
        connection.token_version += 1;
        connection.updated_at = now;
        let result = RevokeResult {
            connection,
            outbox,
            dek_to_destroy,
            changed: true,
        };
        append_trail(&mut tx, &trail(&result)).await?;
        commit_notifying(tx, self, &Invalidation::Connection { id }).await?;
        Ok(Some(result))
    }

    async fn queue_revocation(&self, entry: &OutboxEntry, trail: &Trail) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_outbox_entry(&mut tx, entry).await?;
        append_trail(&mut tx, trail).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    async fn touch_connections(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), StoreError> {
        // One set-based statement per chunk, in id order: no row-by-row locking
        // in hash order that could deadlock with another replica's flush.
        let mut used = used.to_vec();
        used.sort_by_key(|(id, _)| *id);
        for chunk in used.chunks(TOUCH_CHUNK) {
            let values = (0..chunk.len())
                .map(|i| format!("(${}, CAST(${} AS BIGINT))", 2 * i + 1, 2 * i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "WITH v (id, at) AS (VALUES {values}) UPDATE connections SET last_used_at = v.at FROM v \
                 WHERE connections.id = v.id AND (connections.last_used_at IS NULL OR connections.last_used_at < v.at)"
            );
            let mut query = sqlx::query(&sql);
            for (id, at) in chunk {
                query = query.bind(id.to_string()).bind(to_millis(*at));
            }
            query.run(&self.pool).await?;
        }
        Ok(())
    }

    async fn referenced_data_keys(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let mut referenced = Vec::new();
        // Bounded id lists: the statement repeats the list, so each chunk binds 4 × ID_CHUNK values.
        for chunk in ids.chunks(ID_CHUNK) {
            let list = placeholders(1, chunk.len());
            let sql = format!(
                "SELECT dek_id FROM connections WHERE dek_id IN ({list}) \
                 UNION SELECT dek_id FROM consent_requests WHERE dek_id IN ({list}) \
                 UNION SELECT dek_id FROM revocation_outbox WHERE token IS NOT NULL AND dek_id IN ({list}) \
                 UNION SELECT dek_id FROM webhook_endpoints WHERE dek_id IN ({list})"
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            let found = query.fetch_all(&self.pool).await.map_err(map_err)?;
            referenced.extend(found.iter().filter_map(|t| Uuid::from_str(t).ok()));
        }
        Ok(referenced)
    }

    async fn purge_revoked_connections(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(
            &self.pool,
            "connections",
            "status = 'revoked' AND updated_at < $1",
            before,
            dry_run,
            self.purge_batch,
        )
        .await
    }
}

/// The statement reading one connection (`$1`) and, on PostgreSQL, locking
/// its row until the transaction ends.
pub(super) fn select_connection_for_update(backend: Backend) -> String {
    format!(
        "SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.id = $1{}",
        lock_suffix(backend)
    )
}

/// Stores `record`, replacing the token of the same connection and scope key.
pub(super) fn upsert_access_token(record: &AccessTokenRecord, now: DateTime<Utc>) -> AnyQuery<'static> {
    sqlx::query(
        "INSERT INTO access_tokens (connection_id, scope_key, token, token_type, scopes, expires_at, token_version, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (connection_id, scope_key) DO UPDATE SET token = excluded.token, token_type = excluded.token_type, \
         scopes = excluded.scopes, expires_at = excluded.expires_at, token_version = excluded.token_version, \
         created_at = excluded.created_at",
    )
    .bind(record.connection_id.to_string())
    .bind(record.scope_key.clone())
    .bind(record.token.0.clone())
    .bind(record.token_type.clone())
    .bind(scopes_to_text(&record.scopes))
    .bind(to_millis(record.expires_at))
    .bind(record.token_version)
    .bind(to_millis(record.issued_at.min(now)))
}

/// Marks consent request `consent_id` completed with `connection_id`, dropping its sealed verifier.
fn complete_consent(consent_id: Uuid, connection_id: Uuid, now: DateTime<Utc>) -> AnyQuery<'static> {
    sqlx::query(
        "UPDATE consent_requests SET state = $1, connection_id = $2, error = NULL, completed_at = $3, \
         pkce_verifier = NULL, pending_grant = NULL, completion_hash = NULL \
         WHERE id = $4 AND state NOT IN ('completed', 'failed')",
    )
    .bind(super::ConsentState::Completed.as_str())
    .bind(connection_id.to_string())
    .bind(to_millis(now))
    .bind(consent_id.to_string())
}

/// Removes every stored access token of a connection.
fn delete_access_tokens(connection_id: Uuid) -> AnyQuery<'static> {
    sqlx::query("DELETE FROM access_tokens WHERE connection_id = $1").bind(connection_id.to_string())
}

/// The credential to revoke at the provider: the refresh token, or for
/// providers without one, the access token of the full grant.
async fn revocation_credential(
    tx: &mut Transaction<'static, Any>,
    connection: &Connection,
) -> Result<Option<SealedCredential>, StoreError> {
    let id = connection.id;
    Ok(match (&connection.refresh_token, connection.dek_id) {
        (Some(token), Some(dek_id)) => Some(SealedCredential {
            token: token.clone(),
            token_type_hint: "refresh_token",
            binding_record: id.to_string(),
            binding_version: connection.token_version,
            dek_id,
        }),
        (None, Some(dek_id)) => {
            let row: Option<(Vec<u8>, i64)> = sqlx::query_as(
                "SELECT token, token_version FROM access_tokens WHERE connection_id = $1 AND scope_key = ''",
            )
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
            row.map(|(token, version)| SealedCredential {
                token: Sealed(token),
                token_type_hint: "access_token",
                binding_record: access_token_record(id, ""),
                binding_version: version,
                dek_id,
            })
        }
        _ => None,
    })
}
