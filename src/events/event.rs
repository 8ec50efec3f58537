//! What the event log records: [`EventType`], the typed [`EventData`] each
//! event carries, and [`Event`], one entry as written and as read back (with
//! its cursor). Nothing here ever holds a token, a code or a secret: the
//! fields are ids, names, states, scopes and times.

use crate::store::{scopes_to_text, Connection, ProviderRevocation, ScopeSet};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kinds of event, with their wire names (`connection.created`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A connection holds a grant for the first time (or again after a revocation).
    ConnectionCreated,
    /// A re-consent changed the scopes or the account of an active connection.
    ConnectionUpdated,
    /// The provider refused the refresh token: the user must consent again.
    ConnectionNeedsReauth,
    /// A connection that needed re-consent is active again.
    ConnectionRecovered,
    /// The connection was revoked (by whom and why in the data).
    ConnectionRevoked,
    /// The revocation at the provider reached its outcome: done, unsupported or failed.
    ConnectionProviderRevocation,
    /// A consent finished with a stored grant.
    ConsentCompleted,
    /// The user (or the provider) refused the consent.
    ConsentDenied,
    /// A consent failed (exchange error, wrong user or account, …).
    ConsentFailed,
    /// A consent was never finished before it expired.
    ConsentExpired,
    /// A user was deleted; nothing is served and everything is purged at `purge_at`.
    UserDeleted,
    /// A deleted user was restored before `purge_at`.
    UserRestored,
    /// A deleted user's connections and rows were destroyed.
    UserPurged,
}

impl EventType {
    /// Every type, in catalogue order.
    pub const ALL: [EventType; 13] = [
        EventType::ConnectionCreated,
        EventType::ConnectionUpdated,
        EventType::ConnectionNeedsReauth,
        EventType::ConnectionRecovered,
        EventType::ConnectionRevoked,
        EventType::ConnectionProviderRevocation,
        EventType::ConsentCompleted,
        EventType::ConsentDenied,
        EventType::ConsentFailed,
        EventType::ConsentExpired,
        EventType::UserDeleted,
        EventType::UserRestored,
        EventType::UserPurged,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ConnectionCreated => "connection.created",
            EventType::ConnectionUpdated => "connection.updated",
            EventType::ConnectionNeedsReauth => "connection.needs_reauth",
            EventType::ConnectionRecovered => "connection.recovered",
            EventType::ConnectionRevoked => "connection.revoked",
            EventType::ConnectionProviderRevocation => "connection.provider_revocation",
            EventType::ConsentCompleted => "consent.completed",
            EventType::ConsentDenied => "consent.denied",
            EventType::ConsentFailed => "consent.failed",
            EventType::ConsentExpired => "consent.expired",
            EventType::UserDeleted => "user.deleted",
            EventType::UserRestored => "user.restored",
            EventType::UserPurged => "user.purged",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream account, as events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAccount {
    /// The account's stable id at the provider.
    pub subject: String,
    /// A name to show people, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// The small typed payload of an event; which fields are set depends on
/// the type (see the README's event catalogue). Stored as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The provider (connection and consent events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The connection's status after the change (`active`, `needs_reauth`, `revoked`, `pending_deletion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why, in words: the refresh refusal, the revocation reason, the consent's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who acted: an API key's or certificate's name, or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The scopes the connection holds after the change (or the consent granted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,
    /// `connection.updated`: what changed (`scopes`, `account`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The upstream account, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<EventAccount>,
    /// `connection.revoked` and `connection.provider_revocation`: where the
    /// revocation at the provider stands (`pending`, `done`, `unsupported`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_revocation: Option<String>,
    /// `connection.provider_revocation` when unsupported: the page where the user removes the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_page: Option<String>,
    /// Consent events: the consent request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<Uuid>,
    /// `user.deleted`: when the user's data is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<DateTime<Utc>>,
}

/// One event of the log: written with [`Event::new`] (the store gives it a
/// cursor when it commits) and read back with its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log: strictly increasing in commit order (0 until written).
    pub cursor: i64,
    /// Unique id (the `webhook-id` of its deliveries).
    pub id: Uuid,
    /// What happened.
    pub event_type: EventType,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// The user, when the event concerns one.
    pub user_id: Option<String>,
    /// The connection, when the event concerns one.
    pub connection_id: Option<Uuid>,
    /// When the change happened.
    pub occurred_at: DateTime<Utc>,
    /// The typed payload.
    pub data: EventData,
}

impl Event {
    /// An event of `event_type` for a user of `tenant_id`, at `at`.
    pub fn new(event_type: EventType, tenant_id: &str, user_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            cursor: 0,
            id: Uuid::now_v7(),
            event_type,
            tenant_id: tenant_id.to_owned(),
            user_id: Some(user_id.to_owned()),
            connection_id: None,
            occurred_at: at,
            data: EventData::default(),
        }
    }

    /// An event about `connection` (its tenant, user, provider, account and
    /// scopes as given), with the status it has after the change.
    pub fn of_connection(event_type: EventType, connection: &Connection, at: DateTime<Utc>) -> Self {
        let mut event = Self::new(event_type, &connection.tenant_id, &connection.user_id, at);
        event.connection_id = Some(connection.id);
        event.data.provider = Some(connection.provider.clone());
        event.data.status = Some(connection.status().as_str().to_owned());
        event.data.account = connection.account_subject.clone().map(|subject| EventAccount {
            subject,
            display: connection.account_display.clone(),
        });
        event
    }

    /// `connection.provider_revocation`: the final outcome `report` of
    /// revoking connection `connection_id` (of `provider`) at the provider.
    pub fn provider_revocation(
        tenant_id: &str,
        user_id: &str,
        connection_id: Uuid,
        provider: &str,
        report: &ProviderRevocation,
        at: DateTime<Utc>,
    ) -> Self {
        let mut event = Self::new(EventType::ConnectionProviderRevocation, tenant_id, user_id, at);
        event.connection_id = Some(connection_id);
        event.data.provider = Some(provider.to_owned());
        event.data.status = Some("revoked".to_owned());
        event.data.provider_revocation = Some(report.state.as_str().to_owned());
        event.data.user_page = report.user_page.clone();
        if let Some(detail) = &report.detail {
            event = event.reason(detail);
        }
        event
    }

    /// Sets the scopes the connection holds (or the consent granted).
    pub fn scopes(mut self, scopes: &ScopeSet) -> Self {
        self.data.granted_scopes = scopes.iter().cloned().collect();
        self
    }

    /// Sets the reason, stripped of control characters and kept short.
    pub fn reason(mut self, reason: &str) -> Self {
        self.data.reason = Some(reason.chars().filter(|c| !c.is_control()).take(500).collect());
        self
    }

    /// Sets who acted.
    pub fn actor(mut self, actor: &str) -> Self {
        self.data.actor = Some(actor.to_owned());
        self
    }

    /// Edits the payload.
    pub fn with(mut self, edit: impl FnOnce(&mut EventData)) -> Self {
        edit(&mut self.data);
        self
    }

    /// The payload as stored (JSON).
    pub fn data_json(&self) -> String {
        serde_json::to_string(&self.data).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// What a re-consent changed on an active connection, for `connection.updated`
/// (empty: nothing an event reports).
pub fn grant_changes(before: &Connection, scopes: &ScopeSet, account_subject: Option<&str>) -> Vec<String> {
    let mut changed = Vec::new();
    if scopes_to_text(&before.granted_scopes) != scopes_to_text(scopes) {
        changed.push("scopes".to_owned());
    }
    if account_subject.is_some() && account_subject != before.account_subject.as_deref() {
        changed.push("account".to_owned());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_wire_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("connection.nosuch"), None);
    }

    #[test]
    fn empty_fields_are_left_out_of_the_payload() {
        let event = Event::new(EventType::UserRestored, "t1", "alice", Utc::now());
        assert_eq!(event.data_json(), "{}");
    }
}
