//! Kiln's adapters: the sqlx event store on PostgreSQL and SQLite, configuration and
//! telemetry. Everything that touches a database, a file or the network lives here.

pub mod catalog;
pub mod config;
pub mod config_reference;
pub mod db;
pub mod db_health;
pub mod due_grants;
pub mod event_store;
pub mod idempotency;
pub mod image_index;
pub mod job_index;
pub mod pricing;
pub mod replica;
pub mod provider;
pub mod secrets;
pub mod storage;
pub mod stripe;
pub mod telemetry;
pub mod webhooks;
