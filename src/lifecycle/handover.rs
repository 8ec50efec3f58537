//! Handing a credential tokenvault stops using to the provider-revocation
//! outbox: the credential a re-consent replaces, and the one a refresh
//! brought back after it lost to a revocation or a re-consent.
//!
//! Such an entry must not share the connection's data key: the worker
//! destroys an entry's key when the entry ends, and the connection (after a
//! re-consent) still uses its own. So each handed-over credential is sealed
//! under a fresh data key of its own, bound to the entry's id
//! ([`Field::OutboxToken`]), and that key is crypto-shredded with the entry.

use super::OutboxWorker;
use crate::store::{Connection, OutboxEntry, Sealed, SealedCredential};
use crate::vault::{Binding, Field, Vault, VaultError};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use std::sync::Arc;
use uuid::Uuid;

/// Which credential an entry holds (its `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A refresh token.
    RefreshToken,
    /// An access token (providers without refresh tokens, or a refresh that rotated none).
    AccessToken,
}

impl CredentialKind {
    /// The RFC 7009 `token_type_hint` the entry records.
    pub fn hint(self) -> &'static str {
        match self {
            CredentialKind::RefreshToken => "refresh_token",
            CredentialKind::AccessToken => "access_token",
        }
    }
}

/// Why a credential is handed over (the entry's `purpose`; neither reports on the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A re-consent replaced it.
    Replaced,
    /// A refresh obtained it after losing to a revocation or a re-consent.
    Orphan,
}

impl Purpose {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Replaced => "replaced",
            Purpose::Orphan => "orphan",
        }
    }
}

/// Seals credentials into outbox entries of their own and asks the worker to
/// attempt them soon.
#[derive(Clone)]
pub struct Handover {
    vault: Vault,
    outbox: Arc<OutboxWorker>,
    give_up_after: chrono::Duration,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("give_up_after", &self.give_up_after)
            .finish_non_exhaustive()
    }
}

impl Handover {
    /// Entries for `outbox`, sealed with keys of `vault`, given up
    /// `give_up_after_hours` after they are queued.
    pub fn new(vault: Vault, outbox: Arc<OutboxWorker>, give_up_after_hours: u32) -> Self {
        Self {
            vault,
            outbox,
            give_up_after: chrono::Duration::hours(i64::from(give_up_after_hours)),
        }
    }

    /// A pending entry revoking `token` (a credential of `connection`),
    /// sealed under a new data key bound to the entry. Nothing is stored
    /// yet: the caller inserts the entry in its own transaction (its key
    /// is young enough that retention leaves it alone meanwhile).
    pub async fn entry(
        &self,
        connection: &Connection,
        token: &SecretString,
        kind: CredentialKind,
        purpose: Purpose,
        now: DateTime<Utc>,
    ) -> Result<OutboxEntry, VaultError> {
        let key = self.vault.create_data_key().await?;
        let id = Uuid::now_v7();
        let record = id.to_string();
        let sealed = key.seal_str(
            &Binding {
                tenant_id: &connection.tenant_id,
                user_id: &connection.user_id,
                record: &record,
                field: Field::OutboxToken,
                version: 0,
            },
            token,
        )?;
        Ok(OutboxEntry::pending(
            id,
            connection,
            SealedCredential {
                token: Sealed(sealed),
                token_type_hint: kind.hint(),
                binding_record: record,
                binding_version: 0,
                dek_id: key.id(),
            },
            purpose.as_str(),
            now,
            now + self.give_up_after,
        ))
    }

    /// Seals `token` into an entry of its own and stores it on its own, with
    /// `trail(entry)` in the same transaction, then asks the worker to attempt
    /// it soon (a credential no connection keeps: a lost refresh's, a refused
    /// grant's). On failure the entry's key is destroyed and the error returned in words.
    pub async fn queue(
        &self,
        store: &dyn crate::store::Store,
        credential: (&Connection, &SecretString, CredentialKind),
        purpose: Purpose,
        trail: impl FnOnce(&OutboxEntry) -> crate::store::Trail,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let (connection, token, kind) = credential;
        let entry = self
            .entry(connection, token, kind, purpose, now)
            .await
            .map_err(|e| e.to_string())?;
        match store.queue_revocation(&entry, &trail(&entry)).await {
            Ok(()) => {
                self.attempt_soon(entry.id);
                Ok(())
            }
            Err(error) => {
                self.discard(&entry).await;
                Err(error.to_string())
            }
        }
    }

    /// Destroys the key of an entry that was never stored (its transaction failed).
    pub async fn discard(&self, entry: &OutboxEntry) {
        if let Err(error) = self.vault.destroy_data_keys(&[entry.dek_id]).await {
            tracing::warn!(%error, "could not destroy the key of an unstored outbox entry; retention will");
        }
    }

    /// Asks the worker for a first attempt at a stored entry right away.
    pub fn attempt_soon(&self, id: Uuid) {
        self.outbox.attempt_soon(id);
    }
}

/// Whether `entry` holds a handed-over credential (sealed as
/// [`Field::OutboxToken`] under the entry's own key and id) rather than a copy
/// of the connection's ciphertext.
pub fn is_handed_over(entry: &OutboxEntry) -> bool {
    entry.binding_record == entry.id.to_string()
}
