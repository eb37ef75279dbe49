//! Object-store adapters for `application::storage::ObjectStore`.
//!
//! - [`local`]: files under a root directory, served by Kiln itself through expiring
//!   HMAC-signed URLs (`GET /files/{key}?expires=…&signature=…`). The default.
//! - [`s3`]: AWS S3 or an S3-compatible server (`storage.s3`), presigned GET URLs.
//!
//! [`open`] picks the adapter named by `storage.backend`.

pub mod local;
pub mod s3;

use std::sync::Arc;

use secrecy::ExposeSecret;

use application::storage::ObjectStore;
pub use local::{load_or_create_signing_key, verify_signature, LocalObjectStore, SignatureError};
pub use s3::S3ObjectStore;

use crate::config::Settings;

/// Shortest accepted URL-signing key: HMAC-SHA256 gains nothing from longer, and a
/// shorter one is guessable.
pub const SIGNING_KEY_BYTES_MIN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StorageSetupError {
    #[error("unsupported storage backend {0:?} (expected \"local\" or \"s3\")")]
    UnsupportedBackend(String),
    #[error("storage.url_signing_key must be at least {SIGNING_KEY_BYTES_MIN} bytes")]
    SigningKeyTooShort,
    #[error("cannot load or create the URL-signing key under {root}")]
    SigningKeyFile {
        root: String,
        #[source]
        source: std::io::Error,
    },
}

/// An opened object store and the local URL-signing key.
pub type OpenedStore = (Arc<dyn ObjectStore>, Arc<Vec<u8>>);

/// The store configured by `settings.storage`, and the key the local store's URLs are
/// signed with (for S3 a random key no URL is signed with: `GET /files/…` then serves
/// nothing).
pub fn open(settings: &Settings) -> Result<OpenedStore, StorageSetupError> {
    let storage = &settings.storage;
    match storage.backend.as_str() {
        "local" => {}
        "s3" => {
            let mut unused_key = vec![0u8; SIGNING_KEY_BYTES_MIN];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut unused_key);
            return Ok((Arc::new(S3ObjectStore::new(&storage.s3)), Arc::new(unused_key)));
        }
        other => return Err(StorageSetupError::UnsupportedBackend(other.to_string())),
    }
    let signing_key = match &storage.url_signing_key {
        Some(key) => {
            let bytes = key.expose_secret().as_bytes().to_vec();
            if bytes.len() < SIGNING_KEY_BYTES_MIN {
                return Err(StorageSetupError::SigningKeyTooShort);
            }
            bytes
        }
        None => load_or_create_signing_key(std::path::Path::new(&storage.local_root))
            .map_err(|source| StorageSetupError::SigningKeyFile { root: storage.local_root.clone(), source })?,
    };
    let signing_key = Arc::new(signing_key);
    let store = LocalObjectStore::new(&storage.local_root, public_base_url(settings), signing_key.clone());
    Ok((Arc::new(store), signing_key))
}

/// `storage.public_base_url`, else the address Kiln listens on.
pub fn public_base_url(settings: &Settings) -> String {
    match &settings.storage.public_base_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}:{}", settings.http.host, settings.http.port),
    }
}

/// The media type served for a key, from its extension.
pub fn content_type_of(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()) {
        Some(ext) if ext == "png" => "image/png",
        Some(ext) if ext == "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        for (key, expected) in [
            ("generated-images/t/j/0.png", "image/png"),
            ("a/B.PNG", "image/png"),
            ("model-assets/t/m/v1/model.json", "application/json"),
            ("a/b.bin", "application/octet-stream"),
            ("a/noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type_of(key), expected, "{key}");
        }
    }

    #[test]
    fn open_validates_the_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::default();
        settings.storage.local_root = dir.path().display().to_string();
        settings.storage.backend = "s4".into();
        assert!(matches!(open(&settings), Err(StorageSetupError::UnsupportedBackend(_))));
        settings.storage.backend = "local".into();
        settings.storage.url_signing_key = Some("short".to_string().into());
        assert!(matches!(open(&settings), Err(StorageSetupError::SigningKeyTooShort)));
        let configured = "k".repeat(SIGNING_KEY_BYTES_MIN);
        settings.storage.url_signing_key = Some(configured.clone().into());
        let (_, key) = open(&settings).expect("opens");
        assert_eq!(key.as_slice(), configured.as_bytes());
        settings.storage.url_signing_key = None;
        let (_, first) = open(&settings).expect("opens");
        let (_, second) = open(&settings).expect("opens");
        assert_eq!(first, second, "the generated key is kept and reused");
        assert_eq!(first.len(), 32);
    }

    #[test]
    fn public_base_url_defaults_to_the_listen_address() {
        let mut settings = Settings::default();
        assert_eq!(public_base_url(&settings), "http://127.0.0.1:8080");
        settings.storage.public_base_url = Some("https://kiln.example.com/".into());
        assert_eq!(public_base_url(&settings), "https://kiln.example.com");
    }
}
