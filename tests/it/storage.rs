//! S3 storage and image retention against a real S3-protocol server on loopback (s3s +
//! s3s-fs in process, SigV4 checked): put/get/delete, batch deletes, presigned URLs
//! fetched with a plain HTTP client, the lifecycle rule, the retention sweeper 91 days
//! later (and after a crash mid-sweep), a store that refuses writes, and a server that
//! stalls, then refuses connections, under running jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use application::clock::Clock;
use application::event_store::EventStore;
use application::storage::ObjectStore;
use chrono::Utc;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infrastructure::config::S3Settings;
use infrastructure::storage::S3ObjectStore;
use reqwest::Method;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

const ACCESS_KEY: &str = "kiln-test-access-key";
const SECRET_KEY: &str = "kiln-test-secret-key";
pub(crate) const BUCKET: &str = "kiln-test";

/// An s3s-fs server on 127.0.0.1 that logs every request and can be told to refuse writes.
pub(crate) struct S3Server {
    endpoint: String,
    pub(crate) root: tempfile::TempDir,
    /// `(method, path and query)` of every request received.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    refuse_writes: Arc<AtomicBool>,
    fault: tokio::sync::watch::Sender<S3Fault>,
    task: tokio::task::JoinHandle<()>,
}

/// An outage of the whole S3 server ([`S3Server::set_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum S3Fault {
    None,
    /// Connections are accepted and requests read, but nothing is answered.
    Stall,
    /// Nothing listens: connections are refused.
    Refuse,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// s3s-fs, with `DeleteObjects` done as S3 does it in bulk (`support::s3_delete`). Every
/// other operation is s3s-fs's own.
struct TestFs {
    fs: s3s_fs::FileSystem,
    root: std::path::PathBuf,
}

#[async_trait::async_trait]
impl s3s::S3 for TestFs {
    // (Written out: `async_trait` does not see methods a macro would generate.)
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        crate::support::s3_delete::delete_objects(&self.root, req.input).await
    }
}

impl S3Server {
    pub(crate) async fn start() -> S3Server {
        Self::start_with_root(tempfile::tempdir().expect("s3 root")).await
    }

    /// A server keeping its objects under `root` (removed when the server is dropped).
    pub(crate) async fn start_with_root(root: tempfile::TempDir) -> S3Server {
        let fs = TestFs { fs: s3s_fs::FileSystem::new(root.path()).expect("s3s-fs"), root: root.path().canonicalize().expect("root") };
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let endpoint = format!("http://{address}");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let refuse_writes = Arc::new(AtomicBool::new(false));
        let (fault, faults) = tokio::sync::watch::channel(S3Fault::None);
        let (log, refuse) = (requests.clone(), refuse_writes.clone());
        let task = tokio::spawn(async move {
            let mut faults = faults;
            let mut listener = Some(listener);
            loop {
                // Refusing connections: nothing listens on the port until the fault ends.
                if *faults.borrow() == S3Fault::Refuse {
                    listener = None;
                    if faults.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let bound = match &listener {
                    Some(bound) => bound,
                    None => listener.insert(tokio::net::TcpListener::bind(address).await.expect("bind again")),
                };
                let stream = tokio::select! {
                    accepted = bound.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                    changed = faults.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let (service, log, refuse, faults) = (service.clone(), log.clone(), refuse.clone(), faults.clone());
                let handler = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (service, log, refuse, mut faults) = (service.clone(), log.clone(), refuse.clone(), faults.clone());
                    async move {
                        // Stalled: the request is read and not answered while the stall
                        // lasts; refusing: a connection kept from before is dropped.
                        let _ = faults.wait_for(|fault| *fault != S3Fault::Stall).await;
                        if *faults.borrow() == S3Fault::Refuse {
                            return Err::<hyper::Response<s3s::Body>, s3s::HttpError>(s3s::HttpError::new(Box::new(std::io::Error::other("refused"))));
                        }
                        let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        log.lock().expect("log").push((request.method().to_string(), path));
                        if refuse.load(Ordering::SeqCst) && request.method() == hyper::Method::PUT {
                            let body = "<Error><Code>ServiceUnavailable</Code><Message>writes refused by the test</Message></Error>";
                            let mut response = hyper::Response::new(s3s::Body::from(body.to_string()));
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, s3s::HttpError>(response);
                        }
                        service.call(request.map(s3s::Body::from)).await
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        S3Server { endpoint, root, requests, refuse_writes, fault, task }
    }

    /// Starts (or ends, with [`S3Fault::None`]) an outage of the whole server.
    pub(crate) fn set_fault(&self, fault: S3Fault) {
        self.fault.send_replace(fault);
    }

    pub(crate) fn settings(&self) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.to_string().into()),
            ..S3Settings::default()
        }
    }

    fn requests_matching(&self, method: &str, query: &str) -> usize {
        self.requests.lock().expect("log").iter().filter(|(m, p)| m == method && p.contains(query)).count()
    }

    /// Whether the object is on the server's disk (s3s-fs keeps `{root}/{bucket}/{key}`).
    fn has(&self, key: &str) -> bool {
        self.root.path().join(BUCKET).join(key).is_file()
    }

    /// Every object key under `prefix`.
    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if let Ok(relative) = path.strip_prefix(base) {
                    out.push(relative.display().to_string());
                }
            }
        }
        let base = self.root.path().join(BUCKET);
        let mut keys = Vec::new();
        walk(&base.join(prefix), &base, &mut keys);
        keys.sort();
        keys
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_puts_gets_deletes_presigns_and_writes_the_lifecycle_rule() {
    let server = S3Server::start().await;
    let store = S3ObjectStore::new(&server.settings());

    // init: the bucket is created once; the lifecycle rule is sent. s3s-fs answers
    // NotImplemented to it, which init reports instead of failing.
    let first = store.init_bucket(90).await.expect("init");
    assert!(first.bucket_created);
    assert_eq!(server.requests_matching("PUT", "lifecycle"), 1, "the lifecycle rule was sent");
    let again = store.init_bucket(90).await.expect("init again");
    assert!(!again.bucket_created, "idempotent");
    if first.lifecycle_applied {
        let rules = store.lifecycle_rules().await.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].expiration().and_then(|e| e.days()), Some(90));
        assert_eq!(rules[0].filter().and_then(|f| f.prefix()), Some("generated-images/"));
    }

    // put / get / missing.
    let key = "generated-images/t1/j1/0.png";
    store.put(key, b"png bytes".to_vec(), "image/png").await.expect("put");
    assert_eq!(store.get(key).await.expect("get").as_deref(), Some(&b"png bytes"[..]));
    assert_eq!(store.get("generated-images/t1/j1/9.png").await.expect("get missing"), None);
    assert!(store.put("../escape", vec![1], "x").await.is_err(), "keys are validated");

    // A presigned URL works with a plain HTTP client until it expires; it is signed as
    // of the `now` given, not the wall clock.
    let url = store.signed_url(key, Duration::from_secs(600), Utc::now()).expect("presign");
    assert!(url.starts_with(&format!("{}/{BUCKET}/{key}?", server.endpoint)), "{url}");
    let response = reqwest::get(&url).await.expect("fetch");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("bytes").as_ref(), b"png bytes");
    let stale = store.signed_url(key, Duration::from_secs(3600), Utc::now() - chrono::Duration::hours(2)).expect("presign");
    assert_eq!(reqwest::get(&stale).await.expect("fetch").status(), 403, "expired an hour ago");

    // Batch delete: 2,001 keys (3 present, the rest missing) in DeleteObjects requests of
    // at most 1,000 keys; missing keys are not an error.
    let present: Vec<String> = (0..3).map(|n| format!("generated-images/t1/j2/{n}.png")).collect();
    for k in &present {
        store.put(k, vec![7; 10], "image/png").await.expect("put");
    }
    let mut keys = present.clone();
    keys.extend((0..1_998).map(|n| format!("generated-images/t1/gone/{n}.png")));
    let before = server.requests_matching("POST", "delete");
    store.delete_many(&keys).await.expect("batch delete");
    assert_eq!(server.requests_matching("POST", "delete") - before, 3, "ceil(2001 / 1000) requests");
    for k in &present {
        assert_eq!(store.get(k).await.expect("get"), None, "{k}");
    }
    assert!(server.has(key), "keys not named stay");
    store.delete_many(&present).await.expect("deleting again is a no-op");
    store.delete_many(&[]).await.expect("nothing to delete");
}

async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

async fn call(app: &TestApp, key: &str, method: Method, path: &str, json_body: Option<Value>) -> (u16, Value) {
    let mut request = app.as_key(key, method, path);
    if let Some(json_body) = json_body {
        request = request.json(&json_body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, body(response).await)
}

async fn wait_final(app: &TestApp, key: &str, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = call(app, key, Method::GET, &format!("/api/jobs/{job_id}"), None).await;
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app on PostgreSQL storing into `server`'s bucket (created first), the catalog
/// seeded, a Pro team with credits and a ready model: `(app, member key, model id)`.
async fn s3_app(server: &S3Server, customize: impl FnOnce(&mut infrastructure::config::Settings)) -> (TestApp, String, String) {
    S3ObjectStore::new(&server.settings()).init_bucket(90).await.expect("bucket");
    let s3 = server.settings();
    let app = TestApp::spawn_with(TestDb::postgres().await, |settings| {
        settings.storage.backend = "s3".into();
        settings.storage.s3 = s3;
        customize(settings);
    })
    .await;
    let (key, model) = team_with_model(&app).await;
    (app, key, model)
}

/// The catalog seeded, a Pro team with credits and a ready model: `(member key, model id)`.
async fn team_with_model(app: &TestApp) -> (String, String) {
    crate::support::app::seed_catalog(app).await;
    let team = app.create_team("storage team", "pro").await;
    let key = app.issue_key(&team, "member").await;
    assert_eq!(app.grant(&team, 100_000, "storage-seed").await.status(), 200);
    let (_, page) = call(app, &key, Method::GET, "/api/reference-models?limit=1", None).await;
    let reference = page["items"][0]["id"].as_str().expect("reference").to_string();
    let (status, created) = call(
        app,
        &key,
        Method::POST,
        "/api/models",
        Some(json!({"name": "Ava", "description": "a runner", "reference_model_id": reference})),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let job = created["job"]["job_id"].as_str().expect("job").to_string();
    assert_eq!(wait_final(app, &key, &job).await["status"], "completed");
    let model = created["model"]["model_id"].as_str().expect("model").to_string();
    (key, model)
}

/// Generates `count` images and waits for the job to finish; returns the job's view.
async fn generate(app: &TestApp, key: &str, model: &str, count: u32) -> Value {
    let request = json!({"model_id": model, "prompt": "on a beach", "resolution": "512x512", "count": count});
    let (status, accepted) = call(app, key, Method::POST, "/api/generate", Some(request)).await;
    assert_eq!(status, 202, "{accepted}");
    wait_final(app, key, accepted["job"]["job_id"].as_str().expect("job")).await
}

fn output_keys(job: &Value) -> Vec<String> {
    job["outputs"].as_array().map(|o| o.iter().filter_map(|o| o["key"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// `ImagesExpired` events recorded per job id.
async fn images_expired_events(app: &TestApp) -> std::collections::HashMap<String, i64> {
    let rows: Vec<(String, i64)> = infrastructure::db_fetch_all!(
        &app.state.db,
        (String, i64),
        "SELECT aggregate_id, COUNT(*) FROM events WHERE event_type = 'ImagesExpired' GROUP BY aggregate_id"
    )
    .expect("query");
    rows.into_iter().collect()
}

/// The image keys of a job as the API lists them (by URL path), or the problem status.
async fn listed_images(app: &TestApp, key: &str, job: &str) -> (u16, Value) {
    call(app, key, Method::GET, &format!("/api/generate/{job}/images"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_deletes_exactly_the_images_past_retention_and_the_api_answers_410() {
    let server = S3Server::start().await;
    let (app, key, model) = s3_app(&server, |_| {}).await;

    let old = generate(&app, &key, &model, 2).await;
    assert_eq!(old["status"], "completed", "{old}");
    let old_id = old["job_id"].as_str().expect("id").to_string();
    let old_keys = generated_keys(&app, &old_id).await;
    assert_eq!(old_keys.len(), 2);
    app.clock.advance(chrono::Duration::days(60));
    let new = generate(&app, &key, &model, 1).await;
    let new_id = new["job_id"].as_str().expect("id").to_string();
    let new_keys = generated_keys(&app, &new_id).await;
    assert!(old_keys.iter().chain(&new_keys).all(|k| server.has(k)), "all written to the bucket");
    let model_assets = server.keys_under("model-assets");
    assert!(!model_assets.is_empty());

    // Day 89 for the old job: nothing is due yet.
    app.clock.advance(chrono::Duration::days(29));
    assert_eq!(app.state.retention.sweep(90, None).await.expect("sweep").images, 0);

    // Day 91: exactly the old job's images go.
    app.clock.advance(chrono::Duration::days(2));
    let report = app.state.retention.sweep(90, None).await.expect("sweep");
    assert_eq!((report.jobs, report.images), (1, 2), "{report:?}");
    for k in &old_keys {
        assert!(!server.has(k), "{k} deleted from the bucket");
        assert_eq!(app.state.objects.get(k).await.expect("get"), None);
    }
    assert!(new_keys.iter().all(|k| server.has(k)), "the newer image stays");
    assert_eq!(server.keys_under("model-assets"), model_assets, "model assets are never touched");

    let (status, problem) = listed_images(&app, &key, &old_id).await;
    assert_eq!(status, 410, "{problem}");
    assert_eq!(problem["type"], "/problems/images-expired");
    let (status, images) = listed_images(&app, &key, &new_id).await;
    assert_eq!(status, 200, "{images}");
    assert_eq!(images["images"].as_array().map(Vec::len), Some(1));
    let (_, by_model) = call(&app, &key, Method::GET, &format!("/api/models/{model}/images"), None).await;
    assert_eq!(by_model["items"].as_array().map(Vec::len), Some(1), "{by_model}");

    // Sweeping again finds nothing and records nothing.
    let again = app.state.retention.sweep(90, None).await.expect("sweep");
    assert_eq!((again.jobs, again.images), (0, 0));
    assert_eq!(images_expired_events(&app).await, [(old_id, 1)].into_iter().collect());
    app.shutdown().await.expect("shutdown");
}

/// The job's keys from the image index.
async fn generated_keys(app: &TestApp, job: &str) -> Vec<String> {
    let rows: Vec<(String,)> =
        infrastructure::db_fetch_all!(&app.state.db, (String,), "SELECT key FROM images WHERE job_id = $1 ORDER BY position", job)
            .expect("query");
    rows.into_iter().map(|(k,)| k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_interrupted_mid_batch_ends_with_everything_deleted_and_recorded_once() {
    let server = S3Server::start().await;
    let (app, key, model) = s3_app(&server, |_| {}).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let job = generate(&app, &key, &model, 1).await;
        assert_eq!(job["status"], "completed");
        jobs.push(job["job_id"].as_str().expect("id").to_string());
    }
    app.clock.advance(chrono::Duration::days(91));
    let now = app.state.jobs.now();
    let due = app.state.retention.find_expired(application::retention::cutoff(now, 90), 1_000).await.expect("find");
    assert_eq!(due.len(), 4);

    // Crash 1: objects of the first two jobs deleted, nothing recorded yet.
    app.state.retention.delete_objects(&due[..2]).await.expect("delete half");
    // Crash 2 (a later run): the first job recorded, then the process died.
    assert_eq!(app.state.retention.record_expired(&due[..1], now).await.expect("record one"), 1);
    assert_eq!(listed_images(&app, &key, &due[0].job_id).await.0, 410);
    assert_eq!(listed_images(&app, &key, &due[1].job_id).await.0, 200, "deleted but not yet recorded");

    // Batches of one job each: several in flight at once, disjoint by the cursor.
    let report = app.state.retention.sweep_in_batches(90, None, 1).await.expect("sweep resumes");
    assert_eq!((report.jobs, report.batches), (3, 3), "the three jobs not yet recorded, one batch each: {report:?}");
    for job in &due {
        assert!(job.keys.iter().all(|k| !server.has(k)), "{job:?} deleted");
        assert_eq!(listed_images(&app, &key, &job.job_id).await.0, 410);
    }
    let recorded = images_expired_events(&app).await;
    assert_eq!(recorded.len(), 4);
    assert!(recorded.values().all(|&n| n == 1), "ImagesExpired once per job: {recorded:?}");
    let again = app.state.retention.sweep(90, None).await.expect("sweep");
    assert_eq!((again.jobs, again.images), (0, 0));
    // A batch found before the sweep and recorded after it (a stale finder) records
    // nothing: each job refuses a second ImagesExpired.
    assert_eq!(app.state.retention.record_expired(&due, now).await.expect("record again"), 0);
    assert_eq!(images_expired_events(&app).await, recorded);
    assert_eq!(jobs.len(), 4);
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_refusing_writes_never_yields_a_completed_job() {
    let server = S3Server::start().await;
    let (app, key, model) = s3_app(&server, |settings| settings.jobs.attempts_max = 1).await;
    let (_, balance) = call(&app, &key, Method::GET, "/api/credits/balance", None).await;
    server.refuse_writes.store(true, Ordering::SeqCst);
    let job = generate(&app, &key, &model, 2).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(output_keys(&job).is_empty(), "{job}");
    let job_id = job["job_id"].as_str().expect("id");
    assert!(generated_keys(&app, job_id).await.is_empty(), "nothing indexed");
    let (_, images) = listed_images(&app, &key, job_id).await;
    assert_eq!(images["images"].as_array().map(Vec::len), Some(0));
    let completed: Option<(i64,)> = infrastructure::db_fetch_optional!(
        &app.state.db,
        (i64,),
        "SELECT COUNT(*) FROM events WHERE aggregate_id = $1 AND event_type = 'JobCompleted'",
        job_id
    )
    .expect("query");
    assert_eq!(completed.map(|(n,)| n), Some(0));
    assert!(server.requests_matching("PUT", "generated-images/") > 0, "writes were attempted");
    let (_, after) = call(&app, &key, Method::GET, "/api/credits/balance", None).await;
    assert_eq!(after["available"], balance["available"], "refunded");

    // Writes back: the next job completes and its images are in the bucket.
    server.refuse_writes.store(false, Ordering::SeqCst);
    let job = generate(&app, &key, &model, 1).await;
    assert_eq!(job["status"], "completed", "{job}");
    let keys = generated_keys(&app, job["job_id"].as_str().expect("id")).await;
    assert!(keys.iter().all(|k| server.has(k)), "{keys:?}");
    app.shutdown().await.expect("shutdown");
}

/// moto's S3 server, which implements lifecycle configuration (s3s-fs does not). Used
/// only when `moto_server` (PyPI `moto[server]`) is installed; otherwise the test says so
/// and passes without it.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Option<Moto> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let stderr = child.stderr.take()?;
    let mut moto = Moto { child, endpoint: String::new() };
    // Flask prints ` * Running on http://127.0.0.1:PORT` once listening.
    for line in std::io::BufReader::new(stderr).lines().take(50) {
        let line = line.ok()?;
        if let Some(at) = line.find("http://127.0.0.1:") {
            moto.endpoint = line[at..].trim().to_string();
            return Some(moto);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_rule_reads_back_from_a_server_that_implements_it() {
    let Some(moto) = start_moto() else {
        eprintln!("moto_server is not installed: lifecycle read-back skipped (s3s-fs answers NotImplemented)");
        return;
    };
    let store = S3ObjectStore::new(&S3Settings {
        bucket: "kiln-lifecycle".into(),
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint.clone()),
        force_path_style: true,
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".to_string().into()),
        ..S3Settings::default()
    });
    let done = store.init_bucket(90).await.expect("init");
    assert_eq!(done, infrastructure::storage::s3::BucketInit { bucket_created: true, lifecycle_applied: true });
    let rules = store.lifecycle_rules().await.expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].id(), Some(infrastructure::storage::s3::LIFECYCLE_RULE_ID));
    assert_eq!(rules[0].expiration().and_then(|e| e.days()), Some(90));
    assert_eq!(rules[0].filter().and_then(|f| f.prefix()), Some("generated-images/"));
    // Re-running init with another period replaces the rule, and keeps the bucket.
    let again = store.init_bucket(30).await.expect("init again");
    assert!(!again.bucket_created);
    let rules = store.lifecycle_rules().await.expect("rules");
    assert_eq!(rules.iter().map(|r| r.expiration().and_then(|e| e.days())).collect::<Vec<_>>(), vec![Some(30)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_the_local_store_sweep_too() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let (key, model) = team_with_model(&app).await;
    let old = generate(&app, &key, &model, 2).await;
    let old_id = old["job_id"].as_str().expect("id").to_string();
    app.clock.advance(chrono::Duration::days(2));
    let new = generate(&app, &key, &model, 1).await;
    let new_id = new["job_id"].as_str().expect("id").to_string();
    let (old_keys, new_keys) = (generated_keys(&app, &old_id).await, generated_keys(&app, &new_id).await);
    let root = std::path::PathBuf::from(&app.settings.storage.local_root);
    assert!(old_keys.iter().chain(&new_keys).all(|k| root.join(k).is_file()));
    app.clock.advance(chrono::Duration::days(89));
    let report = app.state.retention.sweep(90, None).await.expect("sweep");
    assert_eq!((report.jobs, report.images), (1, 2), "{report:?}");
    assert!(old_keys.iter().all(|k| !root.join(k).exists()), "old files deleted");
    assert!(new_keys.iter().all(|k| root.join(k).is_file()), "the newer one stays");
    assert_eq!(listed_images(&app, &key, &old_id).await.0, 410);
    assert_eq!(listed_images(&app, &key, &new_id).await.0, 200);
    // The job says so, and its last change is the expiry.
    let (_, job) = call(&app, &key, Method::GET, &format!("/api/jobs/{old_id}"), None).await;
    assert_eq!(job["images_expired"], true, "{job}");
    assert_eq!(job["updated_at"].as_str().map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()), Some(Some(app.clock.now())), "{job}");
    let (_, job) = call(&app, &key, Method::GET, &format!("/api/jobs/{new_id}"), None).await;
    assert_eq!(job["images_expired"], false, "{job}");
    assert_eq!(app.state.retention.sweep(90, None).await.expect("sweep").jobs, 0);
    app.shutdown().await.expect("shutdown");
}

/// An S3 server that stalls (requests read, never answered), then refuses connections,
/// then comes back: the jobs whose outputs could not be stored are put back in the queue
/// (a request times out after `storage.s3.request_timeout_secs`, a refused connect at
/// once), and complete once the server is back, each charged once, with every image in
/// the bucket.
pub(crate) async fn a_stalled_then_refusing_s3_server_delays_jobs_and_loses_nothing() {
    let server = S3Server::start().await;
    let (app, key, model) = s3_app(&server, |settings| {
        settings.storage.s3.request_timeout_secs = 1;
        settings.jobs.attempts_max = 10;
    })
    .await;
    let retries = |job_id: String| {
        let app = &app;
        async move {
            infrastructure::db_fetch_all!(
                &app.state.db,
                (i64,),
                "SELECT COUNT(*) FROM events WHERE aggregate_id = $1 AND event_type = 'JobRetryScheduled'",
                job_id
            )
            .expect("query")[0]
                .0
        }
    };
    // Waits (bounded) until every job was put back in the queue at least `times` times.
    let put_back = |ids: Vec<String>, times: i64| {
        let retries = &retries;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            for id in ids {
                while retries(id.clone()).await < times {
                    assert!(tokio::time::Instant::now() < deadline, "job {id} was not put back {times} times");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };

    server.set_fault(S3Fault::Stall);
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, accepted) = crate::jobs::generate(&app, &key, &model, &format!("stalled store {n}")).await;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["job"]["job_id"].as_str().expect("job").to_string());
    }
    put_back(ids.clone(), 1).await;

    server.set_fault(S3Fault::Refuse);
    // The retries' backoff runs on the app's clock.
    app.clock.advance(chrono::Duration::seconds(60));
    put_back(ids.clone(), 2).await;

    server.set_fault(S3Fault::None);
    app.clock.advance(chrono::Duration::seconds(600));
    let team = app.state.store.load_stream("GenerationJob", &ids[0], 0).await.expect("job")[0].payload["team_id"].as_str().expect("team").to_string();
    crate::lost_connection::assert_each_ended_once(&app, &std::collections::HashMap::from([(team, (key.clone(), ids.clone()))])).await;
    for id in &ids {
        let job = wait_final(&app, &key, id).await;
        assert_eq!(job["status"], "completed", "{job}");
        let keys = generated_keys(&app, id).await;
        assert!(!keys.is_empty() && keys.iter().all(|k| server.has(k)), "{id}: {keys:?}");
    }
    app.shutdown().await.expect("shutdown");
}
