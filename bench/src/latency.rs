//! `kiln-bench latency`: open-loop latency at fixed arrival rates, against the seed's
//! targets (API p95 < 200 ms, credit operations p95 < 50 ms; credit-operation p99 < 10 ms
//! at 1,000 ops/s).
//!
//! A closed loop (a client sending its next request when the last one answered) slows
//! down with the server and so hides the queueing a slow moment causes — coordinated
//! omission. Here requests are due at fixed times (`i / rate` after the start), each sent
//! by its own task at its due time whatever the others are doing, and each latency is
//! counted **from the time it was due**, not from when it was sent: if the sender itself
//! falls behind, that lateness is in the figures too. At most `--in-flight-max` requests
//! are outstanding; a request due while that many are is not sent and counted as
//! dropped (the rate is then past saturation).
//!
//! Scenarios, each at every rate of `--rates` until it saturates (dropped requests,
//! failures, or p99 over a second: a server that cannot keep up queues, and the queue's
//! wait is in every later request's latency):
//! - `balance`: `GET /api/credits/balance` (API);
//! - `history`: `GET /api/credits/history?limit=20` (API, a list);
//! - `submit`: `POST /api/generate` — the reservation of a job's credits (a credit
//!   operation through the API); dispatch is paused, so jobs stay queued;
//! - `cancel`: `DELETE /api/jobs/{id}` of the jobs `submit` queued — the refund (a credit
//!   operation through the API); run right after `submit` at each rate;
//! - `credits`: reserve then deduct through `CreditsService` in this process (a credit
//!   operation without HTTP, as a job's worker does it).
//!
//! Histograms are `hdrhistogram`'s (microseconds, 3 significant digits).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use domain::Credits;
use futures::StreamExt;
use hdrhistogram::Histogram;
use infrastructure::db::Database;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;


use crate::http::OPERATOR_KEY;
/// Latencies above this are clamped.
const LATENCY_US_MAX: u64 = 120_000_000;
/// A scenario is saturated at a rate once its p99 passes this.
const SATURATED_P99: Duration = Duration::from_secs(1);
const SCENARIOS: [&str; 5] = ["balance", "history", "submit", "cancel", "credits"];

#[derive(clap::Args, Debug, Clone)]
pub struct LatencyArgs {
    /// Arrival rates to measure, in requests per second, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    pub rates: Vec<u32>,
    /// Measured time per scenario and rate.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured load at the same rate before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Requests outstanding at most; one due beyond that is dropped (and counted).
    #[arg(long, default_value_t = 2_048)]
    pub in_flight_max: usize,
    /// Teams the requests are spread over (each with a key and a ready model; a team may
    /// have at most 100 jobs waiting, so `submit` at rate r needs r × (warm-up + duration)
    /// / 100 teams).
    #[arg(long, default_value_t = 400)]
    pub teams: usize,
    /// Kiln's database pool (`database.connections_max`).
    #[arg(long, default_value_t = 32)]
    pub pool: u32,
    /// Run only these scenarios (repeatable).
    #[arg(long, value_parser = SCENARIOS)]
    pub only: Vec<String>,
    /// Joint credit transactions the `credits` scenario's service keeps open
    /// (`credits.commits_in_flight`; default: the setting's default; 0: each team's batch
    /// commits on its own).
    #[arg(long)]
    pub commits_in_flight: Option<usize>,
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
}

impl LatencyArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.rates.is_empty() && self.rates.iter().all(|r| (1..=100_000).contains(r)), "--rates must be 1..=100000 each");
        anyhow::ensure!(self.rates.windows(2).all(|w| w[0] < w[1]), "--rates must increase");
        anyhow::ensure!((1..=600).contains(&self.duration_secs), "--duration-secs must be 1..=600");
        anyhow::ensure!(self.warmup_secs <= 60, "--warmup-secs must be at most 60");
        anyhow::ensure!((1..=65_536).contains(&self.in_flight_max), "--in-flight-max must be 1..=65536");
        anyhow::ensure!((1..=10_000).contains(&self.teams), "--teams must be 1..=10000");
        anyhow::ensure!((1..=512).contains(&self.pool), "--pool must be 1..=512");
        Ok(())
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    args.validate()?;
    let admin_url = args.database_url.clone();
    crate::scratch::measure_and_print(&admin_url, |url, storage| async move { measure(&args, &url, &storage).await }).await
}

/// One scenario at one rate.
struct Outcome {
    scenario: &'static str,
    rate: u32,
    latencies: Histogram<u64>,
    served_per_sec: f64,
    failures: u64,
    dropped: u64,
    /// What the first failed request got, to say why.
    first_failure: Option<String>,
}

impl Outcome {
    fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latencies.value_at_quantile(q))
    }

    fn saturated(&self) -> bool {
        self.dropped > 0 || self.failures > 0 || self.quantile(0.99) > SATURATED_P99
    }

    fn line(&self) -> String {
        let ms = |q: f64| self.quantile(q).as_secs_f64() * 1_000.0;
        format!(
            "{:<8} {:>6} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>8}{}",
            self.scenario,
            self.rate,
            self.served_per_sec,
            ms(0.5),
            ms(0.95),
            ms(0.99),
            ms(0.999),
            self.latencies.max() as f64 / 1_000.0,
            self.failures,
            self.dropped,
            if self.saturated() { "  saturated" } else { "" }
        ) + &self.first_failure.as_ref().map(|f| format!("  (first failure: {})", f.chars().take(160).collect::<String>())).unwrap_or_default()
    }
}

async fn measure(args: &LatencyArgs, url: &str, storage: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut settings = crate::http::served_settings(url, args.pool, storage);
    // The set-up's model jobs run in the server; dispatch is paused before measuring.
    settings.jobs.worker_in_serve = true;
    let kiln = crate::http::Served::start(settings).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.in_flight_max).build()?;
    let outcome = scenarios(args, &client, kiln.addr, url).await;
    kiln.stop().await?;
    outcome
}

async fn scenarios(args: &LatencyArgs, client: &reqwest::Client, addr: SocketAddr, url: &str) -> anyhow::Result<Vec<String>> {
    eprintln!("set-up: {} teams with a key and a ready model each", args.teams);
    let teams = Arc::new(teams_with_models(client, addr, args.teams).await?);
    let paused = admin(client, addr, reqwest::Method::POST, "/api/admin/dispatch/pause?reason=latency+bench").send().await?;
    anyhow::ensure!(paused.status().is_success(), "pausing dispatch: {}", paused.status());

    let credits_db = Database::connect_and_migrate(url, args.pool).await?;
    let commits_in_flight = args.commits_in_flight.unwrap_or(application::credits::COMMITS_IN_FLIGHT);
    let credits = Arc::new(crate::kiln::Kiln::new(&credits_db, 100, commits_in_flight));
    let credit_teams: Arc<Vec<Uuid>> = Arc::new((0..args.teams).map(|_| Uuid::now_v7()).collect());
    credits.setup(&credit_teams, 1_000_000_000).await?;

    let mut lines = vec![format!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "scenario", "rate", "served/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "failed", "dropped"
    )];
    let mut outcomes = Vec::new();
    // Jobs `submit` queued, for `cancel` to take back (as many as it sent, in order).
    let queued: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));
    // `submit` and `cancel` go in turn at each rate: the cancels take back the jobs just
    // queued, so the teams' queues (at most 100 waiting jobs each) stay short.
    let groups: [&[&'static str]; 4] = [&["balance"], &["history"], &["submit", "cancel"], &["credits"]];
    for group in groups {
        let mut saturated = false;
        for &rate in &args.rates {
            if saturated {
                break;
            }
            for scenario in group.iter().copied().filter(|s| args.runs(s)) {
                eprintln!("{scenario} at {rate}/s: {} s warm-up, {} s measured", args.warmup_secs, args.duration_secs);
                let (client, teams, queued, credits, credit_teams) = (client.clone(), teams.clone(), queued.clone(), credits.clone(), credit_teams.clone());
                let op = move |n: u64| {
                    let (client, teams, queued, credits, credit_teams) = (client.clone(), teams.clone(), queued.clone(), credits.clone(), credit_teams.clone());
                    async move {
                        let team = &teams[n as usize % teams.len()];
                        let request = match scenario {
                            "balance" => client.get(format!("http://{addr}/api/credits/balance")).bearer_auth(&team.key),
                            "history" => client.get(format!("http://{addr}/api/credits/history?limit=20")).bearer_auth(&team.key),
                            "submit" => client
                                .post(format!("http://{addr}/api/generate"))
                                .bearer_auth(&team.key)
                                .header("Idempotency-Key", Uuid::now_v7().to_string())
                                .json(&json!({"model_id": team.model_id, "prompt": "latency", "resolution": "512x512"})),
                            "cancel" => {
                                let Some((owner, job_id)) = queued.lock().expect("queue lock").pop() else { return Err("no queued job left to cancel".to_string()) };
                                client.delete(format!("http://{addr}/api/jobs/{job_id}")).bearer_auth(&teams[owner].key)
                            }
                            _ => {
                                let team = credit_teams[n as usize % credit_teams.len()];
                                return credits.reserve_and_deduct(team, Credits::parse(10).expect("a valid amount")).await.map_err(|e| format!("{e:#}"));
                            }
                        };
                        let response = request.send().await.map_err(|e| e.to_string())?;
                        let status = response.status();
                        let body = response.bytes().await.map_err(|e| e.to_string())?;
                        if !status.is_success() {
                            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                        }
                        if scenario == "submit" {
                            let body: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                            let job_id = body["job"]["job_id"].as_str().ok_or("no job id in the answer")?;
                            queued.lock().expect("queue lock").push((n as usize % teams.len(), job_id.to_string()));
                        }
                        Ok(())
                    }
                };
                let outcome = open_loop(scenario, rate, args, op).await?;
                eprintln!("  {}", outcome.line());
                saturated |= outcome.saturated();
                lines.push(outcome.line());
                outcomes.push(outcome);
            }
        }
    }
    lines.push(format!(
        "open loop: latency from each request's due time; {} s measured after {} s warm-up per rate; at most {} in flight; {} teams; pool {}; credits: {} joint commits in flight",
        args.duration_secs, args.warmup_secs, args.in_flight_max, args.teams, args.pool, commits_in_flight
    ));
    lines.extend(targets(&outcomes));
    Ok(lines)
}

/// The seed's targets at 1,000 requests (operations) per second, where measured.
fn targets(outcomes: &[Outcome]) -> Vec<String> {
    let mut lines = Vec::new();
    let at = |scenario: &str| outcomes.iter().find(|o| o.scenario == scenario && o.rate == 1_000);
    let mut check = |what: String, outcome: &Outcome, q: f64, bound: Duration| {
        let value = outcome.quantile(q);
        // A rate the scenario could not serve (failures, drops) misses whatever its figures.
        let verdict = if value < bound && !outcome.saturated() { "met" } else { "MISSED" };
        lines.push(format!("{what:<52} {:>9.2} ms  {verdict}", value.as_secs_f64() * 1_000.0));
    };
    for scenario in ["balance", "history"] {
        if let Some(o) = at(scenario) {
            check(format!("{scenario} p95 at 1000/s < 200 ms (API)"), o, 0.95, Duration::from_millis(200));
        }
    }
    for scenario in ["submit", "cancel", "credits"] {
        if let Some(o) = at(scenario) {
            check(format!("{scenario} p95 at 1000/s < 50 ms (credit operation)"), o, 0.95, Duration::from_millis(50));
        }
    }
    if let Some(o) = at("credits") {
        check("credits p99 at 1000/s < 10 ms (credit operation)".to_string(), o, 0.99, Duration::from_millis(10));
    }
    lines
}

/// Sends `op(n)` at `rate` per second: a warm-up, then the measured window; each latency
/// from the request's due time.
async fn open_loop<F, Fut>(scenario: &'static str, rate: u32, args: &LatencyArgs, op: F) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let warmup = u64::from(rate) * args.warmup_secs;
    let measured = u64::from(rate) * args.duration_secs;
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?));
    let (failures, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let in_flight = Arc::new(Semaphore::new(args.in_flight_max));
    let start = Instant::now() + Duration::from_millis(20);
    let measuring_from = start + interval * u32::try_from(warmup).context("warm-up too long")?;
    let mut tasks = futures::stream::FuturesUnordered::new();
    for n in 0..warmup + measured {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let measuring = n >= warmup;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if measuring {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let (op, latencies, failures, first_failure) = (op.clone(), latencies.clone(), failures.clone(), first_failure.clone());
        tasks.push(tokio::spawn(async move {
            let answer = op(n).await;
            let took = due.elapsed();
            drop(permit);
            if !measuring {
                return;
            }
            match answer {
                Ok(()) => {
                    let micros = (took.as_micros() as u64).clamp(1, LATENCY_US_MAX);
                    latencies.lock().expect("histogram lock").saturating_record(micros);
                }
                Err(error) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_failure.lock().expect("failure lock").get_or_insert(error);
                }
            }
        }));
        // Reap finished tasks as we go so the set stays small.
        while let Some(Some(done)) = futures::FutureExt::now_or_never(tasks.next()) {
            done?;
        }
    }
    while let Some(done) = tasks.next().await {
        done?;
    }
    let window = measuring_from.elapsed().as_secs_f64();
    let first_failure = first_failure.lock().expect("failure lock").take();
    let latencies = Arc::try_unwrap(latencies).map_err(|_| anyhow::anyhow!("a request task outlived the run"))?.into_inner().expect("histogram lock");
    Ok(Outcome {
        scenario,
        rate,
        served_per_sec: latencies.len() as f64 / window.max(f64::EPSILON),
        latencies,
        failures: failures.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        first_failure,
    })
}

struct BenchTeam {
    key: String,
    model_id: String,
}

fn admin(client: &reqwest::Client, addr: SocketAddr, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    client.request(method, format!("http://{addr}{path}")).bearer_auth(OPERATOR_KEY)
}

/// `count` Enterprise teams through the admin API, each with a member key, credits for
/// the whole run and a ready custom model (created through the API, run by the server's
/// worker).
async fn teams_with_models(client: &reqwest::Client, addr: SocketAddr, count: usize) -> anyhow::Result<Vec<BenchTeam>> {
    let results = futures::stream::iter(0..count)
        .map(|n| async move {
            let created: Value = admin(client, addr, reqwest::Method::POST, "/api/admin/teams")
                .json(&json!({"name": format!("latency {n}"), "plan": "enterprise"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let team = created["team_id"].as_str().context("team_id")?.to_string();
            let issued: Value = admin(client, addr, reqwest::Method::POST, &format!("/api/admin/teams/{team}/api-keys"))
                .json(&json!({"role": "member", "name": "latency"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let key = issued["api_key"].as_str().context("api_key")?.to_string();
            admin(client, addr, reqwest::Method::POST, &format!("/api/admin/teams/{team}/grants"))
                .header("Idempotency-Key", format!("latency-{team}"))
                .json(&json!({"amount": 1_000_000_000}))
                .send()
                .await?
                .error_for_status()?;
            let page: Value = client.get(format!("http://{addr}/api/reference-models?limit=1")).bearer_auth(&key).send().await?.error_for_status()?.json().await?;
            let reference = page["items"][0]["id"].as_str().context("a reference model")?.to_string();
            let accepted: Value = client
                .post(format!("http://{addr}/api/models"))
                .bearer_auth(&key)
                .header("Idempotency-Key", format!("latency-model-{team}"))
                .json(&json!({"name": "Latency", "description": "a runner at golden hour", "reference_model_id": reference}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let model_id = accepted["model"]["model_id"].as_str().context("model_id")?.to_string();
            anyhow::Ok(BenchTeam { key, model_id })
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let teams = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    for team in &teams {
        loop {
            let model: Value =
                client.get(format!("http://{addr}/api/models/{}", team.model_id)).bearer_auth(&team.key).send().await?.error_for_status()?.json().await?;
            if model["status"] == "ready" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "model {} never became ready: {model}", team.model_id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(teams)
}
