//! The S3 object store (aws-sdk-s3): AWS S3 or any S3-compatible server (custom
//! endpoint, path-style addressing). Signed URLs are SigV4-presigned GETs served by the
//! bucket itself, so image bytes never pass through Kiln.
//!
//! Credentials come from `storage.s3.access_key_id` / `secret_access_key` when both are
//! set, else from the usual AWS sources (environment, profile, web identity, ECS/EC2
//! metadata), resolved on first use.
//!
//! [`S3ObjectStore::init_bucket`] (behind `kiln storage init`) creates the bucket if
//! missing and writes the lifecycle rule that expires `generated-images/` after the
//! retention period — a backstop for the retention sweeper, which is what records
//! `ImagesExpired` and makes the API answer 410.

use std::time::{Duration, SystemTime};

use application::storage::{validate_key, ObjectStore, StorageError};
use async_trait::async_trait;
use aws_credential_types::provider::future::ProvideCredentials as ProvideCredentialsFuture;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, Delete, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use secrecy::ExposeSecret;

use crate::config::S3Settings;

/// How long connecting to the S3 endpoint may take (a refused or unreachable endpoint).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per `DeleteObjects` request: S3's own limit.
pub const DELETE_BATCH_KEYS_MAX: usize = 1_000;
/// `DeleteObjects` requests in flight at once for one `delete_many`: a server deletes the
/// keys of one request one after another, so a few requests at once keep it busy.
pub const DELETE_REQUESTS_IN_FLIGHT_MAX: usize = 4;
/// The key prefix the lifecycle rule expires: generated images only, never model assets
/// or the reference catalog.
pub const EXPIRING_PREFIX: &str = "generated-images/";
/// The id of the lifecycle rule `init_bucket` writes (replacing any rule set on the bucket).
pub const LIFECYCLE_RULE_ID: &str = "kiln-generated-images-retention";

#[derive(Clone, Debug)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

/// What `init_bucket` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInit {
    pub bucket_created: bool,
    /// `false` when the server does not implement lifecycle configuration
    /// (`NotImplemented`): then the retention sweeper alone deletes expired images.
    pub lifecycle_applied: bool,
}

impl S3ObjectStore {
    /// A store over `settings.bucket`. Builds no connection: the first request does.
    pub fn new(settings: &S3Settings) -> Self {
        let region = Region::new(settings.region.clone());
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .force_path_style(settings.force_path_style)
            // Checksums only where S3 requires them (DeleteObjects): several
            // S3-compatible servers reject the SDK's default aws-chunked trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(Duration::from_secs(settings.request_timeout_secs.max(1)))
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        config = match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                config.credentials_provider(Credentials::new(id, secret.expose_secret(), None, None, "kiln-config"))
            }
            _ => config.credentials_provider(LazyDefaultChain { region, chain: tokio::sync::OnceCell::new() }),
        };
        Self { client: Client::from_conf(config.build()), bucket: settings.bucket.clone() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket if missing, then applies the lifecycle rule expiring
    /// `generated-images/` after `retention_days`. Idempotent.
    pub async fn init_bucket(&self, retention_days: u32) -> Result<BucketInit, StorageError> {
        let bucket_created = match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => false,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                match self.client.create_bucket().bucket(&self.bucket).send().await {
                    Ok(_) => true,
                    // Another process created it in between.
                    Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => false,
                    Err(e) => return Err(failed("create bucket", e)),
                }
            }
            Err(error) => return Err(failed("head bucket", error)),
        };
        let rule = LifecycleRule::builder()
            .id(LIFECYCLE_RULE_ID)
            .filter(LifecycleRuleFilter::builder().prefix(EXPIRING_PREFIX).build())
            .expiration(LifecycleExpiration::builder().days(i32::try_from(retention_days.max(1)).unwrap_or(i32::MAX)).build())
            .status(ExpirationStatus::Enabled)
            .build()
            .map_err(|e| StorageError::Unavailable(format!("lifecycle rule: {e}")))?;
        let lifecycle = BucketLifecycleConfiguration::builder()
            .rules(rule)
            .build()
            .map_err(|e| StorageError::Unavailable(format!("lifecycle configuration: {e}")))?;
        let applied =
            self.client.put_bucket_lifecycle_configuration().bucket(&self.bucket).lifecycle_configuration(lifecycle).send().await;
        let lifecycle_applied = match applied {
            Ok(_) => true,
            Err(e) if matches!(e.code(), Some("NotImplemented")) => {
                tracing::warn!(bucket = %self.bucket, "the storage server does not implement lifecycle rules; only the retention sweeper deletes expired images");
                false
            }
            Err(e) => return Err(failed("put bucket lifecycle configuration", e)),
        };
        Ok(BucketInit { bucket_created, lifecycle_applied })
    }

    /// The lifecycle rules set on the bucket (empty if none).
    pub async fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
        match self.client.get_bucket_lifecycle_configuration().bucket(&self.bucket).send().await {
            Ok(output) => Ok(output.rules.unwrap_or_default()),
            Err(e) if matches!(e.code(), Some("NoSuchLifecycleConfiguration")) => Ok(Vec::new()),
            Err(e) => Err(failed("get bucket lifecycle configuration", e)),
        }
    }

    async fn delete_chunk(&self, keys: &[String]) -> Result<(), StorageError> {
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageError::Unavailable(format!("delete request: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StorageError::Unavailable(format!("delete request: {e}")))?;
        let output = self.client.delete_objects().bucket(&self.bucket).delete(delete).send().await.map_err(|e| failed("delete objects", e))?;
        // A missing key is not an error in S3 (it answers Deleted); any error listed is
        // a real failure, and the caller retries the whole batch (deletes are idempotent).
        if let Some(error) = output.errors().first() {
            return Err(StorageError::Unavailable(format!(
                "delete objects: {} of {} keys failed, first {:?}: {} {}",
                output.errors().len(),
                keys.len(),
                error.key().unwrap_or_default(),
                error.code().unwrap_or_default(),
                error.message().unwrap_or_default()
            )));
        }
        Ok(())
    }
}

fn failed<E: std::error::Error + Send + Sync + 'static>(what: &str, error: E) -> StorageError {
    StorageError::Unavailable(format!("{what}: {}", DisplayErrorContext(error)))
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| failed("put object", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        validate_key(key)?;
        let output = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(error) => return Err(failed("get object", error)),
        };
        let body = output.body.collect().await.map_err(|e| failed("read object body", e))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            validate_key(key)?;
        }
        // Unordered is fine: deletes are idempotent, and on any error the caller retries
        // the whole batch.
        // (The requests are made up front: a closure inside the stream's type would make
        // the future not `Send` for every lifetime, which `async_trait` needs.)
        let requests: Vec<_> = keys.chunks(DELETE_BATCH_KEYS_MAX).map(|chunk| self.delete_chunk(chunk)).collect();
        futures::stream::iter(requests)
            .buffer_unordered(DELETE_REQUESTS_IN_FLIGHT_MAX)
            .try_collect::<()>()
            .await
    }

    fn signed_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<String, StorageError> {
        validate_key(key)?;
        // Signed as of `now` (the application clock), not the wall clock, so the URL's
        // lifetime follows the same time as everything else Kiln decides.
        let config = PresigningConfig::builder()
            .start_time(SystemTime::from(now))
            .expires_in(ttl)
            .build()
            .map_err(|e| StorageError::Unavailable(format!("presigning: {e}")))?;
        let request = self.client.get_object().bucket(&self.bucket).key(key).presigned(config);
        let presigned = block_on(request)?.map_err(|e| failed("presign get object", e))?;
        Ok(presigned.uri().to_string())
    }
}

/// Runs the SDK's presigning future from the synchronous `signed_url` port. Presigning
/// does no network I/O with static credentials; with the default chain the first call may
/// fetch credentials, which needs the multi-threaded runtime `kiln` always runs on.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, StorageError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(future)))
        }
        Ok(_) => Err(StorageError::Unavailable("S3 presigning needs tokio's multi-threaded runtime".into())),
        // Outside any runtime (a plain thread): the SDK's timers need one.
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
            .map_err(|e| StorageError::Unavailable(format!("presigning runtime: {e}"))),
    }
}

/// The AWS default credential chain, built on first use (building it is async, and
/// [`S3ObjectStore::new`] is not).
#[derive(Debug)]
struct LazyDefaultChain {
    region: Region,
    chain: tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> ProvideCredentialsFuture<'a>
    where
        Self: 'a,
    {
        ProvideCredentialsFuture::new(async move {
            let chain = self
                .chain
                .get_or_init(|| aws_config::default_provider::credentials::DefaultCredentialsChain::builder().region(self.region.clone()).build())
                .await;
            chain.provide_credentials().await
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    // figment's `Jail` closure returns its own (large) error type; not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn s3_settings_come_from_the_environment_and_the_secret_is_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KILN_STORAGE__BACKEND", "s3");
            jail.set_env("KILN_STORAGE__RETENTION_DAYS", "30");
            jail.set_env("KILN_STORAGE__S3__BUCKET", "images");
            jail.set_env("KILN_STORAGE__S3__ENDPOINT_URL", "http://127.0.0.1:9000");
            jail.set_env("KILN_STORAGE__S3__FORCE_PATH_STYLE", "true");
            jail.set_env("KILN_STORAGE__S3__ACCESS_KEY_ID", "AKIDEXAMPLE");
            jail.set_env("KILN_STORAGE__S3__SECRET_ACCESS_KEY", "s3-secret-value");
            let settings = Settings::load(None).expect("valid settings");
            let storage = &settings.storage;
            assert_eq!((storage.backend.as_str(), storage.retention_days, storage.sweep_interval_secs), ("s3", 30, 3600));
            assert_eq!((storage.s3.bucket.as_str(), storage.s3.region.as_str()), ("images", "us-east-1"));
            assert_eq!(storage.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
            assert!(storage.s3.force_path_style);
            assert!(storage.s3.secret_access_key.is_some());
            assert!(!format!("{settings:?}").contains("s3-secret-value"), "never printed");
            let (store, _) = crate::storage::open(&settings).expect("opens without a connection");
            let url = store
                .signed_url("generated-images/t/j/0.png", std::time::Duration::from_secs(60), chrono::Utc::now())
                .expect("presigned offline");
            assert!(url.starts_with("http://127.0.0.1:9000/images/generated-images/t/j/0.png?"), "{url}");
            assert!(url.contains("X-Amz-Expires=60") && url.contains("AKIDEXAMPLE"), "{url}");
            assert!(!url.contains("s3-secret-value"));
            Ok(())
        });
    }
}
