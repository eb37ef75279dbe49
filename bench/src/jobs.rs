//! `kiln-bench jobs`: the job engine's full lifecycle — submit (reserve) → dispatch →
//! local provider (no added delay) → store → complete (deduct) — for many teams on mixed
//! plans, with `kiln worker` **processes** doing the work. Afterwards the plan limits are
//! checked from the event log and every job must have ended exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use application::clock::SystemClock;
use application::event_store::{EventStore, LogPosition};
use application::jobs::NewJob;
use domain::jobs::JobInput;
use domain::models::ModelCommand;
use domain::{Credits, GrantId, GrantSource, IdempotencyKey, JobId, ModelId, Plan, PriceRequest, PricingConfig, TeamCreditsCommand, TeamId};
use futures::StreamExt;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use kiln::app::AppState;
use serde_json::json;
use uuid::Uuid;

use crate::cpu::CpuSample;
use crate::scratch::ScratchDb;

#[derive(clap::Args, Debug, Clone)]
pub struct JobsArgs {
    #[arg(long, default_value_t = 1_000)]
    pub teams: usize,
    /// Generation jobs submitted per team in the measured phase.
    #[arg(long, default_value_t = 3)]
    pub jobs_per_team: usize,
    /// `kiln worker` processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Jobs each worker process runs at once.
    #[arg(long, default_value_t = 32)]
    pub worker_concurrency: usize,
    /// Database connections per worker process (`database.connections_max`).
    #[arg(long, default_value_t = 32)]
    pub worker_connections: u32,
    /// Joint credit transactions each process keeps open (`credits.commits_in_flight`;
    /// default: the setting's default).
    #[arg(long)]
    pub commits_in_flight: Option<usize>,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    pub submitters: usize,
    /// The `kiln` binary to run workers with (default: next to this one).
    #[arg(long)]
    pub kiln_binary: Option<PathBuf>,
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Submit every job first with no worker running, then start the workers and time
    /// the drain alone (dispatch → render → store → complete), apart from submission.
    #[arg(long)]
    pub separate_phases: bool,
    /// Give up waiting for the jobs after this long.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Directory under which the run's local object store is made (and removed after):
    /// e.g. `/dev/shm` to leave the disk's file-system work (a directory and two
    /// `fsync`s per image) out of the measurement. Default: the system's temp directory.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
}

const PLANS: [Plan; 3] = [Plan::Basic, Plan::Pro, Plan::Enterprise];
/// How often the bench looks whether the jobs have ended: the precision of its timings.
const POLL: Duration = Duration::from_millis(20);

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=100_000).contains(&args.teams) && (1..=100).contains(&args.jobs_per_team), "teams 1..=100000, jobs-per-team 1..=100");
    anyhow::ensure!((1..=16).contains(&args.workers), "workers 1..=16");
    let scratch = ScratchDb::create(&args.database_url).await?;
    eprintln!("scratch database {}", scratch.name);
    let storage = args.storage_dir.clone().unwrap_or_else(std::env::temp_dir).join(&scratch.name);
    eprintln!("object store under {}", storage.display());
    let outcome = measure(&args, &scratch.url, &storage).await;
    let _ = std::fs::remove_dir_all(&storage);
    scratch.drop_database().await?;
    outcome
}

async fn measure(args: &JobsArgs, url: &str, storage: &std::path::Path) -> anyhow::Result<()> {
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.storage.local_root = storage.display().to_string();
    if let Some(n) = args.commits_in_flight {
        settings.credits.commits_in_flight = n;
    }
    let db = Database::connect_and_migrate(url, 32).await?;
    infrastructure::pricing::seed_default(&db).await?;
    let state = AppState::new(db.clone(), &settings, Arc::new(SystemClock))?;
    infrastructure::catalog::seed(&db, state.objects.as_ref(), state.jobs.now()).await?;
    let reference = infrastructure::db_fetch_optional!(&db, (String, i64), "SELECT id, complexity_factor_milli FROM reference_models ORDER BY id LIMIT 1")?
        .context("empty catalog")?;

    eprintln!("setup: {} teams, one ready model each", args.teams);
    let teams = open_teams(&state, args.teams).await?;
    let mut workers = start_workers(args, &settings)?;
    let team_ids: Vec<TeamId> = teams.iter().map(|(team, _)| *team).collect();
    let models = create_models(&state, &team_ids, &reference, args.submitters).await?;
    wait_for(&db, "model_creation", teams.len() as i64, POLL, Duration::from_secs(args.timeout_secs)).await?;

    if args.separate_phases {
        stop_workers(&mut workers);
    }
    let total = teams.len() * args.jobs_per_team;
    eprintln!("measuring: {total} generation jobs (512x512, 1 image) through {} worker processes", args.workers);
    let pricing = PricingConfig::default_v1();
    let worker_pids = |workers: &[Child]| workers.iter().map(Child::id).collect::<Vec<u32>>();
    let cpu_before = CpuSample::take(&worker_pids(&workers));
    let started = Instant::now();
    let submissions = futures::stream::iter(teams.iter().zip(&models).flat_map(|(t, m)| std::iter::repeat_n((*t, *m), args.jobs_per_team)))
        .map(|((team, _plan), model)| submit_generation(&state, &pricing, team, model))
        .buffer_unordered(args.submitters)
        .collect::<Vec<_>>()
        .await;
    let submitted = started.elapsed();
    let failures = submissions.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failures == 0, "{failures} submissions failed: {:?}", submissions.iter().find(|r| r.is_err()));
    let drain_started = Instant::now();
    if args.separate_phases {
        workers = start_workers(args, &settings)?;
    }
    wait_for(&db, "image_generation", total as i64, POLL, Duration::from_secs(args.timeout_secs)).await?;
    let elapsed = started.elapsed();
    let drained = drain_started.elapsed();
    let cpu = match (cpu_before, CpuSample::take(&worker_pids(&workers))) {
        // With separate phases the first workers stopped before the measured phase.
        (Some(before), Some(after)) if !args.separate_phases => Some((after.report_since(&before, total, "job"), after.per_unit_since(&before, total))),
        _ => None,
    };
    stop_workers(&mut workers);
    // The engine's own CPU per job: what the workers spent beside rendering and hashing
    // the job's one image (measured here, on one thread, once the workers stopped), and
    // what submitting it cost this process.
    let engine = match &cpu {
        Some((_, per_job)) => {
            let rendered = crate::render::render_many(ENGINE_RENDERS, "512x512")?;
            let render = rendered.render_ms + rendered.hash_ms;
            format!(
                "engine cpu per job, excluding the render: workers {:.2} ms − render and hash {render:.2} ms + submitting {:.2} ms = {:.2} ms",
                per_job.workers,
                per_job.bench,
                per_job.workers - render + per_job.bench
            )
        }
        None => String::new(),
    };

    let check = check_log(&state, &teams).await?;
    // Commits, rollbacks and deadlocks of the whole run (setup included), as PostgreSQL
    // counted them for the scratch database.
    let counters = match &db {
        Database::Postgres(pool) => sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT xact_commit, xact_rollback, deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_optional(pool)
        .await?
        .map(|(commits, rollbacks, deadlocks)| format!("database: {commits} commits, {rollbacks} rollbacks, {deadlocks} deadlocks"))
        .unwrap_or_default(),
        Database::Sqlite { .. } => String::new(),
    };
    println!(
        "{} teams (basic/pro/enterprise), {} worker processes × {} slots, {} jobs: submitted in {:.2} s, all completed in {:.2} s → {:.0} jobs/s full lifecycle",
        teams.len(),
        args.workers,
        args.worker_concurrency,
        total,
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    if args.separate_phases {
        println!(
            "separate phases: {total} submissions in {:.2} s ({:.0}/s, no worker running); drain by the workers in {:.2} s (incl. their start-up) → {:.0} jobs/s",
            submitted.as_secs_f64(),
            total as f64 / submitted.as_secs_f64(),
            drained.as_secs_f64(),
            total as f64 / drained.as_secs_f64()
        );
    }
    println!("{check}");
    println!("{counters}");
    if let Some((report, _)) = &cpu {
        println!("{report}");
        println!("{engine}");
    }
    Ok(())
}

/// Renders timed after a lifecycle run, to take the render out of the workers' CPU.
const ENGINE_RENDERS: usize = 200;

async fn open_teams(state: &AppState, count: usize) -> anyhow::Result<Vec<(TeamId, Plan)>> {
    let now = state.jobs.now();
    let teams: Vec<(TeamId, Plan)> = (0..count).map(|n| (TeamId::new(Uuid::now_v7()), PLANS[n % PLANS.len()])).collect();
    let results = futures::stream::iter(teams.iter().copied())
        .map(|(team, plan)| async move {
            let open = TeamCreditsCommand::OpenTeam { team_id: team, name: format!("bench {team}"), plan, now };
            state.credits.execute(team, open, &json!({})).await?;
            let grant = TeamCreditsCommand::GrantCredits {
                grant_id: GrantId::new(Uuid::now_v7()),
                amount: Credits::parse(10_000_000)?,
                source: GrantSource::Admin,
                expires_at: None,
                key: IdempotencyKey::parse(format!("bench-{team}"))?,
                now,
            };
            state.credits.execute(team, grant, &json!({})).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(teams)
}

/// One model per team, created through the engine (a model-creation job each, `parallel`
/// submissions at once); the workers must run for them to become usable.
pub(crate) async fn create_models(state: &AppState, teams: &[TeamId], reference: &(String, i64), parallel: usize) -> anyhow::Result<Vec<ModelId>> {
    let pricing = PricingConfig::default_v1();
    let quote = pricing.quote(&PriceRequest::ModelCreation { complexity_factor_milli: reference.1 })?;
    let models: Vec<ModelId> = teams.iter().map(|_| ModelId::new(Uuid::now_v7())).collect();
    let results = futures::stream::iter(teams.iter().zip(&models))
        .map(|(team, model)| {
            let (team, model) = (*team, *model);
            async move {
                let job_id = JobId::new(Uuid::now_v7());
                let command = ModelCommand::RequestCreation {
                    model_id: model,
                    team_id: team,
                    name: "bench".into(),
                    description: "a benchmark model".into(),
                    reference_model_id: reference.0.clone(),
                    complexity_milli: reference.1,
                    job_id,
                    now: state.jobs.now(),
                };
                let model_change = state.jobs.decide_model(model, command, "bench").await?;
                let input = JobInput::ModelCreation { model_id: model, description: "a benchmark model".into(), reference_model_id: reference.0.clone() };
                let job = NewJob { team, job_id, input, cost: quote.amount, price_version: quote.price_version, model_change: Some(model_change), uploads: Vec::new() };
                state.jobs.submit(job, "bench").await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(models)
}

async fn submit_generation(state: &AppState, pricing: &PricingConfig, team: TeamId, model: ModelId) -> anyhow::Result<()> {
    let loaded = state.jobs.model(model).await?.aggregate;
    let version = loaded.usable()?.version;
    let price = PriceRequest::ImageGeneration { resolution: "512x512".into(), quality: "standard".into(), model_complexity_milli: loaded.complexity_milli, count: 1 };
    let quote = pricing.quote(&price)?;
    let input = JobInput::ImageGeneration { model_id: model, model_version: version, prompt: "bench".into(), resolution: "512x512".into(), quality: "standard".into(), count: 1 };
    let job = NewJob { team, job_id: JobId::new(Uuid::now_v7()), input, cost: quote.amount, price_version: quote.price_version, model_change: None, uploads: Vec::new() };
    state.jobs.submit(job, "bench").await?;
    Ok(())
}

fn stop_workers(workers: &mut Vec<Child>) {
    for worker in workers.iter_mut() {
        let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
        let _ = worker.wait();
    }
    workers.clear();
}

/// Starts the `kiln worker` processes with the bench process's own database, storage and
/// credit settings, so both sides of the run are configured alike.
fn start_workers(args: &JobsArgs, settings: &Settings) -> anyhow::Result<Vec<Child>> {
    let binary = match &args.kiln_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("kiln"),
    };
    (0..args.workers)
        .map(|_| {
            Command::new(&binary)
                .arg("worker")
                .env("KILN_CREDITS__COMMITS_IN_FLIGHT", settings.credits.commits_in_flight.to_string())
                .env("KILN_DATABASE__URL", &settings.database.url)
                .env("KILN_DATABASE__CONNECTIONS_MAX", args.worker_connections.to_string())
                .env("KILN_STORAGE__LOCAL_ROOT", &settings.storage.local_root)
                .env("KILN_JOBS__WORKER_CONCURRENCY", args.worker_concurrency.to_string())
                .env("KILN_JOBS__POLL_INTERVAL_MS", "5")
                .env("KILN_LOG__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))
        })
        .collect()
}

/// Waits (bounded) until `expected` jobs of `kind` have ended; every one of them must be
/// recorded before the wait starts, and no job of another kind may still be in flight.
/// Each poll asks only whether any job is still queued or running — the sum of
/// `team_dispatch`'s per-team counters, a row per team — and the ended jobs of `kind` are
/// counted (a scan of the whole `jobs` table) once none is left: counting on every poll
/// cost PostgreSQL ≈ 3 ms per poll at 4,000 jobs, CPU taken from the run being measured.
pub async fn wait_for(db: &Database, kind: &str, expected: i64, poll: Duration, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (in_flight,): (i64,) = infrastructure::db_fetch_optional!(db, (i64,), "SELECT CAST(COALESCE(SUM(queued + running), 0) AS BIGINT) FROM team_dispatch")?
            .unwrap_or((0,));
        if in_flight == 0 {
            let (ended,): (i64,) = infrastructure::db_fetch_optional!(
                db,
                (i64,),
                "SELECT COUNT(*) FROM jobs WHERE kind = $1 AND status IN ('completed', 'failed', 'cancelled')",
                kind
            )?
            .unwrap_or((0,));
            anyhow::ensure!(ended >= expected, "no job is in flight, but only {ended} of {expected} {kind} jobs ended");
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not all {expected} {kind} jobs ended in time");
        tokio::time::sleep(poll).await;
    }
}

/// From the event log: most jobs active at once per team (against its plan), and every
/// job dispatched, completed and charged exactly once.
async fn check_log(state: &AppState, teams: &[(TeamId, Plan)]) -> anyhow::Result<String> {
    let plans: HashMap<String, Plan> = teams.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    let (mut team_of, mut active, mut peak) = (HashMap::new(), HashMap::<String, i64>::new(), HashMap::<String, i64>::new());
    let (mut completed, mut deducted, mut dispatched) = (0u64, 0u64, HashMap::<String, u32>::new());
    let mut after = LogPosition::START;
    loop {
        let page = state.store.read_log(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.log_position;
        for event in page {
            match (event.aggregate_type.as_str(), event.event_type.as_str()) {
                ("GenerationJob", "JobQueued") => {
                    team_of.insert(event.aggregate_id.clone(), event.payload["team_id"].as_str().unwrap_or_default().to_string());
                }
                ("GenerationJob", "JobDispatched") => {
                    *dispatched.entry(event.aggregate_id.clone()).or_default() += 1;
                    let team = team_of[&event.aggregate_id].clone();
                    let now = active.entry(team.clone()).or_default();
                    *now += 1;
                    let top = peak.entry(team).or_default();
                    *top = (*top).max(*now);
                }
                ("GenerationJob", "JobCompleted" | "JobFailed" | "JobCancelled" | "JobRetryScheduled") => {
                    if event.event_type == "JobCompleted" {
                        completed += 1;
                    }
                    *active.entry(team_of[&event.aggregate_id].clone()).or_default() -= 1;
                }
                ("TeamCredits", "CreditsDeducted") => deducted += 1,
                _ => {}
            }
        }
    }
    let violations: Vec<String> = peak
        .iter()
        .filter(|(team, top)| **top > i64::from(plans[*team].concurrency_limit()))
        .map(|(team, top)| format!("{team}: {top} at once"))
        .collect();
    anyhow::ensure!(violations.is_empty(), "plan limits broken: {violations:?}");
    let twice = dispatched.values().filter(|n| **n > 1).count();
    let mut top_by_plan: HashMap<Plan, i64> = HashMap::new();
    for (team, top) in &peak {
        let entry = top_by_plan.entry(plans[team]).or_default();
        *entry = (*entry).max(*top);
    }
    anyhow::ensure!(completed == deducted, "{completed} completions but {deducted} deductions");
    Ok(format!(
        "check: plan limits held (most at once: basic {}, pro {}, enterprise {}); {completed} jobs completed, {deducted} deducted; {twice} jobs dispatched more than once (retries)",
        top_by_plan.get(&Plan::Basic).unwrap_or(&0),
        top_by_plan.get(&Plan::Pro).unwrap_or(&0),
        top_by_plan.get(&Plan::Enterprise).unwrap_or(&0)
    ))
}
