//! A cache miss: the connection and its stored token read through the
//! coalescing reader, the connection checked (tenant, status, scopes), the
//! scope key its token is stored under chosen, and a stored token that is
//! fresh enough served; otherwise on to a refresh.

use super::lookup::TokenKeys;
use super::{scope_key, Broker, BrokerError, CacheKey, IssuedToken, Requester, TokenRequest};
use crate::store::{Connection, ConnectionStatus};

impl Broker {
    /// Serves `request` from the store, refreshing if what is stored is not fresh enough.
    pub(super) async fn miss(
        self: &std::sync::Arc<Self>,
        who: &Requester<'_>,
        request: &TokenRequest,
        key: &CacheKey,
    ) -> Result<IssuedToken, BrokerError> {
        // Read the epoch before the database: an invalidation after this point voids our insert.
        let epoch = self.cache.epoch();
        let (connection, stored) = self
            .reader
            .read(request.connection_id, &key.1)
            .await?
            .ok_or(BrokerError::NotFound(request.connection_id))?;
        self.check_usable(who, &connection, request)?;
        let effective = self.effective_key(&connection, request);
        let stored = if effective == key.1 {
            stored
        } else {
            self.reader
                .read(request.connection_id, &effective)
                .await?
                .and_then(|(_, token)| token)
        };
        let keys = TokenKeys::new(key, effective);
        let now = self.clock.now();
        if let Some(record) = stored.filter(|r| self.fresh_enough(r.expires_at, r.issued_at, request.min_ttl, now)) {
            let token = self.unseal_access(&connection, &record).await?;
            return self.cache_and_issue(who, request, &keys, epoch, token, "store_hit");
        }
        self.refresh(who, request, keys, epoch).await
    }

    /// Whether `who` may have a token of `connection` for `request`: its
    /// tenant, its status, and the scopes asked for.
    pub(super) fn check_usable(
        &self,
        who: &Requester<'_>,
        connection: &Connection,
        request: &TokenRequest,
    ) -> Result<(), BrokerError> {
        if !who.tenants.allows(&connection.tenant_id) {
            return Err(BrokerError::WrongTenant);
        }
        check_active(connection)?;
        if let Some(refused) = request.not_granted(connection.id, &connection.provider, |s| {
            connection.granted_scopes.contains(s)
        }) {
            return Err(refused);
        }
        Ok(())
    }

    /// The key a token for `request` is stored under: the full grant unless
    /// a strict subset was asked of a provider that can narrow.
    fn effective_key(&self, connection: &Connection, request: &TokenRequest) -> String {
        let narrowable = self
            .providers
            .spec(&connection.provider)
            .is_some_and(|spec| spec.refresh_scope_narrowing);
        if request.scopes.is_empty() || request.scopes == connection.granted_scopes || !narrowable {
            String::new()
        } else {
            scope_key(&request.scopes)
        }
    }
}

/// Whether `connection` can be served at all: active, not revoked, not
/// waiting for re-consent, its user not deleted.
pub(super) fn check_active(connection: &Connection) -> Result<(), BrokerError> {
    match connection.status() {
        ConnectionStatus::Active => Ok(()),
        ConnectionStatus::Revoked => Err(BrokerError::Revoked),
        ConnectionStatus::PendingDeletion => Err(BrokerError::UserDeleted),
        ConnectionStatus::NeedsReauth => Err(BrokerError::NeedsReauth(
            connection
                .status_reason
                .clone()
                .unwrap_or_else(|| "the provider rejected the refresh token".to_owned()),
        )),
    }
}
