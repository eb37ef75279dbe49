//! The reference-model catalog: `kiln seed`'s seeding, `GET /api/reference-models[/{id}]`,
//! and the signed preview URLs served by `GET /files/…`.

use std::collections::HashSet;
use std::time::Duration;

use infrastructure::catalog::{self, SeedReport};
use reqwest::Method;
use serde_json::Value;

use crate::support::app::{epoch, TestApp};
use crate::support::db::TestDb;

const CATEGORIES: [&str; 5] = ["fashion", "fitness", "beauty", "lifestyle", "business"];

async fn seed(app: &TestApp) -> SeedReport {
    catalog::seed(&app.state.db, app.state.objects.as_ref(), epoch()).await.expect("seed")
}

/// A seeded app and a member key of a fresh team.
async fn seeded(db: TestDb) -> (TestApp, String) {
    let app = TestApp::spawn(db).await;
    seed(&app).await;
    let team = app.create_team("Catalog", "basic").await;
    let key = app.issue_key(&team, "member").await;
    (app, key)
}

async fn get_json(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let response = app.as_key(key, Method::GET, path).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// Every page of `path` (which has no cursor yet), in order.
async fn all_pages(app: &TestApp, key: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{separator}cursor={c}"),
            None => path.to_string(),
        };
        let (status, body) = get_json(app, key, &url).await;
        assert_eq!(status, 200, "{body}");
        items.extend(body["items"].as_array().expect("items").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
    panic!("pagination did not end");
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|m| m["id"].as_str().expect("id").to_string()).collect()
}

#[tokio::test]
async fn seeding_twice_changes_nothing_postgres() {
    seeding_twice_changes_nothing(TestDb::postgres().await).await;
}

#[tokio::test]
async fn seeding_twice_changes_nothing_sqlite() {
    seeding_twice_changes_nothing(TestDb::sqlite().await).await;
}

async fn seeding_twice_changes_nothing(db: TestDb) {
    let app = TestApp::spawn(db).await;
    let first = seed(&app).await;
    assert!(first.models >= 60, "{first:?}");
    assert_eq!((first.inserted, first.updated, first.previews_rendered), (first.models, 0, first.models));
    let team = app.create_team("Catalog", "basic").await;
    let key = app.issue_key(&team, "member").await;
    let before = all_pages(&app, &key, "/api/reference-models?limit=100").await;

    let second = seed(&app).await;
    assert_eq!(second, SeedReport { models: first.models, inserted: 0, updated: first.models, previews_rendered: 0 });
    let after = all_pages(&app, &key, "/api/reference-models?limit=100").await;
    assert_eq!(before.len(), first.models);
    assert_eq!(ids(&before), ids(&after));
    let without_urls = |items: &[Value]| {
        items.iter().map(|m| (m["id"].clone(), m["name"].clone(), m["characteristics"].clone(), m["popularity"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(without_urls(&before), without_urls(&after));
    for category in CATEGORIES {
        let count = before.iter().filter(|m| m["category"] == category).count();
        assert!(count >= 12, "{category}: {count}");
    }
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn listing_filters_pages_and_sorts_by_popularity() {
    let (app, key) = seeded(TestDb::postgres().await).await;
    let everything = all_pages(&app, &key, "/api/reference-models?limit=100").await;
    let mut seen = HashSet::new();
    for category in CATEGORIES {
        let pages = all_pages(&app, &key, &format!("/api/reference-models?category={category}&limit=5")).await;
        assert!(pages.len() >= 12, "{category}");
        assert!(pages.iter().all(|m| m["category"] == category), "{category}: only its own models");
        for id in ids(&pages) {
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
    }
    assert_eq!(seen, ids(&everything).into_iter().collect::<HashSet<_>>(), "the categories cover the catalog once");

    // Default page size and order: most popular first, ties by id.
    let (status, first_page) = get_json(&app, &key, "/api/reference-models").await;
    assert_eq!(status, 200);
    assert_eq!(first_page["items"].as_array().expect("items").len(), 20);
    let order: Vec<(i64, String)> =
        everything.iter().map(|m| (-m["popularity"].as_i64().expect("popularity"), m["id"].as_str().expect("id").into())).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    let (_, explicit) = get_json(&app, &key, "/api/reference-models?sort=popularity").await;
    assert_eq!(ids(first_page["items"].as_array().expect("items")), ids(explicit["items"].as_array().expect("items")));

    for bad in ["category=sports", "sort=price", "sort=Name", "limit=0", "limit=101", "cursor=nonsense"] {
        let (status, problem) = get_json(&app, &key, &format!("/api/reference-models?{bad}")).await;
        assert_eq!(status, 422, "{bad}: {problem}");
        let expected = if bad.starts_with("cursor") { "/problems/invalid-cursor" } else { "/problems/invalid-request" };
        assert_eq!(problem["type"], expected);
    }
    app.shutdown().await.expect("clean shutdown");
}

/// Every sort, walked forward to the end and back to the start through `prev_cursor`:
/// the same models in the same order both ways, and a cursor of one sort is refused by
/// another.
async fn sorts_page_both_ways(db: TestDb) {
    let (app, key) = seeded(db).await;
    // One model added later than the seed: first when newest, not when by name.
    let later = epoch() + chrono::Duration::days(1);
    infrastructure::db_execute!(
        &app.state.db,
        "INSERT INTO reference_models (id, name, category, characteristics, complexity_factor_milli, popularity, active, preview_keys, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        "zz-late-arrival",
        "Zora late arrival",
        "beauty",
        "{}",
        1000_i64,
        0_i64,
        true,
        "[]",
        later
    )
    .expect("insert a newer model");
    for (sort, key_of) in [
        ("popularity", (|m: &Value| format!("{:020}", i64::MAX - m["popularity"].as_i64().expect("popularity"))) as fn(&Value) -> String),
        ("name", |m: &Value| m["name"].as_str().expect("name").to_string()),
        ("newest", |m: &Value| format!("{:020}", i64::MAX - chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().expect("time")).expect("rfc3339").timestamp_micros())),
    ] {
        let everything = all_pages(&app, &key, &format!("/api/reference-models?sort={sort}&limit=100")).await;
        let order: Vec<(String, String)> = everything.iter().map(|m| (key_of(m), m["id"].as_str().expect("id").to_string())).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{sort}: in order, ties by id");
        if sort == "newest" {
            assert_eq!(everything[0]["id"], "zz-late-arrival");
        }

        // Forward by 7, then back by prev_cursor from the last page.
        let mut pages: Vec<Vec<String>> = Vec::new();
        let (_, mut page) = get_json(&app, &key, &format!("/api/reference-models?sort={sort}&limit=7")).await;
        assert!(page["prev_cursor"].is_null(), "the first page has none before it");
        loop {
            pages.push(ids(page["items"].as_array().expect("items")));
            let Some(next) = page["next_cursor"].as_str() else { break };
            page = get_json(&app, &key, &format!("/api/reference-models?sort={sort}&limit=7&cursor={next}")).await.1;
        }
        assert_eq!(pages.concat(), ids(&everything), "{sort}: the pages cover the list once");
        for expected in pages.iter().rev().skip(1) {
            let prev = page["prev_cursor"].as_str().expect("a page before").to_string();
            page = get_json(&app, &key, &format!("/api/reference-models?sort={sort}&limit=7&cursor={prev}")).await.1;
            assert_eq!(&ids(page["items"].as_array().expect("items")), expected, "{sort}: back one page");
        }
        assert!(page["prev_cursor"].is_null(), "{sort}: back at the first page");
        let next = page["next_cursor"].as_str().expect("a page after").to_string();
        let other = if sort == "name" { "newest" } else { "name" };
        let (status, problem) = get_json(&app, &key, &format!("/api/reference-models?sort={other}&cursor={next}")).await;
        assert_eq!((status, problem["type"].as_str()), (422, Some("/problems/invalid-cursor")), "a {sort} cursor under {other}");
    }
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn sorts_page_both_ways_postgres() {
    sorts_page_both_ways(TestDb::postgres().await).await;
}

#[tokio::test]
async fn sorts_page_both_ways_sqlite() {
    sorts_page_both_ways(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn one_model_by_id_needs_a_key_and_hides_inactive_ones() {
    let (app, key) = seeded(TestDb::postgres().await).await;
    let (status, model) = get_json(&app, &key, "/api/reference-models/fashion-editorial-01").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["category"], "fashion");
    assert!(model["characteristics"]["age_range"].is_string());
    assert!((800..=3000).contains(&model["complexity_factor_milli"].as_i64().expect("complexity")));
    assert_eq!(model["preview_urls"].as_array().expect("urls").len(), 1);

    let (status, problem) = get_json(&app, &key, "/api/reference-models/no-such-model").await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("/problems/not-found")));

    for path in ["/api/reference-models", "/api/reference-models/fashion-editorial-01"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 401, "{path}");
    }

    infrastructure::db_execute!(&app.state.db, "UPDATE reference_models SET active = $1 WHERE id = $2", false, "fashion-editorial-01")
        .expect("deactivate");
    let (status, _) = get_json(&app, &key, "/api/reference-models/fashion-editorial-01").await;
    assert_eq!(status, 404, "inactive models are not shown");
    let listed = all_pages(&app, &key, "/api/reference-models?category=fashion&limit=100").await;
    assert!(!ids(&listed).contains(&"fashion-editorial-01".to_string()));
    app.shutdown().await.expect("clean shutdown");
}

async fn preview_urls_are_signed_and_expire(db: TestDb) {
    let (app, key) = seeded(db).await;
    let (_, model) = get_json(&app, &key, "/api/reference-models/beauty-skincare-01").await;
    let url = model["preview_urls"][0].as_str().expect("preview url").to_string();
    assert!(url.starts_with(&app.url("/files/reference-models/beauty-skincare-01/preview.png?expires=")), "{url}");

    // No API key: the signature is the credential.
    let response = reqwest::get(&url).await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let cache = response.headers()["cache-control"].to_str().expect("ascii").to_string();
    assert!(cache.starts_with("private, max-age="), "{cache}");
    let bytes = response.bytes().await.expect("body");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let stored = app.state.objects.get("reference-models/beauty-skincare-01/preview.png").await.expect("get");
    assert_eq!(stored.as_deref(), Some(&bytes[..]));

    let problem = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("problem body");
        (status, body["type"].as_str().unwrap_or_default().to_string())
    };
    let (base, signature) = url.split_once("&signature=").expect("signature parameter");
    let flipped = match signature.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &signature[1..]),
    };
    for tampered in [
        format!("{base}&signature={flipped}"),
        base.to_string(),
        url.replace("beauty-skincare-01", "beauty-glam-01"),
        url.replace("?expires=", "?expires=9"),
    ] {
        let (status, kind) = problem(reqwest::get(&tampered).await.expect("request")).await;
        assert_eq!((status, kind.as_str()), (403, "/problems/invalid-signature"), "{tampered}");
    }

    let past = epoch() - chrono::Duration::hours(2);
    let key_of = "reference-models/beauty-skincare-01/preview.png";
    let expired = app.state.objects.signed_url(key_of, Duration::from_secs(60), past).expect("url");
    let (status, kind) = problem(reqwest::get(&expired).await.expect("request")).await;
    assert_eq!((status, kind.as_str()), (410, "/problems/url-expired"));

    let missing = app.state.objects.signed_url("reference-models/nobody/preview.png", Duration::from_secs(60), epoch()).expect("url");
    let (status, kind) = problem(reqwest::get(&missing).await.expect("request")).await;
    assert_eq!((status, kind.as_str()), (404, "/problems/not-found"));
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn preview_urls_are_signed_and_expire_postgres() {
    preview_urls_are_signed_and_expire(TestDb::postgres().await).await;
}

#[tokio::test]
async fn preview_urls_are_signed_and_expire_sqlite() {
    preview_urls_are_signed_and_expire(TestDb::sqlite().await).await;
}
