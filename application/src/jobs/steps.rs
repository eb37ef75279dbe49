//! The steps of a model job. Creating or refining a model trains a LoRA, and a trainer
//! learns from images: Kiln builds the training set first, as steps of the same job.
//!
//! 1. `training-images-1` … `training-images-K`: images generated from the description and
//!    the reference model's characteristics (creation), or from the refinement prompt with
//!    the current LoRA (refinement), [`TrainingConfig::images_per_request`] per request,
//!    each batch from its own view so the set varies. Every image is stored beside the new
//!    version with its caption (`training/{batch}-{i}.png` and `.txt`).
//! 2. `training-set`: the images and captions zipped into `training-set.zip` (a refinement
//!    adds the set of the version it refines), stored beside the version.
//! 3. `training`: the trainer gets a signed URL of the zip; its result (the LoRA weights
//!    and the `model.json` pointer) becomes the version, and the job completes.
//!
//! Image generation is one request, with no steps — unless it asks for more images than
//! the provider draws per request ([`Provider::images_per_request_max`], fal: 4): then
//! it is parts `images-1` … `images-N` (see [`image_parts`]), each a request of at most
//! that many, run one after another; every part but the last is recorded with the images
//! it stored (`generated-images/{job}/{i}.png`, numbered across the parts), and the last
//! part's result completes the job with all of them — one deduction for the whole job.
//!
//! Each step is recorded (`JobStepCompleted`, with the objects it stored) before the next
//! one starts, so a job retried after a crash or an outage resumes at its first step not
//! recorded and never asks the provider again for a recorded one. The plan is a pure
//! function of the job's input, the reference model, the configuration and the
//! provider's per-request limit.
//!
//! [`Provider::images_per_request_max`]: crate::provider::Provider::images_per_request_max

use std::io::{Cursor, Read, Write};

use domain::jobs::{GenerationJob, JobInput, UPLOADS_STEP};
use domain::models::trigger_word;
use domain::{JobId, TeamId};
use serde_json::Value;

use crate::storage::{image_key, model_asset_key};

/// The step that zips the training set.
pub const TRAINING_SET_STEP: &str = "training-set";
/// The last step: its result completes the job.
pub const TRAINING_STEP: &str = "training";
/// The training set's file name in the version's folder.
pub const TRAINING_SET_FILE: &str = "training-set.zip";
/// Most training images one job generates.
pub const TRAINING_IMAGES_MAX: u32 = 64;
/// Most images one training-images request asks for (fal's text-to-image limit).
pub const IMAGES_PER_REQUEST_MAX: u32 = 4;

/// How large a training set the model jobs build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingConfig {
    /// Images generated per model job (bounded by [`TRAINING_IMAGES_MAX`]).
    pub images: u32,
    /// Images asked for per provider request (bounded by [`IMAGES_PER_REQUEST_MAX`]).
    pub images_per_request: u32,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self { images: 12, images_per_request: 4 }
    }
}

/// One step of a model job's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Training images the team sent, stored and recorded when the job was accepted.
    Uploads { count: u32 },
    /// `count` images of `prompt`, each stored with `caption`.
    TrainingImages { batch: u32, prompt: String, caption: String, count: u32 },
    TrainingSet,
    Training,
    /// Part `part` of a generation split into requests: images `first..first + count`.
    /// The `last` part's result completes the job; the others are recorded as steps.
    Images { part: u32, first: u32, count: u32, last: bool },
}

impl Step {
    pub fn name(&self) -> String {
        match self {
            Step::Images { part, .. } => format!("images-{part}"),
            Step::TrainingImages { batch, .. } => format!("training-images-{batch}"),
            Step::Uploads { .. } => UPLOADS_STEP.into(),
            Step::TrainingSet => TRAINING_SET_STEP.into(),
            Step::Training => TRAINING_STEP.into(),
        }
    }
}

/// The views the batches of a training set are made from, in order: a set that shows
/// its subject in varied framings, poses and light trains a LoRA that generalises.
const VIEWS: [&str; 12] = [
    "close-up portrait, looking at the camera",
    "full-body shot, standing, neutral pose",
    "three-quarter view, candid moment",
    "profile view, soft side light",
    "seated, relaxed pose",
    "waist-up, natural smile",
    "walking, in motion",
    "over-the-shoulder glance",
    "low-angle shot, confident stance",
    "studio headshot, plain backdrop",
    "outdoors, natural daylight",
    "environmental portrait, wide framing",
];

/// The characteristics of a reference model worth saying in a prompt, in a fixed order.
const TRAITS: [&str; 7] = ["age_range", "gender_presentation", "ethnicity", "style", "lighting", "framing", "mood"];

/// The parts of a generation of `count` images for a provider that draws at most
/// `per_request_max` per request (`None`: any number): none when one request does it,
/// else as many parts as needed, all full but the last.
pub fn image_parts(count: u32, per_request_max: Option<u32>) -> Vec<Step> {
    let per_request = match per_request_max {
        Some(max) if count > max.max(1) => max.max(1),
        _ => return Vec::new(),
    };
    let parts = count.div_ceil(per_request);
    (0..parts)
        .map(|index| {
            let first = index * per_request;
            Step::Images { part: index + 1, first, count: per_request.min(count - first), last: index + 1 == parts }
        })
        .collect()
}

/// The job's steps: a model job's (`uploaded` images the team sent count towards the set:
/// only the rest are generated), or the parts of a generation larger than
/// `images_per_request_max` (none for one that fits one request).
pub fn plan(input: &JobInput, reference: Option<&Value>, config: &TrainingConfig, uploaded: u32, images_per_request_max: Option<u32>) -> Vec<Step> {
    let (subject, with_traits) = match input {
        JobInput::ImageGeneration { count, .. } => return image_parts(*count, images_per_request_max),
        JobInput::ModelCreation { description, .. } => (description.trim().to_string(), true),
        JobInput::ModelRefinement { prompt, .. } => (prompt.trim().to_string(), false),
    };
    let trigger = trigger_word(input.model_id());
    let traits = if with_traits { reference_traits(reference) } else { String::new() };
    let setting = reference.and_then(|r| r.get("setting")).and_then(Value::as_str).map(|s| format!(", in a {s}")).unwrap_or_default();
    let images = config.images.clamp(1, TRAINING_IMAGES_MAX).saturating_sub(uploaded);
    let per_request = config.images_per_request.clamp(1, IMAGES_PER_REQUEST_MAX);
    let mut steps: Vec<Step> = if uploaded > 0 { vec![Step::Uploads { count: uploaded }] } else { Vec::new() };
    steps.extend((0..images.div_ceil(per_request))
        .map(|index| {
            let view = VIEWS[index as usize % VIEWS.len()];
            let count = per_request.min(images - index * per_request);
            // A refinement draws with the model's LoRA, which answers to its trigger word.
            let prompt = match input {
                JobInput::ModelRefinement { .. } => format!("{trigger} {subject}, {view}{setting}"),
                _ => format!("{subject}, {view}{traits}{setting}, photorealistic"),
            };
            Step::TrainingImages { batch: index + 1, prompt, caption: format!("{trigger}, {subject}, {view}"), count }
        }));
    steps.extend([Step::TrainingSet, Step::Training]);
    steps
}

fn reference_traits(reference: Option<&Value>) -> String {
    let Some(reference) = reference else { return String::new() };
    TRAITS.iter().filter_map(|t| reference.get(*t).and_then(Value::as_str)).map(|v| format!(", {v}")).collect()
}

/// The catalog's categories whose reference models are people: their LoRAs learn a
/// subject (with face masks), not a style.
const PEOPLE_CATEGORIES: [&str; 5] = ["fashion", "fitness", "beauty", "lifestyle", "business"];

/// Whether the trainer should learn a style rather than a subject, from the reference
/// model's category: a subject for the people categories (all of today's catalog), a
/// style for any other.
pub fn is_style(reference: Option<&Value>) -> bool {
    match reference.and_then(|r| r.get("category")).and_then(Value::as_str) {
        Some(category) => !PEOPLE_CATEGORIES.contains(&category),
        None => false,
    }
}

/// The version a model job makes.
pub fn version_made(input: &JobInput) -> Option<u32> {
    match input {
        JobInput::ModelCreation { .. } => Some(1),
        JobInput::ModelRefinement { from_version, .. } => from_version.checked_add(1),
        JobInput::ImageGeneration { .. } => None,
    }
}

/// Where image `index` of training batch `batch` (and its caption, `ext` = `txt`) is stored.
pub fn training_image_key(team: TeamId, input: &JobInput, batch: u32, index: u32, ext: &str) -> Option<String> {
    let version = version_made(input)?;
    Some(model_asset_key(&team.to_string(), &input.model_id().to_string(), version, &format!("training/{batch}-{index}.{ext}")))
}

/// Where a model version's training set is stored.
pub fn training_set_key(team: TeamId, input: &JobInput, version: u32) -> String {
    model_asset_key(&team.to_string(), &input.model_id().to_string(), version, TRAINING_SET_FILE)
}

/// Where image `index` of generation `job_id` is stored (numbered across its parts).
pub fn generated_image_key(team: TeamId, input: &JobInput, job_id: JobId, index: u32) -> Option<String> {
    matches!(input, JobInput::ImageGeneration { .. }).then(|| image_key(&team.to_string(), &job_id.to_string(), index))
}

/// Every object a job's steps may write (a model job's images, captions and set; a split
/// generation's images): what a failed or cancelled job deletes — written or not, so
/// nothing written before a crash is left.
pub fn step_keys(team: TeamId, input: &JobInput, job_id: JobId, plan: &[Step]) -> Vec<String> {
    let mut keys = Vec::new();
    for step in plan {
        match step {
            Step::TrainingImages { batch, count, .. } => {
                for index in 0..*count {
                    keys.extend(["png", "txt"].iter().filter_map(|ext| training_image_key(team, input, *batch, index, ext)));
                }
            }
            Step::TrainingSet => keys.extend(version_made(input).map(|v| training_set_key(team, input, v))),
            Step::Images { first, count, .. } => {
                keys.extend((*first..first + count).filter_map(|index| generated_image_key(team, input, job_id, index)))
            }
            // Recorded with the job: deleted from its record.
            Step::Uploads { .. } | Step::Training => {}
        }
    }
    keys
}

/// How many training images the team sent with the job (its `uploads` step).
pub fn uploaded_images(job: &GenerationJob) -> u32 {
    let uploads = job.steps.iter().filter(|s| s.step == UPLOADS_STEP).flat_map(|s| &s.outputs);
    uploads.filter(|o| o.content_type.starts_with("image/")).count() as u32
}

/// Most training images a team may send with one model job.
pub const UPLOADS_MAX: usize = 20;
/// Largest training image a team may send.
pub const UPLOAD_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Largest caption (a `.txt` beside an image in an uploaded zip).
pub const CAPTION_BYTES_MAX: usize = 2_000;

/// A file the team sent: an image (PNG, JPEG, WebP) or a zip of images with optional
/// same-named `.txt` captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// A training image from the team, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingImage {
    pub extension: &'static str,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    pub caption: Option<String>,
}

/// The type of an image by its first bytes: what fal's trainer reads.
pub fn image_type(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("png", "image/png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("jpg", "image/jpeg"))
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("webp", "image/webp"))
    } else {
        None
    }
}

/// The training images of what the team sent (zips unpacked), or why they cannot be
/// used: at most [`UPLOADS_MAX`] images of at most [`UPLOAD_BYTES_MAX`] each, PNG, JPEG
/// or WebP by their content.
pub fn training_images(uploads: Vec<Upload>) -> Result<Vec<TrainingImage>, String> {
    let mut images = Vec::new();
    for upload in uploads {
        if upload.bytes.starts_with(b"PK\x03\x04") {
            images.extend(images_of_zip(&upload.file_name, &upload.bytes)?);
        } else {
            images.push(image_of(&upload.file_name, upload.bytes, None)?);
        }
        if images.len() > UPLOADS_MAX {
            return Err(format!("at most {UPLOADS_MAX} training images"));
        }
    }
    Ok(images)
}

fn image_of(name: &str, bytes: Vec<u8>, caption: Option<String>) -> Result<TrainingImage, String> {
    if bytes.len() > UPLOAD_BYTES_MAX {
        return Err(format!("{name}: larger than {} MiB", UPLOAD_BYTES_MAX / (1024 * 1024)));
    }
    let (extension, content_type) = image_type(&bytes).ok_or_else(|| format!("{name}: not a PNG, JPEG or WebP image"))?;
    Ok(TrainingImage { extension, content_type, bytes, caption })
}

/// The images of an uploaded zip, each with the caption of its same-named `.txt`; other
/// files are refused. Entries are read up to the limits, never further.
fn images_of_zip(name: &str, bytes: &[u8]) -> Result<Vec<TrainingImage>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("{name}: not a readable zip ({e})"))?;
    if archive.len() > UPLOADS_MAX * 2 + 8 {
        return Err(format!("{name}: more than {UPLOADS_MAX} images and their captions"));
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index(index).map_err(|e| format!("{name}: {e}"))?;
        let entry_name = entry.name().to_string();
        let hidden = entry_name.rsplit('/').next().is_some_and(|f| f.starts_with('.')) || entry_name.starts_with("__MACOSX/");
        if entry.is_dir() || hidden {
            continue;
        }
        let mut content = Vec::new();
        entry.take(UPLOAD_BYTES_MAX as u64 + 1).read_to_end(&mut content).map_err(|e| format!("{name}: {entry_name}: {e}"))?;
        files.push((entry_name, content));
    }
    let stem = |file: &str| file.rsplit_once('.').map_or(file, |(stem, _)| stem).to_string();
    let mut images = Vec::new();
    for (file, content) in &files {
        if file.to_ascii_lowercase().ends_with(".txt") {
            if content.len() > CAPTION_BYTES_MAX {
                return Err(format!("{name}: {file}: a caption longer than {CAPTION_BYTES_MAX} bytes"));
            }
            continue;
        }
        let caption = files
            .iter()
            .find(|(other, _)| other.to_ascii_lowercase().ends_with(".txt") && stem(other) == stem(file))
            .map(|(_, text)| String::from_utf8_lossy(text).chars().filter(|c| !c.is_control()).collect::<String>().trim().to_string())
            .filter(|caption| !caption.is_empty());
        images.push(image_of(&format!("{name}: {file}"), content.clone(), caption)?);
    }
    if images.is_empty() {
        return Err(format!("{name}: the zip holds no image"));
    }
    Ok(images)
}

/// One file of a training set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A zip of `files` (stored, not deflated: PNGs do not shrink), after the files of
/// `previous` (the refined version's set) whose names `files` does not have.
pub fn zip_training_set(previous: Option<&[u8]>, files: &[SetFile]) -> Result<Vec<u8>, String> {
    let mut all: Vec<SetFile> = match previous {
        Some(bytes) => unzip(bytes)?,
        None => Vec::new(),
    };
    all.retain(|old| !files.iter().any(|new| new.name == old.name));
    all.extend(files.iter().cloned());
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for file in &all {
        writer.start_file(file.name.as_str(), options).map_err(|e| e.to_string())?;
        writer.write_all(&file.bytes).map_err(|e| e.to_string())?;
    }
    Ok(writer.finish().map_err(|e| e.to_string())?.into_inner())
}

/// The files of a zip (directories skipped).
pub fn unzip(bytes: &[u8]) -> Result<Vec<SetFile>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip: {e}"))?;
    let mut files = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| e.to_string())?;
        if entry.is_dir() {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        files.push(SetFile { name: entry.name().to_string(), bytes });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use domain::ModelId;
    use serde_json::json;

    use super::*;

    fn creation() -> JobInput {
        JobInput::ModelCreation { model_id: ModelId::new(uuid::Uuid::now_v7()), description: "a trail runner".into(), reference_model_id: "fitness-trail".into() }
    }

    #[test]
    fn a_creation_plans_batches_then_the_set_then_training() {
        let reference = json!({"age_range": "30s", "style": "trail running", "setting": "forest single-track", "category": "fitness"});
        let input = creation();
        let steps = plan(&input, Some(&reference), &TrainingConfig { images: 10, images_per_request: 4 }, 0, Some(4));
        let names: Vec<String> = steps.iter().map(Step::name).collect();
        assert_eq!(names, ["training-images-1", "training-images-2", "training-images-3", "training-set", "training"]);
        let counts: Vec<u32> = steps.iter().filter_map(|s| if let Step::TrainingImages { count, .. } = s { Some(*count) } else { None }).collect();
        assert_eq!(counts, [4, 4, 2], "ten images in all");
        let Step::TrainingImages { prompt, caption, .. } = &steps[0] else { panic!("images first") };
        assert!(prompt.starts_with("a trail runner, close-up portrait") && prompt.contains("30s") && prompt.contains("forest single-track"), "{prompt}");
        assert!(caption.starts_with(&trigger_word(input.model_id())), "captions carry the trigger word: {caption}");
        assert!(plan(&JobInput::ImageGeneration {
            model_id: ModelId::new(uuid::Uuid::now_v7()), model_version: 1, prompt: "p".into(), resolution: "512x512".into(), quality: "standard".into(), count: 1
        }, None, &TrainingConfig::default(), 0, Some(4)).is_empty());
    }

    #[test]
    fn a_generation_larger_than_a_request_is_split_into_full_parts_but_the_last() {
        #[track_caller]
        fn check(count: u32, max: Option<u32>, expected: &[(u32, u32, u32, bool)]) {
            let parts: Vec<(u32, u32, u32, bool)> = image_parts(count, max)
                .into_iter()
                .map(|s| match s {
                    Step::Images { part, first, count, last } => (part, first, count, last),
                    other => panic!("not a part: {other:?}"),
                })
                .collect();
            assert_eq!(parts, expected, "{count} images, {max:?} per request");
        }
        check(4, Some(4), &[]);
        check(8, None, &[]);
        check(1, Some(4), &[]);
        check(5, Some(4), &[(1, 0, 4, false), (2, 4, 1, true)]);
        check(8, Some(4), &[(1, 0, 4, false), (2, 4, 4, true)]);
        check(8, Some(3), &[(1, 0, 3, false), (2, 3, 3, false), (3, 6, 2, true)]);
        let input = JobInput::ImageGeneration {
            model_id: ModelId::new(uuid::Uuid::now_v7()), model_version: 1, prompt: "p".into(), resolution: "512x512".into(), quality: "standard".into(), count: 8
        };
        let steps = plan(&input, None, &TrainingConfig::default(), 0, Some(4));
        assert_eq!(steps.iter().map(Step::name).collect::<Vec<_>>(), ["images-1", "images-2"]);
        let (team, job) = (TeamId::new(uuid::Uuid::now_v7()), JobId::new(uuid::Uuid::now_v7()));
        let keys = step_keys(team, &input, job, &steps);
        assert_eq!(keys.len(), 8, "every image either part may write: {keys:?}");
        assert!(keys[7].ends_with(&format!("{job}/7.png")), "{keys:?}");
    }

    #[test]
    fn a_refinement_prompts_through_its_lora_and_makes_the_next_version() {
        let input = JobInput::ModelRefinement { model_id: ModelId::new(uuid::Uuid::now_v7()), prompt: "wearing red".into(), iteration: 1, from_version: 2 };
        let steps = plan(&input, None, &TrainingConfig::default(), 0, None);
        let Step::TrainingImages { prompt, .. } = &steps[0] else { panic!("images first") };
        assert!(prompt.starts_with(&format!("{} wearing red", trigger_word(input.model_id()))), "{prompt}");
        assert_eq!(version_made(&input), Some(3));
        let team = TeamId::new(uuid::Uuid::now_v7());
        let keys = step_keys(team, &input, JobId::new(uuid::Uuid::now_v7()), &steps);
        assert_eq!(keys.len(), 12 * 2 + 1, "an image and a caption each, and the set");
        assert!(keys.iter().all(|k| k.contains("/v3/")), "{keys:?}");
    }

    #[test]
    fn uploaded_images_are_checked_and_count_towards_the_set() {
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2];
        let zipped = zip_training_set(None, &[
            SetFile { name: "a.png".into(), bytes: png.clone() },
            SetFile { name: "a.txt".into(), bytes: b"kiln, on a bike".to_vec() },
            SetFile { name: "b.jpg".into(), bytes: jpeg.clone() },
        ]).expect("zip");
        let images = training_images(vec![Upload { file_name: "one.png".into(), bytes: png.clone() }, Upload { file_name: "set.zip".into(), bytes: zipped }])
            .expect("usable");
        let described: Vec<(&str, Option<&str>)> = images.iter().map(|i| (i.extension, i.caption.as_deref())).collect();
        assert_eq!(described, [("png", None), ("png", Some("kiln, on a bike")), ("jpg", None)]);
        assert!(training_images(vec![Upload { file_name: "x.gif".into(), bytes: b"GIF89a".to_vec() }]).unwrap_err().contains("not a PNG"));
        let many = (0..=UPLOADS_MAX).map(|i| Upload { file_name: format!("{i}.png"), bytes: png.clone() }).collect();
        assert!(training_images(many).unwrap_err().contains("at most"));
        let big = Upload { file_name: "big.png".into(), bytes: [png.clone(), vec![0; UPLOAD_BYTES_MAX]].concat() };
        assert!(training_images(vec![big]).unwrap_err().contains("larger"));
        let empty = zip_training_set(None, &[SetFile { name: "notes.txt".into(), bytes: b"hi".to_vec() }]).expect("zip");
        assert!(training_images(vec![Upload { file_name: "e.zip".into(), bytes: empty }]).unwrap_err().contains("no image"));

        let input = creation();
        let names: Vec<String> = plan(&input, None, &TrainingConfig { images: 12, images_per_request: 4 }, 5, None).iter().map(Step::name).collect();
        assert_eq!(names, ["uploads", "training-images-1", "training-images-2", "training-set", "training"], "seven more images to draw");
        let names: Vec<String> = plan(&input, None, &TrainingConfig::default(), 20, None).iter().map(Step::name).collect();
        assert_eq!(names, ["uploads", "training-set", "training"], "enough images sent: none drawn");
    }

    #[test]
    fn a_set_keeps_the_previous_files_and_replaces_same_named_ones() {
        let first = zip_training_set(None, &[SetFile { name: "v1-1-0.png".into(), bytes: b"one".to_vec() }]).expect("zip");
        let second = zip_training_set(
            Some(&first),
            &[SetFile { name: "v2-1-0.png".into(), bytes: b"two".to_vec() }, SetFile { name: "v2-1-0.txt".into(), bytes: b"caption".to_vec() }],
        )
        .expect("zip");
        let names: Vec<String> = unzip(&second).expect("unzip").into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["v1-1-0.png", "v2-1-0.png", "v2-1-0.txt"]);
        assert!(unzip(b"not a zip").is_err());
    }
}
