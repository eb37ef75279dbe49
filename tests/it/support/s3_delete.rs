//! `DeleteObjects` as S3 does it in bulk, over an s3s-fs root (`{root}/{bucket}/{key}`):
//! s3s-fs removes each key in a blocking task of its own (a thread hand-off per key, which
//! on two cores takes CPU from whatever the server serves) and ignores `Quiet`; this removes
//! a request's keys in one blocking task and, when asked to be quiet, lists only failures.
//! One body for the storage tests' server (`tests/it/storage.rs`) and `kiln-bench`'s
//! (`bench/src/s3.rs`, which includes this file by path).

use std::path::Path;

use s3s::dto::{DeleteObjectsInput, DeleteObjectsOutput, DeletedObject, Error};
use s3s::{S3Response, S3Result};

/// Deletes `input`'s keys from the bucket directory under `root`; a missing key counts as
/// deleted, as on S3.
pub async fn delete_objects(root: &Path, input: DeleteObjectsInput) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let bucket = root.join(&input.bucket);
    if !bucket.is_dir() {
        return Err(s3s::s3_error!(NoSuchBucket));
    }
    let mut paths = Vec::with_capacity(input.delete.objects.len());
    for object in &input.delete.objects {
        let key = Path::new(&object.key);
        if !key.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(s3s::s3_error!(InvalidArgument, "invalid key {}", object.key));
        }
        paths.push(bucket.join(key));
    }
    let failures = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .enumerate()
            .filter_map(|(index, path)| match std::fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Some((index, error.to_string())),
                _ => None,
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|error| s3s::s3_error!(InternalError, "delete task: {error}"))?;
    let errors: Vec<Error> = failures
        .iter()
        .map(|(index, message)| Error {
            key: Some(input.delete.objects[*index].key.clone()),
            code: Some("InternalError".into()),
            message: Some(message.clone()),
            ..Default::default()
        })
        .collect();
    let deleted = (!input.delete.quiet.unwrap_or(false)).then(|| {
        input
            .delete
            .objects
            .iter()
            .enumerate()
            .filter(|(index, _)| !failures.iter().any(|(failed, _)| failed == index))
            .map(|(_, object)| DeletedObject { key: Some(object.key.clone()), version_id: object.version_id.clone(), ..Default::default() })
            .collect()
    });
    let errors = (!errors.is_empty()).then_some(errors);
    Ok(S3Response::new(DeleteObjectsOutput { deleted, errors, ..Default::default() }))
}
