//! `ExportUserData` pages everything: followed to the end, the pages hold
//! every connection, consent and audit event of the user exactly once, each
//! page bounded; a page token that the server did not issue for this export
//! is `INVALID_ARGUMENT`.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::provider::connect;
use crate::support::{keys, Backend};
use std::collections::HashSet;
use tokenvault::proto::*;
use tokenvault::store::{AuditEvent, AuditFilter, ConnectionFilter};
use tonic::Code;

fn request(user_id: &str, page_size: u32, page_token: String) -> ExportUserDataRequest {
    ExportUserDataRequest {
        tenant_id: keys::TENANT.into(),
        user_id: user_id.into(),
        page_size,
        page_token,
    }
}

async fn paged_export(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let server = &with.server;
    let app = server.app();
    // Three consents, one connection through the real flow; two more
    // connections (of other providers) as the store creates them.
    for capability in ["mail.read", "calendar.read", "files.read"] {
        connect(&with, "ivy", &[capability]).await;
    }
    let now = tokenvault::clock::Clock::now(&*server.clock);
    for provider in ["other-1", "other-2"] {
        app.store
            .get_or_create_connection(keys::TENANT, "ivy", provider, None, now)
            .await
            .unwrap();
    }
    connect(&with, "jon", &["mail.read"]).await;
    // More audit events than a page, some with the same timestamp.
    let extra: Vec<AuditEvent> = (0..5)
        .map(|_| {
            tokenvault::audit::EventBuilder::new("test.extra", "success", "t", now)
                .user(keys::TENANT, "ivy")
                .build()
        })
        .collect();
    app.store.append_audit(&extra).await.unwrap();
    app.audit.flush().await;

    // What the store holds about ivy.
    let connections: HashSet<String> = app
        .store
        .list_connections(&ConnectionFilter {
            tenant_id: keys::TENANT.into(),
            user_id: Some("ivy".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    let consents: HashSet<String> = app
        .store
        .consents_of_user(keys::TENANT, "ivy", None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    let events: HashSet<String> = app
        .store
        .list_audit(&AuditFilter {
            tenant_id: Some(keys::TENANT.into()),
            user_id: Some("ivy".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(connections.len(), 3);
    assert_eq!(consents.len(), 3);
    assert!(events.len() >= 8, "{}", events.len());

    let mut platform = server.connections(keys::PLATFORM);
    let (mut seen_connections, mut seen_consents, mut seen_events) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = platform
            .export_user_data(request("ivy", 2, token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(pages < 50, "the pages end");
        let items = page.connections.len() + page.consents.len() + page.audit_events.len();
        assert!(items <= 2, "page {pages} holds {items} items");
        assert_eq!(page.user_id, "ivy");
        seen_connections.extend(page.connections.iter().map(|c| c.id.clone()));
        seen_consents.extend(page.consents.iter().map(|c| c.consent_id.clone()));
        seen_events.extend(page.audit_events.iter().map(|e| e.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let total = connections.len() + consents.len() + events.len();
    assert!(pages >= total.div_ceil(2), "{pages} pages for {total} items");
    for (name, seen, held) in [
        ("connections", &seen_connections, &connections),
        ("consents", &seen_consents, &consents),
        ("audit events", &seen_events, &events),
    ] {
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{name}: each exactly once");
        assert_eq!(&unique, held, "{name}: all of them, and only ivy's");
    }
    let mut sorted = seen_events.clone();
    sorted.sort();
    assert_eq!(sorted, seen_events, "audit events oldest first");

    // One page when it fits (the default page size), nothing left over.
    let whole = platform
        .export_user_data(request("ivy", 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(whole.next_page_token.is_empty());
    assert_eq!(
        whole.connections.len() + whole.consents.len() + whole.audit_events.len(),
        total
    );

    // Page tokens: garbage, or another user's, is INVALID_ARGUMENT.
    let first = platform
        .export_user_data(request("ivy", 1, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    for bad in [
        "garbage".to_owned(),
        format!("{}x", first.next_page_token),
        first.connections[0].id.clone(),
    ] {
        let error = platform
            .export_user_data(request("ivy", 1, bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad}: {error:?}");
    }
    let error = platform
        .export_user_data(request("jon", 1, first.next_page_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "another user's token");
    assert!(!error.message().contains(&first.next_page_token));
    with.stop().await;
}
on_both!(export_pages_hold_everything_exactly_once, paged_export);
