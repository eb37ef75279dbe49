//! Configuration: built-in defaults, then an optional TOML file, then `KILN_*`
//! environment variables (nested keys joined by `__`, e.g. `KILN_DATABASE__URL`,
//! `KILN_HTTP__PORT`), into typed structs.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The file read when no other is named; missing is fine.
pub const DEFAULT_CONFIG_FILE: &str = "kiln.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub event_store: EventStoreSettings,
    pub auth: AuthSettings,
    pub credits: CreditSettings,
    pub stripe: crate::stripe::StripeSettings,
    pub jobs: JobSettings,
    pub storage: StorageSettings,
    pub provider: ProviderSettings,
    pub fal: crate::provider::fal::FalSettings,
    pub metrics: MetricsSettings,
    pub webhooks: WebhookSettings,
}

/// Webhooks out (`application::webhooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Key the endpoints' signing secrets are derived from (≥ 32 bytes). Unset: generated
    /// on first run into `{storage.local_root}/.webhook-signing-key` (mode 0600).
    /// Several hosts sending webhooks must share it.
    #[serde(skip_serializing)]
    pub signing_key: Option<SecretString>,
    /// Accept `http://` endpoint URLs (otherwise https only).
    pub allow_http: bool,
    /// Accept endpoints on loopback, private, link-local and metadata addresses.
    pub allow_private_addresses: bool,
    /// Whole-request time of one attempt (connect, send, answer).
    pub request_timeout_ms: u64,
    /// Bytes of an endpoint's answer read (the rest is dropped).
    pub answer_bytes_max: usize,
    /// How long the previous secret is still sent after a rotation.
    pub rotation_overlap_hours: u32,
    /// A delivery is retried while its next attempt falls within this of the event.
    pub retry_window_hours: u32,
    /// First retry delay (then ×3 each time, up to 8 h, plus jitter).
    pub backoff_min_ms: u64,
    /// An endpoint whose attempts all failed this long is disabled.
    pub disable_after_hours: u32,
    /// How often a sender looks for due deliveries.
    pub poll_interval_ms: u64,
    /// Deliveries a sender claims and sends at once.
    pub batch: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            signing_key: None,
            allow_http: false,
            allow_private_addresses: false,
            request_timeout_ms: 10_000,
            answer_bytes_max: 4096,
            rotation_overlap_hours: 24,
            retry_window_hours: 72,
            backoff_min_ms: 5_000,
            disable_after_hours: 120,
            poll_interval_ms: 500,
            batch: 32,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Bearer token a `/metrics` scrape must present. Unset: `/metrics` is open to
    /// anyone who can reach the port.
    #[serde(skip_serializing)]
    pub bearer_token: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Queued jobs a team may have waiting; beyond it submissions answer 429.
    pub queue_depth_max: i64,
    /// Whether `kiln serve` also runs a worker (so one process is a complete system).
    pub worker_in_serve: bool,
    /// Provider requests one worker process has in flight at once.
    pub worker_concurrency: usize,
    /// Jobs a worker claims ahead of a free slot (they wait in it, claimed).
    pub worker_local_queue: usize,
    pub poll_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// A worker silent this long is presumed dead; its jobs are checked and retried.
    pub worker_lost_after_secs: u64,
    /// An active job with no news this long is checked with the provider (no timeout).
    pub stale_after_secs: u64,
    /// A job a worker holds has a lease it renews with each heartbeat; a job with no
    /// provider request outstanding whose lease lapsed this long ago is taken back, even
    /// from a live worker.
    pub lease_secs: u64,
    /// How long a job's run waits, in all, for an unavailable database before its worker
    /// lets the job go (it is then taken back once its lease lapses).
    pub database_wait_max_secs: u64,
    pub attempts_max: u32,
    pub retry_backoff_base_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Seed the reference catalog at start-up when it is empty.
    pub seed_catalog_on_start: bool,
    /// Training images a model creation or refinement generates before it trains (1–64).
    pub training_images: u32,
    /// Training images asked of the provider per request (1–4).
    pub training_images_per_request: u32,
    /// Plan priority when the workers are saturated: each ready team gets a share of the
    /// free slots proportional to its plan's weight (`domain::share`).
    pub plan_weights: domain::share::PlanWeights,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            queue_depth_max: 100,
            worker_in_serve: true,
            worker_concurrency: 16,
            worker_local_queue: 16,
            poll_interval_ms: 100,
            heartbeat_interval_ms: 2_000,
            worker_lost_after_secs: 10,
            stale_after_secs: 300,
            lease_secs: 10,
            database_wait_max_secs: 600,
            attempts_max: 5,
            retry_backoff_base_ms: 2_000,
            retry_backoff_max_ms: 300_000,
            seed_catalog_on_start: true,
            training_images: 12,
            training_images_per_request: 4,
            plan_weights: domain::share::PlanWeights::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CreditSettings {
    /// How often `kiln serve` expires credits of grants past their `expires_at`.
    pub expiry_sweep_interval_secs: u64,
    /// Joint credit transactions one process keeps open at once (group commit across
    /// teams): fewer means larger groups and fewer transactions under load, more means
    /// shorter waits at low load; 0 turns joining off.
    pub commits_in_flight: usize,
}

impl Default for CreditSettings {
    fn default() -> Self {
        Self { expiry_sweep_interval_secs: 60, commits_in_flight: application::credits::COMMITS_IN_FLIGHT }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The operator's bearer key for `/api/admin/*`. Unset: the admin API is closed.
    #[serde(skip_serializing)]
    pub operator_key: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite:…` (embedded default) or `postgres://…`. May hold a password: never logged.
    pub url: String,
    pub connections_max: u32,
    /// How long a request waits for a connection (and, while the server is away, for
    /// it to come back; on SQLite also for another process's write lock) before it is
    /// answered 503.
    pub acquire_timeout_ms: u64,
    /// A PostgreSQL replica for reads that allow it (history, job lists, the catalog,
    /// the dashboard's lists): HAProxy's read port in front of Patroni's replicas.
    /// Unset: every read goes to `url`.
    pub read_url: Option<String>,
    /// How long a read presenting a consistency token (a write's `Kiln-Consistency-Token`)
    /// waits for the replica to have replayed it before it reads the primary instead.
    pub read_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info,sqlx=warn`.
    pub filter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventStoreSettings {
    /// Snapshot a stream each time it crosses a multiple of this many events.
    pub snapshot_every: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: DatabaseSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            event_store: EventStoreSettings::default(),
            auth: AuthSettings::default(),
            credits: CreditSettings::default(),
            stripe: crate::stripe::StripeSettings::default(),
            jobs: JobSettings::default(),
            storage: StorageSettings::default(),
            provider: ProviderSettings::default(),
            fal: crate::provider::fal::FalSettings::default(),
            metrics: MetricsSettings::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: "sqlite:kiln.db".into(), connections_max: 16, acquire_timeout_ms: 10_000, read_url: None, read_wait_ms: 200 }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 8080 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info,sqlx=warn".into() }
    }
}

impl Default for EventStoreSettings {
    fn default() -> Self {
        Self { snapshot_every: 100 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `local` (files under `local_root`, served by Kiln through signed URLs) or `s3`
    /// (`storage.s3`, presigned GET URLs).
    pub backend: String,
    /// Root directory of the local store.
    pub local_root: String,
    /// Base of signed URLs, e.g. `https://kiln.example.com`. Unset: `http://{http.host}:{http.port}`.
    pub public_base_url: Option<String>,
    /// How long a signed URL stays valid.
    pub url_ttl_secs: u64,
    /// HMAC key of signed URLs (at least 32 bytes). Unset: a random key generated once and
    /// kept in `{local_root}/.url-signing-key`, shared by every process using that root.
    #[serde(skip_serializing)]
    pub url_signing_key: Option<SecretString>,
    /// The S3 (or S3-compatible) bucket, when `backend = "s3"`.
    pub s3: S3Settings,
    /// Generated images are deleted this many days after they were made (by the
    /// retention sweeper, and by the bucket lifecycle rule `kiln storage init` writes).
    pub retention_days: u32,
    /// How often `kiln serve` runs the retention sweeper.
    pub sweep_interval_secs: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            local_root: "data".into(),
            public_base_url: None,
            url_ttl_secs: 3600,
            url_signing_key: None,
            s3: S3Settings::default(),
            retention_days: 90,
            sweep_interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// An S3-compatible endpoint (MinIO, R2, a local test server). Unset: AWS's.
    pub endpoint_url: Option<String>,
    /// `{endpoint}/{bucket}/{key}` instead of `{bucket}.{endpoint}/{key}`; most
    /// S3-compatible servers need it.
    pub force_path_style: bool,
    /// Static credentials. Unset: the usual AWS sources (environment, profile, web
    /// identity, ECS/EC2 metadata). The key id is not secret: every presigned URL shows it.
    pub access_key_id: Option<String>,
    /// A request whose answer has not begun this long after it was sent (a stalled
    /// server) fails, and is tried again like any failed request; connecting is given
    /// 3 s. Unbounded, a stalled store would hold a worker's job forever.
    pub request_timeout_secs: u64,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<SecretString>,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: "kiln".into(),
            region: "us-east-1".into(),
            endpoint_url: None,
            force_path_style: false,
            access_key_id: None,
            request_timeout_secs: 30,
            secret_access_key: None,
        }
    }
}

/// The offline local provider's knobs (for tests and benchmarks).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// Sleep before each answer; 0 = none.
    pub local_latency_ms: u64,
    /// Share of attempts that fail (0.0–1.0), decided from job id and attempt.
    pub local_failure_rate: f64,
    /// Jobs whose prompt or description contains this text fail for good (for tests and
    /// demos of the refund path).
    pub local_fail_prompts_containing: Option<String>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self { local_latency_ms: 0, local_failure_rate: 0.0, local_fail_prompts_containing: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
    /// A file named by `--config` or `KILN_CONFIG` must exist: a typo would otherwise
    /// run Kiln on its defaults (another database) without a word.
    #[error("configuration file {} does not exist", .0.display())]
    FileMissing(PathBuf),
    /// A value of the right type outside what its consumer takes (e.g. `fal.trainer_steps`
    /// beyond fal's 1–10000): refused at start rather than by the first request using it.
    #[error("invalid configuration: {key} = {value} is out of range ({expected})")]
    OutOfRange { key: &'static str, value: String, expected: String },
}

/// Environment variables that start with `KILN_` but are not settings: `KILN_CONFIG`
/// names the file (read by the CLI), `KILN_TEST_*` configure the test suite.
const NOT_SETTINGS: [&str; 1] = ["config"];

impl Settings {
    /// Where people and callbacks reach this Kiln: `storage.public_base_url`, else the
    /// listen address (`http.host`, `http.port`) — a wildcard host (`0.0.0.0`, `::`)
    /// named as loopback, since no browser can open it.
    pub fn public_base_url(&self) -> String {
        if let Some(base) = &self.storage.public_base_url {
            return base.trim_end_matches('/').to_string();
        }
        let host = match self.http.host.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" | "[::]" => "[::1]".to_string(),
            host if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
            host => host.to_string(),
        };
        format!("http://{host}:{}", self.http.port)
    }

    /// Defaults < the TOML file < `KILN_*` environment variables. `file` is a file the
    /// operator named (it must exist); `None` reads `./kiln.toml` when present.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::FileMissing(file.to_path_buf()));
            }
        }
        let settings: Self = Self::figment(file).extract().map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        settings.fal.check()?;
        Ok(settings)
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        let file = file.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("KILN_").split("__").filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                !NOT_SETTINGS.contains(&key.as_str()) && !key.starts_with("test_")
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[http]\nport = 9000\n[database]\nurl = \"sqlite:x.db\"\n")?;
            jail.set_env("KILN_HTTP__PORT", "9100");
            jail.set_env("KILN_LOG__FORMAT", "json");
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            assert_eq!(settings.http.port, 9100);
            assert_eq!(settings.database.url, "sqlite:x.db");
            assert_eq!(settings.log.format, LogFormat::Json);
            assert_eq!(settings.event_store, EventStoreSettings::default());
            assert!(settings.auth.operator_key.is_none());
            jail.set_env("KILN_AUTH__OPERATOR_KEY", "op-secret");
            let settings = Settings::load(Some(Path::new("k.toml"))).expect("valid settings");
            let key = settings.auth.operator_key.expect("set from the environment");
            assert_eq!(secrecy::ExposeSecret::expose_secret(&key), "op-secret");
            assert!(!format!("{:?}", Settings::load(Some(Path::new("k.toml")))).contains("op-secret"), "never printed");
            Ok(())
        });
    }

    #[test]
    fn a_named_file_must_exist_and_kiln_config_is_not_a_setting() {
        figment::Jail::expect_with(|jail| {
            let error = Settings::load(Some(Path::new("missing.toml"))).expect_err("a named file must exist");
            assert!(error.to_string().contains("missing.toml"), "{error}");
            jail.set_env("KILN_CONFIG", "k.toml");
            jail.set_env("KILN_TEST_POSTGRES_URL", "postgres://elsewhere");
            assert!(Settings::load(None).is_ok(), "KILN_CONFIG names the file, it is not an unknown key");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("k.toml", "[http]\nprot = 9000\n")?;
            assert!(Settings::load(Some(Path::new("k.toml"))).is_err());
            jail.create_file("k.toml", "")?;
            jail.set_env("KILN_HTTP__PORT", "eighty");
            assert!(Settings::load(Some(Path::new("k.toml"))).is_err());
            Ok(())
        });
    }
}
