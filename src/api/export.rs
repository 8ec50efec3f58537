//! `ExportUserData` in pages: a page holds at most `page_size` items taken in
//! one stable order — connections by id, then consent requests by id, then
//! audit events oldest first — and its opaque page token says where the next
//! one starts (the section and the last id handed out), bound to the user, so
//! that every item appears on exactly one page and nothing is cut.

use crate::store::{AuditEvent, AuditFilter, Connection, ConnectionFilter, ConsentRecord, Store, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use tonic::Status;
use uuid::Uuid;

/// The parts of an export, in the order the pages go through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Connections,
    Consents,
    AuditEvents,
}

impl Section {
    /// The section after this one.
    fn next(self) -> Option<Self> {
        match self {
            Self::Connections => Some(Self::Consents),
            Self::Consents => Some(Self::AuditEvents),
            Self::AuditEvents => None,
        }
    }

    /// The letter in the page token.
    fn letter(self) -> char {
        match self {
            Self::Connections => 'c',
            Self::Consents => 'r',
            Self::AuditEvents => 'a',
        }
    }

    fn from_letter(letter: &str) -> Option<Self> {
        match letter {
            "c" => Some(Self::Connections),
            "r" => Some(Self::Consents),
            "a" => Some(Self::AuditEvents),
            _ => None,
        }
    }
}

/// Where an export page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportCursor {
    section: Section,
    /// The last id of `section` already handed out.
    after: Option<Uuid>,
}

/// The page token's version prefix.
const TOKEN_VERSION: &str = "x1";

impl ExportCursor {
    /// The first page.
    pub fn start() -> Self {
        Self {
            section: Section::Connections,
            after: None,
        }
    }

    /// The page token of this cursor for the export of (`tenant_id`, `user_id`).
    pub fn encode(&self, tenant_id: &str, user_id: &str) -> String {
        let after = self.after.map(|id| id.to_string()).unwrap_or_default();
        let text = format!(
            "{TOKEN_VERSION}:{}:{after}:{}",
            self.section.letter(),
            user_tag(tenant_id, user_id)
        );
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a page token (empty: the first page); one that this server did
    /// not issue for this user's export is `INVALID_ARGUMENT`.
    pub fn decode(token: &str, tenant_id: &str, user_id: &str) -> Result<Self, Status> {
        if token.is_empty() {
            return Ok(Self::start());
        }
        Self::parse(token, tenant_id, user_id)
            .ok_or_else(|| Status::invalid_argument("page_token is not one this server issued for this user's export"))
    }

    fn parse(token: &str, tenant_id: &str, user_id: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split(':');
        let (version, section, after, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != TOKEN_VERSION || parts.next().is_some() || tag != user_tag(tenant_id, user_id) {
            return None;
        }
        let after = match after {
            "" => None,
            id => Some(Uuid::from_str(id).ok()?),
        };
        Some(Self {
            section: Section::from_letter(section)?,
            after,
        })
    }
}

/// A short digest of the user the token belongs to (a token of another
/// user's export is refused rather than silently read as a cursor).
fn user_tag(tenant_id: &str, user_id: &str) -> String {
    let digest = Sha256::digest(format!("{tenant_id}\n{user_id}").as_bytes());
    hex::encode(digest.get(..8).unwrap_or_default())
}

/// One page of an export.
#[derive(Debug, Default)]
pub struct ExportPage {
    /// Connections, by id.
    pub connections: Vec<Connection>,
    /// Consent requests, by id.
    pub consents: Vec<ConsentRecord>,
    /// Audit events about the user, oldest first.
    pub audit_events: Vec<AuditEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ExportCursor>,
}

/// Reads the page of (`tenant_id`, `user_id`) starting at `cursor`, with at most `limit` items.
pub async fn read_page(
    store: &dyn Store,
    tenant_id: &str,
    user_id: &str,
    limit: u32,
    mut cursor: ExportCursor,
) -> Result<ExportPage, StoreError> {
    let mut page = ExportPage::default();
    let mut budget = limit.max(1);
    loop {
        if budget == 0 {
            page.next = Some(cursor);
            return Ok(page);
        }
        // One more than fits tells whether the section goes on past this page.
        let want = budget + 1;
        let (taken, last) = match cursor.section {
            Section::Connections => {
                let filter = ConnectionFilter {
                    tenant_id: tenant_id.to_owned(),
                    user_id: Some(user_id.to_owned()),
                    after_id: cursor.after,
                    limit: want,
                    ..Default::default()
                };
                let items = store.list_connections(&filter).await?;
                take(items, budget, |c| c.id, &mut page.connections)
            }
            Section::Consents => {
                let items = store.consents_of_user(tenant_id, user_id, cursor.after, want).await?;
                take(items, budget, |c| c.id, &mut page.consents)
            }
            Section::AuditEvents => {
                let filter = AuditFilter {
                    tenant_id: Some(tenant_id.to_owned()),
                    user_id: Some(user_id.to_owned()),
                    after_id: cursor.after,
                    oldest_first: true,
                    limit: want,
                    ..Default::default()
                };
                let items = store.list_audit(&filter).await?;
                take(items, budget, |e| e.id, &mut page.audit_events)
            }
        };
        if let Some(last) = last {
            page.next = Some(ExportCursor {
                section: cursor.section,
                after: Some(last),
            });
            return Ok(page);
        }
        budget -= taken;
        let Some(section) = cursor.section.next() else {
            return Ok(page);
        };
        cursor = ExportCursor { section, after: None };
    }
}

/// Moves at most `budget` of `items` into `into`; returns how many, and the
/// last one's id when more were left behind.
fn take<T>(mut items: Vec<T>, budget: u32, id: impl Fn(&T) -> Uuid, into: &mut Vec<T>) -> (u32, Option<Uuid>) {
    let more = items.len() > budget as usize;
    items.truncate(budget as usize);
    let last = if more { items.last().map(&id) } else { None };
    let taken = u32::try_from(items.len()).unwrap_or(budget);
    into.extend(items);
    (taken, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_bind_the_user() {
        let cursor = ExportCursor {
            section: Section::AuditEvents,
            after: Some(Uuid::now_v7()),
        };
        let token = cursor.encode("acme", "alice");
        assert_eq!(ExportCursor::decode(&token, "acme", "alice").unwrap(), cursor);
        assert_eq!(
            ExportCursor::decode("", "acme", "alice").unwrap(),
            ExportCursor::start()
        );
        let start = ExportCursor::start().encode("acme", "alice");
        assert_eq!(
            ExportCursor::decode(&start, "acme", "alice").unwrap(),
            ExportCursor::start()
        );
        for bad in [
            cursor.encode("acme", "bob"),
            cursor.encode("other", "alice"),
            "garbage".to_owned(),
            "!!".to_owned(),
            URL_SAFE_NO_PAD.encode("x1:z::0000000000000000"),
            URL_SAFE_NO_PAD.encode(format!("x2:c::{}", user_tag("acme", "alice"))),
            URL_SAFE_NO_PAD.encode(format!("x1:c:not-a-uuid:{}", user_tag("acme", "alice"))),
            URL_SAFE_NO_PAD.encode(format!("x1:c::{}:extra", user_tag("acme", "alice"))),
        ] {
            let error = ExportCursor::decode(&bad, "acme", "alice").unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn take_says_when_more_were_left() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut into = Vec::new();
        assert_eq!(take(ids.clone(), 2, |i| *i, &mut into), (2, Some(ids[1])));
        assert_eq!(into, ids[..2]);
        let mut into = Vec::new();
        assert_eq!(take(ids.clone(), 3, |i| *i, &mut into), (3, None));
        assert_eq!(into.len(), 3);
    }
}
