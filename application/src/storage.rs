//! The object-store port: where images and model artifacts live. Implementations:
//! `infrastructure::storage::local` (filesystem + HMAC-signed URLs served by Kiln) and,
//! later, S3.
//!
//! Key layout: `generated-images/{team}/{job}/{n}.png`, `model-assets/{team}/{model}/v{n}/…`,
//! `reference-models/{id}/…`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, replacing what was there. Returns only once the object
    /// is durably written.
    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), StorageError>;

    /// The object's bytes, or `None` if there is no such object.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Deletes these objects; missing ones are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError>;

    /// A URL that serves `key` to anyone holding it until `now + ttl`.
    fn signed_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<String, StorageError>;
}

/// Keys are relative paths of safe characters: no `..`, no leading `/`, no backslashes.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let safe = !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if safe {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

/// A job's record of an object it stored: key, type, size and SHA-256 of `bytes`.
pub fn stored_output(key: &str, content_type: &str, bytes: &[u8]) -> domain::jobs::JobOutput {
    use sha2::{Digest, Sha256};
    domain::jobs::JobOutput {
        key: key.to_string(),
        content_type: content_type.to_string(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

pub fn image_key(team: &str, job: &str, index: u32) -> String {
    format!("generated-images/{team}/{job}/{index}.png")
}

pub fn model_asset_key(team: &str, model: &str, version: u32, name: &str) -> String {
    format!("model-assets/{team}/{model}/v{version}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for good in ["generated-images/t/j/0.png", "model-assets/t/m/v1/model.json", "reference-models/r1/preview.png"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "a/./b", "a\\b", "a b", "é"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
