//! A generation of more images than fal draws per request (`fal-ai/flux-lora`:
//! `num_images` 1–4) is sent as parts, each recorded as a step of its job: every image
//! stored once, fal paid once per part even across a killed worker or a repeated
//! delivery, one deduction for the job, and a cancel or failure of a part ending the job
//! once with its refund and nothing of it left. Also the trainer's body and the trainer
//! steps' bounds.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use super::fake::{FakeFal, Stage};
use super::steps::{fal_worker, ledger_of, next_request, stored_files_of};
use super::{
    balance, call, deliver, events_of, fal_model, generate, held, job, pro_team, request_of, requests_of, spawn, wait_final,
    TRAINER,
};
use crate::support::app::TestApp;

const TEXT_TO_IMAGE: &str = "fal-ai/flux-lora";

/// The URLs of a completed generation's images, in order.
async fn image_urls(app: &TestApp, key: &str, job_id: &str) -> Vec<String> {
    let (_, images) = call(app, key, Method::GET, &format!("/api/generate/{job_id}/images"), None).await;
    images["images"].as_array().expect("images").iter().map(|i| i["url"].as_str().expect("url").to_string()).collect()
}

/// The steps the job recorded, by name.
fn steps_of(view: &Value) -> Vec<String> {
    events_of(view, "JobStepCompleted").iter().map(|e| e["data"]["step"].as_str().expect("step").to_string()).collect()
}

/// Checks that the job's eight images are fal's: four of each part, in order.
async fn check_images_are_the_parts(app: &TestApp, key: &str, job_id: &str, fake: &FakeFal, parts: &[String]) {
    let urls = image_urls(app, key, job_id).await;
    assert_eq!(urls.len(), 8, "eight images stored: {urls:?}");
    for (n, url) in urls.iter().enumerate() {
        let bytes = reqwest::get(url.as_str()).await.expect("image").bytes().await.expect("bytes");
        let (part, index) = (&parts[n / 4], n % 4);
        assert_eq!(Some(bytes.to_vec()), fake.file(&format!("{part}-{index}.png")), "image {n} is image {index} of request {part}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_images_are_two_fal_requests_stored_as_eight_and_charged_once() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let (model_id, model_job) = fal_model(&app, &fake, &key).await;
    // The trainer was told the archive is a zip (its signed URL does not end in `.zip`).
    let trainer = fake.request(requests_of(&job(&app, &key, &model_job).await).last().expect("trainer request"));
    assert_eq!((trainer.app.as_str(), &trainer.input["data_archive_format"]), (TRAINER, &Value::from("zip")), "{:?}", trainer.input);

    let made = fake.submits().len();
    let before = held(&balance(&app, &key).await);
    let (generation, cost) = generate(&app, &key, &model_id, 8).await;
    let first = request_of(&app, &key, &generation).await;
    assert_eq!(fake.request(&first).input["num_images"], 4);

    // fal delivers the first part's result twice at once: one delivery goes on.
    fake.complete(&first);
    let (a, b) = tokio::join!(deliver(&app, &fake, &first), deliver(&app, &fake, &first));
    assert!([&a["outcome"], &b["outcome"]].contains(&&Value::from("applied")), "{a} {b}");
    let second = next_request(&app, &key, &generation, std::slice::from_ref(&first)).await;
    assert_eq!(fake.request(&second).input["num_images"], 4);
    // A late third delivery of the first part applies nothing.
    assert_eq!(deliver(&app, &fake, &first).await["outcome"], "ignored");
    assert_eq!(job(&app, &key, &generation).await["status"], "running", "not complete before its last part");

    // The last part's result twice at once as well: one completes the job, and the other
    // must not delete what it stored under the same keys.
    fake.complete(&second);
    let (a, b) = tokio::join!(deliver(&app, &fake, &second), deliver(&app, &fake, &second));
    assert!([&a["outcome"], &b["outcome"]].contains(&&Value::from("applied")), "{a} {b}");
    let done = wait_final(&app, &key, &generation).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(fake.submits()[made..], [(TEXT_TO_IMAGE.to_string(), 200), (TEXT_TO_IMAGE.to_string(), 200)], "two requests, each paid once");
    assert_eq!(steps_of(&done), ["images-1"], "the first part recorded once; the last one completes the job");
    assert_eq!(events_of(&done, "JobCompleted").len(), 1);
    check_images_are_the_parts(&app, &key, &generation, &fake, &[first, second]).await;
    assert_eq!(ledger_of(&app, &team_id, &generation).await, ["CreditsReserved", "CreditsDeducted"], "charged once");
    assert_eq!(held(&balance(&app, &key).await), (before.0 - cost, before.1), "the whole price, once");
    assert_eq!(fake.violations(), Vec::new(), "every request fits fal's input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_between_the_parts_resumes_without_paying_a_part_twice() {
    let fake = FakeFal::default();
    let (app, base) = super::spawn_with(&fake, |s| s.jobs.worker_in_serve = false).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let mut worker = fal_worker(&app, &base);
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let made = fake.submits().len();
    let before = held(&balance(&app, &key).await);
    let (generation, cost) = generate(&app, &key, &model_id, 8).await;

    // At each part the worker is killed while fal works; fal finishes with no worker
    // alive and no webhook delivered; a new worker finds the job orphaned, asks fal, and
    // goes on from there.
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..2 {
        let request_id = next_request(&app, &key, &generation, &seen).await;
        worker.kill().expect("kill -9 the worker");
        worker.wait().expect("reap the worker");
        fake.complete(&request_id);
        seen.push(request_id);
        worker = fal_worker(&app, &base);
    }
    let done = wait_final(&app, &key, &generation).await;
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    worker.wait().expect("the last worker stops");
    assert_eq!(done["status"], "completed", "{done}");

    assert_eq!(fake.submits()[made..], [(TEXT_TO_IMAGE.to_string(), 200), (TEXT_TO_IMAGE.to_string(), 200)], "no part paid twice");
    assert_eq!(steps_of(&done), ["images-1"]);
    check_images_are_the_parts(&app, &key, &generation, &fake, &seen).await;
    assert_eq!(ledger_of(&app, &team_id, &generation).await, ["CreditsReserved", "CreditsDeducted"]);
    assert_eq!(held(&balance(&app, &key).await), (before.0 - cost, before.1));
    assert_eq!(fake.violations(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_or_a_failure_of_the_second_part_ends_the_job_once_and_leaves_nothing() {
    let fake = FakeFal::default();
    let app = spawn(&fake, 300).await;
    let (team_id, key) = pro_team(&app, 10_000).await;
    let (model_id, _) = fal_model(&app, &fake, &key).await;
    let root = Path::new(&app.settings.storage.local_root).to_path_buf();
    let start = held(&balance(&app, &key).await);

    for cancelled in [true, false] {
        let (generation, _) = generate(&app, &key, &model_id, 7).await;
        let first = request_of(&app, &key, &generation).await;
        fake.complete(&first);
        assert_eq!(deliver(&app, &fake, &first).await["outcome"], "applied");
        let second = next_request(&app, &key, &generation, std::slice::from_ref(&first)).await;
        assert_eq!(fake.request(&second).input["num_images"], 3, "seven images: four, then three");
        assert_eq!(stored_files_of(&root, &generation).len(), 4, "the first part's images are stored");

        if cancelled {
            fake.set_stage(&second, Stage::Running(vec!["step 3/28".into()]));
            let (status, view) = call(&app, &key, Method::DELETE, &format!("/api/jobs/{generation}"), None).await;
            assert_eq!((status, view["status"].as_str()), (200, Some("cancelled")), "{view}");
            // The first part had completed at fal: the part in flight is the one to stop.
            assert_eq!(fake.cancels(), std::slice::from_ref(&second), "the running part cancelled at fal");
            assert_eq!(fake.request(&second).stage, Stage::Cancelled);
            // fal finished anyway: its late result is dropped, nothing stored again.
            fake.complete(&second);
            assert_eq!(deliver(&app, &fake, &second).await["outcome"], "already_final");
        } else {
            fake.fail(&second, "NSFW content detected");
            assert_eq!(deliver(&app, &fake, &second).await["outcome"], "applied");
        }
        let ended = wait_final(&app, &key, &generation).await;
        assert_eq!(ended["status"], if cancelled { "cancelled" } else { "failed" }, "{ended}");
        assert_eq!(events_of(&ended, "JobCancelled").len() + events_of(&ended, "JobFailed").len(), 1, "ended once");
        assert_eq!(stored_files_of(&root, &generation), Vec::<String>::new(), "nothing of the job is left");
        assert_eq!(ledger_of(&app, &team_id, &generation).await, ["CreditsReserved", "CreditsRefunded"], "refunded once");
        // A late delivery of the first part changes nothing.
        assert_eq!(deliver(&app, &fake, &first).await["outcome"], "ignored");
    }
    assert_eq!(held(&balance(&app, &key).await), start, "both refunded, once each");
    assert_eq!(fake.violations(), Vec::new());
}

/// `kiln` refuses to start when `fal.trainer_steps` is outside fal's 1–10000, naming the
/// key, before it reaches for the database.
#[test]
fn trainer_steps_outside_fals_range_refuse_to_start_naming_the_key() {
    for steps in ["0", "10001"] {
        let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("KILN_FAL__TRAINER_STEPS", steps)
            .args(["--database-url", "postgres://postgres@127.0.0.1:9/kiln", "worker"])
            .env_remove("RUST_LOG")
            .output()
            .expect("run kiln");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{steps}: must not start: {stderr}");
        assert!(stderr.contains(&format!("fal.trainer_steps = {steps}")) && stderr.contains("1 to 10000"), "{steps}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
