//! A fake fal.ai on loopback: the queue API (submit, status, result, cancel), the result
//! files it hands out, and a JWKS with a test ED25519 key with which it signs webhooks.
//! Tests steer each request (queued, running, completed, failed) and decide when, and
//! how (signed right, forged, stale), its webhook is delivered.
//!
//! Every submission is checked as fal checks it: against the input schema of the app it
//! targets (`schemas/`, see its README) and, for a trainer, by downloading
//! `images_data_url` (a zip holding at least one image). What fal would refuse is answered
//! with fal's 422 `{"detail": [{"loc": ["body", field], "msg", "type"}]}` and recorded
//! ([`FakeFal::violations`]), so a test can assert that Kiln sent nothing fal refuses.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use serde_json::{json, Value};

pub const FAL_KEY: &str = "test-fal-key";
pub const USER_ID: &str = "fal-user-1";

/// The key the fake's JWKS publishes.
pub fn fal_signing_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Queued(u32),
    Running(Vec<String>),
    Done(Value),
    /// Completed with an error: the result answers 422 with this body.
    Failed(Value),
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub app: String,
    pub input: Value,
    pub webhook: Option<String>,
    pub stage: Stage,
    /// A trainer's: the file names in the zip at `images_data_url`, in archive order.
    pub training_files: Vec<String>,
}

/// The input an app takes, by its schema in `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppInput {
    /// `fal-ai/flux-lora`: text-to-image with LoRAs.
    TextToImage,
    /// `fal-ai/flux-lora-fast-training`: a LoRA trainer.
    Trainer,
}

/// One refusal of a submission, as fal words it (an item of the 422's `detail`).
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub app: String,
    /// `["body", field, …]` (array items by index).
    pub loc: Vec<Value>,
    pub msg: String,
    /// pydantic's error type: `missing`, `extra_forbidden`, `literal_error`, …
    pub kind: String,
}

#[derive(Default)]
struct Inner {
    requests: HashMap<String, FakeRequest>,
    /// Every submission attempt, in order: (app, answered status).
    submits: Vec<(String, u16)>,
    /// Everything fal would have refused, in order.
    violations: Vec<Violation>,
    /// Apps a test declared, beside those known by name.
    apps: HashMap<String, AppInput>,
    cancels: Vec<String>,
    /// Submissions still to answer 503.
    submit_outages: u32,
    /// The next submission is refused with 422 and this detail.
    submit_refusal: Option<String>,
    /// How long a submission takes to be answered.
    submit_delay: std::time::Duration,
    /// Result files by name.
    files: HashMap<String, Vec<u8>>,
    next_id: u64,
}

#[derive(Clone, Default)]
pub struct FakeFal {
    inner: Arc<Mutex<Inner>>,
    base: Arc<Mutex<String>>,
}

impl FakeFal {
    pub async fn start(&self) -> String {
        let router = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/files/{name}", get(file))
            .route("/{owner}/{name}", post(submit))
            .route("/{owner}/{name}/requests/{id}/status", get(status))
            .route("/{owner}/{name}/requests/{id}", get(result))
            .route("/{owner}/{name}/requests/{id}/cancel", put(cancel))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake fal");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        *self.base.lock().expect("lock") = base.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        base
    }

    fn base(&self) -> String {
        self.base.lock().expect("lock").clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("lock"))
    }

    pub fn request(&self, id: &str) -> FakeRequest {
        self.with(|i| i.requests.get(id).cloned()).unwrap_or_else(|| panic!("fake fal has no request {id}"))
    }

    pub fn submits(&self) -> Vec<(String, u16)> {
        self.with(|i| i.submits.clone())
    }

    pub fn cancels(&self) -> Vec<String> {
        self.with(|i| i.cancels.clone())
    }

    /// Everything fal would have refused so far (submissions answered 404 or 422 by the
    /// checks, not by [`Self::refuse_next_submit`]).
    pub fn violations(&self) -> Vec<Violation> {
        self.with(|i| i.violations.clone())
    }

    /// Serves `app` (`owner/name`) with the input `input` — for a test that configures
    /// Kiln with an app other than those the fake knows by name.
    pub fn serve_app(&self, app: &str, input: AppInput) {
        self.with(|i| i.apps.insert(app.to_string(), input));
    }

    /// The input `app` takes: a declared app's, else a trainer's for a name containing
    /// `training`, a text-to-image's for `fal-ai/flux-lora`; `None`: fal knows no such app.
    fn input_of(&self, app: &str) -> Option<AppInput> {
        if let Some(input) = self.with(|i| i.apps.get(app).copied()) {
            return Some(input);
        }
        if app.contains("training") {
            Some(AppInput::Trainer)
        } else if app == "fal-ai/flux-lora" {
            Some(AppInput::TextToImage)
        } else {
            None
        }
    }

    pub fn fail_next_submits(&self, outages: u32) {
        self.with(|i| i.submit_outages = outages);
    }

    pub fn delay_submits(&self, delay: std::time::Duration) {
        self.with(|i| i.submit_delay = delay);
    }

    pub fn refuse_next_submit(&self, detail: &str) {
        self.with(|i| i.submit_refusal = Some(detail.to_string()));
    }

    pub fn set_stage(&self, id: &str, stage: Stage) {
        self.with(|i| i.requests.get_mut(id).expect("request").stage = stage);
    }

    /// Completes the request successfully: a trainer yields LoRA weights, a generation
    /// `num_images` PNGs; the files are served by the fake.
    pub fn complete(&self, id: &str) -> Value {
        let request = self.request(id);
        let base = self.base();
        let payload = if request.app.contains("training") {
            let name = format!("{id}.safetensors");
            self.with(|i| i.files.insert(name.clone(), lora_bytes(id)));
            json!({
                "diffusers_lora_file": {"url": format!("{base}/files/{name}"), "content_type": "application/octet-stream",
                    "file_name": "pytorch_lora_weights.safetensors", "file_size": lora_bytes(id).len()},
                "config_file": {"url": format!("{base}/files/{id}-config.json")},
            })
        } else {
            let count = request.input["num_images"].as_u64().unwrap_or(1);
            let size = &request.input["image_size"];
            let (w, h) = (size["width"].as_u64().unwrap_or(64) as u32, size["height"].as_u64().unwrap_or(64) as u32);
            let images: Vec<Value> = (0..count)
                .map(|n| {
                    let name = format!("{id}-{n}.png");
                    // Each request's images differ from another's (a split generation's
                    // parts are told apart by their bytes).
                    let mut seed = [n as u8; 32];
                    seed.iter_mut().zip(id.bytes()).for_each(|(s, b)| *s ^= b);
                    let png = infrastructure::provider::render::render_png(&seed, w.min(64), h.min(64)).expect("png");
                    self.with(|i| i.files.insert(name.clone(), png));
                    json!({"url": format!("{base}/files/{name}"), "width": w, "height": h, "content_type": "image/png"})
                })
                .collect();
            json!({"images": images, "seed": 7, "has_nsfw_concepts": vec![false; count as usize], "prompt": request.input["prompt"]})
        };
        self.set_stage(id, Stage::Done(payload.clone()));
        payload
    }

    /// Fails the request with a validation error, as fal reports them.
    pub fn fail(&self, id: &str, message: &str) {
        self.set_stage(id, Stage::Failed(json!({"detail": [{"loc": ["body", "prompt"], "msg": message, "type": "value_error"}]})));
    }

    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|i| i.files.get(name).cloned())
    }

    /// The webhook body of the request's current (final) stage.
    pub fn webhook_body(&self, id: &str) -> Vec<u8> {
        let body = match self.request(id).stage {
            Stage::Done(payload) => json!({"request_id": id, "gateway_request_id": id, "status": "OK", "payload": payload, "error": null}),
            Stage::Failed(payload) => {
                json!({"request_id": id, "gateway_request_id": id, "status": "ERROR", "payload": payload, "error": "Invalid status code: 422"})
            }
            other => panic!("request {id} is not final: {other:?}"),
        };
        serde_json::to_vec(&body).expect("json")
    }

    /// Delivers the request's webhook to the URL it was submitted with, signed by
    /// `key` at `timestamp` (fal's way); returns Kiln's answer.
    pub async fn deliver_signed(&self, id: &str, key: &SigningKey, timestamp: i64) -> reqwest::Response {
        let body = self.webhook_body(id);
        let message = infrastructure::provider::fal::webhook::signed_message(id, USER_ID, &timestamp.to_string(), &body);
        let signature = hex::encode(key.sign(&message).to_bytes());
        self.post_webhook(id, body, &timestamp.to_string(), Some(&signature)).await
    }

    pub async fn post_webhook(&self, id: &str, body: Vec<u8>, timestamp: &str, signature: Option<&str>) -> reqwest::Response {
        let url = self.request(id).webhook.expect("submitted with a webhook URL");
        let mut request = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("X-Fal-Webhook-Request-Id", id)
            .header("X-Fal-Webhook-User-Id", USER_ID)
            .header("X-Fal-Webhook-Timestamp", timestamp);
        if let Some(signature) = signature {
            request = request.header("X-Fal-Webhook-Signature", signature);
        }
        request.body(body).send().await.expect("webhook delivery")
    }
}

pub fn lora_bytes(id: &str) -> Vec<u8> {
    format!("fake LoRA weights of {id}").into_bytes()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Key {FAL_KEY}"))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn jwks() -> Json<Value> {
    let x = URL_SAFE_NO_PAD.encode(fal_signing_key().verifying_key().to_bytes());
    Json(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "test", "use": "sig"}]}))
}

async fn file(State(fake): State<FakeFal>, Path(name): Path<String>) -> Response {
    match fake.file(&name) {
        Some(bytes) => bytes.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn submit(
    State(fake): State<FakeFal>,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(input): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return answer(StatusCode::UNAUTHORIZED, json!({"detail": "No user found for Key ID and Secret"}));
    }
    let app = format!("{owner}/{name}");
    let base = fake.base();
    let Some(app_input) = fake.input_of(&app) else {
        fake.with(|i| {
            i.submits.push((app.clone(), 404));
            let msg = format!("Application '{name}' not found");
            i.violations.push(Violation { app: app.clone(), loc: vec![json!("path")], msg, kind: "not_found".into() });
        });
        return answer(StatusCode::NOT_FOUND, json!({"detail": format!("Application '{name}' not found")}));
    };
    let delay = fake.with(|i| i.submit_delay);
    tokio::time::sleep(delay).await;
    let overloaded = fake.with(|i| {
        let overloaded = i.submit_outages > 0;
        if overloaded {
            i.submit_outages -= 1;
            i.submits.push((app.clone(), 503));
        }
        overloaded
    });
    if overloaded {
        return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"detail": "overloaded"}));
    }
    let training_files = match check_input(app_input, &input).await {
        Ok(files) => files,
        Err(details) => {
            fake.with(|i| {
                i.submits.push((app.clone(), 422));
                i.violations.extend(details.iter().map(|d| Violation {
                    app: app.clone(),
                    loc: d["loc"].as_array().cloned().unwrap_or_default(),
                    msg: d["msg"].as_str().unwrap_or_default().to_string(),
                    kind: d["type"].as_str().unwrap_or_default().to_string(),
                }));
            });
            return answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"detail": details}));
        }
    };
    fake.with(|i| {
        if let Some(detail) = i.submit_refusal.take() {
            i.submits.push((app.clone(), 422));
            return answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"detail": [{"loc": ["body", "image_size"], "msg": detail, "type": "value_error"}]}));
        }
        i.next_id += 1;
        let id = format!("req-{:04}", i.next_id);
        i.submits.push((app.clone(), 200));
        let webhook = query.get("fal_webhook").cloned();
        i.requests.insert(id.clone(), FakeRequest { app: app.clone(), input, webhook, stage: Stage::Queued(1), training_files });
        let urls = format!("{base}/{app}/requests/{id}");
        answer(StatusCode::OK, json!({"request_id": id, "status_url": format!("{urls}/status"), "response_url": urls, "cancel_url": format!("{urls}/cancel")}))
    })
}

// ---------------------------------------------------------------- input checks

static TEXT_TO_IMAGE: LazyLock<jsonschema::Validator> = LazyLock::new(|| validator(include_str!("schemas/flux-lora.json")));
static TRAINER: LazyLock<jsonschema::Validator> = LazyLock::new(|| validator(include_str!("schemas/flux-lora-fast-training.json")));

/// Image files a trainer learns from (by extension, any case).
const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn validator(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("a valid draft 2020-12 schema")
}

/// What fal checks of a submission before queueing it. Ok: the zip's file names for a
/// trainer (nothing for other apps); Err: the 422's `detail` items.
async fn check_input(app_input: AppInput, input: &Value) -> Result<Vec<String>, Vec<Value>> {
    let validator = match app_input {
        AppInput::TextToImage => &*TEXT_TO_IMAGE,
        AppInput::Trainer => &*TRAINER,
    };
    let details: Vec<Value> = validator.iter_errors(input).flat_map(|error| details_of(&error)).collect();
    if !details.is_empty() {
        return Err(details);
    }
    match app_input {
        AppInput::TextToImage => Ok(Vec::new()),
        AppInput::Trainer => {
            let url = input["images_data_url"].as_str().expect("a string, by the schema");
            training_files(url).await.map_err(|msg| vec![json!({"loc": ["body", "images_data_url"], "msg": msg, "type": "value_error"})])
        }
    }
}

/// A schema error in fal's words (pydantic's): `loc` from `body` to the field, `msg`, `type`.
fn details_of(error: &jsonschema::ValidationError<'_>) -> Vec<Value> {
    let mut loc = vec![json!("body")];
    loc.extend(error.instance_path().iter().map(|segment| match segment {
        LocationSegment::Property(name) => json!(name),
        LocationSegment::Index(index) => json!(index),
    }));
    let under = |field: &str| [loc.clone(), vec![json!(field)]].concat();
    let detail = |loc: Vec<Value>, msg: String, kind: &str| json!({"loc": loc, "msg": msg, "type": kind});
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            vec![detail(under(property.as_str().unwrap_or_default()), "Field required".into(), "missing")]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            unexpected.iter().map(|field| detail(under(field), "Extra inputs are not permitted".into(), "extra_forbidden")).collect()
        }
        ValidationErrorKind::Enum { options } => vec![detail(loc, format!("Input should be {}", alternatives(options)), "literal_error")],
        ValidationErrorKind::Maximum { limit } => vec![detail(loc, format!("Input should be less than or equal to {limit}"), "less_than_equal")],
        ValidationErrorKind::Minimum { limit } => vec![detail(loc, format!("Input should be greater than or equal to {limit}"), "greater_than_equal")],
        ValidationErrorKind::ExclusiveMaximum { limit } => vec![detail(loc, format!("Input should be less than {limit}"), "less_than")],
        ValidationErrorKind::ExclusiveMinimum { limit } => vec![detail(loc, format!("Input should be greater than {limit}"), "greater_than")],
        ValidationErrorKind::Type { kind: TypeKind::Single(expected) } => {
            let (what, kind) = match expected.as_str() {
                "integer" => ("a valid integer", "int_type"),
                "number" => ("a valid number", "float_type"),
                "boolean" => ("a valid boolean", "bool_type"),
                "string" => ("a valid string", "string_type"),
                "array" => ("a valid list", "list_type"),
                "object" => ("a valid dictionary", "dict_type"),
                _ => ("null", "none_required"),
            };
            vec![detail(loc, format!("Input should be {what}"), kind)]
        }
        _ => vec![detail(loc, error.to_string(), "value_error")],
    }
}

/// `'a', 'b' or 'c'`, as pydantic lists a literal's values.
fn alternatives(options: &Value) -> String {
    let quoted: Vec<String> = options.as_array().into_iter().flatten().map(|o| o.as_str().map_or_else(|| o.to_string(), |s| format!("'{s}'"))).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Downloads a trainer's `images_data_url` as fal does and reads it: a zip archive whose
/// entries all read back (CRC checked), holding at least one image. Returns its file names.
async fn training_files(url: &str) -> Result<Vec<String>, String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
    let unreachable = |why: String| format!("Could not download the training data from images_data_url: {why}");
    let response = http.get(url).send().await.map_err(|e| unreachable(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(unreachable(format!("HTTP {}", response.status())));
    }
    let bytes = response.bytes().await.map_err(|e| unreachable(e.without_url().to_string()))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("images_data_url is not a zip archive: {e}"))?;
    let mut files = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| format!("entry {index} of the zip archive cannot be read: {e}"))?;
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| format!("{} in the zip archive cannot be read: {e}", entry.name()))?;
        if entry.is_file() {
            files.push(entry.name().to_string());
        }
    }
    if !files.iter().any(|name| is_training_image(name)) {
        return Err(format!("The zip archive holds no image ({}); found {files:?}", IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")));
    }
    Ok(files)
}

fn is_training_image(name: &str) -> bool {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    !name.starts_with("__MACOSX/") && extension.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

// ---------------------------------------------------------------- status, result, cancel

/// The request if it exists under this app (fal's URLs name the app).
fn lookup(fake: &FakeFal, owner: &str, name: &str, id: &str) -> Option<FakeRequest> {
    fake.with(|i| i.requests.get(id).cloned()).filter(|r| r.app == format!("{owner}/{name}"))
}

async fn status(State(fake): State<FakeFal>, Path((owner, name, id)): Path<(String, String, String)>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return answer(StatusCode::UNAUTHORIZED, json!({"detail": "unauthorized"}));
    }
    let Some(request) = lookup(&fake, &owner, &name, &id) else {
        return answer(StatusCode::NOT_FOUND, json!({"detail": "Request not found"}));
    };
    let response_url = format!("{}/{owner}/{name}/requests/{id}", fake.base());
    let logs = |lines: &[String]| lines.iter().map(|m| json!({"message": m, "level": "INFO", "timestamp": "2026-01-01T00:00:00Z"})).collect::<Vec<_>>();
    let body = match &request.stage {
        Stage::Queued(position) => json!({"status": "IN_QUEUE", "queue_position": position, "response_url": response_url}),
        Stage::Running(lines) => json!({"status": "IN_PROGRESS", "logs": logs(lines), "response_url": response_url}),
        Stage::Done(_) | Stage::Failed(_) | Stage::Cancelled => json!({"status": "COMPLETED", "logs": [], "response_url": response_url}),
    };
    answer(StatusCode::OK, body)
}

async fn result(State(fake): State<FakeFal>, Path((owner, name, id)): Path<(String, String, String)>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return answer(StatusCode::UNAUTHORIZED, json!({"detail": "unauthorized"}));
    }
    match lookup(&fake, &owner, &name, &id).map(|r| r.stage) {
        Some(Stage::Done(payload)) => answer(StatusCode::OK, payload),
        Some(Stage::Failed(body)) => answer(StatusCode::UNPROCESSABLE_ENTITY, body),
        Some(Stage::Cancelled) => answer(StatusCode::BAD_REQUEST, json!({"detail": "Request was cancelled"})),
        Some(_) => answer(StatusCode::BAD_REQUEST, json!({"detail": "Request is still in progress"})),
        None => answer(StatusCode::NOT_FOUND, json!({"detail": "Request not found"})),
    }
}

async fn cancel(State(fake): State<FakeFal>, Path((owner, name, id)): Path<(String, String, String)>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return answer(StatusCode::UNAUTHORIZED, json!({"detail": "unauthorized"}));
    }
    let Some(request) = lookup(&fake, &owner, &name, &id) else {
        return answer(StatusCode::NOT_FOUND, json!({"status": "NOT_FOUND"}));
    };
    fake.with(|i| i.cancels.push(id.clone()));
    match request.stage {
        Stage::Queued(_) | Stage::Running(_) => {
            fake.set_stage(&id, Stage::Cancelled);
            answer(StatusCode::ACCEPTED, json!({"status": "CANCELLATION_REQUESTED"}))
        }
        _ => answer(StatusCode::BAD_REQUEST, json!({"status": "ALREADY_COMPLETED"})),
    }
}
