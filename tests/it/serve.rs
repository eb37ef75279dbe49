//! `kiln serve` and `kiln migrate` as an operator sees them: health endpoints, graceful
//! shutdown, errors at start-up.

use std::process::Command;
use std::time::Duration;

use crate::support::app::TestApp;
use crate::support::db::TestDb;

async fn health_and_readiness(app: TestApp) {
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    // An unknown API URL is a problem; an unknown page URL, the dashboard's HTML 404.
    let page = app.get("/no/such/thing").await;
    assert_eq!((page.status().as_u16(), page.headers()["content-type"].to_str().expect("type")), (404, "text/html; charset=utf-8"));
    let unknown = app.get("/api/no/such/thing").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = unknown.json().await.expect("json");
    assert_eq!(body["type"], "/problems/not-found");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn postgres_health_and_readiness() {
    health_and_readiness(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test]
async fn sqlite_health_and_readiness() {
    health_and_readiness(TestApp::spawn(TestDb::sqlite().await).await).await;
}

#[tokio::test]
async fn readiness_fails_when_migrations_are_missing() {
    let app = TestApp::spawn(TestDb::sqlite().await).await;
    if let infrastructure::db::Database::Sqlite { write, .. } = &app.state.db {
        sqlx::query("DELETE FROM _sqlx_migrations").execute(write).await.expect("forget migrations");
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["type"], "/problems/not-ready");
    assert_eq!(app.get("/healthz").await.status(), 200, "the process itself is still up");
}

fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.env_remove("RUST_LOG").env("KILN_LOG__FORMAT", "json");
    command
}

#[test]
fn a_database_that_is_down_gives_one_line_and_a_failure_exit() {
    // Nothing listens on port 9 of loopback (discard, never run here).
    for args in [&["migrate"][..], &["serve", "--port", "0"][..]] {
        let output = kiln()
            .args(["--database-url", "postgres://postgres@127.0.0.1:9/kiln"])
            .args(args)
            .output()
            .expect("run kiln");
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().last().unwrap_or_default();
        assert!(line.starts_with("error: cannot connect to the database"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_configuration_is_refused() {
    let output = kiln().env("KILN_HTTP__PORT", "eighty").args(["serve"]).output().expect("run kiln");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid configuration"));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("k.db").display());
    let mut child = kiln()
        .args(["--database-url", &url, "serve", "--port", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kiln");
    // Wait (bounded) until it logs that it listens.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let listening = lines.by_ref().take(50).map_while(Result::ok).find(|l| l.contains("kiln listening"));
    assert!(listening.is_some(), "kiln did not start");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "kiln did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("kiln stopped")), "{rest:?}");
}
