//! Secrets Kiln makes for itself: a random key generated on first use and kept in a
//! file readable by its owner only (mode 0600), so that no key is ever committed or
//! shared between installations. Used for the URL-signing key
//! (`{storage.local_root}/.url-signing-key`); any other process-wide key (a sign-in
//! cookie key, …) calls [`load_or_create`] with its own file name.
//!
//! Every process that names the same file gets the same key: a new key is written to a
//! private temporary file, then published with a no-replace hard link, so of two
//! processes creating it at once one wins and the other reads the winner's.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Bytes of a generated key (256 bits: as long as an HMAC-SHA256 key usefully is).
pub const GENERATED_KEY_BYTES: usize = 32;

/// A key read from or written to its file.
pub struct KeyFile {
    pub key: Vec<u8>,
    /// Where it is kept.
    pub path: PathBuf,
    /// `true` when this call generated it (the file did not exist).
    pub created: bool,
}

impl std::fmt::Debug for KeyFile {
    // The key itself never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("path", &self.path).field("created", &self.created).finish_non_exhaustive()
    }
}

/// The key kept in `path` (hex, one line), or a new random one of
/// [`GENERATED_KEY_BYTES`] written there with mode 0600 (its directory is created).
/// A file holding fewer than `bytes_min` bytes of key, or no hex, is an error rather
/// than silently replaced: replacing it would invalidate every URL already handed out.
/// Logs once, at info, which file the key came from and whether it was created.
pub fn load_or_create(path: &Path, bytes_min: usize, what: &str) -> std::io::Result<KeyFile> {
    let file = load_or_create_quietly(path, bytes_min)?;
    if file.created {
        tracing::info!(path = %file.path.display(), "{what}: generated a new key (mode 0600)");
    } else {
        tracing::info!(path = %file.path.display(), "{what}: using the key kept in this file");
    }
    Ok(file)
}

fn load_or_create_quietly(path: &Path, bytes_min: usize) -> std::io::Result<KeyFile> {
    let found = |key| KeyFile { key, path: path.to_path_buf(), created: false };
    if let Some(key) = read(path, bytes_min)? {
        return Ok(found(key));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut key = vec![0u8; GENERATED_KEY_BYTES.max(bytes_min)];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "key".into());
    let temp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let published = (|| {
        let mut file = private_file(&temp)?;
        file.write_all(format!("{}\n", hex::encode(&key)).as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&temp, path)
    })();
    let _ = std::fs::remove_file(&temp);
    match published {
        Ok(()) => {
            std::fs::File::open(dir)?.sync_all()?;
            Ok(KeyFile { key, path: path.to_path_buf(), created: true })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path, bytes_min)?.map(found).ok_or_else(|| std::io::Error::other("key file vanished"))
        }
        Err(e) => Err(e),
    }
}

fn read(path: &Path, bytes_min: usize) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
            let key = hex::decode(text.trim()).map_err(|e| invalid(format!("not a hex key ({e})")))?;
            if key.len() < bytes_min {
                return Err(invalid(format!("holds {} bytes of key, at least {bytes_min} needed", key.len())));
            }
            Ok(Some(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_then_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join(".some-key");
        let first = load_or_create(&path, 32, "test key").expect("created");
        assert!(first.created);
        assert_eq!(first.key.len(), GENERATED_KEY_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "readable by its owner only");
        }
        let second = load_or_create(&path, 32, "test key").expect("read");
        assert!(!second.created);
        assert_eq!(first.key, second.key);
        assert!(!format!("{second:?}").contains(&hex::encode(&second.key)), "Debug hides the key");
        let other = load_or_create(&dir.path().join(".other-key"), 32, "test key").expect("created");
        assert_ne!(other.key, first.key, "random per file");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporaries are removed");
    }

    #[test]
    fn a_short_or_garbled_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".key");
        std::fs::write(&path, "abcd\n").expect("write");
        let error = load_or_create(&path, 32, "test key").expect_err("too short");
        assert!(error.to_string().contains(".key"), "{error}");
        std::fs::write(&path, "not hex at all\n").expect("write");
        assert!(load_or_create(&path, 32, "test key").is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not hex at all\n", "never overwritten");
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".raced-key");
        let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..8).map(|_| scope.spawn(|| load_or_create(&path, 32, "test key").expect("key").key)).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "every process gets the published key");
    }
}
