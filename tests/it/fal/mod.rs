//! The fal.ai provider end to end, on real PostgreSQL, against a fake fal on loopback
//! that speaks fal's queue protocol and signs webhooks with a test ED25519 key: results
//! by webhook and by polling, failures refunded, transient submit errors retried, forged
//! webhooks refused, duplicates harmless, cancels sent to fal with exact credits.

pub mod fake;
mod parts;
mod schema;
mod steps;

use std::time::Duration;

use application::clock::Clock;
use ed25519_dalek::SigningKey;
use reqwest::Method;
use serde_json::{json, Value};

use self::fake::{fal_signing_key, lora_bytes, FakeFal, Stage, FAL_KEY};
use crate::support::app::TestApp;
use crate::support::db::TestDb;

// ---------------------------------------------------------------- app and helpers

pub(crate) async fn spawn(fake: &FakeFal, stale_after_secs: u64) -> TestApp {
    spawn_with(fake, |s| s.jobs.stale_after_secs = stale_after_secs).await.0
}

/// Kiln on PostgreSQL with fal pointed at the started `fake` (then `customize`), the
/// catalog seeded; returns it and the fake's base URL.
pub(crate) async fn spawn_with(fake: &FakeFal, customize: impl FnOnce(&mut infrastructure::config::Settings)) -> (TestApp, String) {
    let base = fake.start().await;
    let app = TestApp::spawn_with(TestDb::postgres().await, |s| {
        s.fal.key = Some(FAL_KEY.to_string().into());
        s.fal.queue_base_url = base.clone();
        s.fal.jwks_url = format!("{base}/.well-known/jwks.json");
        s.fal.retry_backoff_ms = 10;
        customize(s);
    })
    .await;
    crate::support::app::seed_catalog(&app).await;
    (app, base)
}

pub(crate) async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

pub(crate) async fn call(app: &TestApp, key: &str, method: Method, path: &str, json_body: Option<Value>) -> (u16, Value) {
    let mut request = app.as_key(key, method, path);
    if let Some(json_body) = json_body {
        request = request.json(&json_body);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), body(response).await)
}

pub(crate) async fn job(app: &TestApp, key: &str, job_id: &str) -> Value {
    call(app, key, Method::GET, &format!("/api/jobs/{job_id}"), None).await.1
}

pub(crate) async fn balance(app: &TestApp, key: &str) -> Value {
    call(app, key, Method::GET, "/api/credits/balance", None).await.1
}

async fn events_total(app: &TestApp) -> i64 {
    let row = infrastructure::db_fetch_optional!(&app.state.db, (i64,), "SELECT COUNT(*) FROM events").expect("count").expect("row");
    row.0
}

/// Waits (bounded) until `done` holds for the job's view.
pub(crate) async fn wait_job(app: &TestApp, key: &str, job_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = job(app, key, job_id).await;
        if done(&view) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id}: {what} never happened: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn wait_final(app: &TestApp, key: &str, job_id: &str) -> Value {
    wait_job(app, key, job_id, "an ending", |j| matches!(j["status"].as_str(), Some("completed" | "failed" | "cancelled"))).await
}

/// The fal request id the worker recorded for the job (waits for the submission).
pub(crate) async fn request_of(app: &TestApp, key: &str, job_id: &str) -> String {
    let view = wait_job(app, key, job_id, "a fal request", |j| request_id_in(j).is_some()).await;
    request_id_in(&view).expect("request id")
}

fn request_id_in(view: &Value) -> Option<String> {
    view["events"].as_array()?.iter().rev().find_map(|e| e["data"]["provider_request_id"].as_str().map(String::from))
}

pub(crate) fn events_of(view: &Value, kind: &str) -> Vec<Value> {
    view["events"].as_array().map(|events| events.iter().filter(|e| e["type"] == kind).cloned().collect()).unwrap_or_default()
}

/// A team on the Pro plan with credits and a member key.
pub(crate) async fn team(app: &TestApp, credits: i64) -> String {
    pro_team(app, credits).await.1
}

/// A team on the Pro plan with credits: (team id, member key).
pub(crate) async fn pro_team(app: &TestApp, credits: i64) -> (String, String) {
    let team = app.create_team("Fal team", "pro").await;
    let key = app.issue_key(&team, "member").await;
    assert_eq!(app.grant(&team, credits, &format!("seed-{team}")).await.status(), 200);
    (team, key)
}

/// Delivers the request's webhook as fal does: signed now with fal's key.
pub(crate) async fn deliver(app: &TestApp, fake: &FakeFal, request_id: &str) -> Value {
    let response = fake.deliver_signed(request_id, &fal_signing_key(), app.clock.now().timestamp()).await;
    assert_eq!(response.status(), 200);
    body(response).await
}

/// A model created on fal (every request completed by webhook: the training images,
/// then the trainer); returns (model id, job id).
pub(crate) async fn fal_model(app: &TestApp, fake: &FakeFal, key: &str) -> (String, String) {
    let (model_id, job_id) = steps::create_model(app, key).await;
    let requests = complete_every_request(app, fake, key, &job_id).await;
    assert_eq!(fake.request(requests.last().expect("requests")).app, TRAINER, "the last request trains");
    assert_eq!(job(app, key, &job_id).await["status"], "completed");
    assert_eq!(fake.violations(), Vec::new(), "every request fits its app's input");
    (model_id, job_id)
}

/// Completes each fal request of the job as it is made (by webhook), until the job ends;
/// returns the requests in order.
pub(crate) async fn complete_every_request(app: &TestApp, fake: &FakeFal, key: &str, job_id: &str) -> Vec<String> {
    let mut done: Vec<String> = Vec::new();
    loop {
        let ended = |j: &Value| matches!(j["status"].as_str(), Some("completed" | "failed" | "cancelled"));
        let view = wait_job(app, key, job_id, "a new fal request or an ending", |j| {
            ended(j) || current_request(j).is_some_and(|r| !done.contains(&r))
        })
        .await;
        if ended(&view) {
            return done;
        }
        let request_id = current_request(&view).expect("request id");
        fake.complete(&request_id);
        assert_eq!(deliver(app, fake, &request_id).await["outcome"], "applied");
        done.push(request_id);
    }
}

/// The job's current fal request: the newest recorded, unless a step ended after it.
pub(crate) fn current_request(view: &Value) -> Option<String> {
    for event in view["events"].as_array()?.iter().rev() {
        if event["type"] == "JobStepCompleted" {
            return None;
        }
        if let Some(request) = event["data"]["provider_request_id"].as_str() {
            return Some(request.to_string());
        }
    }
    None
}

pub(crate) async fn generate(app: &TestApp, key: &str, model_id: &str, count: u32) -> (String, i64) {
    let request = json!({"model_id": model_id, "prompt": "on a beach", "resolution": "512x512", "count": count});
    let (status, accepted) = call(app, key, Method::POST, "/api/generate", Some(request)).await;
    assert_eq!(status, 202, "{accepted}");
    (accepted["job"]["job_id"].as_str().expect("job").to_string(), accepted["job"]["cost_credits"].as_i64().expect("cost"))
}

pub(crate) fn held(balance: &Value) -> (i64, i64) {
    (balance["available"].as_i64().expect("available"), balance["reserved"].as_i64().expect("reserved"))
}

/// The trainer app the tests' settings leave in place.
pub(crate) const TRAINER: &str = "fal-ai/flux-lora-fast-training";

/// Every fal request the job recorded, in order.
pub(crate) fn requests_of(view: &Value) -> Vec<String> {
    let events = view["events"].as_array().cloned().unwrap_or_default();
    events.iter().filter_map(|e| e["data"]["provider_request_id"].as_str().map(String::from)).collect()
}

/// The files of the zip a trainer request points at, downloaded as fal does.
pub(crate) async fn training_set(input: &Value) -> Vec<(String, Vec<u8>)> {
    let url = input["images_data_url"].as_str().expect("images_data_url");
    let response = reqwest::get(url).await.expect("fetch the training set");
    assert_eq!(response.status(), 200, "fal can fetch {url}");
    let bytes = response.bytes().await.expect("bytes").to_vec();
    let files = application::jobs::steps::unzip(&bytes).expect("a zip");
    files.into_iter().map(|f| (f.name, f.bytes)).collect()
}

// ---------------------------------------------------------------- results

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_by_webhook_create_a_model_and_its_images() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let before = held(&balance(&app, &key).await);
    let (model_id, creation_job) = fal_model(&app, &fake, &key).await;
    let creation = job(&app, &key, &creation_job).await;
    let creation_cost = creation["cost_credits"].as_i64().expect("cost");
    assert_eq!(held(&balance(&app, &key).await), (before.0 - creation_cost, 0), "one price, deducted once for every step");

    // Three batches of four training images (none drawn with a LoRA yet), then the trainer.
    let submitted = fake.submits();
    let apps: Vec<&str> = submitted.iter().map(|(app, _)| app.as_str()).collect();
    assert_eq!(apps, ["fal-ai/flux-lora", "fal-ai/flux-lora", "fal-ai/flux-lora", TRAINER], "{submitted:?}");
    let steps: Vec<String> = events_of(&creation, "JobStepCompleted").iter().map(|e| e["data"]["step"].as_str().expect("step").to_string()).collect();
    assert_eq!(steps, ["training-images-1", "training-images-2", "training-images-3", "training-set"]);
    let requests = requests_of(&creation);
    for request in &requests[..3] {
        let input = fake.request(request).input;
        assert_eq!((input["num_images"].as_u64(), &input["loras"]), (Some(4), &json!([])), "{input}");
        assert!(input["prompt"].as_str().is_some_and(|p| p.starts_with("a runner, golden hour")), "{input}");
    }
    let trigger = domain::models::trigger_word(model_id.parse().expect("model id"));
    let training = fake.request(&requests[3]).input;
    assert_eq!((&training["trigger_word"], &training["is_style"], &training["create_masks"]), (&json!(trigger), &json!(false), &json!(true)));
    let set = training_set(&training).await;
    assert_eq!(set.iter().filter(|(name, _)| name.ends_with(".png")).count(), 12, "the images fal drew");
    for (name, bytes) in set.iter().filter(|(name, _)| name.ends_with(".txt")) {
        let caption = String::from_utf8(bytes.clone()).expect("utf-8 caption");
        assert!(caption.starts_with(&trigger) && caption.contains("a runner, golden hour"), "{name}: {caption}");
    }
    // The trainer's weights are the model's artifact, beside a pointer naming them.
    let outputs = &events_of(&creation, "JobCompleted")[0]["data"]["outputs"];
    let keys: Vec<&str> = outputs.as_array().expect("outputs").iter().map(|o| o["key"].as_str().expect("key")).collect();
    assert!(keys.iter().any(|k| k.ends_with("/v1/lora.safetensors")) && keys.iter().any(|k| k.ends_with("/v1/model.json")), "{keys:?}");

    // Refinement draws new images with v1's weights (a signed URL fal can fetch), adds them
    // to v1's set and trains version 2.
    let (status, refined) = call(&app, &key, Method::POST, &format!("/api/models/{model_id}/refine"), Some(json!({"prompt": "sharper jawline"}))).await;
    assert_eq!(status, 202, "{refined}");
    let refinement = refined["job"]["job_id"].as_str().expect("job").to_string();
    let refinement_requests = complete_every_request(&app, &fake, &key, &refinement).await;
    assert_eq!(job(&app, &key, &refinement).await["status"], "completed");
    let first = fake.request(&refinement_requests[0]).input;
    assert!(first["prompt"].as_str().is_some_and(|p| p.starts_with(&format!("{trigger} sharper jawline"))), "{first}");
    let base_lora = reqwest::get(first["loras"][0]["path"].as_str().expect("v1's lora")).await.expect("fetch");
    assert_eq!(base_lora.bytes().await.expect("bytes").to_vec(), lora_bytes(&requests[3]), "v1's weights");
    let refinement_request = refinement_requests.last().expect("trainer request").clone();
    let merged = training_set(&fake.request(&refinement_request).input).await;
    let images = |version: &str| merged.iter().filter(|(name, _)| name.starts_with(version) && name.ends_with(".png")).count();
    assert_eq!((images("v1-"), images("v2-")), (12, 12), "v1's set and the new images");
    let (_, model) = call(&app, &key, Method::GET, &format!("/api/models/{model_id}"), None).await;
    assert_eq!(model["current_version"], 2, "{model}");

    let before = held(&balance(&app, &key).await);
    let (generation, cost) = generate(&app, &key, &model_id, 2).await;
    let request_id = request_of(&app, &key, &generation).await;
    let request = fake.request(&request_id);
    assert_eq!(request.app, "fal-ai/flux-lora");
    assert_eq!(request.webhook.as_deref(), Some(app.url("/api/webhooks/fal").as_str()));
    assert_eq!((request.input["num_images"].as_u64(), &request.input["image_size"]), (Some(2), &json!({"width": 512, "height": 512})));
    // fal fetches the LoRA from Kiln by signed URL.
    let lora_url = request.input["loras"][0]["path"].as_str().expect("lora url");
    let lora = reqwest::get(lora_url).await.expect("fetch lora");
    assert_eq!(lora.status(), 200);
    assert_eq!(lora.bytes().await.expect("bytes").to_vec(), lora_bytes(&refinement_request), "version 2's weights");

    fake.complete(&request_id);
    let ack = deliver(&app, &fake, &request_id).await;
    assert_eq!((ack["outcome"].as_str(), ack["job_id"].as_str()), (Some("applied"), Some(generation.as_str())));
    assert_eq!(job(&app, &key, &generation).await["status"], "completed");
    let (_, images) = call(&app, &key, Method::GET, &format!("/api/generate/{generation}/images"), None).await;
    let urls: Vec<&str> = images["images"].as_array().expect("images").iter().map(|i| i["url"].as_str().expect("url")).collect();
    assert_eq!(urls.len(), 2);
    for (n, url) in urls.iter().enumerate() {
        let bytes = reqwest::get(*url).await.expect("image").bytes().await.expect("bytes");
        assert_eq!(Some(bytes.to_vec()), fake.file(&format!("{request_id}-{n}.png")), "image {n} is fal's");
    }
    assert_eq!(held(&balance(&app, &key).await), (before.0 - cost, 0), "the price deducted, nothing held");
    assert_eq!(fake.violations(), Vec::new(), "every request (training images, trainer, generation) fits its app's input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missed_webhook_is_made_up_for_by_polling_with_progress_recorded() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 1).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let (generation, cost) = generate(&app, &key, &model_id, 1).await;
    let before = held(&balance(&app, &key).await);
    let request_id = request_of(&app, &key, &generation).await;

    // The webhook never comes. A job without news for `stale_after` is polled; the test
    // clock stands still, so it is moved on to make the job quiet.
    fake.set_stage(&request_id, Stage::Queued(3));
    app.clock.advance(chrono::Duration::seconds(5));
    let queued = |j: &Value| events_of(j, "JobProgressed").iter().any(|e| e["data"]["queue_position"] == 3);
    wait_job(&app, &key, &generation, "queue position 3", queued).await;

    fake.set_stage(&request_id, Stage::Running(vec!["loading LoRA".into(), "step 10/28".into()]));
    app.clock.advance(chrono::Duration::seconds(5));
    let running = |j: &Value| j["status"] == "running" && events_of(j, "JobProgressed").iter().any(|e| e["data"]["logs"] == json!(["loading LoRA", "step 10/28"]));
    wait_job(&app, &key, &generation, "running with logs", running).await;

    fake.complete(&request_id);
    app.clock.advance(chrono::Duration::seconds(5));
    let done = wait_final(&app, &key, &generation).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, images) = call(&app, &key, Method::GET, &format!("/api/generate/{generation}/images"), None).await;
    assert_eq!(images["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(held(&balance(&app, &key).await), (before.0, before.1 - cost));

    // The webhook, arriving late after all, changes nothing.
    let total = events_total(&app).await;
    assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "already_final");
    assert_eq!(events_total(&app).await, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_errors_fail_the_job_with_fals_message_and_refund() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let start = held(&balance(&app, &key).await);

    // Failed at fal after acceptance: reported by the ERROR webhook.
    let (failing, _) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &failing).await;
    fake.fail(&request_id, "prompt contains forbidden words");
    assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "applied");
    let failed = wait_final(&app, &key, &failing).await;
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().expect("error");
    assert!(error.contains("prompt contains forbidden words"), "{error}");

    // A signed delivery whose message holds a NUL still ends its job (the character
    // replaced), never a 5xx that fal would deliver again.
    let (nul, _) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &nul).await;
    fake.fail(&request_id, "bad\u{0}byte");
    assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "applied");
    let failed = wait_final(&app, &key, &nul).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("bad\u{fffd}byte")), "{failed}");

    // Refused at submission (validation error): failed at once, fal's message kept.
    fake.refuse_next_submit("image_size is too large");
    let (refused, _) = generate(&app, &key, &model_id, 1).await;
    let failed = wait_final(&app, &key, &refused).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("image_size is too large")), "{failed}");
    assert_eq!(held(&balance(&app, &key).await), start, "both refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_refused_with_503_is_retried_and_succeeds() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let made = fake.submits().len();
    fake.fail_next_submits(1);
    let (generation, _) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &generation).await;
    let submits = fake.submits();
    assert_eq!(submits[made..], [("fal-ai/flux-lora".to_string(), 503), ("fal-ai/flux-lora".to_string(), 200)]);
    fake.complete(&request_id);
    deliver(&app, &fake, &request_id).await;
    let done = wait_final(&app, &key, &generation).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("completed"), Some(1)), "{done}");
}

/// fal timing out (no answer within `fal.request_timeout_secs`, every try), then
/// answering 503 (every try): each time the job goes back to the queue with its
/// reservation held; once fal answers, it runs and is charged once.
pub(crate) async fn a_provider_timing_out_then_answering_5xx_delays_the_job_and_charges_it_once() {
    let fake = FakeFal::default();
    let (app, _) = spawn_with(&fake, |s| {
        s.jobs.stale_after_secs = 300;
        s.fal.request_timeout_secs = 1;
        s.fal.attempts_max = 2;
    })
    .await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let put_back = |job_id: String, times: i64| {
        let app = &app;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let (retries,): (i64,) = infrastructure::db_fetch_optional!(
                    &app.state.db,
                    (i64,),
                    "SELECT COUNT(*) FROM events WHERE aggregate_id = $1 AND event_type = 'JobRetryScheduled'",
                    job_id.as_str()
                )
                .expect("query")
                .expect("a count");
                if retries >= times {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "job {job_id} was not put back {times} times");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    fake.delay_submits(Duration::from_secs(3));
    let (generation, _) = generate(&app, &key, &model_id, 1).await;
    put_back(generation.clone(), 1).await;
    let (_, reserved) = held(&balance(&app, &key).await);
    assert!(reserved > 0, "the reservation is held while the job waits");

    fake.delay_submits(Duration::ZERO);
    fake.fail_next_submits(2);
    // The retry's backoff runs on the app's clock.
    app.clock.advance(chrono::Duration::seconds(60));
    put_back(generation.clone(), 2).await;

    app.clock.advance(chrono::Duration::seconds(600));
    let request_id = request_of(&app, &key, &generation).await;
    fake.complete(&request_id);
    deliver(&app, &fake, &request_id).await;
    let done = wait_final(&app, &key, &generation).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_i64()), (Some("completed"), Some(3)), "{done}");
    crate::lost_connection::assert_each_ended_once(&app, &std::collections::HashMap::from([(team_id, (key, vec![generation]))])).await;
}

// ---------------------------------------------------------------- webhook security and idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_foreign_and_stale_webhooks_are_refused_and_change_nothing() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let (generation, _) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &generation).await;
    fake.complete(&request_id);
    let total = events_total(&app).await;
    let now = app.clock.now().timestamp();

    let refusals = [
        ("forged", fake.post_webhook(&request_id, fake.webhook_body(&request_id), &now.to_string(), Some(&hex::encode([7u8; 64]))).await),
        ("wrong key", fake.deliver_signed(&request_id, &SigningKey::from_bytes(&[9; 32]), now).await),
        ("stale", fake.deliver_signed(&request_id, &fal_signing_key(), now - 301).await),
        ("future", fake.deliver_signed(&request_id, &fal_signing_key(), now + 301).await),
        ("unsigned", fake.post_webhook(&request_id, fake.webhook_body(&request_id), &now.to_string(), None).await),
    ];
    for (what, response) in refusals {
        assert_eq!(response.status(), 401, "{what}");
        let problem = body(response).await;
        assert_eq!(problem["type"], "/problems/invalid-fal-signature", "{what}: {problem}");
    }
    // A body altered after signing.
    let signed_at = now.to_string();
    let body_signed = fake.webhook_body(&request_id);
    let message = infrastructure::provider::fal::webhook::signed_message(&request_id, fake::USER_ID, &signed_at, &body_signed);
    let signature = hex::encode(ed25519_dalek::Signer::sign(&fal_signing_key(), &message).to_bytes());
    let mut tampered = body_signed.clone();
    tampered.extend_from_slice(b" ");
    let response = fake.post_webhook(&request_id, tampered, &signed_at, Some(&signature)).await;
    assert_eq!(response.status(), 401, "tampered body");

    assert_eq!(events_total(&app).await, total, "nothing recorded");
    assert_eq!(job(&app, &key, &generation).await["status"], "running", "accepted by fal: running");
    assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "applied", "the genuine delivery still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_webhook_twice_completes_once() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let before = held(&balance(&app, &key).await);
    let (generation, cost) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &generation).await;
    fake.complete(&request_id);
    // Both deliveries at once, then a third later.
    let (first, second) = tokio::join!(deliver(&app, &fake, &request_id), deliver(&app, &fake, &request_id));
    let outcomes = [first["outcome"].as_str().expect("outcome"), second["outcome"].as_str().expect("outcome")];
    assert!(outcomes.contains(&"applied"), "{outcomes:?}");
    let total = events_total(&app).await;
    assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "already_final");
    assert_eq!(events_total(&app).await, total);
    let view = job(&app, &key, &generation).await;
    assert_eq!(events_of(&view, "JobCompleted").len(), 1, "{view}");
    let after = balance(&app, &key).await;
    assert_eq!(held(&after), (before.0 - cost, 0));
    // A webhook of a request Kiln never made is acknowledged.
    let (stranger, _) = generate(&app, &key, &model_id, 1).await;
    let stranger_request = request_of(&app, &key, &stranger).await;
    fake.complete(&stranger_request);
    infrastructure::db_execute!(&app.state.db, "UPDATE jobs SET provider_request_id = NULL WHERE job_id = $1", &stranger).expect("forget");
    assert_eq!(deliver(&app, &fake, &stranger_request).await["outcome"], "ignored");
}

// ---------------------------------------------------------------- cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_fal_in_queue_and_in_progress_and_refunds_once() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let start = held(&balance(&app, &key).await);

    for stage in [Stage::Queued(2), Stage::Running(vec!["step 3/28".into()])] {
        let (generation, _) = generate(&app, &key, &model_id, 1).await;
        let request_id = request_of(&app, &key, &generation).await;
        fake.set_stage(&request_id, stage.clone());
        let (status, cancelled) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{generation}"), None).await;
        assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{stage:?}: {cancelled}");
        assert!(fake.cancels().contains(&request_id), "{stage:?}: fal was asked to cancel");
        assert_eq!(fake.request(&request_id).stage, Stage::Cancelled);

        // fal finished anyway (the cancel raced the result): the late result is dropped.
        fake.complete(&request_id);
        let total = events_total(&app).await;
        assert_eq!(deliver(&app, &fake, &request_id).await["outcome"], "already_final");
        assert_eq!(events_total(&app).await, total, "{stage:?}");
        let (status, again) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{generation}"), None).await;
        // Cancelling again is refused (the job has ended) and changes nothing.
        assert_eq!((status, again["type"].as_str()), (409, Some("/problems/job-already-finished")), "{again}");
        let (_, images) = call(&app, &key, Method::GET, &format!("/api/generate/{generation}/images"), None).await;
        assert_eq!(images["images"].as_array().map(Vec::len), Some(0));
    }
    let end = balance(&app, &key).await;
    assert_eq!(held(&end), start, "both refunded, once each: {end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_cancelled_during_its_submission_is_cancelled_at_fal_too() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let start = held(&balance(&app, &key).await);
    fake.delay_submits(Duration::from_millis(1_000));
    let (generation, _) = generate(&app, &key, &model_id, 1).await;
    wait_job(&app, &key, &generation, "dispatch", |j| j["status"] == "dispatched").await;
    // fal has not answered yet: Kiln knows no request id to cancel.
    let (status, cancelled) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{generation}"), None).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    // The worker learns the request id once fal answers, and cancels it there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.cancels().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the request was never cancelled at fal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request_id = fake.cancels()[0].clone();
    assert_eq!(fake.request(&request_id).stage, Stage::Cancelled);
    assert_eq!(job(&app, &key, &generation).await["status"], "cancelled");
    assert_eq!(held(&balance(&app, &key).await), start, "refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_found_by_polling_refunds() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 1).await;
    let key = team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let start = held(&balance(&app, &key).await);
    let (generation, _) = generate(&app, &key, &model_id, 1).await;
    let request_id = request_of(&app, &key, &generation).await;
    fake.fail(&request_id, "NSFW content detected");
    app.clock.advance(chrono::Duration::seconds(5));
    let failed = wait_final(&app, &key, &generation).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("NSFW content detected")), "{failed}");
    assert_eq!(held(&balance(&app, &key).await), start);
}

#[tokio::test]
async fn without_a_fal_key_the_local_provider_runs_and_the_webhook_is_closed() {
    let app = TestApp::spawn(TestDb::postgres().await).await;
    assert_eq!(app.state.provider.name(), "local");
    let response = app.client.post(app.url("/api/webhooks/fal")).body("{}").send().await.expect("request");
    assert_eq!(response.status(), 503);
    assert_eq!(body(response).await["type"], "/problems/fal-not-configured");
    let openapi: Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(openapi["paths"]["/api/webhooks/fal"]["post"].is_object(), "documented");
}
