//! An S3-protocol server on a loopback socket for `kiln-bench sweep`: s3s (SigV4 checked,
//! the XML protocol) over s3s-fs (objects are files, `{root}/{bucket}/{key}`), as the
//! storage tests run it (`tests/it/storage.rs`), without their fault switches.
//!
//! `DeleteObjects` is done as S3 does it in bulk, by the tests' own code
//! (`tests/it/support/s3_delete.rs`, included by path). Both sides of the benchmark talk to
//! this same server, so its cost is in both.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infrastructure::config::S3Settings;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

/// The tests' bulk `DeleteObjects`, one body for both.
#[path = "../../tests/it/support/s3_delete.rs"]
mod s3_delete;

const ACCESS_KEY: &str = "kiln-bench-access-key";
const SECRET_KEY: &str = "kiln-bench-secret-key";
const REGION: &str = "us-east-1";

struct BulkDeleteFs {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

#[async_trait::async_trait]
impl s3s::S3 for BulkDeleteFs {
    // (Written out: `async_trait` does not see methods a macro would generate.)
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        s3_delete::delete_objects(&self.root, req.input).await
    }
}

/// The server, serving until dropped.
pub struct S3Loopback {
    endpoint: String,
    root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Loopback {
    /// Serves the objects under `root` (an existing directory) on 127.0.0.1.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let root = root.canonicalize().with_context(|| format!("S3 root {}", root.display()))?;
        let fs = BulkDeleteFs { fs: s3s_fs::FileSystem::new(&root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?, root: root.clone() };
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind the S3 server")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                let handler = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    async move { service.call(request.map(s3s::Body::from)).await }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Ok(Self { endpoint, root, task })
    }

    /// Kiln's settings for `bucket` on this server.
    pub fn settings(&self, bucket: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            region: REGION.into(),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.to_string().into()),
            ..S3Settings::default()
        }
    }

    /// Where the server keeps `bucket`'s objects (one file per key under it).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// Files left under `bucket`'s `prefix`.
    pub fn count_files_under(&self, bucket: &str, prefix: &str) -> usize {
        fn walk(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| if entry.path().is_dir() { walk(&entry.path()) } else { 1 })
                .sum()
        }
        walk(&self.bucket_dir(bucket).join(prefix))
    }
}
