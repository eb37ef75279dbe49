//! Pure translations between Kiln's jobs and fal's JSON: request bodies, queue status,
//! result payloads and error messages. No I/O here, so all of it is tested by tables.

use application::provider::{ProviderRequest, Task};
use domain::models::trigger_word;
use domain::jobs::JobInput;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::render::parse_resolution;

/// The file name under which a model version's LoRA weights are stored.
pub const LORA_FILE: &str = "lora.safetensors";
/// The model version's pointer file (what the model's `artifact_key` names).
pub const MODEL_POINTER_FILE: &str = "model.json";
/// Log lines of one status answer kept on a `JobProgressed` (bounded).
pub const LOG_LINES_MAX: usize = 20;
/// Characters of fal's error text kept in a job's failure reason.
const MESSAGE_CHARS_MAX: usize = 500;

/// What fal's queue says about a request (`GET …/requests/{id}/status`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QueueStatus {
    /// IN_QUEUE | IN_PROGRESS | COMPLETED
    pub status: String,
    #[serde(default)]
    pub queue_position: Option<u32>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub logs: Option<Vec<LogLine>>,
    /// Set on COMPLETED when the request failed.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LogLine {
    #[serde(default)]
    pub message: String,
}

impl QueueStatus {
    /// The newest log messages, at most [`LOG_LINES_MAX`].
    pub fn log_messages(&self) -> Vec<String> {
        let lines = self.logs.as_deref().unwrap_or_default();
        let skip = lines.len().saturating_sub(LOG_LINES_MAX);
        lines.iter().skip(skip).map(|l| l.message.clone()).filter(|m| !m.is_empty()).collect()
    }
}

/// fal's answer to a submission.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Queued {
    pub request_id: String,
    #[serde(default)]
    pub status_url: Option<String>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub cancel_url: Option<String>,
}

/// A file a result points at, to be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The name Kiln stores it under within the job's folder.
    pub name: String,
    pub url: String,
    pub content_type: String,
}

/// What a result payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultFiles {
    Images(Vec<FileRef>),
    /// A trainer's LoRA weights (and the pointer that names them).
    Lora(FileRef),
}

/// The queue path of an app id: fal's status, result and cancel URLs name the app
/// (`owner/name`) without the endpoint path a submission may carry.
pub fn queue_app(app_id: &str) -> String {
    app_id.trim_matches('/').split('/').take(2).collect::<Vec<_>>().join("/")
}

/// Inference steps per quality: more steps, finer images.
fn steps_of(quality: &str) -> u32 {
    match quality {
        "hd" => 40,
        _ => 28,
    }
}

/// Side of the square training images asked of the text-to-image app.
const TRAINING_IMAGE_SIDE: u32 = 1024;
/// Most images fal's text-to-image apps draw per request (`fal-ai/flux-lora`:
/// `num_images` 1–4); a generation of more is split into parts (see
/// `application::jobs::steps::image_parts`).
pub const IMAGES_PER_REQUEST_MAX: u32 = 4;
/// Training steps asked of the trainer when the settings do not say.
pub const TRAINER_STEPS_DEFAULT: u32 = 1_000;

/// The JSON input of `request` for its fal app (see the README's fal section):
/// - images (`image_generation_app`, e.g. `fal-ai/flux-lora`): the prompt after the
///   model's trigger word, with `lora_url` (the version's weights) as the LoRA, the
///   task's `count` (one part of a larger generation, at most [`IMAGES_PER_REQUEST_MAX`]);
/// - training images (`training_images_app`, the same kind of app): the step's prompt at
///   1024², with the refined version's LoRA when there is one;
/// - training (`model_creation_app` / `model_refinement_app`, e.g.
///   `fal-ai/flux-lora-fast-training`): `images_data_url` (the signed URL of the zipped
///   set) named a zip, the trigger word, `steps`, `is_style`, and face masks for a subject.
pub fn request_body(request: &ProviderRequest, lora_url: Option<&str>, trainer_steps: u32) -> Result<Value, String> {
    match (&request.task, &request.input) {
        (Task::Images { count, .. }, JobInput::ImageGeneration { model_id, prompt, resolution, quality, .. }) => {
            if !(1..=IMAGES_PER_REQUEST_MAX).contains(count) {
                return Err(format!("fal draws 1 to {IMAGES_PER_REQUEST_MAX} images per request, not {count}"));
            }
            let (width, height) =
                parse_resolution(resolution).ok_or_else(|| format!("unsupported resolution {resolution:?} (expected WxH)"))?;
            let lora = lora_url.ok_or("the model version has no LoRA weights from fal (was it created by the local provider?)")?;
            Ok(json!({
                "prompt": format!("{} {prompt}", trigger_word(*model_id)),
                "image_size": {"width": width, "height": height},
                "num_images": count,
                "num_inference_steps": steps_of(quality),
                "output_format": "png",
                "enable_safety_checker": true,
                "loras": [{"path": lora, "scale": 1.0}],
            }))
        }
        (Task::TrainingImages { prompt, count }, input) => {
            let loras: Vec<Value> = match (input, lora_url) {
                (JobInput::ModelRefinement { .. }, Some(lora)) => vec![json!({"path": lora, "scale": 1.0})],
                (JobInput::ModelRefinement { .. }, None) => {
                    return Err("the model version has no LoRA weights from fal (was it created by the local provider?)".into())
                }
                _ => Vec::new(),
            };
            Ok(json!({
                "prompt": prompt,
                "image_size": {"width": TRAINING_IMAGE_SIDE, "height": TRAINING_IMAGE_SIDE},
                "num_images": count,
                "num_inference_steps": steps_of("hd"),
                "output_format": "png",
                "enable_safety_checker": true,
                "loras": loras,
            }))
        }
        (Task::Training { images_url, trigger_word, is_style }, JobInput::ModelCreation { .. } | JobInput::ModelRefinement { .. }) => Ok(json!({
            "images_data_url": images_url,
            "trigger_word": trigger_word,
            "steps": trainer_steps,
            "is_style": is_style,
            "create_masks": !is_style,
            // A signed URL ends in its query (`?X-Amz-…`), not `.zip`: fal infers the
            // archive's format from the URL unless it is named.
            "data_archive_format": "zip",
        })),
        (task, input) => Err(format!("no fal request for {task:?} of a {} job", input.operation().as_str())),
    }
}

/// The files a successful result points at: `images[].url` of a generation, or a
/// trainer's `diffusers_lora_file.url`.
pub fn result_files(payload: &Value) -> Result<ResultFiles, String> {
    if let Some(lora) = payload.get("diffusers_lora_file") {
        let url = lora.get("url").and_then(Value::as_str).ok_or("diffusers_lora_file has no url")?;
        let content_type = lora.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream");
        return Ok(ResultFiles::Lora(FileRef { name: LORA_FILE.into(), url: url.into(), content_type: content_type.into() }));
    }
    let images = payload.get("images").and_then(Value::as_array).ok_or("the result has neither images nor diffusers_lora_file")?;
    if images.is_empty() {
        return Err("the result has no images (all filtered?)".into());
    }
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let url = image.get("url").and_then(Value::as_str).ok_or_else(|| format!("image {i} has no url"))?;
            Ok(FileRef { name: format!("{i}.png"), url: url.into(), content_type: "image/png".into() })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(ResultFiles::Images)
}

/// The `model.json` pointer stored beside a LoRA: which file holds the weights and where
/// they came from.
pub fn model_pointer(request_id: Option<&str>, lora: &FileRef, payload: &Value) -> Value {
    json!({
        "provider": super::PROVIDER_NAME,
        "weights": LORA_FILE,
        "fal_request_id": request_id,
        "source_url": lora.url,
        "config_file": payload.get("config_file").and_then(|c| c.get("url")).cloned().unwrap_or(Value::Null),
    })
}

/// A human message from fal's error JSON: `detail` as text, or a validation list
/// (`[{loc, msg}]`), or `error`; else the raw text, truncated.
pub fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(json) => message_of(&json).unwrap_or_else(|| json.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    truncate(text.trim())
}

/// The message of a fal error value (`detail`, `error`, or a validation list).
pub fn message_of(json: &Value) -> Option<String> {
    match json {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(message_of).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Object(object) => {
            if let Some(msg) = object.get("msg").and_then(Value::as_str) {
                let loc = object.get("loc").and_then(Value::as_array).map(|loc| {
                    loc.iter().map(|p| p.as_str().map(String::from).unwrap_or_else(|| p.to_string())).collect::<Vec<_>>().join(".")
                });
                return Some(match loc {
                    Some(loc) if !loc.is_empty() => format!("{loc}: {msg}"),
                    _ => msg.to_string(),
                });
            }
            ["detail", "error", "message"].iter().find_map(|k| object.get(*k).and_then(message_of))
        }
        _ => None,
    }
}

/// The reason a failed request gives: fal's `error` and the payload's message (e.g. a
/// validation `detail`), whichever are present.
pub fn failure_message(error: Option<&Value>, payload: Option<&Value>) -> String {
    let parts: Vec<String> = [error.and_then(message_of), payload.and_then(message_of)].into_iter().flatten().collect();
    if parts.is_empty() {
        return "fal reported an error without a message".into();
    }
    truncate(&parts.join(": "))
}

/// Bounded, and without control characters (other than tab and newline) — the message
/// is stored in an event, which PostgreSQL cannot hold with a NUL, and shown to clients.
fn truncate(text: &str) -> String {
    let clean: String = text.chars().map(|c| if (c as u32) < 0x20 && !matches!(c, '\t' | '\n') { '\u{FFFD}' } else { c }).collect();
    match clean.char_indices().nth(MESSAGE_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
