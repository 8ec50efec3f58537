//! The sealed refresh token and its record version (sealed-value format 2):
//! an older ciphertext put back under the connection's current
//! `token_version` is refused before anything reaches the provider; a
//! format-1 value stored before format 2 is read, and rewritten in format 2
//! by the next rotation or re-consent.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection, stored_refresh_token};
use crate::support::provider::connect;
use crate::support::{Backend, TestServer};
use secrecy::ExposeSecret;
use tokenvault::vault::sealed::{FORMAT_V1, FORMAT_V2};
use tokenvault::vault::{Binding, Field, VaultError};
use tokenvault_testkit::fake_provider::{Endpoint, Fault};
use tonic::Code;

/// The sealed refresh token and token version of a connection, read with SQL.
async fn stored_row(server: &TestServer, connection_id: &str) -> (Vec<u8>, i64) {
    sqlx::query_as("SELECT refresh_token, token_version FROM connections WHERE id = $1")
        .bind(connection_id)
        .fetch_one(server.app().sql.pool())
        .await
        .unwrap()
}

/// Overwrites only the sealed refresh token of a connection, with SQL (what
/// someone with write access to the database can do).
async fn put_refresh_token(server: &TestServer, connection_id: &str, sealed: &[u8]) {
    let updated = sqlx::query("UPDATE connections SET refresh_token = $1 WHERE id = $2")
        .bind(sealed.to_vec())
        .bind(connection_id)
        .execute(server.app().sql.pool())
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
}

/// Opens `sealed` as the refresh token of `connection_id` bound to `version`.
async fn open_at(server: &TestServer, connection_id: &str, sealed: &[u8], version: i64) -> Result<String, VaultError> {
    let connection = stored_connection(server, connection_id).await;
    let key = server.app().vault.data_key(connection.dek_id.unwrap()).await.unwrap();
    let record = connection.id.to_string();
    let binding = Binding {
        tenant_id: &connection.tenant_id,
        user_id: &connection.user_id,
        record: &record,
        field: Field::RefreshToken,
        version,
    };
    key.open_string(&binding, sealed)
        .map(|token| token.expose_secret().to_owned())
}

/// Replaces the connection's refresh token with the same token sealed in
/// format 1 (as tokenvault stored it before format 2); returns the token.
async fn downgrade_to_format_1(server: &TestServer, connection_id: &str) -> String {
    let plain = stored_refresh_token(server, connection_id).await;
    let connection = stored_connection(server, connection_id).await;
    let key = server.app().vault.data_key(connection.dek_id.unwrap()).await.unwrap();
    let record = connection.id.to_string();
    let binding = Binding {
        tenant_id: &connection.tenant_id,
        user_id: &connection.user_id,
        record: &record,
        field: Field::RefreshToken,
        // Format 1 binds no version: any value gives the same ciphertext's AAD.
        version: 0,
    };
    let legacy = key.seal_v1(&binding, plain.as_bytes()).unwrap();
    put_refresh_token(server, connection_id, &legacy).await;
    let (stored, _) = stored_row(server, connection_id).await;
    assert_eq!(stored[0], FORMAT_V1);
    plain
}

/// Lets the stored access token expire, so that the next call refreshes.
fn expire(with: &WithProvider) {
    with.server.clock.advance(chrono::Duration::seconds(3600));
}

async fn rollback_of_the_value_only(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "ada", &["mail.read"]).await;
    with.server.token_for(&connection).await.unwrap();
    let (before_rotation, version) = stored_row(&with.server, &connection).await;
    assert_eq!(before_rotation[0], FORMAT_V2, "consent seals in format 2");
    let retired = stored_refresh_token(&with.server, &connection).await;

    // A rotation: new ciphertext, sealed for the next version.
    expire(&with);
    with.server.token_for(&connection).await.unwrap();
    let (rotated, rotated_version) = stored_row(&with.server, &connection).await;
    assert_eq!(rotated_version, version + 1);
    assert_eq!(rotated[0], FORMAT_V2);
    assert_ne!(stored_refresh_token(&with.server, &connection).await, retired);
    assert!(!with.fake.is_refresh_token_active(&retired), "the fake rotated it away");

    // The old ciphertext put back under the current token_version.
    put_refresh_token(&with.server, &connection, &before_rotation).await;
    // (It is intact: it still opens for the version it was sealed for.)
    assert_eq!(
        open_at(&with.server, &connection, &before_rotation, version)
            .await
            .unwrap(),
        retired
    );
    assert!(matches!(
        open_at(&with.server, &connection, &before_rotation, rotated_version).await,
        Err(VaultError::OpenFailed)
    ));

    expire(&with);
    let before = with.fake.stats();
    let error = with.server.token_for(&connection).await.unwrap_err();
    assert_eq!(error.code(), Code::DataLoss, "{error:?}");
    assert!(error.message().contains("integrity"), "{}", error.message());
    // Nothing reached the provider: the rolled-back token was never presented.
    let after = with.fake.stats();
    assert_eq!(
        after.token_endpoint_requests, before.token_endpoint_requests,
        "{after:?}"
    );
    assert_eq!(after.refreshes, before.refreshes);
    assert_eq!(after.retired_refresh_tokens_presented, 0);
    let events = audit(&with.server, "vault.integrity_failure").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].connection_id.map(|c| c.to_string()), Some(connection.clone()));
    assert_eq!(events[0].detail["field"], "refresh_token");
    // Nothing else changed: the row keeps its version, and a retry is refused the same way.
    assert_eq!(stored_row(&with.server, &connection).await.1, rotated_version);
    assert_eq!(
        with.server.token_for(&connection).await.unwrap_err().code(),
        Code::DataLoss
    );
    assert_eq!(with.fake.stats().refreshes, before.refreshes);

    // Putting the current ciphertext back repairs it.
    put_refresh_token(&with.server, &connection, &rotated).await;
    with.server.token_for(&connection).await.unwrap();
    let stats = with.fake.stats();
    assert_eq!(stats.successful_refreshes, before.successful_refreshes + 1);
    assert_eq!(stats.retired_refresh_tokens_presented, 0);
    with.stop().await;
}
on_both!(
    an_older_refresh_token_under_the_current_version_is_refused,
    rollback_of_the_value_only
);

async fn format_1_upgraded_by_rotation(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "bea", &["mail.read"]).await;
    with.server.token_for(&connection).await.unwrap();
    let legacy = downgrade_to_format_1(&with.server, &connection).await;
    let (_, version) = stored_row(&with.server, &connection).await;
    // Read as it is, whatever the row's version.
    assert_eq!(stored_refresh_token(&with.server, &connection).await, legacy);

    expire(&with);
    let before = with.fake.stats();
    with.server.token_for(&connection).await.unwrap();
    let after = with.fake.stats();
    assert_eq!(after.successful_refreshes, before.successful_refreshes + 1, "{after:?}");
    assert_eq!(
        after.retired_refresh_tokens_presented, 0,
        "the format-1 token was presented"
    );

    // The rotation stored the new refresh token in format 2, for the new version.
    let (sealed, rotated_version) = stored_row(&with.server, &connection).await;
    assert_eq!(rotated_version, version + 1);
    assert_eq!(sealed[0], FORMAT_V2);
    let rotated = stored_refresh_token(&with.server, &connection).await;
    assert_ne!(rotated, legacy);
    assert!(with.fake.is_refresh_token_active(&rotated));
    assert!(matches!(
        open_at(&with.server, &connection, &sealed, version).await,
        Err(VaultError::OpenFailed)
    ));

    // And it serves the next refresh.
    expire(&with);
    with.server.token_for(&connection).await.unwrap();
    let stats = with.fake.stats();
    assert_eq!(stats.successful_refreshes, before.successful_refreshes + 2);
    assert_eq!(stats.retired_refresh_tokens_presented, 0);
    with.stop().await;
}
on_both!(
    a_format_1_refresh_token_is_read_and_rotated_into_format_2,
    format_1_upgraded_by_rotation
);

async fn format_1_kept_by_a_grant(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "cy", &["mail.read"]).await;
    let legacy = downgrade_to_format_1(&with.server, &connection).await;
    let (_, version) = stored_row(&with.server, &connection).await;

    // A re-consent whose answer carries no refresh token keeps the stored one
    // (the token version still moves on): it is sealed again, in format 2, for the new version.
    with.fake.faults().push(Endpoint::Token, Fault::OmitRefreshToken);
    assert_eq!(connect(&with, "cy", &["mail.read"]).await, connection);
    let (sealed, kept_version) = stored_row(&with.server, &connection).await;
    assert_eq!(kept_version, version + 1);
    assert_eq!(sealed[0], FORMAT_V2);
    assert_eq!(
        open_at(&with.server, &connection, &sealed, kept_version).await.unwrap(),
        legacy
    );
    assert!(open_at(&with.server, &connection, &sealed, version).await.is_err());
    assert!(
        with.fake.stats().revocations.is_empty(),
        "the kept token is not revoked as replaced"
    );

    // The kept token still refreshes.
    expire(&with);
    let before = with.fake.stats();
    with.server.token_for(&connection).await.unwrap();
    let after = with.fake.stats();
    assert_eq!(after.successful_refreshes, before.successful_refreshes + 1, "{after:?}");
    assert_eq!(after.retired_refresh_tokens_presented, 0);
    with.stop().await;
}
on_both!(
    a_refresh_token_kept_by_a_re_consent_is_sealed_for_the_new_version,
    format_1_kept_by_a_grant
);
