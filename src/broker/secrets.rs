//! The connection's tokens under its data key: opening the stored access and
//! refresh tokens (a ciphertext that fails its integrity check is audited)
//! and sealing what a refresh brings back.

use super::{Broker, BrokerError, CachedToken, Owner};
use crate::audit::EventBuilder;
use crate::store::{access_token_record, AccessTokenRecord, Connection, Sealed};
use crate::vault::{Binding, DataKey, Field, VaultError};
use secrecy::SecretString;
use std::sync::Arc;

/// What a sealed field of `connection` is bound to: its owner, `record`,
/// `field` and the token version it is stored at.
fn binding<'a>(connection: &'a Connection, record: &'a str, field: Field, version: i64) -> Binding<'a> {
    Binding {
        tenant_id: &connection.tenant_id,
        user_id: &connection.user_id,
        record,
        field,
        version,
    }
}

/// Seals `token` as the connection's access token for `scope_key`, to be
/// stored with token version `version`.
pub(super) fn seal_access(
    key: &DataKey,
    connection: &Connection,
    scope_key: &str,
    token: &SecretString,
    version: i64,
) -> Result<Sealed, VaultError> {
    let record = access_token_record(connection.id, scope_key);
    Ok(Sealed(key.seal_str(
        &binding(connection, &record, Field::AccessToken, version),
        token,
    )?))
}

/// Seals `token` as the connection's refresh token, to be stored with
/// token version `version` (the connection's once the write is committed).
pub(super) fn seal_refresh(
    key: &DataKey,
    connection: &Connection,
    token: &SecretString,
    version: i64,
) -> Result<Sealed, VaultError> {
    let record = connection.id.to_string();
    Ok(Sealed(key.seal_str(
        &binding(connection, &record, Field::RefreshToken, version),
        token,
    )?))
}

impl Broker {
    /// The connection's data key (a revoked connection has none).
    pub(super) async fn data_key(&self, connection: &Connection) -> Result<Arc<DataKey>, BrokerError> {
        let dek_id = connection.dek_id.ok_or(BrokerError::Revoked)?;
        Ok(self.vault.data_key(dek_id).await?)
    }

    /// Opens a stored access token, ready to cache.
    pub(super) async fn unseal_access(
        &self,
        connection: &Connection,
        record: &AccessTokenRecord,
    ) -> Result<CachedToken, BrokerError> {
        let key = self.data_key(connection).await?;
        let binding_record = access_token_record(connection.id, &record.scope_key);
        let binding = binding(connection, &binding_record, Field::AccessToken, record.token_version);
        let token = self
            .open_or_report(&key, &binding, connection, "access_token", record.token.as_bytes())
            .await?;
        Ok(CachedToken::new(
            Owner::of(connection),
            token,
            &record.scopes,
            &connection.granted_scopes,
            record.expires_at,
            record.issued_at,
        ))
    }

    /// Opens the connection's stored refresh token; without one the user must consent again.
    pub(super) async fn open_refresh_token(
        &self,
        key: &DataKey,
        connection: &Connection,
    ) -> Result<SecretString, BrokerError> {
        let Some(sealed) = &connection.refresh_token else {
            return Err(BrokerError::NeedsReauth(
                "the access token expired and this provider issues no refresh token".to_owned(),
            ));
        };
        let record = connection.id.to_string();
        let binding = binding(connection, &record, Field::RefreshToken, connection.token_version);
        self.open_or_report(key, &binding, connection, "refresh_token", sealed.as_bytes())
            .await
    }

    /// Opens `sealed`; a failed integrity check is audited before it is returned.
    async fn open_or_report(
        &self,
        key: &DataKey,
        binding: &Binding<'_>,
        connection: &Connection,
        field: &str,
        sealed: &[u8],
    ) -> Result<SecretString, BrokerError> {
        match key.open_string(binding, sealed) {
            Ok(token) => Ok(token),
            Err(error) => {
                self.integrity_failure(connection, field, &error).await;
                Err(error.into())
            }
        }
    }

    /// Records a stored ciphertext that failed its integrity check.
    async fn integrity_failure(&self, connection: &Connection, field: &str, error: &VaultError) {
        tracing::error!(connection_id = %connection.id, field, %error, "stored secret failed its integrity check");
        let event = EventBuilder::new("vault.integrity_failure", "failure", "system", self.clock.now())
            .user(&connection.tenant_id, &connection.user_id)
            .connection(connection.id)
            .detail("field", field)
            .detail("error", error.to_string())
            .build();
        if let Err(error) = self.audit.write(&[event]).await {
            tracing::warn!(%error, "could not audit an integrity failure");
        }
    }
}
