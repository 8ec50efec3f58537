//! Store records to their protobuf form (never a secret).

use crate::clock::to_proto;
use crate::proto;
use crate::store::{AuditEvent, Connection, ConnectionStatus, ProviderRevocation, RevocationState};

/// A connection as the API shows it.
pub fn connection(c: &Connection) -> proto::Connection {
    proto::Connection {
        id: c.id.to_string(),
        tenant_id: c.tenant_id.clone(),
        user_id: c.user_id.clone(),
        provider: c.provider.clone(),
        granted_scopes: c.granted_scopes.iter().cloned().collect(),
        status: match c.status() {
            ConnectionStatus::Active => proto::ConnectionStatus::Active,
            ConnectionStatus::NeedsReauth => proto::ConnectionStatus::NeedsReauth,
            ConnectionStatus::Revoked => proto::ConnectionStatus::Revoked,
            ConnectionStatus::PendingDeletion => proto::ConnectionStatus::PendingDeletion,
        } as i32,
        created_at: Some(to_proto(c.created_at)),
        updated_at: Some(to_proto(c.updated_at)),
        last_used_at: c.last_used_at.map(to_proto),
        purge_at: c.purge_at.map(to_proto),
        status_reason: match c.status() {
            ConnectionStatus::Active => String::new(),
            ConnectionStatus::PendingDeletion => "the user is deleted".to_owned(),
            _ => c.status_reason.clone().unwrap_or_default(),
        },
        provider_revocation: c.provider_revocation.as_ref().map(provider_revocation),
        account: c.account_subject.as_ref().map(|subject| proto::Account {
            subject: subject.clone(),
            display: c.account_display.clone().unwrap_or_default(),
        }),
    }
}

/// The provider revocation of a revoked connection as the API shows it.
fn provider_revocation(p: &ProviderRevocation) -> proto::ProviderRevocation {
    proto::ProviderRevocation {
        state: match p.state {
            RevocationState::Pending => proto::ProviderRevocationState::Pending,
            RevocationState::Done => proto::ProviderRevocationState::Done,
            RevocationState::Unsupported => proto::ProviderRevocationState::Unsupported,
            RevocationState::Failed => proto::ProviderRevocationState::Failed,
        } as i32,
        at: Some(to_proto(p.at)),
        reason: p.detail.clone().unwrap_or_default(),
        user_page: p.user_page.clone().unwrap_or_default(),
        last_error_kind: p.error_kind.clone().unwrap_or_default(),
    }
}

/// An audit event as the API shows it.
pub fn audit_event(e: &AuditEvent) -> proto::AuditEvent {
    proto::AuditEvent {
        id: e.id.to_string(),
        occurred_at: Some(to_proto(e.occurred_at)),
        tenant_id: e.tenant_id.clone().unwrap_or_default(),
        user_id: e.user_id.clone().unwrap_or_default(),
        connection_id: e.connection_id.map(|c| c.to_string()).unwrap_or_default(),
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        detail_json: e.detail.to_string(),
        request_id: e.request_id.clone().unwrap_or_default(),
    }
}
