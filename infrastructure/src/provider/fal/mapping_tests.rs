use application::provider::{ProviderRequest, Task};
use domain::jobs::JobInput;
use domain::{JobId, ModelId, TeamId};
use serde_json::json;

use super::*;

fn generation(resolution: &str) -> ProviderRequest {
    let model_id = ModelId::new(uuid::Uuid::from_u128(1));
    ProviderRequest {
        job_id: JobId::new(uuid::Uuid::from_u128(2)),
        team_id: TeamId::new(uuid::Uuid::from_u128(3)),
        attempt: 1,
        input: JobInput::ImageGeneration {
            model_id,
            model_version: 1,
            prompt: "on a beach".into(),
            resolution: resolution.into(),
            quality: "hd".into(),
            count: 2,
        },
        task: Task::Images { first: 0, count: 2 },
        model_artifact_key: Some("model-assets/t/m/v1/model.json".into()),
        reference: None,
    }
}

#[test]
fn generation_input_names_size_count_and_lora() {
    let body = request_body(&generation("768x512"), Some("https://kiln/files/lora"), 1_000).expect("valid");
    assert_eq!(body["image_size"], json!({"width": 768, "height": 512}));
    assert_eq!(body["num_images"], 2);
    assert_eq!(body["output_format"], "png");
    assert_eq!(body["loras"], json!([{"path": "https://kiln/files/lora", "scale": 1.0}]));
    assert!(body["prompt"].as_str().is_some_and(|p| p.ends_with("on a beach")));
    assert!(request_body(&generation("big"), Some("u"), 1_000).is_err());
    assert!(request_body(&generation("512x512"), None, 1_000).is_err(), "no LoRA, no generation");
    let part = ProviderRequest { task: Task::Images { first: 4, count: 4 }, ..generation("512x512") };
    assert_eq!(request_body(&part, Some("u"), 1_000).expect("a part of four")["num_images"], 4);
    let too_many = ProviderRequest { task: Task::Images { first: 0, count: 5 }, ..generation("512x512") };
    assert!(request_body(&too_many, Some("u"), 1_000).is_err(), "fal draws at most four per request");
}

fn model_job(input: JobInput, task: Task) -> ProviderRequest {
    ProviderRequest { input, task, model_artifact_key: None, ..generation("512x512") }
}

#[test]
fn training_images_and_training_carry_what_the_apps_need() {
    let model_id = ModelId::new(uuid::Uuid::from_u128(1));
    let creation = JobInput::ModelCreation { model_id, description: "a runner".into(), reference_model_id: "fitness-running".into() };
    let refinement = JobInput::ModelRefinement { model_id, prompt: "in red".into(), iteration: 1, from_version: 1 };
    let images = Task::TrainingImages { prompt: "a runner, close-up".into(), count: 4 };
    let body = request_body(&model_job(creation.clone(), images.clone()), None, 1_000).expect("valid");
    assert_eq!(body["prompt"], "a runner, close-up");
    assert_eq!(body["num_images"], 4);
    assert_eq!(body["loras"], json!([]), "a new model has no LoRA yet");
    let body = request_body(&model_job(refinement.clone(), images.clone()), Some("https://kiln/lora"), 1_000).expect("valid");
    assert_eq!(body["loras"], json!([{"path": "https://kiln/lora", "scale": 1.0}]), "a refinement draws with its LoRA");
    assert!(request_body(&model_job(refinement.clone(), images), None, 1_000).is_err());
    let training = Task::Training { images_url: "https://kiln/files/set.zip".into(), trigger_word: "kilnabc".into(), is_style: false };
    let body = request_body(&model_job(refinement, training), None, 750).expect("valid");
    assert_eq!(
        body,
        json!({
            "images_data_url": "https://kiln/files/set.zip", "trigger_word": "kilnabc", "steps": 750, "is_style": false,
            "create_masks": true, "data_archive_format": "zip",
        })
    );
    assert!(request_body(&model_job(creation, Task::Images { first: 0, count: 1 }), None, 1_000).is_err(), "no image task for a model job");
}

#[test]
fn results_become_files() {
    #[track_caller]
    fn check(payload: serde_json::Value, expected: Result<ResultFiles, &str>) {
        assert_eq!(result_files(&payload), expected.map_err(String::from));
    }
    let image = |i: usize, url: &str| FileRef { name: format!("{i}.png"), url: url.into(), content_type: "image/png".into() };
    check(json!({"images": [{"url": "a"}, {"url": "b"}]}), Ok(ResultFiles::Images(vec![image(0, "a"), image(1, "b")])));
    check(
        json!({"diffusers_lora_file": {"url": "w", "content_type": "application/octet-stream"}}),
        Ok(ResultFiles::Lora(FileRef { name: LORA_FILE.into(), url: "w".into(), content_type: "application/octet-stream".into() })),
    );
    check(json!({"images": []}), Err("the result has no images (all filtered?)"));
    check(json!({"images": [{}]}), Err("image 0 has no url"));
    check(json!({}), Err("the result has neither images nor diffusers_lora_file"));
}

#[test]
fn error_messages_are_readable() {
    #[track_caller]
    fn check(body: &str, expected: &str) {
        assert_eq!(error_message(body.as_bytes()), expected);
    }
    check(r#"{"detail": "Invalid key"}"#, "Invalid key");
    check(r#"{"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}"#, "body.prompt: field required");
    check("plain text", "plain text");
    assert_eq!(failure_message(Some(&json!("Invalid status code: 422")), Some(&json!({"detail": "bad size"}))), "Invalid status code: 422: bad size");
    assert_eq!(queue_app("fal-ai/flux-lora/image-to-image"), "fal-ai/flux-lora");
}
