//! Model jobs are several fal requests (training images, then the trainer): a worker
//! killed at any of them leaves the job to another that resumes it without asking fal
//! again for a finished step, and a cancel at any of them stops fal's request, deletes
//! what the job stored and refunds its one reservation.

use std::path::Path;
use std::process::{Child, Command};

use reqwest::Method;
use serde_json::{json, Value};

use super::fake::{FakeFal, FAL_KEY};
use super::{
    balance, call, current_request, deliver, events_of, held, job, pro_team, spawn, wait_final, wait_job, TRAINER,
};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// A `kiln worker` process on the test's database and storage, running jobs on the fake
/// fal at `fal_base`, signing its URLs as the app does.
pub(crate) fn fal_worker(app: &TestApp, fal_base: &str) -> Child {
    crate::jobs::worker_command(app, 0)
        .env("KILN_STORAGE__PUBLIC_BASE_URL", app.url(""))
        .env("KILN_FAL__KEY", FAL_KEY)
        .env("KILN_FAL__QUEUE_BASE_URL", fal_base)
        .env("KILN_FAL__JWKS_URL", format!("{fal_base}/.well-known/jwks.json"))
        .env("KILN_FAL__WEBHOOK_BASE_URL", app.url(""))
        .env("KILN_FAL__RETRY_BACKOFF_MS", "10")
        .spawn()
        .expect("start kiln worker")
}

/// Starts a model creation; returns (model id, job id).
pub(crate) async fn create_model(app: &TestApp, key: &str) -> (String, String) {
    let (_, page) = call(app, key, Method::GET, "/api/reference-models?limit=1", None).await;
    let reference = page["items"][0]["id"].as_str().expect("reference").to_string();
    let request = json!({"name": "Ava", "description": "a runner, golden hour", "reference_model_id": reference});
    let (status, created) = call(app, key, Method::POST, "/api/models", Some(request)).await;
    assert_eq!(status, 202, "{created}");
    (created["model"]["model_id"].as_str().expect("model").to_string(), created["job"]["job_id"].as_str().expect("job").to_string())
}

/// Waits for the job's next fal request (one not in `seen`).
pub(crate) async fn next_request(app: &TestApp, key: &str, job_id: &str, seen: &[String]) -> String {
    let view = wait_job(app, key, job_id, "a new fal request", |j| current_request(j).is_some_and(|r| !seen.contains(&r))).await;
    current_request(&view).expect("request")
}

/// The stored files whose path names `model_id`.
pub(crate) fn stored_files_of(root: &Path, model_id: &str) -> Vec<String> {
    fn walk(dir: &Path, model_id: &str, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, model_id, found);
            } else if path.to_string_lossy().contains(model_id) {
                found.push(path.display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(root, model_id, &mut found);
    found
}

/// The team's credit events about the job's reservation, by type.
pub(crate) async fn ledger_of(app: &TestApp, team_id: &str, job_id: &str) -> Vec<String> {
    use application::event_store::EventStore;
    let events = app.state.store.load_stream("TeamCredits", team_id, 0).await.expect("team events");
    events.into_iter().filter(|e| e.payload["reservation_id"] == job_id).map(|e| e.event_type).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_at_each_step_resumes_without_paying_fal_twice() {
    let fake = FakeFal::default();
    let base = fake.start().await;
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let before = held(&balance(&app, &key).await);
    let (model_id, job_id) = create_model(&app, &key).await;

    // At each request (three batches of training images, then the trainer) the worker is
    // killed while fal works; fal finishes with no worker alive and no webhook delivered;
    // a new worker finds the job orphaned, asks fal, and goes on from there.
    let mut worker = fal_worker(&app, &base);
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..4 {
        let request_id = next_request(&app, &key, &job_id, &seen).await;
        worker.kill().expect("kill -9 the worker");
        worker.wait().expect("reap the worker");
        fake.complete(&request_id);
        seen.push(request_id);
        worker = fal_worker(&app, &base);
    }
    let done = wait_final(&app, &key, &job_id).await;
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    worker.wait().expect("the last worker stops");
    assert_eq!(done["status"], "completed", "{done}");

    // fal was asked once per step, and the steps were recorded once each.
    let apps: Vec<(String, u16)> = fake.submits();
    let expected: Vec<(String, u16)> =
        ["fal-ai/flux-lora", "fal-ai/flux-lora", "fal-ai/flux-lora", TRAINER].iter().map(|a| (a.to_string(), 200)).collect();
    assert_eq!(apps, expected, "no step was paid twice");
    let steps: Vec<String> = events_of(&done, "JobStepCompleted").iter().map(|e| e["data"]["step"].as_str().expect("step").into()).collect();
    assert_eq!(steps, ["training-images-1", "training-images-2", "training-images-3", "training-set"]);
    let (_, model) = call(&app, &key, Method::GET, &format!("/api/models/{model_id}"), None).await;
    assert_eq!((model["status"].as_str(), model["current_version"].as_i64()), (Some("ready"), Some(1)), "{model}");
    assert_eq!(ledger_of(&app, &team_id, &job_id).await, ["CreditsReserved", "CreditsDeducted"]);
    let cost = done["cost_credits"].as_i64().expect("cost");
    assert_eq!(held(&balance(&app, &key).await), (before.0 - cost, 0));
    assert_eq!(fake.violations(), Vec::new(), "every request fits its app's input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_at_each_step_stops_fal_deletes_the_set_and_refunds_once() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let root = Path::new(&app.settings.storage.local_root).to_path_buf();
    let start = held(&balance(&app, &key).await);

    // Cancelled while fal draws the first batch, the second (one step recorded), and
    // while it trains (images and set recorded).
    for in_flight in [0, 1, 3] {
        let (model_id, job_id) = create_model(&app, &key).await;
        let mut seen: Vec<String> = Vec::new();
        let request_id = loop {
            let request_id = next_request(&app, &key, &job_id, &seen).await;
            if seen.len() == in_flight {
                break request_id;
            }
            fake.complete(&request_id);
            assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "applied");
            seen.push(request_id);
        };
        if in_flight > 0 {
            assert!(!stored_files_of(&root, &model_id).is_empty(), "request {in_flight}: the recorded steps stored files");
        }
        let (status, cancelled) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{job_id}"), None).await;
        assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
        assert!(fake.cancels().contains(&request_id), "request {in_flight}: fal was asked to stop");

        // fal finished anyway: its late result is dropped, and nothing is stored again.
        fake.complete(&request_id);
        assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "already_final");
        assert_eq!(stored_files_of(&root, &model_id), Vec::<String>::new(), "request {in_flight}: nothing of the job is left");
        assert_eq!(ledger_of(&app, &team_id, &job_id).await, ["CreditsReserved", "CreditsRefunded"], "request {in_flight}");
        let (_, model) = call(&app, &key, Method::GET, &format!("/api/models/{model_id}"), None).await;
        assert_eq!(model["status"], "failed", "{model}");
    }
    assert_eq!(held(&balance(&app, &key).await), start, "every reservation refunded, once");
}

/// The local provider answers at once, so a cancel lands while the worker holds the
/// step's result: what the worker then stores is deleted, and nothing is logged as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_model_creation_cancelled_leaves_nothing_and_logs_no_error() {
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await;
    crate::support::app::seed_catalog(&app).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut worker =
        crate::jobs::worker_command(&app, 700).stderr(log.reopen().expect("log")).spawn().expect("start kiln worker");
    let root = Path::new(&app.settings.storage.local_root).to_path_buf();

    // One cancelled during its first batch of images, one while it trains.
    let mut cancelled = Vec::new();
    for steps_before in [0, 4] {
        let (model_id, job_id) = create_model(&app, &key).await;
        let ready = |j: &Value| j["status"] != "queued" && events_of(j, "JobStepCompleted").len() >= steps_before;
        wait_job(&app, &key, &job_id, "the step to start", ready).await;
        let (status, view) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{job_id}"), None).await;
        assert_eq!((status, view["status"].as_str()), (200, Some("cancelled")), "{view}");
        cancelled.push((model_id, job_id));
    }
    // A stopping worker finishes what it holds first.
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    assert!(worker.wait().expect("the worker stops").success());

    for (model_id, job_id) in &cancelled {
        assert_eq!(stored_files_of(&root, model_id), Vec::<String>::new(), "job {job_id} left files");
        assert_eq!(ledger_of(&app, &team_id, job_id).await, ["CreditsReserved", "CreditsRefunded"]);
    }
    let text = std::fs::read_to_string(log.path()).expect("worker log");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(r#""level":"ERROR""#)).collect();
    assert!(errors.is_empty(), "the worker logged errors: {errors:#?}");
    assert!(text.contains("job ended while its step ran") || text.contains("job ended before its result arrived"), "{text}");
}

/// A `multipart/form-data` body: text fields, then files as `images` parts.
fn multipart(boundary: &str, fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes());
    }
    for (file_name, content_type, bytes) in files {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n")
                .as_bytes(),
        );
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    body
}

async fn post_multipart(app: &TestApp, key: &str, path: &str, boundary: &str, body: Vec<u8>, idempotency: &str) -> (u16, Value) {
    let response = app
        .as_key(key, Method::POST, path)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("idempotency-key", idempotency)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn training_images_sent_by_the_team_join_the_set_and_bad_ones_are_refused_before_any_charge() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let root = Path::new(&app.settings.storage.local_root).to_path_buf();
    let (_, page) = call(&app, &key, Method::GET, "/api/reference-models?limit=1", None).await;
    let reference = page["items"][0]["id"].as_str().expect("reference").to_string();
    let fields = [("name", "Mia"), ("description", "a cyclist"), ("reference_model_id", reference.as_str())];
    let start = held(&balance(&app, &key).await);

    // Refused before anything is stored or reserved: a GIF is not a training image.
    let gif = b"GIF89a-not-an-accepted-image".to_vec();
    let (status, problem) = post_multipart(&app, &key, "/api/models", "b0", multipart("b0", &fields, &[("x.gif", "image/gif", &gif)]), "gif-1").await;
    assert_eq!((status, problem["type"].as_str(), problem["field"].as_str()), (422, Some("/problems/invalid-request"), Some("images")), "{problem}");
    assert_eq!(held(&balance(&app, &key).await), start, "nothing reserved");

    // Three images of the team's own, and a zip of two more with a caption.
    let png = |seed: u8| infrastructure::provider::render::render_png(&[seed; 32], 32, 32).expect("png");
    let own: Vec<Vec<u8>> = (1..=3).map(png).collect();
    let zipped = application::jobs::steps::zip_training_set(
        None,
        &[
            application::jobs::steps::SetFile { name: "d.png".into(), bytes: png(4) },
            application::jobs::steps::SetFile { name: "d.txt".into(), bytes: b"riding uphill".to_vec() },
            application::jobs::steps::SetFile { name: "e.png".into(), bytes: png(5) },
        ],
    )
    .expect("zip");
    let files: Vec<(&str, &str, &[u8])> = vec![
        ("a.png", "image/png", &own[0]),
        ("b.png", "image/png", &own[1]),
        ("c.png", "image/png", &own[2]),
        ("more.zip", "application/zip", &zipped),
    ];
    let (status, created) = post_multipart(&app, &key, "/api/models", "b1", multipart("b1", &fields, &files), "mia-1").await;
    assert_eq!(status, 202, "{created}");
    let job_id = created["job"]["job_id"].as_str().expect("job").to_string();
    let model_id = created["model"]["model_id"].as_str().expect("model").to_string();
    // A retry of the same request (another boundary, as clients pick anew) is the same job.
    let (status, again) = post_multipart(&app, &key, "/api/models", "b2", multipart("b2", &fields, &files), "mia-1").await;
    assert_eq!((status, again["job"]["job_id"].as_str()), (202, Some(job_id.as_str())), "{again}");

    // Five images sent: seven drawn (batches of four and three), then the trainer.
    let seen = super::complete_every_request(&app, &fake, &key, &job_id).await;
    assert_eq!(job(&app, &key, &job_id).await["status"], "completed");
    let counts: Vec<u64> = seen[..2].iter().map(|r| fake.request(r).input["num_images"].as_u64().expect("count")).collect();
    assert_eq!(counts, [4, 3]);
    let training = fake.request(&seen[2]).input;
    let set = super::training_set(&training).await;
    let images: Vec<&(String, Vec<u8>)> = set.iter().filter(|(name, _)| name.ends_with(".png")).collect();
    assert_eq!(images.len(), 12, "five sent and seven drawn");
    for (n, bytes) in own.iter().enumerate() {
        assert!(set.iter().any(|(name, b)| name == &format!("v1-upload-{n}.png") && b == bytes), "image {n} is the team's");
    }
    let trigger = training["trigger_word"].as_str().expect("trigger").to_string();
    let caption = |name: &str| set.iter().find(|(n, _)| n == name).map(|(_, b)| String::from_utf8(b.clone()).expect("utf-8"));
    assert_eq!(caption("v1-upload-3.txt"), Some(format!("{trigger}, riding uphill")), "the zip's caption");
    assert_eq!(caption("v1-upload-0.txt"), Some(format!("{trigger}, a cyclist")), "the description as caption");
    assert_eq!(ledger_of(&app, &team_id, &job_id).await, ["CreditsReserved", "CreditsDeducted"]);
    assert!(stored_files_of(&root, &model_id).iter().any(|f| f.ends_with("training/upload-4.png")));
    assert_eq!(fake.violations(), Vec::new(), "every request fits its app's input");
}
