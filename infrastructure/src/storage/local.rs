//! The local filesystem object store: objects are files under a root directory, and
//! signed URLs point at Kiln's own `GET /files/{key}` route.
//!
//! Writes are atomic and durable: a temporary file in the target directory is written,
//! fsynced and renamed over the key, then the directory is fsynced, so a reader sees the
//! old object or the new one, never half of one, and a completed `put` survives a crash.
//!
//! A signed URL is `{base}/files/{key}?expires={unix seconds}&signature={hex}` where the
//! signature is HMAC-SHA256 over `"{key}\n{expires}"`. Path components starting with `.`
//! are refused: they name the store's own files (temporaries, `.url-signing-key`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use application::storage::{validate_key, ObjectStore, StorageError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Where the generated URL-signing key is kept, relative to the root.
pub const SIGNING_KEY_FILE: &str = ".url-signing-key";
/// Fewest bytes a kept signing key may have.
const SIGNING_KEY_BYTES: usize = crate::secrets::GENERATED_KEY_BYTES;

#[derive(Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
    /// Without a trailing `/`.
    public_base_url: String,
    signing_key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for LocalObjectStore {
    // The signing key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalObjectStore").field("root", &self.root).field("public_base_url", &self.public_base_url).finish()
    }
}

impl LocalObjectStore {
    /// A store under `root` (created on first write) whose URLs start with `public_base_url`.
    pub fn new(root: impl Into<PathBuf>, public_base_url: impl Into<String>, signing_key: Arc<Vec<u8>>) -> Self {
        let public_base_url = public_base_url.into().trim_end_matches('/').to_string();
        Self { root: root.into(), public_base_url, signing_key }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn signing_key(&self) -> &Arc<Vec<u8>> {
        &self.signing_key
    }

    /// The file of `key`, after checking the key cannot leave the root.
    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        if key.split('/').any(|part| part.starts_with('.')) {
            return Err(StorageError::InvalidKey(key.to_string()));
        }
        Ok(self.root.join(key))
    }
}

fn unavailable(context: &str, error: std::io::Error) -> StorageError {
    StorageError::Unavailable(format!("{context}: {error}"))
}

/// Writes `bytes` to `path` atomically and durably (see the module docs). Blocking.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<(), StorageError> {
        // The type is not stored: it follows from the key's extension when served.
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| StorageError::Unavailable(format!("write task failed: {e}")))?
            .map_err(|e| unavailable("write failed", e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read failed", e)),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let paths = keys.iter().map(|key| self.path_of(key)).collect::<Result<Vec<_>, _>>()?;
        for path in paths {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("delete failed", e)),
            }
        }
        Ok(())
    }

    fn signed_url(&self, key: &str, ttl: Duration, now: DateTime<Utc>) -> Result<String, StorageError> {
        self.path_of(key)?;
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let expires = now.timestamp().saturating_add(ttl_secs);
        let signature = hex::encode(sign(&self.signing_key, key, expires));
        Ok(format!("{}/files/{key}?expires={expires}&signature={signature}", self.public_base_url))
    }
}

fn mac(signing_key: &[u8], key: &str, expires: i64) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(signing_key).expect("HMAC takes any key length");
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

fn sign(signing_key: &[u8], key: &str, expires: i64) -> Vec<u8> {
    mac(signing_key, key, expires).finalize().into_bytes().to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or invalid signature")]
    Invalid,
    #[error("the signed URL has expired")]
    Expired,
}

/// Checks a signed URL's `expires` and `signature` for `key`. The signature is checked
/// first, in constant time, so an expired answer is only given for URLs Kiln issued.
pub fn verify_signature(
    key: &str,
    expires: i64,
    signature: &str,
    now: DateTime<Utc>,
    signing_key: &[u8],
) -> Result<(), SignatureError> {
    let presented = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
    mac(signing_key, key, expires).verify_slice(&presented).map_err(|_| SignatureError::Invalid)?;
    if now.timestamp() >= expires {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// The URL-signing key kept in `{root}/.url-signing-key` (hex, mode 0600), generated on
/// first use (see [`crate::secrets`]). Every process using the same root — `kiln serve`,
/// `kiln worker` — gets the same key.
pub fn load_or_create_signing_key(root: &Path) -> std::io::Result<Vec<u8>> {
    Ok(crate::secrets::load_or_create(&root.join(SIGNING_KEY_FILE), SIGNING_KEY_BYTES, "URL-signing key")?.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> LocalObjectStore {
        LocalObjectStore::new(root, "http://kiln.test/", Arc::new(b"0123456789abcdef0123456789abcdef".to_vec()))
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid instant")
    }

    /// Splits a signed URL into key, expires and signature.
    fn parts(url: &str) -> (String, i64, String) {
        let rest = url.strip_prefix("http://kiln.test/files/").expect("base and route");
        let (key, query) = rest.split_once('?').expect("query");
        let (expires, signature) = query.split_once('&').expect("two parameters");
        let expires = expires.strip_prefix("expires=").expect("expires").parse().expect("number");
        (key.to_string(), expires, signature.strip_prefix("signature=").expect("signature").to_string())
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let key = "generated-images/t/j/0.png";
        assert_eq!(store.get(key).await.expect("get"), None);
        store.put(key, b"one".to_vec(), "image/png").await.expect("put");
        assert_eq!(store.get(key).await.expect("get").as_deref(), Some(&b"one"[..]));
        store.put(key, b"two".to_vec(), "image/png").await.expect("replace");
        assert_eq!(store.get(key).await.expect("get").as_deref(), Some(&b"two"[..]));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("generated-images/t/j"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("0.png")], "no temporary files are left");
        store.delete_many(&[key.to_string(), "generated-images/t/j/missing.png".into()]).await.expect("delete");
        assert_eq!(store.get(key).await.expect("get"), None);
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root_or_reach_private_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        for bad in ["../outside", "/etc/passwd", "a/../../b", ".url-signing-key", "a/.hidden", "a\\b"] {
            assert!(matches!(store.put(bad, vec![1], "x").await, Err(StorageError::InvalidKey(_))), "{bad}");
            assert!(matches!(store.get(bad).await, Err(StorageError::InvalidKey(_))), "{bad}");
            assert!(store.signed_url(bad, Duration::from_secs(1), at(0)).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_urls_verify_until_they_expire() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let url = store.signed_url("reference-models/r/preview.png", Duration::from_secs(60), at(1_000)).expect("url");
        let (key, expires, signature) = parts(&url);
        assert_eq!((key.as_str(), expires), ("reference-models/r/preview.png", 1_060));
        let signing_key = store.signing_key().as_slice();
        assert_eq!(verify_signature(&key, expires, &signature, at(1_059), signing_key), Ok(()));
        assert_eq!(verify_signature(&key, expires, &signature, at(1_060), signing_key), Err(SignatureError::Expired));
        let mut tampered = signature.clone();
        tampered.replace_range(0..1, if signature.starts_with('0') { "1" } else { "0" });
        for (k, e, s) in [
            ("reference-models/r/other.png", expires, signature.as_str()),
            (key.as_str(), expires + 1, signature.as_str()),
            (key.as_str(), expires, tampered.as_str()),
            (key.as_str(), expires, "not-hex"),
            (key.as_str(), expires, ""),
        ] {
            assert_eq!(verify_signature(k, e, s, at(1_000), signing_key), Err(SignatureError::Invalid), "{k} {e} {s}");
        }
        assert_eq!(verify_signature(&key, expires, &signature, at(1_000), b"another key"), Err(SignatureError::Invalid));
    }

    #[test]
    fn the_generated_signing_key_is_private_and_shared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("nested/root");
        let first = load_or_create_signing_key(&root).expect("created");
        let second = load_or_create_signing_key(&root).expect("loaded");
        assert_eq!(first, second);
        assert_eq!(first.len(), SIGNING_KEY_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(root.join(SIGNING_KEY_FILE)).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = load_or_create_signing_key(&dir.path().join("elsewhere")).expect("created");
        assert_ne!(first, other, "each root has its own random key");
    }
}
