//! Schemathesis against the running app, from the document the app serves: every
//! operation with generated valid and invalid input (bodies, parameters, headers), signed
//! in with a team's admin key and, for `/api/admin`, the operator key. Any 5xx, or a
//! response whose status, content type, headers or body the document does not describe,
//! fails the test, with schemathesis' report (and a curl line per failure) in the output.
//!
//! Stripe is configured against a fake on loopback (as in its own tests), so checkout and
//! its webhook run their real paths instead of answering "not configured" (a documented
//! 503, still a server error). fal.ai is configured only for a second run of its webhook
//! alone: with fal as the provider every job would wait on the fake for ever, and the
//! event stream of a job that has not ended stays open by design; with the local
//! provider jobs end and their streams close.
//!
//! The budget: `EXAMPLES` cases per operation in the fuzzing phase (the examples and
//! coverage phases add the ones the document implies), a fixed seed (the same cases each
//! run, so a failure reproduces), one worker: CPython 3.11's parser is not thread-safe
//! under hypothesis' lambda introspection ("AST constructor recursion depth mismatch"
//! with two).

use std::process::Command;

use super::{assert_success, python_tool, run};
use crate::fal::fake::{FakeFal, FAL_KEY};
use crate::stripe::fixtures::{self as stripe, FakeStripe};
use crate::support::app::{seed_catalog, TestApp, OPERATOR_KEY};
use crate::support::db::TestDb;

const EXAMPLES: u32 = 25;
const SEED: u32 = 19;
const FAL_WEBHOOK: &str = "receiveFalWebhook";

const CHECKS: &str =
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

/// Text no client should send but some will: NUL and other C0 controls, which the text
/// rule refuses (PostgreSQL's jsonb cannot even hold a NUL), beside text that must pass.
/// Random generation seldom draws them, so every free-text field draws from this list
/// one time in five (TOML escapes: the config file carries the characters themselves).
const HOSTILE_TEXT: &[&str] = &["a\\u0000b", "\\u0000", "bell\\u0007", "esc\\u001b[31m", "tab\\tand\\nnewline", "ünïcödé 🔥", "%00"];
const TEXT_FIELDS: &[&str] = &["name", "description", "prompt", "reason", "plan", "role", "source", "price_id", "resolution", "quality", "reference_model_id", "model_id"];

fn hostile_text() -> String {
    let values: Vec<String> = HOSTILE_TEXT.iter().map(|v| format!("\"{v}\"")).collect();
    let mut toml = String::new();
    for field in TEXT_FIELDS {
        toml.push_str(&format!("\"body.{field}\" = {{ dictionary = \"hostile\", probability = 0.2 }}\n"));
    }
    for parameter in ["query.cursor", "path.model_id", "path.job_id", "path.id"] {
        toml.push_str(&format!("\"{parameter}\" = {{ dictionary = \"hostile\", probability = 0.2 }}\n"));
    }
    toml.push_str(&format!("\n[dictionaries.hostile]\nvalues = [{}]\n", values.join(", ")));
    toml
}

/// Runs schemathesis on `app` with a fresh team's admin key; `filter` selects operations.
async fn schemathesis(app: &TestApp, filter: [&str; 2]) {
    let schemathesis = python_tool("schemathesis");
    let team = app.create_team("Fuzz Co", "pro").await;
    assert_eq!(app.grant(&team, 10_000, "fuzz-grant").await.status(), 200);
    let key = app.issue_key(&team, "admin").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("schemathesis.toml");
    // Credentials by security scheme: each operation gets the key its document names.
    // Half the admin requests name the fuzzing team itself, so plans, grants, adjustments
    // and expiry run their logic instead of only answering 404 for random ids.
    let toml = format!(
        r#"[auth.openapi.api_key]
bearer = "{key}"

[auth.openapi.operator_key]
bearer = "{OPERATOR_KEY}"

[dictionaries.team]
values = ["{team}"]

[parameters]
"path.team_id" = {{ dictionary = "team", probability = 0.5 }}
{hostile}"#,
        hostile = hostile_text()
    );
    std::fs::write(&config, toml).expect("write config");
    let mut command = Command::new(schemathesis);
    command
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &app.url("/openapi.json")])
        .args(filter)
        .args(["--checks", CHECKS])
        .args(["--mode", "all", "--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &EXAMPLES.to_string(), "--seed", &SEED.to_string()])
        .args(["--workers", "1", "--request-timeout", "20", "--generation-database", "none"])
        .args(["--suppress-health-check", "all", "--no-color"]);
    let output = run(command).await;
    assert_success("schemathesis", &output);
    // The run's summary (operations, phases, cases) for the test's log.
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report.rfind("SUMMARY").map_or("", |at| &report[at..]);
    println!("{summary}");
}

async fn fuzz(db: impl AsyncFn() -> TestDb) {
    let stripe_base = FakeStripe::default().start().await;
    let app = TestApp::spawn_with(db().await, |s| stripe::configure(s, &stripe_base)).await;
    seed_catalog(&app).await;
    schemathesis(&app, ["--exclude-operation-id", FAL_WEBHOOK]).await;

    let fal_base = FakeFal::default().start().await;
    let with_fal = TestApp::spawn_with(db().await, |s| {
        s.fal.key = Some(FAL_KEY.to_string().into());
        s.fal.queue_base_url = fal_base.clone();
        s.fal.jwks_url = format!("{fal_base}/.well-known/jwks.json");
    })
    .await;
    schemathesis(&with_fal, ["--include-operation-id", FAL_WEBHOOK]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schemathesis_finds_no_server_error_and_no_undocumented_response() {
    fuzz(TestDb::sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schemathesis_finds_no_server_error_and_no_undocumented_response() {
    fuzz(TestDb::postgres).await;
}
