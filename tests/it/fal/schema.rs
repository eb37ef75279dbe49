//! The fake fal checks submissions as fal does: bodies against the input schema of the
//! app they target (`schemas/`), and a trainer's `images_data_url` by downloading it.
//! Refusals are fal's 422 `{"detail": [{"loc", "msg", "type"}]}` and are recorded.

use std::io::{Cursor, Write};

use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;

use super::fake::{AppInput, FakeFal, FAL_KEY};

/// Submits `body` to `app` on the fake, as Kiln does; returns the status and body.
async fn submit(base: &str, app: &str, body: &Value) -> (u16, Value) {
    let response =
        reqwest::Client::new().post(format!("{base}/{app}")).header("authorization", format!("Key {FAL_KEY}")).json(body).send().await.expect("submit");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The 422's single detail item, checked for fal's shape.
#[track_caller]
fn refusal((status, body): (u16, Value)) -> Value {
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_array().unwrap_or_else(|| panic!("detail is a list: {body}"));
    for item in detail {
        assert_eq!(item["loc"][0], "body", "{item}");
        assert!(item["msg"].is_string() && item["type"].is_string(), "{item}");
    }
    assert_eq!(detail.len(), 1, "{body}");
    detail[0].clone()
}

/// The body Kiln sends fal-ai/flux-lora for a generation.
fn generation() -> Value {
    json!({
        "prompt": "kilnab12cd34 on a beach",
        "image_size": {"width": 512, "height": 512},
        "num_images": 2,
        "num_inference_steps": 28,
        "output_format": "png",
        "enable_safety_checker": true,
        "loras": [{"path": "https://kiln.example/files/lora.safetensors?sig=x", "scale": 1.0}],
    })
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

#[tokio::test]
async fn flux_lora_bodies_outside_fals_input_schema_are_refused_as_fal_refuses_them() {
    let fake = FakeFal::default();
    let base = fake.start().await;

    let (status, accepted) = submit(&base, "fal-ai/flux-lora", &generation()).await;
    assert_eq!(status, 200, "{accepted}");
    let every_field = json!({
        "prompt": "a lighthouse", "image_size": "landscape_16_9", "num_inference_steps": 50, "seed": 7,
        "loras": [], "guidance_scale": 3.5, "sync_mode": false, "num_images": 4, "enable_safety_checker": false,
        "output_format": "jpeg", "acceleration": "regular",
    });
    assert_eq!(submit(&base, "fal-ai/flux-lora", &every_field).await.0, 200);
    // fal's schema takes a null seed (a random one).
    assert_eq!(submit(&base, "fal-ai/flux-lora", &with(generation(), "seed", Value::Null)).await.0, 200);
    assert_eq!(fake.violations(), vec![], "valid bodies pass");
    let request = fake.request(accepted["request_id"].as_str().expect("request id"));
    assert_eq!((request.input, request.training_files), (generation(), vec![]));

    let cases = [
        (with(generation(), "negative_prompt", json!("blurry")), json!(["body", "negative_prompt"]), "extra_forbidden"),
        (with(generation(), "num_images", json!(9)), json!(["body", "num_images"]), "less_than_equal"),
        (with(generation(), "output_format", json!("gif")), json!(["body", "output_format"]), "literal_error"),
        (with(generation(), "num_inference_steps", json!("28")), json!(["body", "num_inference_steps"]), "int_type"),
        (with(generation(), "loras", json!([{"path": "x", "scale": 5}])), json!(["body", "loras", 0, "scale"]), "less_than_equal"),
        (with(generation(), "image_size", json!({"width": 14_143, "height": 512})), json!(["body", "image_size"]), "value_error"),
        (with(generation(), "seed", json!("7")), json!(["body", "seed"]), "value_error"),
        (with(generation(), "acceleration", json!("high")), json!(["body", "acceleration"]), "literal_error"),
    ];
    for (body, loc, kind) in &cases {
        let detail = refusal(submit(&base, "fal-ai/flux-lora", body).await);
        assert_eq!((&detail["loc"], detail["type"].as_str()), (loc, Some(*kind)), "{body}");
    }
    let mut no_prompt = generation();
    no_prompt.as_object_mut().expect("object").remove("prompt");
    let detail = refusal(submit(&base, "fal-ai/flux-lora", &no_prompt).await);
    assert_eq!(detail, json!({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}));
    let detail = refusal(submit(&base, "fal-ai/flux-lora", &with(generation(), "output_format", json!("gif"))).await);
    assert_eq!(detail["msg"], "Input should be 'jpeg' or 'png'");

    let violations = fake.violations();
    assert_eq!(violations.len(), cases.len() + 2, "every refusal recorded: {violations:?}");
    assert!(violations.iter().all(|v| v.app == "fal-ai/flux-lora"));
    assert_eq!((violations[0].loc.clone(), violations[0].kind.as_str()), (vec![json!("body"), json!("negative_prompt")], "extra_forbidden"));
    let answered: Vec<u16> = fake.submits().iter().map(|(_, status)| *status).collect();
    assert_eq!(answered, [[200, 200, 200].as_slice(), &[422; 10]].concat());
}

#[tokio::test]
async fn unknown_apps_are_not_found_and_declared_apps_are_checked_by_their_input() {
    let fake = FakeFal::default();
    let base = fake.start().await;

    let (status, body) = submit(&base, "acme/flux-lora-v2", &generation()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(fake.violations().len(), 1, "an unknown app is something fal refuses");

    fake.serve_app("acme/flux-lora-v2", AppInput::TextToImage);
    assert_eq!(submit(&base, "acme/flux-lora-v2", &generation()).await.0, 200);
    let detail = refusal(submit(&base, "acme/flux-lora-v2", &with(generation(), "num_images", json!(0))).await);
    assert_eq!((detail["loc"].clone(), detail["type"].clone()), (json!(["body", "num_images"]), json!("greater_than_equal")));
}

/// A zip of `files` (name, bytes), deflated.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        writer.start_file(*name, SimpleFileOptions::default()).expect("zip entry");
        writer.write_all(bytes).expect("zip bytes");
    }
    writer.finish().expect("zip").into_inner()
}

/// Serves training archives on loopback, as Kiln's storage would by signed URL.
async fn archives() -> String {
    let images = zip_of(&[("ava-1.png", b"\x89PNG fake"), ("ava-1.txt", b"kilnab12 running"), ("ava-2.JPG", b"jpeg"), ("notes/", b"")]);
    let captions_only = zip_of(&[("ava-1.txt", b"kilnab12 running"), ("ava-1.gif", b"GIF89a")]);
    let router = Router::new()
        .route("/set.zip", get(move || async move { images }))
        .route("/captions.zip", get(move || async move { captions_only }))
        .route("/plain.zip", get(|| async { "not a zip" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test]
async fn trainer_bodies_need_a_downloadable_zip_holding_images() {
    let fake = FakeFal::default();
    let base = fake.start().await;
    let files = archives().await;
    let trainer = "fal-ai/flux-lora-fast-training";
    let training = |url: String| json!({"images_data_url": url, "trigger_word": "kilnab12", "steps": 1000, "is_style": false, "create_masks": true});

    let (status, accepted) = submit(&base, trainer, &training(format!("{files}/set.zip"))).await;
    assert_eq!(status, 200, "{accepted}");
    let request = fake.request(accepted["request_id"].as_str().expect("request id"));
    assert_eq!(request.training_files, ["ava-1.png", "ava-1.txt", "ava-2.JPG"], "the archive's files, in order");
    assert_eq!(fake.violations(), vec![]);

    for (url, why) in
        [(format!("{files}/captions.zip"), "holds no image"), (format!("{files}/plain.zip"), "is not a zip archive"), (format!("{files}/missing.zip"), "404")]
    {
        let detail = refusal(submit(&base, trainer, &training(url.clone())).await);
        assert_eq!(detail["loc"], json!(["body", "images_data_url"]), "{url}");
        assert!(detail["msg"].as_str().expect("msg").contains(why), "{url}: {detail}");
    }

    // The body Kiln sends the trainer before #22: no images, fields fal does not know.
    let (status, body) = submit(&base, trainer, &json!({"trigger_word": "kilnab12", "description": "a runner", "is_style": false, "create_masks": true})).await;
    assert_eq!(status, 422, "{body}");
    let mut locs: Vec<String> = body["detail"].as_array().expect("detail").iter().map(|d| d["loc"].to_string()).collect();
    locs.sort();
    assert_eq!(locs, [r#"["body","description"]"#, r#"["body","images_data_url"]"#], "{body}");
    let detail = refusal(submit(&base, trainer, &with(training(format!("{files}/set.zip")), "steps", json!(0))).await);
    assert_eq!((detail["loc"].clone(), detail["type"].clone()), (json!(["body", "steps"]), json!("greater_than_equal")));
    let detail = refusal(submit(&base, trainer, &with(training(format!("{files}/set.zip")), "steps", json!(10_001))).await);
    assert_eq!((detail["loc"].clone(), detail["type"].clone()), (json!(["body", "steps"]), json!("less_than_equal")));
    // fal takes null steps (its default) and names the archive's format when asked.
    let named = with(with(training(format!("{files}/set.zip")), "steps", Value::Null), "data_archive_format", json!("zip"));
    assert_eq!(submit(&base, trainer, &named).await.0, 200);
    assert_eq!(fake.violations().len(), 3 + 2 + 2);
}
