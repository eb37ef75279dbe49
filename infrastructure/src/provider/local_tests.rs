use std::sync::Arc;

use application::provider::{ProducedFile, Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission, Task};
use application::storage::ObjectStore;
use domain::jobs::JobInput;
use domain::{JobId, ModelId, TeamId};
use uuid::Uuid;

use super::*;
use crate::storage::LocalObjectStore;

fn job(n: u128) -> JobId {
    JobId::new(Uuid::from_u128(n))
}

fn model() -> ModelId {
    ModelId::new(Uuid::from_u128(7))
}

/// The request of `input`'s last step: its images, or a model job's training.
fn request(job_id: JobId, attempt: u32, input: JobInput) -> ProviderRequest {
    let task = match input {
        JobInput::ImageGeneration { count, .. } => Task::Images { first: 0, count },
        _ => Task::Training { images_url: "http://kiln/files/set.zip".into(), trigger_word: "kiln".into(), is_style: false },
    };
    ProviderRequest {
        job_id,
        team_id: TeamId::new(Uuid::from_u128(1)),
        attempt,
        input,
        task,
        model_artifact_key: None,
        reference: None,
    }
}

fn generation(prompt: &str, resolution: &str, count: u32) -> JobInput {
    JobInput::ImageGeneration {
        model_id: model(),
        model_version: 1,
        prompt: prompt.into(),
        resolution: resolution.into(),
        quality: "standard".into(),
        count,
    }
}

async fn files(provider: &LocalProvider, request: ProviderRequest) -> Vec<ProducedFile> {
    match provider.submit(request).await {
        Ok(Submission::Finished(ProviderOutcome::Completed(files))) => files,
        other => panic!("expected completed files, got {other:?}"),
    }
}

async fn failure_message(provider: &LocalProvider, request: ProviderRequest) -> String {
    match provider.submit(request).await {
        Ok(Submission::Finished(ProviderOutcome::Failed { message })) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn images_are_deterministic_pngs_of_the_requested_size() {
    let provider = LocalProvider::default();
    let first = files(&provider, request(job(1), 1, generation("a red coat", "512x512", 3))).await;
    let names: Vec<&str> = first.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["0.png", "1.png", "2.png"]);
    for file in &first {
        assert_eq!(file.content_type, "image/png");
        let image = image::load_from_memory_with_format(&file.bytes, image::ImageFormat::Png).expect("valid PNG");
        assert_eq!((image.width(), image.height()), (512, 512));
    }
    assert_ne!(first[0].bytes, first[1].bytes, "each index has its own image");
    // Another job and attempt with the same input: the same bytes.
    let again = files(&provider, request(job(2), 3, generation("a red coat", "512x512", 3))).await;
    assert_eq!(first, again);
    let other = files(&provider, request(job(1), 1, generation("a blue coat", "512x512", 1))).await;
    assert_ne!(other[0].bytes, first[0].bytes, "another prompt, another image");
    let wide = files(&provider, request(job(1), 1, generation("a red coat", "768x512", 1))).await;
    let image = image::load_from_memory(&wide[0].bytes).expect("valid PNG");
    assert_eq!((image.width(), image.height()), (768, 512));
}

#[tokio::test]
async fn training_images_are_square_pngs_one_per_count() {
    let provider = LocalProvider::default();
    let input = JobInput::ModelCreation { model_id: model(), description: "a runner".into(), reference_model_id: "r".into() };
    let task = |prompt: &str| Task::TrainingImages { prompt: prompt.into(), count: 3 };
    let made = files(&provider, ProviderRequest { task: task("a runner, close-up"), ..request(job(1), 1, input.clone()) }).await;
    assert_eq!(made.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["0.png", "1.png", "2.png"]);
    let image = image::load_from_memory_with_format(&made[0].bytes, image::ImageFormat::Png).expect("valid PNG");
    assert_eq!((image.width(), image.height()), (512, 512));
    let other = files(&provider, ProviderRequest { task: task("a runner, full body"), ..request(job(1), 1, input.clone()) }).await;
    assert_ne!(made[0].bytes, other[0].bytes, "each batch's prompt draws its own images");
    let wrong = ProviderRequest { task: Task::Images { first: 0, count: 1 }, ..request(job(1), 1, input) };
    assert!(failure_message(&provider, wrong).await.contains("cannot do"));
}

#[tokio::test]
async fn bad_generation_input_fails_for_good() {
    let provider = LocalProvider::default();
    for input in [generation("p", "huge", 1), generation("p", "512x512", 0), generation("p", "512x512", 99)] {
        failure_message(&provider, request(job(1), 1, input)).await;
    }
}

#[tokio::test]
async fn model_artifacts_are_versioned_and_accumulate_prompts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalObjectStore::new(dir.path(), "http://x", Arc::new(vec![0; 32])));
    let provider = LocalProvider::default().with_artifacts(objects.clone());
    let creation = JobInput::ModelCreation {
        model_id: model(),
        description: "editorial portraits".into(),
        reference_model_id: "fashion-editorial-01".into(),
    };
    let mut create = request(job(1), 1, creation);
    create.reference = Some(serde_json::json!({"style": "editorial"}));
    let created = files(&provider, create.clone()).await;
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].name.as_str(), created[0].content_type.as_str()), (MODEL_ARTIFACT_FILE, "application/json"));
    assert_eq!(created, files(&provider, create).await, "deterministic");
    let v1: ModelArtifact = serde_json::from_slice(&created[0].bytes).expect("artifact");
    assert_eq!((v1.version, v1.provider.as_str()), (1, "local"));
    assert_eq!(v1.reference, Some(serde_json::json!({"style": "editorial"})));
    objects.put("model-assets/t/m/v1/model.json", created[0].bytes.clone(), "application/json").await.expect("put");

    let refinement = |prompt: &str, from_version| JobInput::ModelRefinement {
        model_id: model(),
        prompt: prompt.into(),
        iteration: from_version,
        from_version,
    };
    let mut refine = request(job(2), 1, refinement("warmer light", 1));
    refine.model_artifact_key = Some("model-assets/t/m/v1/model.json".into());
    let refined = files(&provider, refine).await;
    let v2: ModelArtifact = serde_json::from_slice(&refined[0].bytes).expect("artifact");
    assert_eq!(v2.version, 2);
    assert_eq!(v2.description.as_deref(), Some("editorial portraits"), "carried forward");
    assert_eq!(v2.prompts, ["warmer light"]);
    assert_ne!(v2.seed, v1.seed);

    // Without the previous artifact (no store, or lost): still version from + 1.
    let blind = files(&LocalProvider::default(), request(job(3), 1, refinement("more contrast", 4))).await;
    let v5: ModelArtifact = serde_json::from_slice(&blind[0].bytes).expect("artifact");
    assert_eq!((v5.version, v5.prompts.len()), (5, 1));
}

#[tokio::test]
async fn failures_are_reproducible_from_job_and_attempt() {
    let provider = LocalProvider::new(LocalProviderConfig { failure_rate: 0.5, ..Default::default() });
    let fates = || async {
        let mut fates = Vec::new();
        for n in 0..200u128 {
            let outcome = provider.submit(request(job(n), (n % 3) as u32 + 1, generation("p", "16x16", 1))).await;
            fates.push(match outcome {
                Ok(Submission::Finished(ProviderOutcome::Completed(_))) => 'c',
                Ok(Submission::Finished(ProviderOutcome::Failed { .. })) => 'f',
                Err(ProviderError::Transient(_)) => 't',
                other => panic!("unexpected {other:?}"),
            });
        }
        fates
    };
    let first = fates().await;
    assert_eq!(first, fates().await, "same jobs and attempts, same fates");
    let count = |c| first.iter().filter(|&&f| f == c).count();
    assert!((60..=140).contains(&count('c')), "about half succeed: {}", count('c'));
    assert!(count('f') > 10 && count('t') > 10, "both kinds of failure occur: {} {}", count('f'), count('t'));
    for n in 0..50 {
        assert_eq!(failure_draw(job(n), 1, 0.0), None);
        assert!(failure_draw(job(n), 1, 1.0).is_some());
    }
}

#[tokio::test]
async fn flagged_prompts_fail_every_attempt() {
    let config = LocalProviderConfig { fail_prompts_containing: Some("FAIL".into()), ..Default::default() };
    let provider = LocalProvider::new(config);
    for attempt in 1..=3 {
        let message = failure_message(&provider, request(job(1), attempt, generation("please FAIL now", "16x16", 1))).await;
        assert!(message.contains("FAIL"), "{message}");
    }
    let creation = JobInput::ModelCreation { model_id: model(), description: "FAIL".into(), reference_model_id: "r".into() };
    failure_message(&provider, request(job(2), 1, creation)).await;
    files(&provider, request(job(3), 1, generation("fine", "16x16", 1))).await;
}

#[tokio::test]
async fn requests_are_never_pending() {
    let provider = LocalProvider::default();
    assert_eq!(provider.name(), "local");
    assert_eq!(provider.status("anything").await, Ok(ProviderStatus::Unknown));
    assert_eq!(provider.cancel("anything").await, Ok(()));
}

#[tokio::test]
async fn latency_is_applied() {
    let provider = LocalProvider::new(LocalProviderConfig { latency: std::time::Duration::from_millis(30), ..Default::default() });
    let started = std::time::Instant::now();
    files(&provider, request(job(1), 1, generation("p", "16x16", 1))).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(30));
}
