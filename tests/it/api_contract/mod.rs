//! The API's contract as its users meet it: the OpenAPI document served at
//! `/openapi.json`, checked by the tools clients use. Its own rules (operation ids,
//! problem+json errors, examples, bounds) are checked here in Rust; that it is a valid
//! OpenAPI 3.1 document, by openapi-spec-validator; that a client generated from it works,
//! by openapi-python-client; that the app keeps to it under arbitrary input, by
//! schemathesis (`fuzz.rs`). The Python tools are pinned in scripts/python-tools.txt and
//! installed by scripts/ensure-python-tools (scripts/test runs it): without them these
//! tests fail, they never skip.

mod fuzz;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// The venv's `bin` directory: `PYTHON_TOOLS_VENV` if set (not `KILN_*`: the config
/// loader refuses unknown `KILN_` variables in the spawned `kiln`), else the one
/// scripts/ensure-python-tools makes.
pub fn python_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("PYTHON_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-tools"));
    let tool = venv.join("bin").join(name);
    assert!(tool.exists(), "{} is missing: run scripts/ensure-python-tools (scripts/test does)", tool.display());
    tool
}

/// Runs a tool to its end off the async runtime (the app under test keeps serving).
pub async fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("tool thread")
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

pub fn assert_success(what: &str, output: &Output) {
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", output.status);
}

async fn served_document(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("the document is JSON")
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every operation of the document: (path, method, operation).
fn operations(document: &Value) -> Vec<(String, &'static str, &Value)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut all = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                all.push((path.clone(), method, operation));
            }
        }
    }
    all
}

fn is_camel_case(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

#[tokio::test]
async fn the_document_keeps_its_own_rules() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let document = served_document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let problem = &document["components"]["schemas"]["Problem"];
    assert_eq!(problem["required"], serde_json::json!(["type", "title", "status"]), "{problem}");
    let mut ids = HashSet::new();
    for (path, method, operation) in operations(&document) {
        let at = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(is_camel_case(id), "{at}: operationId {id} is not camelCase");
        assert!(ids.insert(id.to_string()), "{at}: operationId {id} repeats");
        for (status, response) in operation["responses"].as_object().expect("responses") {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/Problem", "{at} {status}: not a Problem");
            }
        }
        if let Some(body) = operation.get("requestBody") {
            // A JSON body shows an example; an upload of bytes (an image) is binary.
            match body["content"].get("application/json") {
                Some(json) => assert!(json.get("example").is_some() || json.get("examples").is_some(), "{at}: the request body has no example"),
                None => {
                    let schema = &body["content"]["application/octet-stream"]["schema"];
                    let named = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/"));
                    let schema = named.map_or(schema, |name| &document["components"]["schemas"][name]);
                    assert_eq!(schema["format"], "binary", "{at}: a body neither JSON nor binary: {body}");
                }
            }
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().expect("name");
            let place = parameter["in"].as_str().expect("in");
            assert!(path.contains(&format!("{{{name}}}")) == (place == "path"), "{at}: {name} is in {place}");
        }
        let secured = operation.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
        let public = path.starts_with("/api/webhooks/") || !path.starts_with("/api/");
        assert_eq!(secured, !public, "{at}: security");
        if path.starts_with("/api/admin/") {
            assert_eq!(operation["security"], serde_json::json!([{"operator_key": []}]), "{at}");
        }
    }
    for id in ["listModels", "createModel", "createGenerationJob", "estimateGeneration", "getJob", "cancelJob", "listJobs", "getCreditBalance"] {
        assert!(ids.contains(id), "operationId {id}");
    }
    // Query filters are optional query parameters, not required path parameters; the
    // consistency token an optional header.
    let list_jobs = &document["paths"]["/api/jobs"]["get"]["parameters"];
    for parameter in list_jobs.as_array().expect("parameters") {
        let place = if parameter["name"] == "Kiln-Consistency-Token" { "header" } else { "query" };
        assert_eq!((parameter["in"].as_str(), parameter["required"].as_bool()), (Some(place), Some(false)), "{parameter}");
    }
    // Writes say they answer with the token, and a malformed one is a documented 422.
    let created = &document["paths"]["/api/generate"]["post"]["responses"]["202"]["headers"]["Kiln-Consistency-Token"];
    assert!(created["schema"]["pattern"].is_string(), "{created}");
    assert!(document["paths"]["/api/jobs"]["get"]["responses"]["422"].is_object());
}

/// The job event stream's data is documented, one schema per public event type, and
/// its `type` values are the ones the stream sends.
#[tokio::test]
async fn the_event_stream_documents_its_public_events() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let document = served_document(&app).await;
    let stream = &document["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"];
    assert_eq!(stream["schema"]["$ref"], "#/components/schemas/JobStreamEvent", "{stream}");
    let item = &document["components"]["schemas"]["JobStreamEvent"];
    assert_eq!(item["properties"]["data"]["contentSchema"]["$ref"], "#/components/schemas/PublicJobEvent", "{item}");
    assert_eq!(item["properties"]["event"]["enum"], serde_json::json!(kiln::http::job_events::PUBLIC_JOB_EVENT_TYPES));
    let variants = document["components"]["schemas"]["PublicJobEvent"]["oneOf"].as_array().expect("oneOf").clone();
    let types: Vec<&str> = variants.iter().filter_map(|v| v["properties"]["type"]["enum"][0].as_str()).collect();
    assert_eq!(types, kiln::http::job_events::PUBLIC_JOB_EVENT_TYPES, "{variants:?}");
}

/// The lengths the document promises are the ones the domain enforces.
#[tokio::test]
async fn documented_bounds_are_the_enforced_ones() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let document = served_document(&app).await;
    let schemas = &document["components"]["schemas"];
    let max_length = |schema: &str, field: &str| schemas[schema]["properties"][field]["maxLength"].as_u64();
    let expected = [
        ("CreateTeam", "name", domain::credits::TEAM_NAME_CHARS_MAX),
        ("IssueKey", "name", domain::keys::KEY_NAME_CHARS_MAX),
        ("AdjustRequest", "reason", domain::credits::ADJUSTMENT_REASON_CHARS_MAX),
        ("CreateModel", "name", domain::models::MODEL_NAME_CHARS_MAX),
        ("CreateModel", "description", domain::jobs::PROMPT_CHARS_MAX),
        ("UpdateModel", "name", domain::models::MODEL_NAME_CHARS_MAX),
        ("UpdateModel", "description", domain::jobs::PROMPT_CHARS_MAX),
        ("RefineModel", "prompt", domain::jobs::PROMPT_CHARS_MAX),
        ("GenerateRequest", "prompt", domain::jobs::PROMPT_CHARS_MAX),
    ];
    for (schema, field, max) in expected {
        assert_eq!(max_length(schema, field), Some(max as u64), "{schema}.{field}");
    }
    let count = &schemas["GenerateRequest"]["properties"]["count"];
    assert_eq!(count["maximum"].as_u64(), Some(u64::from(domain::jobs::IMAGES_PER_JOB_MAX)), "{count}");
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let validator = python_tool("openapi-spec-validator");
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&served_document(&app).await).expect("json")).expect("write");
    let mut command = Command::new(validator);
    command.arg(&file);
    let output = run(command).await;
    assert_success("openapi-spec-validator", &output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK"), "{output:?}");
}

/// What the README's API section shows: a client generated from the document, used as
/// a Python program would.
#[tokio::test]
async fn a_generated_python_client_calls_kiln() {
    let generator = python_tool("openapi-python-client");
    let python = python_tool("python");
    let app = TestApp::spawn(TestDb::postgres().await).await;
    let team = app.create_team("Client Co", "pro").await;
    assert_eq!(app.grant(&team, 120, "client-grant").await.status(), 200);
    let key = app.issue_key(&team, "member").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("openapi.json");
    std::fs::write(&spec, serde_json::to_vec(&served_document(&app).await).expect("json")).expect("write");
    let mut generate = Command::new(&generator);
    // The generator formats its output with ruff, from the same venv.
    let bin = generator.parent().expect("venv bin").to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))
        .expect("PATH");
    generate.env("PATH", path).current_dir(dir.path()).args(["generate", "--meta", "none", "--output-path", "kiln_client", "--path"]).arg(&spec);
    let output = run(generate).await;
    assert_success("openapi-python-client generate", &output);
    let warnings = String::from_utf8_lossy(&output.stdout);
    assert!(!warnings.contains("Warning"), "the generator skipped parts of the document:\n{warnings}");

    let program = r#"
import sys
from kiln_client import AuthenticatedClient
from kiln_client.api.billing import get_credit_balance
from kiln_client.api.jobs import list_jobs
from kiln_client.models import Problem

client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
balance = get_credit_balance.sync(client=client)
print(balance.team_id, balance.plan, balance.available)
page = list_jobs.sync(client=client, limit=5)
print(len(page.items))
anonymous = AuthenticatedClient(base_url=sys.argv[1], token="kiln_not_a_key")
problem = get_credit_balance.sync(client=anonymous)
assert isinstance(problem, Problem), problem
print(problem.type_, problem.status)
"#;
    let mut call = Command::new(python);
    call.current_dir(dir.path()).arg("-c").arg(program).arg(app.url("")).arg(&key);
    let output = run(call).await;
    assert_success("the generated client", &output);
    let printed = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines, [format!("{team} pro 120").as_str(), "0", "/problems/unauthorized 401"], "{printed}");
}
