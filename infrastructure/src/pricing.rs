//! The versioned pricing configuration (`credit_pricing_config`). Version 1 is seeded
//! from `PricingConfig::default_v1()` the first time Kiln starts on a database; later
//! versions are appended, never edited, because reservations name the version they used.

use domain::PricingConfig;

use crate::db::Database;
use crate::{db_execute, db_fetch_optional};

#[derive(Debug, thiserror::Error)]
pub enum PricingStoreError {
    #[error("pricing configuration unavailable")]
    Database(#[from] sqlx::Error),
    #[error("stored pricing configuration version {version} is invalid: {reason}")]
    Invalid { version: i64, reason: String },
    #[error("no pricing configuration stored")]
    Missing,
}

/// Stores `default_v1` as version 1 unless a configuration exists.
pub async fn seed_default(db: &Database) -> Result<(), PricingStoreError> {
    let config = PricingConfig::default_v1();
    let text = serde_json::to_string(&config).map_err(|e| PricingStoreError::Invalid { version: config.version, reason: e.to_string() })?;
    db_execute!(
        db,
        "INSERT INTO credit_pricing_config (version, config) SELECT $1, $2 \
         WHERE NOT EXISTS (SELECT 1 FROM credit_pricing_config)",
        config.version,
        text
    )?;
    Ok(())
}

/// The newest configuration in effect at `now` (a version whose `effective_at` is still
/// ahead applies to jobs submitted from then on).
pub async fn current(db: &Database, now: chrono::DateTime<chrono::Utc>) -> Result<PricingConfig, PricingStoreError> {
    let row = db_fetch_optional!(
        db,
        (i64, String),
        "SELECT version, config FROM credit_pricing_config WHERE effective_at IS NULL OR effective_at <= $1 \
         ORDER BY version DESC LIMIT 1",
        now
    )?;
    let (version, text) = row.ok_or(PricingStoreError::Missing)?;
    let config: PricingConfig =
        serde_json::from_str(&text).map_err(|e| PricingStoreError::Invalid { version, reason: e.to_string() })?;
    config.validate().map_err(|e| PricingStoreError::Invalid { version, reason: e.to_string() })?;
    Ok(config)
}

/// One stored version, as the console lists them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PriceVersionRow {
    pub version: i64,
    pub config: String,
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
    pub added_by: Option<String>,
    pub reason: Option<String>,
}

/// Every version, newest first (versions are few: an operator adds them by hand).
pub async fn versions(db: &Database) -> Result<Vec<PriceVersionRow>, PricingStoreError> {
    Ok(crate::db_fetch_all!(
        db,
        PriceVersionRow,
        "SELECT version, config, effective_at, added_by, reason FROM credit_pricing_config ORDER BY version DESC LIMIT 1000"
    )?)
}

/// The newest version stored, whether in effect yet or not (0: none).
pub async fn latest_version(db: &Database) -> Result<i64, PricingStoreError> {
    let row = db_fetch_optional!(db, (i64,), "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM credit_pricing_config")?;
    Ok(row.map_or(0, |(v,)| v))
}

/// The `PriceList` port over the stored configuration.
#[derive(Clone)]
pub struct SqlPriceList {
    db: Database,
}

impl SqlPriceList {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl application::jobs::submit::PriceList for SqlPriceList {
    async fn current(&self, now: chrono::DateTime<chrono::Utc>) -> Result<PricingConfig, application::event_store::EventStoreError> {
        use application::event_store::EventStoreError;
        current(&self.db, now).await.map_err(|error| match error {
            PricingStoreError::Invalid { version, reason } => EventStoreError::Corrupt {
                aggregate_type: "credit_pricing_config".into(),
                aggregate_id: version.to_string(),
                sequence: version,
                reason,
            },
            other => EventStoreError::Unavailable(other.to_string()),
        })
    }

    async fn latest_version(&self) -> Result<i64, application::event_store::EventStoreError> {
        latest_version(&self.db).await.map_err(|error| application::event_store::EventStoreError::Unavailable(error.to_string()))
    }
}
