//! What an operator sees of a running `kiln serve` (the built binary): a job's whole life
//! and its credit movements in the JSON log, findable by its id and tied to the request
//! that caused them; and `/metrics`, guarded by its bearer token, with the series moving.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const OPERATOR: &str = "observe-operator-key";
const SCRAPER: &str = "observe-scrape-token";

struct Served {
    child: Child,
    base: String,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

/// `kiln serve` on a fresh SQLite file and storage root, JSON logs, a metrics token.
fn serve() -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for (key, _) in std::env::vars() {
        if key.starts_with("KILN_") && !key.starts_with("KILN_TEST_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("KILN_AUTH__OPERATOR_KEY", OPERATOR)
        .env("KILN_METRICS__BEARER_TOKEN", SCRAPER)
        .env("KILN_PROVIDER__LOCAL_FAIL_PROMPTS_CONTAINING", "forbidden")
        .env("KILN_JOBS__POLL_INTERVAL_MS", "10")
        .args(["--log-format", "json", "--database-url", "sqlite:k.db", "serve", "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    // Read stderr on a thread so the pipe never fills while the test talks HTTP.
    let stderr = child.stderr.take().expect("stderr");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("kiln logs that it listens");
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("a JSON log line ({e}): {line}"));
        if value["message"] == "kiln listening" {
            break value["addr"].as_str().expect("addr").to_string();
        }
    };
    Served { child, base: format!("http://{addr}"), lines, _dir: dir }
}

impl Served {
    /// Stops it (SIGTERM) and returns every log line, parsed.
    fn stop(mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
        self.lines.iter().map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("JSON ({e}): {line}"))).collect()
    }
}

async fn call(client: &reqwest::Client, request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = client.execute(request.build().expect("request")).await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_final(client: &reqwest::Client, base: &str, key: &str, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = call(client, client.get(format!("{base}/api/jobs/{job}")).bearer_auth(key)).await;
        if matches!(view["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            return view;
        }
        assert!(Instant::now() < deadline, "job {job} did not end: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines of `log` that mention `id` anywhere (fields or spans), as `grep` would.
fn grep<'a>(log: &'a [Value], id: &str) -> Vec<&'a Value> {
    log.iter().filter(|line| line.to_string().contains(id)).collect()
}

fn messages(lines: &[&Value]) -> Vec<String> {
    lines.iter().map(|l| l["message"].as_str().unwrap_or("").to_string()).collect()
}

/// The `request_id` of the request span a line was logged in, if any.
fn request_id(line: &Value) -> Option<&str> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == "request")?["request_id"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_life_and_money_are_in_the_log_and_the_metrics_move() {
    let served = serve();
    let (base, client) = (served.base.clone(), reqwest::Client::new());
    let admin = |method: reqwest::Method, path: &str| client.request(method, format!("{base}{path}")).bearer_auth(OPERATOR);

    let (status, team) = call(&client, admin(reqwest::Method::POST, "/api/admin/teams").json(&json!({"name": "Acme", "plan": "pro"}))).await;
    assert_eq!(status, 201, "{team}");
    let team = team["team_id"].as_str().expect("team").to_string();
    let (_, key) = call(&client, admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/api-keys")).json(&json!({"role": "member", "name": "k"}))).await;
    let key = key["api_key"].as_str().expect("key").to_string();
    let grant = admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/grants")).header("Idempotency-Key", "g1").json(&json!({"amount": 5000}));
    assert_eq!(call(&client, grant).await.0, 200);
    let as_team = |method: reqwest::Method, path: &str| client.request(method, format!("{base}{path}")).bearer_auth(&key);

    let (_, page) = call(&client, as_team(reqwest::Method::GET, "/api/reference-models?limit=1")).await;
    let reference = page["items"][0]["id"].as_str().expect("a seeded reference model").to_string();
    let (status, created) = call(&client, as_team(reqwest::Method::POST, "/api/models").json(&json!({"name": "Ava", "description": "a runner", "reference_model_id": reference}))).await;
    assert_eq!(status, 202, "{created}");
    let model = created["model"]["model_id"].as_str().expect("model").to_string();
    assert_eq!(wait_final(&client, &base, &key, created["job"]["job_id"].as_str().expect("job")).await["status"], "completed");

    let generate = |prompt: &str| as_team(reqwest::Method::POST, "/api/generate").json(&json!({"model_id": model, "prompt": prompt}));
    let (status, accepted) = call(&client, generate("on a beach")).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["job"]["job_id"].as_str().expect("job").to_string();
    assert_eq!(wait_final(&client, &base, &key, &job).await["status"], "completed");
    let (_, refused) = call(&client, generate("something forbidden")).await;
    let failed = refused["job"]["job_id"].as_str().expect("job").to_string();
    assert_eq!(wait_final(&client, &base, &key, &failed).await["status"], "failed");

    // /metrics: no token and a wrong token are refused as problems; the right one scrapes.
    let scrape = |token: Option<&str>| {
        let request = client.get(format!("{base}/metrics"));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    for token in [None, Some("not-the-token")] {
        let response = scrape(token).send().await.expect("scrape");
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["type"], "/problems/unauthorized");
    }
    let response = scrape(Some(SCRAPER)).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    let value = |series: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    for series in [
        "kiln_http_requests_total{",
        "kiln_http_request_duration_seconds_count{",
        "kiln_jobs_submitted_total{kind=\"image_generation\"}",
        "kiln_jobs_dispatched_total{",
        "kiln_jobs_completed_total{",
        "kiln_jobs_failed_total{",
        "kiln_job_queue_wait_seconds_count{",
        "kiln_job_run_seconds_count{",
        "kiln_credit_operations_total{type=\"CreditsReserved\"}",
        "kiln_credit_operations_total{type=\"CreditsDeducted\"}",
        "kiln_credit_operations_total{type=\"CreditsRefunded\"}",
        "kiln_credit_amount_total{type=\"CreditsGranted\"}",
        "kiln_provider_calls_total{",
        "kiln_event_store_append_seconds_count{",
    ] {
        assert!(value(series) > 0.0, "{series} has not moved:\n{text}");
    }
    assert!(text.contains("kiln_http_requests_total{method=\"POST\",route=\"/api/generate\",status=\"202\"}"), "{text}");
    assert!(text.contains("kiln_jobs_queued{plan=\"pro\"}") && text.contains("kiln_jobs_running{plan=\"pro\"}"), "{text}");
    // Plan priority: each plan's weight and shares.
    assert_eq!(value("kiln_dispatch_weight{plan=\"enterprise\"}"), 10.0, "{text}");
    assert!(text.contains("kiln_dispatch_share{plan=\"pro\"}") && text.contains("kiln_dispatch_entitled_share{plan=\"pro\"}"), "{text}");
    assert!(text.contains("kiln_projection_lag_events{"), "{text}");
    assert!(!text.contains(&job), "no ids in labels");

    // The log: grep the job's id and see its whole life and its money.
    let log = served.stop();
    let lines = grep(&log, &job);
    let seen = messages(&lines);
    for expected in ["job queued", "credits reserved", "job dispatched", "job completed", "credits deducted"] {
        assert!(seen.iter().any(|m| m == expected), "no {expected:?} among {seen:?}");
    }
    let queued = lines.iter().find(|l| l["message"] == "job queued").expect("queued");
    let reserved = lines.iter().find(|l| l["message"] == "credits reserved").expect("reserved");
    assert_eq!(reserved["team_id"], team.as_str());
    assert!(reserved["amount"].as_i64().is_some_and(|a| a > 0), "{reserved}");
    assert_eq!(queued["kind"], "image_generation");
    let request = request_id(queued).expect("logged inside the request's span");
    assert_eq!(request_id(reserved), Some(request), "the reservation carries the same request id");
    let completed = lines.iter().find(|l| l["message"] == "job completed").expect("completed");
    assert!(completed["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["name"] == "job")), "in the worker's job span: {completed}");

    let failed_seen = messages(&grep(&log, &failed));
    for expected in ["job queued", "credits reserved", "job failed", "credits refunded"] {
        assert!(failed_seen.iter().any(|m| m == expected), "no {expected:?} among {failed_seen:?}");
    }
    // The team's credits: the grant and every movement name the team.
    let team_seen = messages(&grep(&log, &team));
    assert!(team_seen.iter().any(|m| m == "credits granted"), "{team_seen:?}");
    assert!(!log.iter().any(|l| l.to_string().contains(OPERATOR) || l.to_string().contains(SCRAPER) || l.to_string().contains(&key)), "no secret in the log");
}
