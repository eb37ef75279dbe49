//! The state every door shares: the [`Services`] of one running Kiln behind one
//! reference count, and how they are wired from settings. A leaf of `src/`: it imports
//! no door (`http`, `web`, the CLI) and not the module that wires the routers (`app`),
//! so the doors depend on it and never on each other.

use std::sync::Arc;

use anyhow::Context;
use application::aggregate_store::AggregateStore;
use application::clock::Clock;
use application::credits::CreditsService;
use application::jobs::index::JobIndex;
use application::jobs::worker::{Worker, WorkerConfig};
use application::jobs::submit::SubmitService;
use application::jobs::steps::TrainingConfig;
use application::jobs::JobsService;
use application::operator_actions::{OperatorActions, OperatorPorts};
use application::payments::PaymentsService;
use application::provider::Provider;
use application::retention::RetentionService;
use axum_extra::extract::cookie::Key;
use infrastructure::job_index::SqlJobIndex;
use infrastructure::provider::fal::{Fal, FalProvider, FalWebhookVerifier};
use infrastructure::provider::{LocalProvider, LocalProviderConfig};
use infrastructure::config::{JobSettings, Settings};
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use projections::projector::Projector;
use application::webhooks::sender::{SenderConfig, WebhookSender};
use application::webhooks::{WebhookDeliveries, WebhookSecrets, WebhookService};
use domain::webhooks::AddressPolicy;
use infrastructure::config::WebhookSettings;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

/// What request handlers share: the [`Services`] behind one reference count, so the
/// state every middleware and extractor clones per request costs one atomic increment
/// (cloning two dozen fields showed as the API's largest item of user-space CPU).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services, stores and keys of one running Kiln.
pub struct Services {
    pub db: Database,
    /// Where reads that allow a replica go (`database.read_url`; else `db`).
    pub reads: infrastructure::replica::ReadSide,
    /// Idempotency-Key claims this process could not finish while the database was away.
    pub unfinished_claims: infrastructure::idempotency::Unfinished,
    pub store: SqlEventStore,
    pub aggregates: AggregateStore,
    pub credits: CreditsService,
    pub projector: Projector,
    /// SHA-256 of the operator key; `None` closes the admin API.
    pub operator_key_sha256: Option<[u8; 32]>,
    /// SHA-256 of `metrics.bearer_token`; `None` leaves `/metrics` open.
    pub metrics_token_sha256: Option<[u8; 32]>,
    /// Images, model artifacts and catalog previews (`storage.backend`).
    pub objects: Arc<dyn application::storage::ObjectStore>,
    /// The HMAC key of the local store's signed URLs (checked by `GET /files/…`).
    pub url_signing_key: Arc<Vec<u8>>,
    /// Lifetime of the signed URLs handed out.
    pub url_ttl_secs: u64,
    pub jobs: JobsService,
    /// The submission use cases (price, check, accept) shared by the API and the dashboard.
    pub submit: SubmitService,
    /// What an operator may do to a team (the admin API and the console).
    pub operator_actions: OperatorActions,
    pub job_index: Arc<dyn JobIndex>,
    pub provider: Arc<dyn Provider>,
    /// Stripe checkout client, webhook verifier and price catalog.
    pub stripe: Arc<infrastructure::stripe::Stripe>,
    /// What a verified Stripe event does to the ledger; checkouts.
    pub payments: PaymentsService,
    /// The image retention sweep.
    pub retention: RetentionService,
    /// Which teams hold expired credits (for `CreditsService::expire_due`).
    pub due_grants: Arc<dyn application::credits::DueGrants>,
    /// fal.ai's webhook side, when `fal.key` is set (then `provider` is fal).
    pub fal: Option<FalWebhooks>,
    /// The dashboard's cookie key and cookie policy.
    pub web: WebKeys,
    /// API keys recently found by hash (`queries::keys::KEY_CACHE_TTL`).
    pub keys: Arc<crate::queries::keys::KeyCache>,
    /// Grants of recently read balances, by the version of their balance row
    /// (`queries::credits::BalanceCache`).
    pub balances: crate::queries::credits::BalanceCache,
    /// Each plan's dispatch weight (`jobs.plan_weights`), as the job index uses them.
    pub plan_weights: domain::share::PlanWeights,
    /// Webhooks out: the endpoint use cases, and this process's sender.
    pub webhooks: WebhookService,
    pub webhook_sender: WebhookSender,
    /// A worker silent this long is gone (`jobs.worker_lost_after_secs`): the console
    /// flags it and counts its jobs as stuck.
    pub worker_lost_after: chrono::Duration,
    /// Whole-log verifications started from the console, and the last one's result.
    pub audit_runs: Arc<crate::audit_runs::AuditRuns>,
}

impl Services {
    /// A job worker over these services, named `worker_id`.
    pub fn worker(&self, settings: &JobSettings, worker_id: String) -> Worker {
        let ms = std::time::Duration::from_millis;
        let secs = std::time::Duration::from_secs;
        let mut config = WorkerConfig::new(worker_id);
        config.concurrency = settings.worker_concurrency.max(1);
        config.local_queue = settings.worker_local_queue;
        config.poll_interval = ms(settings.poll_interval_ms.max(1));
        config.heartbeat_interval = ms(settings.heartbeat_interval_ms.max(1));
        config.worker_lost_after = secs(settings.worker_lost_after_secs.max(1));
        config.stale_after = secs(settings.stale_after_secs.max(1));
        config.lease_ttl = secs(settings.lease_secs.max(1));
        config.database_wait_max = secs(settings.database_wait_max_secs);
        config.attempts_max = settings.attempts_max.max(1);
        config.retry_backoff_base = ms(settings.retry_backoff_base_ms);
        config.retry_backoff_max = ms(settings.retry_backoff_max_ms);
        Worker::new(self.jobs.clone(), self.job_index.clone(), self.provider.clone(), self.objects.clone(), config)
    }

    /// Issues a key of `team_id` (the API's `/api/keys`, the admin API, the keys page).
    pub async fn issue_key(
        &self,
        team_id: domain::TeamId,
        role: domain::keys::Role,
        name: String,
        metadata: &serde_json::Value,
    ) -> Result<application::api_keys::IssuedKey, application::api_keys::ApiKeyCommandError> {
        application::api_keys::issue(&self.aggregates, self.credits.clock().as_ref(), team_id, role, name, metadata).await
    }

    /// Revokes a key of `team_id` (another team's is "not found"). It stops working at
    /// once: this process forgets the keys it trusted from memory, and other processes
    /// within `queries::keys::KEY_CACHE_TTL`.
    pub async fn revoke_key(
        &self,
        team_id: domain::TeamId,
        key_id: domain::ApiKeyId,
        metadata: &serde_json::Value,
    ) -> Result<(), application::api_keys::ApiKeyCommandError> {
        let revoked = application::api_keys::revoke(&self.aggregates, self.credits.clock().as_ref(), team_id, key_id, metadata).await;
        self.keys.forget_all();
        revoked
    }
}

/// The read side: a replica when `database.read_url` is set, else the primary alone.
fn read_side(db: &Database, settings: &Settings) -> anyhow::Result<infrastructure::replica::ReadSide> {
    use infrastructure::replica::ReadSide;
    let Some(read_url) = &settings.database.read_url else { return Ok(ReadSide::primary_only(db.clone())) };
    let database = &settings.database;
    let ms = std::time::Duration::from_millis;
    ReadSide::with_replica(db.clone(), read_url, database.connections_max, ms(database.acquire_timeout_ms.max(1)), ms(database.read_wait_ms))
        .context("database.read_url: a PostgreSQL replica, beside a PostgreSQL database.url")
}

impl AppState {
    /// Wires the store, its inline projections and the services over `db`.
    pub fn new(db: Database, settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = SqlEventStore::with_inline_projections(db.clone(), projections::inline_projections());
        let aggregates = AggregateStore::new(Arc::new(store.clone()), settings.event_store.snapshot_every);
        let credits = CreditsService::new(aggregates.clone(), clock.clone()).with_commits_in_flight(settings.credits.commits_in_flight);
        let job_index: Arc<dyn JobIndex> = Arc::new(SqlJobIndex::with_weights(db.clone(), settings.jobs.plan_weights));
        let projector = Projector::new(store.clone(), projections::async_projections());
        let operator_key_sha256 = settings
            .auth
            .operator_key
            .as_ref()
            .map(|key| Sha256::digest(key.expose_secret().as_bytes()).into());
        let metrics_token_sha256 =
            settings.metrics.bearer_token.as_ref().map(|token| Sha256::digest(token.expose_secret().as_bytes()).into());
        let (objects, url_signing_key) = infrastructure::storage::open(settings).context("cannot open the object store")?;
        let url_ttl_secs = settings.storage.url_ttl_secs;
        let training = TrainingConfig { images: settings.jobs.training_images, images_per_request: settings.jobs.training_images_per_request };
        let jobs = JobsService::new(aggregates.clone(), credits.clone(), clock.clone()).with_training(objects.clone(), training);
        let fal = fal_provider(settings, objects.clone(), clock.clone())?;
        let provider: Arc<dyn Provider> = match &fal {
            Some(fal) => fal.provider.clone(),
            None => Arc::new(LocalProvider::new(LocalProviderConfig::from(&settings.provider)).with_artifacts(objects.clone())),
        };
        let provider: Arc<dyn Provider> = Arc::new(application::observe::MeteredProvider(provider));
        let prices = Arc::new(infrastructure::pricing::SqlPriceList::new(db.clone()));
        let submit = SubmitService::new(jobs.clone(), job_index.clone(), prices.clone(), provider.clone(), settings.jobs.queue_depth_max);
        let ports = OperatorPorts {
            objects: objects.clone(),
            catalog: Arc::new(infrastructure::catalog::SqlCatalogListing::new(db.clone())),
            index: job_index.clone(),
        };
        let operator_actions = OperatorActions::new(credits.clone(), aggregates.clone(), jobs.clone(), provider.clone(), prices, submit.clone(), ports);
        let records = Arc::new(infrastructure::stripe::store::SqlPaymentRecords(db.clone()));
        let stripe = Arc::new(infrastructure::stripe::Stripe::new(&settings.stripe));
        let payments = PaymentsService::new(records, stripe.clone(), credits.clone(), jobs.clone(), job_index.clone());
        let expired = Arc::new(infrastructure::image_index::SqlExpiredImages(db.clone()));
        let retention = RetentionService::new(expired, objects.clone(), aggregates.clone(), clock.clone());
        let due_grants = Arc::new(infrastructure::due_grants::SqlDueGrants(db.clone()));
        let web = WebKeys::load(settings).context("cannot load the dashboard's cookie key")?;
        let reads = read_side(&db, settings)?;
        let (webhooks, webhook_sender) = webhooks(&db, aggregates.clone(), clock.clone(), settings)?;
        let mut state = Services {
            db,
            reads,
            unfinished_claims: Default::default(),
            store,
            aggregates,
            credits,
            projector,
            operator_key_sha256,
            metrics_token_sha256,
            objects,
            url_signing_key,
            url_ttl_secs,
            jobs,
            submit,
            operator_actions,
            job_index,
            provider,
            stripe,
            payments,
            retention,
            due_grants,
            fal: None,
            web,
            keys: Arc::default(),
            balances: Default::default(),
            plan_weights: settings.jobs.plan_weights,
            webhooks,
            webhook_sender,
            worker_lost_after: chrono::Duration::seconds(i64::try_from(settings.jobs.worker_lost_after_secs.max(1)).unwrap_or(i64::MAX / 1000)),
            audit_runs: Arc::default(),
        };
        // Webhook results end jobs through a worker, exactly as polled results do.
        state.fal = fal.map(|fal| FalWebhooks::new(fal, state.worker(&settings.jobs, worker_id("fal-webhook"))));
        Ok(Self(Arc::new(state)))
    }
}

/// The webhook use cases and this process's sender, from `webhooks.*`.
fn webhooks(
    db: &Database,
    aggregates: AggregateStore,
    clock: Arc<dyn Clock>,
    settings: &Settings,
) -> anyhow::Result<(WebhookService, WebhookSender)> {
    let w: &WebhookSettings = &settings.webhooks;
    let key = infrastructure::webhooks::signing_key(settings).context("cannot load the webhook signing key")?;
    let policy = AddressPolicy { allow_http: w.allow_http, allow_private: w.allow_private_addresses };
    let deliveries: Arc<dyn WebhookDeliveries> = Arc::new(infrastructure::webhooks::SqlWebhookDeliveries(db.clone()));
    let overlap = chrono::Duration::hours(i64::from(w.rotation_overlap_hours));
    let service = WebhookService::new(aggregates, clock.clone(), WebhookSecrets::new(key), policy, overlap, deliveries.clone());
    let transport = Arc::new(infrastructure::webhooks::HttpTransport {
        timeout: std::time::Duration::from_millis(w.request_timeout_ms.max(1)),
        answer_bytes_max: w.answer_bytes_max,
    });
    let mut config = SenderConfig::new(worker_id("webhooks"), policy);
    // A claim outlives any attempt of its holder, so no second sender takes a delivery
    // that is still being sent; a killed holder's claims come back after this.
    let timeout_ms = i64::try_from(w.request_timeout_ms.max(1)).unwrap_or(i64::MAX / 4);
    config.lease = chrono::Duration::milliseconds(timeout_ms.saturating_mul(2)).max(chrono::Duration::seconds(1));
    config.batch = i64::from(w.batch.max(1));
    config.poll_interval = std::time::Duration::from_millis(w.poll_interval_ms.max(1));
    config.backoff_min = std::time::Duration::from_millis(w.backoff_min_ms.max(1));
    config.retry_window = chrono::Duration::hours(i64::from(w.retry_window_hours));
    config.disable_after = chrono::Duration::hours(i64::from(w.disable_after_hours));
    let sender = WebhookSender::new(deliveries, transport, service.clone(), clock, config);
    Ok((service, sender))
}

/// fal.ai when `fal.key` is configured. Its webhooks come to Kiln's public URL.
fn fal_provider(
    settings: &Settings,
    objects: Arc<dyn application::storage::ObjectStore>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<infrastructure::provider::fal::Fal>> {
    // `fal.webhook_base_url` wins (inside `from_settings`); this is the fallback.
    if settings.storage.public_base_url.is_none() && settings.fal.key.is_some() && settings.fal.webhook_base_url.is_none() {
        tracing::warn!("fal.webhook_base_url is unset: fal's webhooks go to the listen address; set it to Kiln's public URL");
    }
    let public_base = settings.public_base_url();
    let ttl = std::time::Duration::from_secs(settings.storage.url_ttl_secs);
    let fal = infrastructure::provider::fal::Fal::from_settings(&settings.fal, &public_base, objects, clock, ttl)
        .context("cannot build the fal.ai client")?;
    if fal.is_some() {
        tracing::info!(queue = %settings.fal.queue_base_url, "jobs run on fal.ai");
    }
    Ok(fal)
}

/// A worker id unique across processes and restarts: `{role}-{pid}-{random}`.
pub fn worker_id(role: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{role}-{}-{}", std::process::id(), &random[..8])
}


/// What fal's webhook needs: the verifier, the provider (to download results) and a
/// worker (to end jobs).
#[derive(Clone)]
pub struct FalWebhooks {
    pub verifier: Arc<FalWebhookVerifier>,
    pub provider: Arc<FalProvider>,
    pub worker: Worker,
}

impl FalWebhooks {
    pub fn new(fal: Fal, worker: Worker) -> Self {
        Self { verifier: Arc::new(fal.webhooks), provider: fal.provider, worker }
    }
}

/// The dashboard's secrets and cookie policy.
#[derive(Clone)]
pub struct WebKeys {
    pub cookie_key: Key,
    /// Cookies get `Secure` when Kiln's public URL is HTTPS (or a proxy says so per request).
    pub https: bool,
}

/// File in the data directory (`storage.local_root`) holding the cookie-signing key.
pub const COOKIE_KEY_FILE: &str = ".cookie-signing-key";
/// `Key::from` needs 64 bytes (32 to sign, 32 to encrypt).
const COOKIE_KEY_BYTES: usize = 64;

impl WebKeys {
    /// The cookie key is generated on first run into the data directory (mode 0600), so
    /// it is never in git and every process on that directory shares it.
    pub fn load(settings: &Settings) -> std::io::Result<Self> {
        let root = std::path::Path::new(&settings.storage.local_root);
        let file = infrastructure::secrets::load_or_create(&root.join(COOKIE_KEY_FILE), COOKIE_KEY_BYTES, "cookie-signing key")?;
        let bytes = file.key;
        let https = settings.storage.public_base_url.as_deref().is_some_and(|url| url.starts_with("https://"));
        Ok(Self { cookie_key: Key::from(&bytes), https })
    }
}
