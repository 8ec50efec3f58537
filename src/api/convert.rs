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

/// An event as the API shows it.
pub fn event(e: &crate::events::Event) -> proto::Event {
    let d = &e.data;
    proto::Event {
        cursor: u64::try_from(e.cursor).unwrap_or(0),
        id: e.id.to_string(),
        r#type: e.event_type.as_str().to_owned(),
        tenant_id: e.tenant_id.clone(),
        user_id: e.user_id.clone().unwrap_or_default(),
        connection_id: e.connection_id.map(|c| c.to_string()).unwrap_or_default(),
        occurred_at: Some(to_proto(e.occurred_at)),
        data: Some(proto::EventData {
            provider: d.provider.clone().unwrap_or_default(),
            status: d.status.clone().unwrap_or_default(),
            reason: d.reason.clone().unwrap_or_default(),
            actor: d.actor.clone().unwrap_or_default(),
            granted_scopes: d.granted_scopes.clone(),
            changed: d.changed.clone(),
            account: d.account.as_ref().map(|a| proto::Account {
                subject: a.subject.clone(),
                display: a.display.clone().unwrap_or_default(),
            }),
            provider_revocation: d.provider_revocation.clone().unwrap_or_default(),
            user_page: d.user_page.clone().unwrap_or_default(),
            consent_id: d.consent_id.map(|c| c.to_string()).unwrap_or_default(),
            purge_at: d.purge_at.map(to_proto),
        }),
    }
}

/// A webhook endpoint as the API shows it (never its secret).
pub fn webhook_endpoint(e: &crate::store::WebhookEndpoint) -> proto::WebhookEndpoint {
    proto::WebhookEndpoint {
        id: e.id.to_string(),
        tenant_id: e.tenant_id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        types: e.event_types.iter().map(|t| t.as_str().to_owned()).collect(),
        secret_version: u64::try_from(e.secret_version).unwrap_or(0),
        previous_secret_until: e.previous_until.map(to_proto),
        created_by: e.created_by.clone(),
        created_at: Some(to_proto(e.created_at)),
        updated_at: Some(to_proto(e.updated_at)),
    }
}

/// A webhook delivery with its attempts, as the API shows it.
pub fn webhook_delivery(r: &crate::events::webhook::DeliveryReport) -> proto::WebhookDelivery {
    let d = &r.delivery;
    let code = |c: Option<i64>| c.and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
    proto::WebhookDelivery {
        endpoint_id: d.endpoint_id.to_string(),
        event_id: d.event_id.to_string(),
        status: d.status.as_str().to_owned(),
        attempts: u32::try_from(d.attempts).unwrap_or(u32::MAX),
        next_attempt_at: (d.status == crate::store::DeliveryStatus::Pending).then(|| to_proto(d.next_attempt_at)),
        created_at: Some(to_proto(d.created_at)),
        finished_at: d.finished_at.map(to_proto),
        last_status_code: code(d.last_status_code),
        last_error: d.last_error.clone().unwrap_or_default(),
        attempt_log: r
            .attempts
            .iter()
            .map(|a| proto::WebhookAttempt {
                attempted_at: Some(to_proto(a.attempted_at)),
                status_code: code(a.status_code),
                latency_ms: u32::try_from(a.latency_ms).unwrap_or(u32::MAX),
                error: a.error.clone().unwrap_or_default(),
            })
            .collect(),
    }
}
