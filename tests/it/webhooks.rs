//! Webhooks through the real server to a real receiver on 127.0.0.1 that
//! verifies every delivery with PyPI's `standardwebhooks` (not our code):
//! signed deliveries of every event, retries with the same `webhook-id`,
//! giving up (visible), secret rotation, and the address policy.

use crate::events::stored_events;
use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, metrics};
use crate::support::provider::connect;
use crate::support::webhooks::Receiver;
use crate::support::{eventually, keys, Backend, TestServer};
use serde_json::Value;
use std::time::Duration;
use tokenvault::proto::*;
use tonic::Code;

async fn create_endpoint(server: &TestServer, url: &str, types: &[&str]) -> CreateWebhookEndpointResponse {
    server
        .admin(keys::ADMIN)
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            tenant_id: keys::TENANT.into(),
            url: url.into(),
            description: "test receiver".into(),
            types: types.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .map(|r| r.into_inner())
        .unwrap()
}

async fn deliveries(server: &TestServer, endpoint_id: &str) -> Vec<WebhookDelivery> {
    server
        .admin(keys::ADMIN)
        .list_webhook_deliveries(ListWebhookDeliveriesRequest {
            tenant_id: keys::TENANT.into(),
            endpoint_id: endpoint_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

async fn endpoints(server: &TestServer) -> Vec<WebhookEndpoint> {
    server
        .admin(keys::ADMIN)
        .list_webhook_endpoints(ListWebhookEndpointsRequest {
            tenant_id: keys::TENANT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoints
}

/// Waits (at most 15 s) until the receiver holds `n` deliveries.
async fn received(receiver: &Receiver, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(15), || async {
        receiver.received().await.len() >= n
    })
    .await;
    receiver.received().await
}

/// Development-style webhook settings: loopback receivers over http, quick retries.
fn loopback(config: &mut tokenvault::config::Config) {
    config.events.webhooks.allowed_networks = vec!["127.0.0.0/8".into()];
    config.events.webhooks.allow_http_loopback = true;
    config.events.webhooks.retry_initial_ms = 100;
    config.events.webhooks.retry_max_seconds = 1;
}

async fn signed_deliveries(backend: Backend) {
    let with = WithProvider::build(backend).config(loopback).start().await;
    let receiver = Receiver::start();
    let created = create_endpoint(&with.server, &receiver.url(), &[]).await;
    assert!(created.secret.starts_with("whsec_"));
    let endpoint = created.endpoint.unwrap();
    assert_eq!(endpoint.secret_version, 1);
    receiver.set_secrets(&[&created.secret]).await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let got = received(&receiver, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter().all(|d| d["verified"] == true),
        "standardwebhooks verified each: {got:?}"
    );
    let stored = stored_events(&with.server, keys::TENANT).await;
    let mut by_id: Vec<(String, String)> = got
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_id.sort();
    let mut expected: Vec<(String, String)> = stored
        .iter()
        .map(|e| (e.id.to_string(), e.event_type.as_str().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(by_id, expected, "webhook-id is the event id, one delivery per event");
    let created_body = &got.iter().find(|d| d["type"] == "connection.created").unwrap()["body"];
    assert_eq!(created_body["data"]["connection_id"], connection.as_str());
    assert_eq!(created_body["data"]["tenant_id"], keys::TENANT);
    assert_eq!(created_body["data"]["status"], "active");
    assert!(created_body["data"]["cursor"].as_i64().unwrap() > 0);
    // Each delivery and its attempt are visible.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let list = deliveries(&with.server, &endpoint.id).await;
            list.len() == 2 && list.iter().all(|d| d.status == "delivered")
        })
        .await
    );
    let list = deliveries(&with.server, &endpoint.id).await;
    for delivery in &list {
        assert_eq!(delivery.attempts, 1);
        assert_eq!(delivery.attempt_log.len(), 1);
        assert_eq!(delivery.attempt_log[0].status_code, 200);
    }
    let listed = endpoints(&with.server).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].url, receiver.url());
    assert!(metrics(&with.server)
        .await
        .contains("tokenvault_webhook_attempts_total{outcome=\"delivered\"} 2"));
    // The operator's action is audited (without the secret).
    let audited = audit(&with.server, "webhook.endpoint_created").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].tenant_id.as_deref(), Some(keys::TENANT));
    assert!(!audited[0]
        .detail
        .to_string()
        .contains(created.secret.trim_start_matches("whsec_")));
    with.stop().await;
}
on_both!(webhooks_are_signed_and_verified, signed_deliveries);

async fn retried_with_the_same_id(backend: Backend) {
    let with = WithProvider::build(backend).config(loopback).start().await;
    let receiver = Receiver::start();
    let created = create_endpoint(&with.server, &receiver.url(), &["connection.created"]).await;
    receiver.set_secrets(&[&created.secret]).await;
    receiver.script(&[500, 500, 500]).await;
    connect(&with, "alice", &["mail.read"]).await;
    let got = received(&receiver, 4).await;
    assert_eq!(got.len(), 4, "only connection.created is wanted: {got:?}");
    let statuses: Vec<i64> = got.iter().map(|d| d["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    assert!(
        got.iter().all(|d| d["verified"] == true && d["id"] == got[0]["id"]),
        "{got:?}"
    );
    let endpoint = created.endpoint.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            deliveries(&with.server, &endpoint.id)
                .await
                .first()
                .is_some_and(|d| d.status == "delivered")
        })
        .await
    );
    let delivery = &deliveries(&with.server, &endpoint.id).await[0];
    assert_eq!(delivery.attempts, 4);
    let codes: Vec<u32> = delivery.attempt_log.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [500, 500, 500, 200]);
    assert!(delivery.attempt_log[0].error.contains("500"));
    with.stop().await;
}
on_both!(webhook_retries_keep_the_webhook_id, retried_with_the_same_id);

async fn given_up(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| {
            loopback(c);
            c.events.webhooks.give_up_after_seconds = 2;
        })
        .start()
        .await;
    let mut receiver = Receiver::start();
    let created = create_endpoint(&with.server, &receiver.url(), &["connection.created"]).await;
    receiver.stop();
    connect(&with, "alice", &["mail.read"]).await;
    let endpoint = created.endpoint.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            deliveries(&with.server, &endpoint.id)
                .await
                .first()
                .is_some_and(|d| d.status == "failed")
        })
        .await,
        "{:?}",
        deliveries(&with.server, &endpoint.id).await
    );
    let delivery = &deliveries(&with.server, &endpoint.id).await[0];
    assert!(delivery.attempts >= 2, "retried before giving up: {delivery:?}");
    assert!(delivery.finished_at.is_some());
    assert!(
        delivery
            .attempt_log
            .iter()
            .all(|a| a.status_code == 0 && a.error.contains("connect")),
        "{delivery:?}"
    );
    let failed = with
        .server
        .admin(keys::ADMIN)
        .list_webhook_deliveries(ListWebhookDeliveriesRequest {
            tenant_id: keys::TENANT.into(),
            status: "failed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(failed.len(), 1);
    assert!(metrics(&with.server)
        .await
        .contains("tokenvault_webhook_attempts_total{outcome=\"failed\"} 1"));
    with.stop().await;
}
on_both!(webhook_gives_up_visibly, given_up);

async fn rotation(backend: Backend) {
    let with = WithProvider::build(backend).config(loopback).start().await;
    let receiver = Receiver::start();
    let created = create_endpoint(&with.server, &receiver.url(), &["connection.created"]).await;
    let endpoint = created.endpoint.unwrap();
    let rotate = |expire_previous_now| {
        let id = endpoint.id.clone();
        let mut admin = with.server.admin(keys::ADMIN);
        async move {
            admin
                .rotate_webhook_secret(RotateWebhookSecretRequest {
                    endpoint_id: id,
                    expire_previous_now,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let rotated = rotate(false).await;
    assert_ne!(rotated.secret, created.secret);
    assert_eq!(rotated.endpoint.as_ref().unwrap().secret_version, 2);
    // During the overlap each delivery carries both signatures: a receiver still on the old secret verifies it.
    receiver.set_secrets(&[&created.secret]).await;
    connect(&with, "alice", &["mail.read"]).await;
    let got = received(&receiver, 1).await;
    assert_eq!(
        (got[0]["verified"].as_bool(), got[0]["signatures"].as_i64()),
        (Some(true), Some(2))
    );
    // Once the previous secret is ended, only the new one signs.
    let again = rotate(true).await;
    receiver.set_secrets(&[&rotated.secret, &again.secret]).await;
    connect(&with, "bob", &["mail.read"]).await;
    let got = received(&receiver, 2).await;
    assert_eq!(got[1]["signatures"], 1);
    assert_eq!(got[1]["verified_with"], 1, "signed with the newest secret only");
    // Deleting the endpoint stops deliveries.
    with.server
        .admin(keys::ADMIN)
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: endpoint.id.clone(),
        })
        .await
        .unwrap();
    connect(&with, "carol", &["mail.read"]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.received().await.len(), 2);
    assert!(deliveries(&with.server, &endpoint.id).await.is_empty());
    with.stop().await;
}
on_both!(webhook_secret_rotation_overlaps, rotation);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_must_not_reach_private_networks() {
    // Production defaults: https only, no private, loopback or link-local address.
    let with = WithProvider::start(Backend::Sqlite).await;
    let refused = |url: &'static str| {
        let mut admin = with.server.admin(keys::ADMIN);
        async move {
            admin
                .create_webhook_endpoint(CreateWebhookEndpointRequest {
                    tenant_id: keys::TENANT.into(),
                    url: url.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    for (url, says) in [
        ("https://127.0.0.1/hook", "127.0.0.1"),
        ("https://localhost/hook", "private"),
        ("https://10.1.2.3/hook", "10.1.2.3"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("https://[fd00::1]/hook", "fd00::1"),
        ("https://[::ffff:192.168.1.1]/hook", "private"),
        ("http://93.184.215.14/hook", "https"),
        ("https://user:pw@93.184.215.14/hook", "user name"),
        ("not a url", "valid"),
    ] {
        let status = refused(url).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{url}");
        assert!(status.message().contains(says), "{url}: {}", status.message());
    }
    // Nothing was stored.
    let listed = endpoints(&with.server).await;
    assert!(listed.is_empty());
    // Another tenant's admin may not manage acme's endpoints; unknown types are refused.
    let status = with
        .server
        .admin(keys::ADMIN)
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            tenant_id: keys::TENANT.into(),
            url: "https://93.184.215.14/hook".into(),
            types: vec!["connection.nosuch".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = with
        .server
        .admin(keys::PLATFORM)
        .list_webhook_endpoints(ListWebhookEndpointsRequest {
            tenant_id: keys::TENANT.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    with.stop().await;
}
