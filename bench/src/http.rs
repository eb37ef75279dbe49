//! `kiln-bench http`: the read path under a bounded load. The real Kiln application
//! (`Application::build`, the server `kiln serve` runs) answers `GET /api/credits/balance`
//! and `GET /api/credits/history?limit=20` (a list) for one team's API key; beside it, in
//! the same process and on the same PostgreSQL, a bare axum + sqlx server answers one
//! point select on `team_balances` per request. The same closed-loop client drives both:
//! `connections` tasks, one request at a time each, over keep-alive connections.
//! Scenarios run in the order bare, Kiln balance, Kiln list, bare again (the repeat shows
//! how far the machine drifted during the run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::Json;
use hdrhistogram::Histogram;
use infrastructure::config::Settings;
use kiln::app::Application;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;


pub const OPERATOR_KEY: &str = "kiln-bench-operator";
/// Latencies above this are clamped (a read that slow is a failure in itself).
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Concurrent client connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Measured time per scenario.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured load before each scenario.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Database connections of each server's pool (Kiln: `database.connections_max`).
    #[arg(long, default_value_t = 16)]
    pub pool: u32,
    /// Grants of one credit the team gets: ledger entries the list pages over, and blocks
    /// the balance lists.
    #[arg(long, default_value_t = 40)]
    pub grants: usize,
    /// Log as `kiln serve` does (its default `log.filter` and format: a line per request
    /// at `info`), to this process's stderr; without it the bench installs no log
    /// subscriber and Kiln's log lines cost nothing. Send stderr to /dev/null or a file.
    #[arg(long)]
    pub log: bool,
    /// Lend the bare server's pooled connections without sqlx's ping (`test_before_acquire
    /// (false)`), as Kiln lends one that just answered; by default the bare server keeps
    /// sqlx's defaults (a ping before every lending), as every earlier run did.
    #[arg(long)]
    pub bare_without_ping: bool,
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
}

impl HttpArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=1_024).contains(&self.connections), "--connections must be 1..=1024");
        anyhow::ensure!((1..=3_600).contains(&self.duration_secs), "--duration-secs must be 1..=3600");
        anyhow::ensure!(self.warmup_secs <= 600, "--warmup-secs must be at most 600");
        anyhow::ensure!((1..=512).contains(&self.pool), "--pool must be 1..=512");
        anyhow::ensure!((1..=1_000).contains(&self.grants), "--grants must be 1..=1000");
        Ok(())
    }
}

pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    args.validate()?;
    let admin_url = args.database_url.clone();
    crate::scratch::measure_and_print(&admin_url, |url, storage| async move { measure(&args, &url, &storage).await }).await
}

/// Settings of a Kiln served on a free loopback port over `url`, with the bench's
/// operator key and `storage` for its objects.
pub fn served_settings(url: &str, pool: u32, storage: &std::path::Path) -> Settings {
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.database.connections_max = pool;
    settings.http.host = "127.0.0.1".into();
    settings.http.port = 0;
    settings.auth.operator_key = Some(OPERATOR_KEY.to_string().into());
    settings.storage.local_root = storage.display().to_string();
    settings
}

/// Kiln (`Application`, as `kiln serve` runs it) served in this process until stopped.
pub struct Served {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let app = Application::build(settings).await?;
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, server })
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}

async fn measure(args: &HttpArgs, url: &str, storage: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut settings = served_settings(url, args.pool, storage);
    settings.jobs.worker_in_serve = false;
    if args.log {
        infrastructure::telemetry::init(&settings.log, infrastructure::telemetry::Output::Plain);
    }
    let kiln = Served::start(settings).await?;
    let kiln_addr = kiln.addr;

    let client = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    let (team, key) = team_with_history(&client, kiln_addr, args.grants).await?;
    let bare_pool = PgPoolOptions::new().max_connections(args.pool).test_before_acquire(!args.bare_without_ping).connect(url).await?;
    let (bare_addr, stop_bare) = bare_server(bare_pool).await?;

    let bare_url = format!("http://{bare_addr}/balance/{team}");
    let balance_url = format!("http://{kiln_addr}/api/credits/balance");
    let list_url = format!("http://{kiln_addr}/api/credits/history?limit=20");
    let scenarios = [
        ("bare axum + sqlx point select", &bare_url, None),
        ("Kiln GET /api/credits/balance", &balance_url, Some(key.as_str())),
        ("Kiln GET /api/credits/history?limit=20", &list_url, Some(key.as_str())),
        ("bare axum + sqlx point select (again)", &bare_url, None),
    ];
    let mut lines = Vec::new();
    for (name, url, key) in scenarios {
        eprintln!("{name}: {} connections, {} s", args.connections, args.duration_secs);
        lines.push(format!("{name:<42} {}", load(args, &client, url, key).await?));
    }
    let _ = stop_bare.send(());
    kiln.stop().await?;
    lines.push(format!(
        "{} connections, {} s measured after {} s warm-up per scenario, pool {} per server ({}), {} grants, {}",
        args.connections,
        args.duration_secs,
        args.warmup_secs,
        args.pool,
        if args.bare_without_ping { "the bare one lends without a ping" } else { "the bare one pings before lending, sqlx's default" },
        args.grants,
        if args.log { "Kiln logging as `kiln serve` (stderr)" } else { "no log subscriber" }
    ));
    Ok(lines)
}

/// A team opened through the admin API, with a member key and `grants` grants; returns
/// once the ledger history (an async projection) shows them all.
async fn team_with_history(client: &reqwest::Client, addr: SocketAddr, grants: usize) -> anyhow::Result<(String, String)> {
    let admin = |method: reqwest::Method, path: &str| client.request(method, format!("http://{addr}{path}")).bearer_auth(OPERATOR_KEY);
    let created: serde_json::Value = admin(reqwest::Method::POST, "/api/admin/teams")
        .json(&serde_json::json!({"name": "bench reader", "plan": "pro"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let team = created["team_id"].as_str().context("team_id")?.to_string();
    let issued: serde_json::Value = admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/api-keys"))
        .json(&serde_json::json!({"role": "member", "name": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = issued["api_key"].as_str().context("api_key")?.to_string();
    for n in 0..grants {
        admin(reqwest::Method::POST, &format!("/api/admin/teams/{team}/grants"))
            .header("Idempotency-Key", format!("bench-http-{n}"))
            .json(&serde_json::json!({"amount": 1}))
            .send()
            .await?
            .error_for_status()?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = granted_entries(client, addr, &key).await?;
        if shown >= grants {
            return Ok((team, key));
        }
        anyhow::ensure!(Instant::now() < deadline, "the credit history shows {shown} of {grants} grants");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many `granted` entries the team's credit history shows, every page read (each
/// grant also leaves an operator entry beside it).
async fn granted_entries(client: &reqwest::Client, addr: SocketAddr, key: &str) -> anyhow::Result<usize> {
    let (mut shown, mut cursor) = (0, None::<String>);
    loop {
        let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page: serde_json::Value = client
            .get(format!("http://{addr}/api/credits/history?type=granted&limit=200{after}"))
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        shown += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(shown),
        }
    }
}

/// The baseline: one point select per request, answered as JSON.
async fn bare_server(pool: sqlx::PgPool) -> anyhow::Result<(SocketAddr, oneshot::Sender<()>)> {
    async fn balance(State(pool): State<Arc<sqlx::PgPool>>, Path(team): Path<String>) -> Result<Json<serde_json::Value>, axum::http::StatusCode> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT available, reserved FROM team_balances WHERE team_id = $1")
            .bind(&team)
            .fetch_optional(pool.as_ref())
            .await
            .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
        let (available, reserved) = row.ok_or(axum::http::StatusCode::NOT_FOUND)?;
        Ok(Json(serde_json::json!({"team_id": team, "available": available, "reserved": reserved})))
    }
    let router = axum::Router::new().route("/balance/{team}", axum::routing::get(balance)).with_state(Arc::new(pool));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((addr, stop))
}

/// `connections` tasks GET `url` back to back for the warm-up and the measured window;
/// requests that start in the window are recorded (each to its end).
async fn load(args: &HttpArgs, client: &reqwest::Client, url: &str, key: Option<&str>) -> anyhow::Result<String> {
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = warmup_end + Duration::from_secs(args.duration_secs);
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.to_string(), key.map(str::to_string));
            tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid");
                let mut failures = 0u64;
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let mut request = client.get(&url);
                    if let Some(key) = &key {
                        request = request.bearer_auth(key);
                    }
                    let ok = match request.send().await {
                        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if started >= warmup_end {
                        if ok {
                            latencies.saturating_record((started.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX));
                        } else {
                            failures += 1;
                        }
                    }
                }
                (latencies, failures, Instant::now())
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid");
    let (mut failures, mut last) = (0, warmup_end);
    for task in tasks {
        let (latencies, failed, finished) = task.await?;
        all.add(&latencies)?;
        failures += failed;
        last = last.max(finished);
    }
    let window = last.duration_since(warmup_end).as_secs_f64();
    anyhow::ensure!(failures == 0, "{failures} requests failed");
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1_000.0;
    Ok(format!(
        "{:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} requests)",
        all.len() as f64 / window.max(f64::EPSILON),
        ms(0.5),
        ms(0.99),
        all.max() as f64 / 1_000.0,
        all.len()
    ))
}
