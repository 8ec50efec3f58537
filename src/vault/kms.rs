//! Key-encryption keys in AWS KMS: data keys are wrapped with `Encrypt`,
//! unwrapped with `Decrypt` and re-wrapped with `ReEncrypt` (the plaintext
//! never leaves KMS), each under an encryption context naming the data key
//! (`{"tokenvault:dek": "<uuid>"}`), so a wrapped key moved to another data
//! key id does not unwrap. The stored KEK id is the key ARN KMS answers with.

use super::keyring::KekSet;
use super::{DataKey, KekDestroyed, Keyring, VaultError};
use crate::config::KmsConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, Tag};
use aws_sdk_kms::Client;
use std::time::Duration;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The encryption-context key that binds a wrapped data key to its id.
pub const CONTEXT_KEY: &str = "tokenvault:dek";

/// KEKs held in AWS KMS, addressed by their ARNs.
pub struct KmsKeyring {
    client: Client,
    /// Key ARNs, the active one first at start-up.
    keys: KekSet,
    /// `PendingWindowInDays` of `ScheduleKeyDeletion` (7–30).
    deletion_pending_days: u32,
}

impl std::fmt::Debug for KmsKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeyring")
            .field("active", &self.keys.active())
            .field("keys", &self.keys.ids())
            .finish_non_exhaustive()
    }
}

impl KmsKeyring {
    /// Connects to KMS as configured and checks every key with `DescribeKey`: the
    /// active one must exist, be enabled and be a symmetric encrypt/decrypt key.
    /// `epochs` are the ARNs of the live KEK epochs recorded in the key
    /// database, newest last: when there are any, the newest is the active key
    /// and the configured `key_id` (the first epoch, perhaps destroyed since)
    /// need not be usable.
    pub async fn connect(config: &KmsConfig, epochs: &[String]) -> Result<Self, VaultError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http)
            // An outage must answer quickly: a cache miss waits at most about 10 s.
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.as_str().trim_end_matches('/'));
        }
        let client = Client::new(&loader.load().await);
        Self::with_client(client, config, epochs).await
    }

    /// A keyring over an existing client, with the keys of `config` (ids, ARNs
    /// or aliases) and the live `epochs` (see [`KmsKeyring::connect`]).
    pub async fn with_client(client: Client, config: &KmsConfig, epochs: &[String]) -> Result<Self, VaultError> {
        let (active_arn, mut keys) = match epochs.split_last() {
            Some((current, older_epochs)) => {
                let active = describe(&client, current, true).await?;
                let mut keys = vec![active.clone()];
                for id in older_epochs.iter().chain([&config.key_id]) {
                    match describe(&client, id, false).await {
                        Ok(arn) if !keys.contains(&arn) => keys.push(arn),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(key = %id, %error, "a retired AWS KMS key is not usable"),
                    }
                }
                (active, keys)
            }
            None => {
                let active = describe(&client, &config.key_id, true).await?;
                (active.clone(), vec![active])
            }
        };
        for id in &config.older_key_ids {
            let arn = describe(&client, id, false).await?;
            if !keys.contains(&arn) {
                keys.push(arn);
            }
        }
        Ok(Self {
            client,
            keys: KekSet::new(active_arn, keys),
            deletion_pending_days: config.deletion_pending_days,
        })
    }
}

/// Resolves `id` to its key ARN; `active` keys must be usable for new data keys.
async fn describe(client: &Client, id: &str, active: bool) -> Result<String, VaultError> {
    let answer =
        client
            .describe_key()
            .key_id(id)
            .send()
            .await
            .map_err(|error| match classify("DescribeKey", error, None) {
                VaultError::KmsRefused(reason) => VaultError::Keyring(format!("AWS KMS key `{id}`: {reason}")),
                other => other,
            })?;
    let meta = answer
        .key_metadata()
        .ok_or_else(|| VaultError::Keyring(format!("AWS KMS key `{id}`: DescribeKey returned no metadata")))?;
    let state = meta.key_state().cloned();
    if active && (!meta.enabled() || state != Some(KeyState::Enabled)) {
        return Err(VaultError::Keyring(format!(
            "AWS KMS key `{id}` is not enabled (state {}); enable it or configure another keys.kms.key_id",
            state.as_ref().map_or("unknown", KeyState::as_str)
        )));
    }
    if meta.key_usage() != Some(&KeyUsageType::EncryptDecrypt) {
        return Err(VaultError::Keyring(format!(
            "AWS KMS key `{id}` is not a symmetric ENCRYPT_DECRYPT key"
        )));
    }
    if !active && state != Some(KeyState::Enabled) {
        tracing::warn!(
            key = id,
            "an older AWS KMS key is not enabled: data keys it wraps cannot be opened"
        );
    }
    meta.arn()
        .map(str::to_owned)
        .ok_or_else(|| VaultError::Keyring(format!("AWS KMS key `{id}`: DescribeKey returned no ARN")))
}

/// Sorts a KMS failure: the service out of reach or failing → `KmsUnavailable`;
/// a ciphertext that does not decrypt → `UnwrapFailed`; anything else (access
/// denied, key disabled or pending deletion, not found) → `KmsRefused`.
fn classify<E>(operation: &str, error: SdkError<E>, dek_id: Option<Uuid>) -> VaultError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(failure) => {
            let status = failure.raw().status().as_u16();
            let inner = failure.err();
            let code = inner.code().unwrap_or("unknown error").to_owned();
            let message = inner.message().unwrap_or("").to_owned();
            match (code.as_str(), dek_id) {
                ("InvalidCiphertextException" | "IncorrectKeyException", Some(dek_id)) => {
                    VaultError::UnwrapFailed { dek_id }
                }
                (
                    "KMSInternalException"
                    | "DependencyTimeoutException"
                    | "KeyUnavailableException"
                    | "ThrottlingException"
                    | "LimitExceededException",
                    _,
                ) => VaultError::KmsUnavailable(format!("{operation}: {code}: {message}")),
                _ if status >= 500 => {
                    VaultError::KmsUnavailable(format!("{operation}: {code} (HTTP {status}): {message}"))
                }
                _ => VaultError::KmsRefused(format!("{operation}: {code}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => VaultError::KmsUnavailable(format!("{operation}: timed out")),
        SdkError::DispatchFailure(failure) => {
            let reason = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "request not sent"
            };
            VaultError::KmsUnavailable(format!("{operation}: {reason}"))
        }
        SdkError::ResponseError(_) => VaultError::KmsUnavailable(format!("{operation}: unreadable response")),
        other => VaultError::Keyring(format!(
            "{operation}: {}",
            aws_sdk_kms::error::DisplayErrorContext(&other)
        )),
    }
}

/// The key id at the end of a key ARN (`arn:aws:kms:…:key/<id>`); anything else as it is.
fn bare_key_id(kek_id: &str) -> &str {
    match kek_id.split_once(":key/") {
        Some((_, id)) if kek_id.starts_with("arn:") => id,
        _ => kek_id,
    }
}

fn context_value(dek_id: Uuid) -> String {
    dek_id.to_string()
}

#[async_trait::async_trait]
impl Keyring for KmsKeyring {
    fn backend(&self) -> &'static str {
        "aws-kms"
    }

    fn active_id(&self) -> String {
        self.keys.active()
    }

    fn contains(&self, kek_id: &str) -> bool {
        self.keys.contains(kek_id)
    }

    fn ids(&self) -> Vec<String> {
        self.keys.ids()
    }

    fn activate(&self, kek_id: &str) -> Result<(), VaultError> {
        self.keys.activate(kek_id)
    }

    fn manages_keys(&self) -> bool {
        true
    }

    fn destruction_delay_days(&self) -> u32 {
        self.deletion_pending_days
    }

    async fn create_key(&self, label: &str) -> Result<String, VaultError> {
        let answer = self
            .client
            .create_key()
            .description(format!("tokenvault key-encryption key, epoch {label}"))
            .key_usage(KeyUsageType::EncryptDecrypt)
            .key_spec(KeySpec::SymmetricDefault)
            .tags(
                Tag::builder()
                    .tag_key("tokenvault:epoch")
                    .tag_value(label)
                    .build()
                    .map_err(|error| VaultError::Keyring(format!("CreateKey tag: {error}")))?,
            )
            .send()
            .await
            .map_err(|error| classify("CreateKey", error, None))?;
        let arn = answer
            .key_metadata()
            .and_then(|meta| meta.arn())
            .map(str::to_owned)
            .ok_or_else(|| VaultError::Keyring("CreateKey answered without a key ARN".to_owned()))?;
        self.keys.add(arn.clone());
        Ok(arn)
    }

    async fn load_key(&self, kek_id: &str) -> Result<(), VaultError> {
        if self.contains(kek_id) {
            return Ok(());
        }
        let arn = describe(&self.client, kek_id, true).await?;
        self.keys.add(arn);
        Ok(())
    }

    async fn destroy_key(&self, kek_id: &str) -> Result<KekDestroyed, VaultError> {
        if self.active_id() == kek_id {
            return Err(VaultError::Keyring(format!(
                "AWS KMS key `{kek_id}` is active and cannot be destroyed"
            )));
        }
        let answer = self
            .client
            .schedule_key_deletion()
            // ScheduleKeyDeletion works only in the caller's own account: the bare key id says the same as the ARN.
            .key_id(bare_key_id(kek_id))
            .pending_window_in_days(i32::try_from(self.deletion_pending_days).unwrap_or(30))
            .send()
            .await;
        let gone_at = match answer {
            Ok(answer) => answer
                .deletion_date()
                .and_then(|date| chrono::DateTime::from_timestamp(date.secs(), 0)),
            // Already pending deletion (an earlier attempt whose answer was lost): ask when.
            Err(SdkError::ServiceError(failure)) if failure.err().code() == Some("KMSInvalidStateException") => {
                let meta = self
                    .client
                    .describe_key()
                    .key_id(kek_id)
                    .send()
                    .await
                    .map_err(|error| classify("DescribeKey", error, None))?;
                let meta = meta.key_metadata();
                if meta.and_then(|m| m.key_state()) != Some(&KeyState::PendingDeletion) {
                    return Err(VaultError::KmsRefused(format!(
                        "ScheduleKeyDeletion: key `{kek_id}` is in state {}",
                        meta.and_then(|m| m.key_state()).map_or("unknown", KeyState::as_str)
                    )));
                }
                meta.and_then(|m| m.deletion_date())
                    .and_then(|date| chrono::DateTime::from_timestamp(date.secs(), 0))
            }
            Err(error) => return Err(classify("ScheduleKeyDeletion", error, None)),
        };
        self.keys.remove(kek_id);
        Ok(KekDestroyed {
            gone_at: gone_at
                .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::days(i64::from(self.deletion_pending_days))),
        })
    }

    async fn wrap(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError> {
        let answer = self
            .client
            .encrypt()
            .key_id(self.active_id())
            .plaintext(Blob::new(dek.as_slice()))
            .encryption_context(CONTEXT_KEY, context_value(dek_id))
            .send()
            .await
            .map_err(|error| classify("Encrypt", error, None))?;
        wrapped_answer("Encrypt", answer.key_id(), answer.ciphertext_blob())
    }

    async fn unwrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        if !self.contains(kek_id) {
            return Err(VaultError::UnknownKek(kek_id.to_owned()));
        }
        let answer = self
            .client
            .decrypt()
            .key_id(kek_id)
            .ciphertext_blob(Blob::new(wrapped))
            .encryption_context(CONTEXT_KEY, context_value(dek_id))
            .send()
            .await
            .map_err(|error| classify("Decrypt", error, Some(dek_id)))?;
        let plain = Zeroizing::new(
            answer
                .plaintext()
                .map(|blob| blob.as_ref().to_vec())
                .unwrap_or_default(),
        );
        drop(answer);
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
            plain
                .as_slice()
                .try_into()
                .map_err(|_| VaultError::UnwrapFailed { dek_id })?,
        );
        Ok(DataKey::from_bytes(dek_id, &bytes))
    }

    async fn rewrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<(String, Vec<u8>), VaultError> {
        if !self.contains(kek_id) {
            return Err(VaultError::UnknownKek(kek_id.to_owned()));
        }
        let answer = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .source_key_id(kek_id)
            .source_encryption_context(CONTEXT_KEY, context_value(dek_id))
            .destination_key_id(self.active_id())
            .destination_encryption_context(CONTEXT_KEY, context_value(dek_id))
            .send()
            .await
            .map_err(|error| classify("ReEncrypt", error, Some(dek_id)))?;
        wrapped_answer("ReEncrypt", answer.key_id(), answer.ciphertext_blob())
    }
}

fn wrapped_answer(operation: &str, key_id: Option<&str>, blob: Option<&Blob>) -> Result<(String, Vec<u8>), VaultError> {
    match (key_id, blob) {
        (Some(key_id), Some(blob)) => Ok((key_id.to_owned(), blob.as_ref().to_vec())),
        _ => Err(VaultError::Keyring(format!(
            "{operation} answered without a key id or ciphertext"
        ))),
    }
}
