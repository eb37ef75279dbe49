//! Operators through the doors an operator uses: `kiln operator create | list | revoke`
//! (the key printed once), `/api/admin/*` with operator keys (viewers read, admins act,
//! team keys and revoked operators refused), every admin action recorded with the
//! operator and the reason on the team's ledger, in `kiln audit replay` and the export;
//! `GET /api/admin/teams` searched and paged.

use application::operators::{create, CreatedOperator};
use domain::operators::OperatorRole;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::db::TestDb;

/// The built binary on `url`, run in a fresh directory (its data directory is there).
fn kiln(url: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .arg("--database-url")
        .arg(url)
        .args(args)
        .output()
        .expect("run kiln")
}

async fn operator(app: &TestApp, name: &str, role: OperatorRole) -> CreatedOperator {
    let clock = app.state.credits.clock().clone();
    create(&app.state.aggregates, clock.as_ref(), name, role, &json!({"actor": "test"})).await.expect("operator created")
}

async fn call(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>, idempotency: Option<&str>) -> (u16, String, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = idempotency {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = response.text().await.expect("body");
    (status, content_type, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn roles_keys_and_recorded_reasons(app: TestApp) {
    let team = app.create_team("Acme", "pro").await;
    let team_key = app.issue_key(&team, "admin").await;
    let viewer = operator(&app, "Vera", OperatorRole::Viewer).await;
    let admin = operator(&app, "Alice", OperatorRole::Admin).await;
    assert!(admin.secret.starts_with("kiln_op_"), "operator keys say what they open");

    // A viewer reads everything and changes nothing: 403 problem+json for any write.
    let (status, _, page) = call(&app, &viewer.secret, Method::GET, "/api/admin/teams", None, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["team_id"], team.as_str());
    let grant = json!({"amount": 500, "reason": "goodwill"});
    let (status, content_type, problem) =
        call(&app, &viewer.secret, Method::POST, &format!("/api/admin/teams/{team}/grants"), Some(grant.clone()), Some("g-1")).await;
    assert_eq!((status, content_type.as_str()), (403, "application/problem+json"), "{problem}");
    assert_eq!(problem["type"], "/problems/forbidden");
    let (status, _, _) = call(&app, &viewer.secret, Method::PUT, &format!("/api/admin/teams/{team}/plan"), Some(json!({"plan": "basic"})), None).await;
    assert_eq!(status, 403);

    // A team's key, even an admin one, opens no admin endpoint, read or write.
    for (method, path) in [(Method::GET, "/api/admin/teams".to_string()), (Method::GET, "/api/admin/operators".to_string()), (Method::GET, format!("/api/admin/teams/{team}"))] {
        let (status, content_type, problem) = call(&app, &team_key, method, &path, None, None).await;
        assert_eq!((status, content_type.as_str()), (401, "application/problem+json"), "{path}: {problem}");
    }

    // An admin acts; the grant, the adjustment, the plan change and the key revocation
    // are each recorded with who did it and why.
    let (status, _, balance) = call(&app, &admin.secret, Method::POST, &format!("/api/admin/teams/{team}/grants"), Some(grant.clone()), Some("g-1")).await;
    assert_eq!((status, balance["available"].as_i64()), (200, Some(500)), "{balance}");
    let (status, _, balance) = call(&app, &admin.secret, Method::POST, &format!("/api/admin/teams/{team}/grants"), Some(grant), Some("g-1")).await;
    assert_eq!((status, balance["available"].as_i64()), (200, Some(500)), "a retried grant grants nothing more: {balance}");
    let adjust = json!({"amount": -20, "reason": "double-charged render"});
    let (status, _, _) = call(&app, &admin.secret, Method::POST, &format!("/api/admin/teams/{team}/adjustments"), Some(adjust), Some("a-1")).await;
    assert_eq!(status, 200);
    // A plan change applies only if newer than the plan's (the test clock stands still).
    app.clock.advance(chrono::Duration::seconds(1));
    let plan = json!({"plan": "enterprise", "reason": "signed the enterprise contract"});
    let (status, _, balance) = call(&app, &admin.secret, Method::PUT, &format!("/api/admin/teams/{team}/plan"), Some(plan), None).await;
    assert_eq!((status, balance["plan"].as_str()), (200, Some("enterprise")));
    let member = app.issue_key(&team, "member").await;
    let (_, _, keys) = call(&app, &admin.secret, Method::GET, &format!("/api/admin/teams/{team}/api-keys"), None, None).await;
    let member_id = keys.as_array().expect("keys").last().expect("the member key")["key_id"].as_str().expect("id").to_string();
    let (status, _, _) =
        call(&app, &admin.secret, Method::DELETE, &format!("/api/admin/teams/{team}/api-keys/{member_id}?reason=leaked%20in%20a%20log"), None, None).await;
    assert_eq!(status, 204);
    let (status, _, _) = call(&app, &member, Method::GET, "/api/credits/balance", None, None).await;
    assert_eq!(status, 401, "the revoked key stopped working");
    // The bootstrap key still acts, as the admin named bootstrap; a reason the text rule
    // refuses is a 422 naming the field, nothing recorded.
    let (status, _, problem) = call(
        &app,
        crate::support::app::OPERATOR_KEY,
        Method::POST,
        &format!("/api/admin/teams/{team}/grants"),
        Some(json!({"amount": 5, "reason": "bad\u{1}reason"})),
        Some("g-2"),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("reason")), "{problem}");
    let (status, _, _) = call(&app, crate::support::app::OPERATOR_KEY, Method::POST, &format!("/api/admin/teams/{team}/grants"), Some(json!({"amount": 5})), Some("g-3")).await;
    assert_eq!(status, 200, "the reason stays optional for grants in the API");

    // The team's own history (the async ledger) names the operator and the reason.
    app.state.projector.catch_up_to_head(std::time::Duration::from_secs(30)).await.expect("projector");
    let (_, _, history) = call(&app, &team_key, Method::GET, "/api/credits/history?type=operator", None, None).await;
    let details: Vec<&str> = history["items"].as_array().expect("items").iter().filter_map(|e| e["detail"].as_str()).collect();
    for expected in ["grant by Alice: goodwill", "adjust by Alice: double-charged render", "change_plan by Alice: signed the enterprise contract", "revoke_key by Alice: leaked in a log", "grant by bootstrap"] {
        assert!(details.contains(&expected), "{expected:?} in {details:?}");
    }
    assert_eq!(details.len(), 5, "one act per action, none for the retried grant: {details:?}");

    // `kiln audit replay` and the export, from events alone, say the same.
    let replay = kiln(&app.db.url, &["audit", "replay", "--team", &team]);
    let replay_text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert!(replay_text.contains("adjust by Alice: double-charged render"), "{replay_text}");
    let export = kiln(&app.db.url, &["audit", "export", "--team", &team, "--format", "csv"]);
    let export_text = String::from_utf8_lossy(&export.stdout);
    assert!(export_text.contains("revoke_key by Alice: leaked in a log"), "{export_text}");
    let verify = kiln(&app.db.url, &["audit", "verify", "--team", &team]);
    assert!(verify.status.success(), "the chain holds the acts: {}", String::from_utf8_lossy(&verify.stdout));

    // Revoking an operator (through the CLI) closes the API to their key at once.
    let revoked = kiln(&app.db.url, &["operator", "revoke", "--id", &admin.operator_id.to_string()]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let (status, _, _) = call(&app, &admin.secret, Method::GET, "/api/admin/teams", None, None).await;
    assert_eq!(status, 401);
    let (status, _, operators) = call(&app, &viewer.secret, Method::GET, "/api/admin/operators", None, None).await;
    assert_eq!(status, 200);
    let alice = operators.as_array().expect("operators").iter().find(|o| o["name"] == "Alice").expect("Alice listed").clone();
    assert!(alice["revoked_at"].is_string(), "{alice}");
    assert!(!operators.to_string().contains("kiln_op_"), "no key is ever listed");
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_operator_roles_keys_and_recorded_reasons() {
    roles_keys_and_recorded_reasons(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_operator_roles_keys_and_recorded_reasons() {
    roles_keys_and_recorded_reasons(TestApp::spawn(TestDb::sqlite().await).await).await;
}

/// `GET /api/admin/teams`: search by part of the name (any case) or the id, pages that
/// together list every team once.
async fn teams_are_searched_and_paged(app: TestApp) {
    let mut ids = Vec::new();
    for name in ["Acme Studio", "Brick Works", "acme labs", "Cedar"] {
        ids.push(app.create_team(name, "basic").await);
    }
    let key = crate::support::app::OPERATOR_KEY;
    let (_, _, found) = call(&app, key, Method::GET, "/api/admin/teams?search=ACME", None, None).await;
    let names: Vec<&str> = found["items"].as_array().expect("items").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["Acme Studio", "acme labs"]);
    let (_, _, by_id) = call(&app, key, Method::GET, &format!("/api/admin/teams?search={}", ids[3]), None, None).await;
    assert_eq!(by_id["items"][0]["name"], "Cedar");
    let (_, _, none) = call(&app, key, Method::GET, "/api/admin/teams?search=%25", None, None).await;
    assert_eq!(none["items"].as_array().expect("items").len(), 0, "a % is a character, not a wildcard");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/admin/teams?limit=3&cursor={c}"),
            None => "/api/admin/teams?limit=3".to_string(),
        };
        let (status, _, page) = call(&app, key, Method::GET, &path, None, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["items"].as_array().expect("items").iter().map(|t| t["team_id"].as_str().expect("id").to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every team once, in the order opened");
    let (status, _, problem) = call(&app, key, Method::GET, "/api/admin/teams?cursor=bogus", None, None).await;
    assert_eq!((status, problem["type"].as_str()), (422, Some("/problems/invalid-cursor")));
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_admin_teams_are_searched_and_paged() {
    teams_are_searched_and_paged(TestApp::spawn(TestDb::postgres().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_admin_teams_are_searched_and_paged() {
    teams_are_searched_and_paged(TestApp::spawn(TestDb::sqlite().await).await).await;
}

/// `kiln operator create` prints the key once, `list` shows the operator and no key.
#[test]
fn operator_cli_creates_lists_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("kiln.db").display());
    let created = kiln(&url, &["operator", "create", "--name", "Alice", "--role", "admin"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let out = String::from_utf8_lossy(&created.stdout).into_owned();
    let key = out.lines().find_map(|l| l.strip_prefix("operator key  ")).expect("the key is printed").trim().to_string();
    assert!(key.starts_with("kiln_op_"), "{out}");
    let listed = kiln(&url, &["operator", "list"]);
    let list = String::from_utf8_lossy(&listed.stdout);
    assert!(list.contains("Alice") && list.contains("admin"), "{list}");
    assert!(!list.contains(&key), "the key is shown once only");
    let bad_role = kiln(&url, &["operator", "create", "--name", "Bob", "--role", "owner"]);
    assert!(!bad_role.status.success());
    let bad_name = kiln(&url, &["operator", "create", "--name", "Bo\u{1}b", "--role", "viewer"]);
    assert!(!bad_name.status.success());
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("control character"), "{}", String::from_utf8_lossy(&bad_name.stderr));
}

/// The catalog through `/api/admin/reference-models`: an admin adds a reference model
/// (each field held to its rule, named in the 422), stores its preview (an image, or
/// 422), edits its text (teams see it), retires it (gone from the team's list and refused
/// for new custom models, while a model made from it keeps working) and restores it; a
/// viewer is refused; every change names the operator and the reason in `kiln audit
/// acts`; a later `kiln seed` keeps the operator's edit; `kiln projections rebuild
/// --verify` stays clean.
async fn the_catalog_is_curated_through_the_admin_api(app: TestApp) {
    crate::support::app::seed_catalog(&app).await;
    let alice = operator(&app, "Alice", OperatorRole::Admin).await;
    let vera = operator(&app, "Vera", OperatorRole::Viewer).await;
    let team = app.create_team("Acme", "pro").await;
    let team_key = app.issue_key(&team, "member").await;
    assert_eq!(app.grant(&team, 100_000, "seed-catalog-test").await.status(), 200);
    let new = json!({"id": "fashion-rain-01", "name": "Ines · Rain Editorial", "description": "A wet-look editorial in city rain",
        "category": "fashion", "complexity_factor_milli": 1500, "characteristics": {"lighting": "overcast"}, "reason": "autumn campaign"});

    // Each field is held to its rule; the 422 names it. A viewer changes nothing.
    for (field, value) in [("id", json!("Rain Editorial")), ("name", json!("a\u{1}b")), ("category", json!("sports")), ("complexity_factor_milli", json!(0))] {
        let mut body = new.clone();
        body[field] = value;
        let (status, content_type, problem) = call(&app, &alice.secret, Method::POST, "/api/admin/reference-models", Some(body), None).await;
        assert_eq!((status, content_type.as_str(), problem["field"].as_str()), (422, "application/problem+json", Some(field)), "{problem}");
    }
    let (status, _, problem) = call(&app, &vera.secret, Method::POST, "/api/admin/reference-models", Some(new.clone()), None).await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("/problems/forbidden")), "{problem}");

    let (status, _, added) = call(&app, &alice.secret, Method::POST, "/api/admin/reference-models", Some(new.clone()), None).await;
    assert_eq!((status, added["active"].as_bool(), added["changed_by"].as_str()), (201, Some(true), Some("Alice")), "{added}");
    let (status, _, problem) = call(&app, &alice.secret, Method::POST, "/api/admin/reference-models", Some(new.clone()), None).await;
    assert_eq!((status, problem["type"].as_str()), (409, Some("/problems/reference-model-exists")), "{problem}");
    let (status, _, offered) = call(&app, &team_key, Method::GET, "/api/reference-models/fashion-rain-01", None, None).await;
    assert_eq!((status, offered["description"].as_str()), (200, Some("A wet-look editorial in city rain")), "{offered}");

    // The preview: an image is stored through the object store and served; anything else is refused.
    let png = infrastructure::provider::render::render_png(&[7; 32], 64, 64).expect("png");
    let preview = |bytes: Vec<u8>| app.client.put(app.url("/api/admin/reference-models/fashion-rain-01/preview?reason=new%20shoot")).bearer_auth(&alice.secret).body(bytes).send();
    let response = preview(b"GIF89a not a png".to_vec()).await.expect("put preview");
    let problem: Value = serde_json::from_str(&response.text().await.expect("body")).expect("problem");
    assert_eq!(problem["field"], "preview", "{problem}");
    let response = preview(png.clone()).await.expect("put preview");
    assert_eq!(response.status(), 200);
    let view: Value = serde_json::from_str(&response.text().await.expect("body")).expect("view");
    let url = view["preview_urls"][0].as_str().expect("preview url").to_string();
    let served = app.client.get(&url).send().await.expect("get preview").bytes().await.expect("bytes");
    assert_eq!(served.to_vec(), png, "the stored preview is served");

    // An edit shows at once; a seeded model may be edited too, and a later seed keeps the edit.
    let edit = json!({"description": "Rain editorial, now with umbrellas", "reason": "brief changed"});
    let (status, _, edited) = call(&app, &alice.secret, Method::PATCH, "/api/admin/reference-models/fashion-rain-01", Some(edit), None).await;
    assert_eq!((status, edited["description"].as_str()), (200, Some("Rain editorial, now with umbrellas")), "{edited}");
    let rename = json!({"name": "Ava · Runway Classic", "reason": "rebrand"});
    let (status, _, _) = call(&app, &alice.secret, Method::PATCH, "/api/admin/reference-models/fashion-editorial-01", Some(rename), None).await;
    assert_eq!(status, 200);
    crate::support::app::seed_catalog(&app).await;
    let (_, _, seeded) = call(&app, &team_key, Method::GET, "/api/reference-models/fashion-editorial-01", None, None).await;
    assert_eq!(seeded["name"], "Ava · Runway Classic", "a later seed keeps the operator's edit: {seeded}");

    // A model made from it before it is retired keeps working after.
    let body = json!({"name": "Rainy", "description": "a model in the rain", "reference_model_id": "fashion-rain-01"});
    let (status, _, created) = call(&app, &team_key, Method::POST, "/api/models", Some(body.clone()), None).await;
    assert_eq!(status, 202, "{created}");
    let model_id = created["model"]["model_id"].as_str().expect("model id").to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(app.state.worker(&app.settings.jobs, "catalog-test".into()).run(stopped));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, model) = call(&app, &team_key, Method::GET, &format!("/api/models/{model_id}"), None, None).await;
        if model["status"] == "ready" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "model never ready: {model}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let _ = worker.await;

    let (status, _, retired) = call(&app, &alice.secret, Method::POST, "/api/admin/reference-models/fashion-rain-01/retire?reason=campaign%20over", None, None).await;
    assert_eq!((status, retired["active"].as_bool()), (200, Some(false)), "{retired}");
    let (status, _, _) = call(&app, &team_key, Method::GET, "/api/reference-models/fashion-rain-01", None, None).await;
    assert_eq!(status, 404, "a retired model is not offered");
    let (_, _, page) = call(&app, &team_key, Method::GET, "/api/reference-models?limit=100&category=fashion", None, None).await;
    assert!(page["items"].as_array().expect("items").iter().all(|m| m["id"] != "fashion-rain-01"), "not listed: {page}");
    let (status, _, problem) = call(&app, &team_key, Method::POST, "/api/models", Some(body), None).await;
    assert!(status >= 400 && status < 500, "no new custom model from a retired reference: {status} {problem}");
    let refine = json!({"prompt": "in heavier rain"});
    let (status, _, refined) = call(&app, &team_key, Method::POST, &format!("/api/models/{model_id}/refine"), Some(refine), None).await;
    assert_eq!(status, 202, "a model made from it keeps working: {refined}");
    let edit = json!({"name": "too late", "reason": "x"});
    let (status, _, problem) = call(&app, &alice.secret, Method::PATCH, "/api/admin/reference-models/fashion-rain-01", Some(edit), None).await;
    assert_eq!((status, problem["type"].as_str()), (409, Some("/problems/reference-model-retired")), "{problem}");
    let (status, _, restored) = call(&app, &alice.secret, Method::POST, "/api/admin/reference-models/fashion-rain-01/restore?reason=back%20by%20demand", None, None).await;
    assert_eq!((status, restored["active"].as_bool()), (200, Some(true)), "{restored}");

    // Every change, with who and why, from events alone; the rebuild stays clean.
    let acts = kiln(&app.db.url, &["audit", "acts"]);
    let acts_text = String::from_utf8_lossy(&acts.stdout);
    assert!(acts.status.success(), "{}", String::from_utf8_lossy(&acts.stderr));
    for (action, reason) in [("add_reference", "autumn campaign"), ("edit_reference", "new shoot"), ("edit_reference", "rebrand"), ("retire_reference", "campaign over"), ("restore_reference", "back by demand")] {
        assert!(
            acts_text.lines().any(|line| line.contains(&format!("\"action\":\"{action}\"")) && line.contains(reason) && line.contains("\"operator\":\"Alice\"")),
            "{action} {reason}: {acts_text}"
        );
    }
    let rebuild = kiln(&app.db.url, &["projections", "rebuild", "--verify"]);
    assert!(rebuild.status.success(), "{}\n{}", String::from_utf8_lossy(&rebuild.stdout), String::from_utf8_lossy(&rebuild.stderr));
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_catalog_is_curated_through_the_admin_api() {
    the_catalog_is_curated_through_the_admin_api(TestApp::spawn_with(TestDb::postgres().await, |s| s.jobs.worker_in_serve = false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_the_catalog_is_curated_through_the_admin_api() {
    the_catalog_is_curated_through_the_admin_api(TestApp::spawn_with(TestDb::sqlite().await, |s| s.jobs.worker_in_serve = false).await).await;
}
