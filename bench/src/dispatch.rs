//! `kiln-bench dispatch`: dispatch throughput of jobs that reserve credits when accepted
//! and deduct them when done, Kiln against the seed's design on graphile-worker (npm), and
//! against raw no-op graphile-worker jobs, on the same PostgreSQL in one run.
//!
//! - **graphile-worker, raw**: `bench/graphile/dispatch.mjs` (Node.js, the version pinned in
//!   `bench/graphile/package-lock.json`, installed by `bench/graphile/setup`) adds N jobs
//!   (`addJobs` in batches of 1,000, and/or one `addJob` per job from concurrent
//!   submitters), then drains them with runners whose task does nothing.
//! - **graphile-worker, the seed's design** ([`crate::seed_design`]): the same N jobs over
//!   the same teams at the same price as Kiln's; each is accepted in one transaction from
//!   this process (sqlx, Kiln's submitters and connections): the team's balance row locked
//!   `FOR UPDATE`, checked and reserved, a ledger row, a job row, `graphile_worker.add_job`.
//!   The same runners as the raw run drain them with a task that deducts in one transaction.
//! - **Kiln**: the same N jobs through the real engine: `JobsService::submit` (the job
//!   and its credit reservation in one append), then in-process `Worker`s (the same code
//!   `kiln worker` runs: fair dispatch query → claim append with the plan-limit check →
//!   provider → `complete`, which deducts the credits in the same append). Only the
//!   provider is the benchmark's: [`NoopProvider`] answers at once with no output.
//!   Credits stay in, because a Kiln job *is* a reservation that ends exactly once.
//!
//! Enqueue and drain are timed apart: everything is queued before any worker starts.
//! Both credit-carrying sides run with the jobs spread over `--teams` teams and with all
//! of them on one hot team (`--layouts`), where the seed's row lock serializes every
//! reservation and every deduction (and Kiln's Enterprise limit holds the team to 10
//! running jobs). Each seed-design and each further Kiln measurement starts from a fresh
//! scratch database.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use application::clock::SystemClock;
use application::jobs::worker::{Worker, WorkerConfig};
use application::jobs::NewJob;
use application::provider::{ProducedFile, Provider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus, Submission};
use async_trait::async_trait;
use domain::jobs::JobInput;
use domain::{Credits, GrantId, GrantSource, IdempotencyKey, JobId, ModelId, Plan, PriceRequest, PricingConfig, TeamCreditsCommand, TeamId};
use futures::StreamExt;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use kiln::app::AppState;
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cpu::CpuSample;
use crate::jobs::wait_for;
use crate::scratch::ScratchDb;

/// How often the drain's end is looked for (graphile-worker's side: `POLL_MS`, the same).
const POLL: Duration = Duration::from_millis(10);

#[derive(clap::Args, Debug, Clone)]
pub struct DispatchArgs {
    /// No-op jobs per system (and per graphile-worker enqueue mode).
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Workers per system: graphile-worker runners in one Node.js process; Kiln `Worker`s
    /// in this process (each with its own dispatch loop, as `kiln worker` has one).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Jobs each worker runs at once (graphile-worker `concurrency`, Kiln worker slots).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Concurrent submitters for one-job-at-a-time enqueueing (Kiln; graphile `single`).
    #[arg(long, default_value_t = 32)]
    pub submitters: usize,
    /// Kiln teams the jobs are spread over (Enterprise plan: 10 running jobs each).
    #[arg(long, default_value_t = 100)]
    pub teams: usize,
    /// The Kiln teams' plans: all `enterprise`, or `mixed` (Basic, Pro and Enterprise in
    /// turn, so dispatch weighs plans: `jobs.plan_weights`); `both` measures each.
    #[arg(long, default_value = "enterprise", value_parser = ["enterprise", "mixed", "both"])]
    pub plans: String,
    /// Where the credit-carrying jobs (Kiln's and the seed design's) go: `spread` round-robin
    /// over `--teams` teams, and/or `hot`, all on one team.
    #[arg(long, value_delimiter = ',', default_value = "spread,hot", value_parser = ["spread", "hot"])]
    pub layouts: Vec<String>,
    /// graphile-worker enqueue modes to measure, in order: `bulk` (addJobs) and/or `single` (addJob).
    #[arg(long, value_delimiter = ',', default_value = "bulk,single", value_parser = ["bulk", "single"])]
    pub graphile_enqueue: Vec<String>,
    /// graphile-worker `preset.worker.localQueue.size` (-1 disables it).
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    pub graphile_local_queue: i64,
    /// graphile-worker `preset.worker.completeJobBatchDelay` in ms (-1 disables batching).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub graphile_complete_batch_delay_ms: i64,
    /// Kiln worker `local_queue`: jobs each worker claims ahead of a free slot (the
    /// default is graphile-worker's local queue size here; `kiln worker` defaults to 16).
    #[arg(long, default_value_t = 500)]
    pub kiln_local_queue: usize,
    /// Joint credit transactions Kiln keeps open (`credits.commits_in_flight`; default:
    /// the setting's default).
    #[arg(long)]
    pub commits_in_flight: Option<usize>,
    /// Kiln worker `poll_interval` in ms (how long an idle dispatch loop sleeps).
    #[arg(long, default_value_t = 5)]
    pub kiln_poll_interval_ms: u64,
    /// Skip a side (e.g. while working on another): `raw` (no-op graphile-worker jobs),
    /// `seed` (the seed's design on graphile-worker), `graphile` (both), `kiln`.
    #[arg(long, value_parser = ["graphile", "raw", "seed", "kiln"])]
    pub skip: Vec<String>,
    /// The directory with dispatch.mjs and the installed node_modules.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/graphile"))]
    pub graphile_dir: PathBuf,
    #[arg(long, default_value = "node")]
    pub node: String,
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Keep the scratch database afterwards (its URL is printed), e.g. to run `kiln audit
    /// verify` and `kiln projections rebuild --verify` on what the run wrote.
    #[arg(long)]
    pub keep_database: bool,
    /// Give up waiting for a drain after this long.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Measure every side this many times, in turn (each round from fresh scratch
    /// databases), and judge the target on the median of the rounds' ratios: on a machine
    /// whose speed drifts, one round's ratio depends on which way each side drifted.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

impl DispatchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=1_000_000).contains(&self.jobs), "--jobs must be 1..=1000000");
        anyhow::ensure!((1..=16).contains(&self.workers), "--workers must be 1..=16");
        anyhow::ensure!((1..=256).contains(&self.concurrency), "--concurrency must be 1..=256");
        anyhow::ensure!((1..=256).contains(&self.submitters), "--submitters must be 1..=256");
        anyhow::ensure!((1..=100_000).contains(&self.teams), "--teams must be 1..=100000");
        anyhow::ensure!((-1..=100_000).contains(&self.graphile_local_queue), "--graphile-local-queue must be -1..=100000");
        anyhow::ensure!((-1..=10_000).contains(&self.graphile_complete_batch_delay_ms), "--graphile-complete-batch-delay-ms must be -1..=10000");
        anyhow::ensure!(self.kiln_local_queue <= 100_000, "--kiln-local-queue must be 0..=100000");
        anyhow::ensure!((1..=1_000).contains(&self.kiln_poll_interval_ms), "--kiln-poll-interval-ms must be 1..=1000");
        anyhow::ensure!((1..=3_600).contains(&self.timeout_secs), "--timeout-secs must be 1..=3600");
        anyhow::ensure!(!self.layouts.is_empty(), "--layouts needs spread and/or hot");
        anyhow::ensure!((1..=20).contains(&self.rounds), "--rounds must be 1..=20");
        Ok(())
    }

    fn skips(&self, side: &str) -> bool {
        self.skip.iter().any(|s| s == side || (s == "graphile" && (side == "raw" || side == "seed")))
    }

    fn layouts(&self) -> Vec<Layout> {
        let mut layouts: Vec<Layout> = self.layouts.iter().map(|l| if l == "hot" { Layout::Hot } else { Layout::Spread }).collect();
        layouts.dedup();
        layouts
    }

    /// Connections for Kiln's pool and the seed design's enqueue: as many as
    /// graphile-worker's runners get (concurrency + 2 each).
    fn connections(&self) -> u32 {
        (self.workers * (self.concurrency + 2)) as u32
    }
}

/// Where a run's jobs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Round-robin over `--teams` teams.
    Spread,
    /// All on one team.
    Hot,
}

impl Layout {
    fn teams(self, args: &DispatchArgs) -> usize {
        match self {
            Layout::Spread => args.teams,
            Layout::Hot => 1,
        }
    }

    fn label(self, args: &DispatchArgs) -> String {
        match self {
            Layout::Spread => format!("{} teams", args.teams),
            Layout::Hot => "1 hot team".into(),
        }
    }
}

/// Which system a measurement is of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    /// graphile-worker, no-op jobs, enqueued in this mode.
    Raw(String),
    /// graphile-worker with the seed's credit design.
    Seed(Layout),
    /// Kiln; `mixed`: Basic, Pro and Enterprise teams in turn.
    Kiln { layout: Layout, mixed: bool },
}

/// One measured system (or graphile-worker enqueue mode).
struct Measurement {
    side: Side,
    system: String,
    jobs: usize,
    enqueue: Duration,
    drain: Duration,
    settings: String,
}

impl Measurement {
    fn rate(&self, time: Duration) -> f64 {
        self.jobs as f64 / time.as_secs_f64().max(f64::EPSILON)
    }

    /// This measurement's enqueue and drain rates over `other`'s.
    fn ratio(&self, other: &Measurement) -> (f64, f64) {
        (self.rate(self.enqueue) / other.rate(other.enqueue), self.rate(self.drain) / other.rate(other.drain))
    }

    fn line(&self) -> String {
        format!(
            "{:<48} {:>7} jobs  enqueue {:>7.2} s ({:>7.0} jobs/s)  drain {:>7.2} s ({:>7.0} jobs/s)\n    {}",
            self.system,
            self.jobs,
            self.enqueue.as_secs_f64(),
            self.rate(self.enqueue),
            self.drain.as_secs_f64(),
            self.rate(self.drain),
            self.settings
        )
    }
}

/// The target of issue 32: Kiln's drain and enqueue ≥ 2.5× the seed design's.
const TARGET: f64 = 2.5;

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET {
        "met"
    } else {
        "missed"
    }
}

/// Kiln's enqueue and drain rates over the seed design's on `layout`, if both were measured.
fn seed_ratio(results: &[Measurement], layout: Layout) -> Option<(f64, f64)> {
    let find = |side: Side| results.iter().find(|m| m.side == side);
    let (kiln, seed) = (find(Side::Kiln { layout, mixed: false })?, find(Side::Seed(layout))?);
    Some(kiln.ratio(seed))
}

/// Kiln's rates over the others' in the same run: against the seed's design per layout
/// (the target, issue 32: ≥ 2.5× drain and enqueue), and against raw no-op jobs.
fn ratios(args: &DispatchArgs, results: &[Measurement]) -> Vec<String> {
    let mut lines = Vec::new();
    for layout in [Layout::Spread, Layout::Hot] {
        let Some((enqueue, drain)) = seed_ratio(results, layout) else { continue };
        lines.push(format!(
            "Kiln / seed design on graphile-worker, {}: enqueue {enqueue:.2}× ({}), drain {drain:.2}× ({}) (target ≥ {TARGET}×)",
            layout.label(args),
            verdict(enqueue),
            verdict(drain)
        ));
    }
    if let Some(kiln) = results.iter().find(|m| m.side == (Side::Kiln { layout: Layout::Spread, mixed: false })) {
        for raw in results.iter().filter(|m| matches!(m.side, Side::Raw(_))) {
            let (enqueue, drain) = kiln.ratio(raw);
            lines.push(format!("Kiln / {} no-op jobs: enqueue {enqueue:.2}×, drain {drain:.2}×", raw.system));
        }
    }
    lines
}

/// The median of each layout's seed-design ratios over the rounds (the upper middle one
/// of an even count), with every round's figure beside it.
fn median_ratios(args: &DispatchArgs, rounds: &[Vec<Measurement>]) -> Vec<String> {
    let median = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let listed = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
    let mut lines = Vec::new();
    for layout in [Layout::Spread, Layout::Hot] {
        let (enqueue, drain): (Vec<f64>, Vec<f64>) = rounds.iter().filter_map(|results| seed_ratio(results, layout)).unzip();
        if enqueue.is_empty() {
            continue;
        }
        let (enqueue_median, drain_median) = (median(enqueue.clone()), median(drain.clone()));
        lines.push(format!(
            "Kiln / seed design on graphile-worker, {}, median of {} rounds: enqueue {enqueue_median:.2}× ({}; rounds {}), drain {drain_median:.2}× ({}; rounds {}) (target ≥ {TARGET}×)",
            layout.label(args),
            enqueue.len(),
            verdict(enqueue_median),
            listed(&enqueue),
            verdict(drain_median),
            listed(&drain)
        ));
    }
    lines
}

pub async fn run(args: DispatchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let script = args.graphile_dir.join("dispatch.mjs");
    if !(args.skips("raw") && args.skips("seed")) {
        anyhow::ensure!(
            args.graphile_dir.join("node_modules/graphile-worker").is_dir(),
            "graphile-worker is not installed: run {}/setup first",
            args.graphile_dir.display()
        );
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        let scratch = ScratchDb::create(&args.database_url).await?;
        eprintln!("scratch database {}", scratch.name);
        let storage = std::env::temp_dir().join(&scratch.name);
        let outcome = measure(&args, &script, &scratch.url, &storage).await;
        let _ = std::fs::remove_dir_all(&storage);
        if args.keep_database {
            eprintln!("kept the scratch database: {}", scratch.url);
        } else {
            scratch.drop_database().await?;
        }
        let results = outcome?;
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        for measurement in &results {
            println!("{}", measurement.line());
        }
        for line in ratios(&args, &results) {
            println!("{line}");
        }
        rounds.push(results);
    }
    if args.rounds > 1 {
        for line in median_ratios(&args, &rounds) {
            println!("{line}");
        }
    }
    Ok(())
}

async fn measure(args: &DispatchArgs, script: &std::path::Path, url: &str, storage: &std::path::Path) -> anyhow::Result<Vec<Measurement>> {
    let mut results = Vec::new();
    if !args.skips("raw") {
        for mode in &args.graphile_enqueue {
            eprintln!("graphile-worker: {} jobs, enqueue {mode}", args.jobs);
            let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
            settle(&pool).await?;
            pool.close().await;
            results.push(graphile(args, script, url, mode)?);
        }
    }
    if !args.skips("seed") {
        for layout in args.layouts() {
            eprintln!("graphile-worker, the seed's design: {} jobs, {}", args.jobs, layout.label(args));
            let scratch = ScratchDb::create(&args.database_url).await?;
            let outcome = seed_design(args, script, &scratch.url, layout).await;
            scratch.drop_database().await?;
            results.push(outcome?);
        }
    }
    if !args.skips("kiln") {
        let mixes: &[bool] = match args.plans.as_str() {
            "mixed" => &[true],
            "both" => &[false, true],
            _ => &[false],
        };
        // Plans matter only with many teams: the hot team is Enterprise.
        let runs = args.layouts().into_iter().flat_map(|layout| {
            let mixes: &[bool] = if layout == Layout::Hot { &[false] } else { mixes };
            mixes.iter().map(move |mixed| (layout, *mixed))
        });
        for (n, (layout, mixed)) in runs.enumerate() {
            if n > 0 {
                // Each measurement starts from an empty log.
                let scratch = ScratchDb::create(&args.database_url).await?;
                let outcome = kiln(args, &scratch.url, storage, layout, mixed).await;
                scratch.drop_database().await?;
                results.push(outcome?);
            } else {
                results.push(kiln(args, url, storage, layout, mixed).await?);
            }
        }
    }
    Ok(results)
}

/// What dispatch.mjs prints.
#[derive(Deserialize)]
struct GraphileRun {
    graphile_worker_version: String,
    node_version: String,
    jobs: usize,
    executed: usize,
    /// None when kiln-bench enqueued (`--enqueue none`).
    enqueue_secs: Option<f64>,
    drain_secs: f64,
    settings: serde_json::Value,
}

/// Runs dispatch.mjs with `options` (and the runner settings unless `--migrate-only`);
/// returns what it printed last.
fn dispatch_mjs(args: &DispatchArgs, script: &std::path::Path, url: &str, options: &[(&str, String)]) -> anyhow::Result<String> {
    let migrate_only = options.iter().any(|(name, _)| *name == "migrate-only");
    let runner = [
        ("jobs", args.jobs.to_string()),
        ("runners", args.workers.to_string()),
        ("concurrency", args.concurrency.to_string()),
        ("submitters", args.submitters.to_string()),
        ("local-queue", args.graphile_local_queue.to_string()),
        ("complete-batch-delay", args.graphile_complete_batch_delay_ms.to_string()),
        ("timeout-secs", args.timeout_secs.to_string()),
    ];
    let runner = if migrate_only { &runner[..0] } else { &runner[..] };
    // `--name=value`: Node's parseArgs takes a separate "-1" for another option.
    let output = Command::new(&args.node)
        .arg(script)
        .arg(format!("--database-url={url}"))
        .args(runner.iter().chain(options).map(|(name, value)| if value.is_empty() { format!("--{name}") } else { format!("--{name}={value}") }))
        .current_dir(&args.graphile_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} {}", args.node, script.display()))?;
    anyhow::ensure!(output.status.success(), "dispatch.mjs failed ({})", output.status);
    let stdout = String::from_utf8(output.stdout).context("dispatch.mjs printed non-UTF-8")?;
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}

fn graphile_run(args: &DispatchArgs, script: &std::path::Path, url: &str, options: &[(&str, String)]) -> anyhow::Result<GraphileRun> {
    let line = dispatch_mjs(args, script, url, options)?;
    let run: GraphileRun = serde_json::from_str(&line).with_context(|| format!("unexpected output from dispatch.mjs: {line}"))?;
    anyhow::ensure!(run.jobs == args.jobs && run.executed == args.jobs, "graphile-worker ran {} of {} jobs", run.executed, args.jobs);
    Ok(run)
}

fn graphile(args: &DispatchArgs, script: &std::path::Path, url: &str, mode: &str) -> anyhow::Result<Measurement> {
    let run = graphile_run(args, script, url, &[("enqueue", mode.to_string()), ("task", "noop".into())])?;
    Ok(Measurement {
        side: Side::Raw(mode.to_string()),
        system: format!("graphile-worker {} ({mode})", run.graphile_worker_version),
        jobs: run.jobs,
        enqueue: Duration::from_secs_f64(run.enqueue_secs.context("dispatch.mjs timed no enqueue")?),
        drain: Duration::from_secs_f64(run.drain_secs),
        settings: format!("node {}, {}", run.node_version, run.settings),
    })
}

/// The seed's design on graphile-worker ([`crate::seed_design`]) in the scratch database
/// `url`: graphile-worker's schema, the credit tables, the jobs accepted from here
/// (timed), then dispatch.mjs's runners drain them (timed there) and the ledger is checked.
async fn seed_design(args: &DispatchArgs, script: &std::path::Path, url: &str, layout: Layout) -> anyhow::Result<Measurement> {
    dispatch_mjs(args, script, url, &[("migrate-only", String::new())])?;
    let connections = args.connections();
    let pool = PgPoolOptions::new().max_connections(connections).connect(url).await?;
    let teams: Vec<Uuid> = (0..layout.teams(args)).map(|_| Uuid::now_v7()).collect();
    crate::seed_design::setup(&pool, &teams, TEAM_GRANT).await?;
    let price = image_price(seed_reference()?.1)?.amount.get();
    let jobs: Vec<(Uuid, Uuid)> = (0..args.jobs).map(|n| (teams[n % teams.len()], Uuid::now_v7())).collect();

    settle(&pool).await?;
    let started = Instant::now();
    let submitted = futures::stream::iter(jobs)
        .map(|(team, job)| crate::seed_design::enqueue(&pool, team, job, price))
        .buffer_unordered(args.submitters)
        .collect::<Vec<_>>()
        .await;
    let enqueue = started.elapsed();
    let failed = submitted.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "seed design: {failed} enqueues failed, e.g. {:?}", submitted.iter().find(|r| r.is_err()));
    // The runners' connections are graphile-worker's own.
    pool.close().await;

    let run = graphile_run(args, script, url, &[("enqueue", "none".into()), ("task", crate::seed_design::TASK.into())])?;
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let check = crate::seed_design::check(&pool, args.jobs as i64, price).await;
    pool.close().await;
    Ok(Measurement {
        side: Side::Seed(layout),
        system: format!("graphile-worker {} seed design, {}", run.graphile_worker_version, layout.label(args)),
        jobs: run.jobs,
        enqueue,
        drain: Duration::from_secs_f64(run.drain_secs),
        settings: format!(
            "enqueue from kiln-bench (sqlx), {} submitters, {connections} connections, one transaction per job (row lock, reserve, ledger row, job row, \
             add_job); task `charge` deducts in one transaction; {price} credits a job; node {}, {}; {}",
            args.submitters,
            run.node_version,
            run.settings,
            check?
        ),
    })
}

/// The benchmark's provider: answers every request at once, without rendering. Image
/// generation produces no files; model creation (set-up only) a tiny `model.json`, so
/// the models become ready as they would with a real provider.
struct NoopProvider;

#[async_trait]
impl Provider for NoopProvider {
    fn name(&self) -> &'static str {
        "bench-noop"
    }

    async fn submit(&self, request: ProviderRequest) -> Result<Submission, ProviderError> {
        let files = match request.input {
            JobInput::ImageGeneration { .. } => Vec::new(),
            JobInput::ModelCreation { .. } | JobInput::ModelRefinement { .. } => {
                vec![ProducedFile { name: "model.json".into(), content_type: "application/json".into(), bytes: b"{}".to_vec() }]
            }
        };
        Ok(Submission::Finished(ProviderOutcome::Completed(files)))
    }

    async fn status(&self, _request_id: &str) -> Result<ProviderStatus, ProviderError> {
        // It never accepts a request for later, so it knows none.
        Ok(ProviderStatus::Unknown)
    }

    async fn cancel(&self, _request_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Kiln's workers, running until `stop`.
struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    fn start(state: &AppState, args: &DispatchArgs, name: &str) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..args.workers)
            .map(|n| {
                let mut config = WorkerConfig::new(format!("bench-{name}-{n}"));
                config.concurrency = args.concurrency;
                config.local_queue = args.kiln_local_queue;
                config.poll_interval = Duration::from_millis(args.kiln_poll_interval_ms);
                let worker = Worker::new(state.jobs.clone(), state.job_index.clone(), Arc::new(NoopProvider), state.objects.clone(), config);
                tokio::spawn(worker.run(stopped.clone()))
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn kiln(args: &DispatchArgs, url: &str, storage: &std::path::Path, layout: Layout, mixed: bool) -> anyhow::Result<Measurement> {
    let mut settings = Settings::default();
    settings.database.url = url.to_string();
    settings.storage.local_root = storage.display().to_string();
    if let Some(n) = args.commits_in_flight {
        settings.credits.commits_in_flight = n;
    }
    let connections = args.connections();
    let db = Database::connect_and_migrate(url, connections).await?;
    // Counting ended jobs must not take a connection from the workers.
    let counter = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let counter_db = Database::Postgres(counter.clone());
    infrastructure::pricing::seed_default(&db).await?;
    let state = AppState::new(db.clone(), &settings, Arc::new(SystemClock))?;
    infrastructure::catalog::seed(&db, state.objects.as_ref(), state.jobs.now()).await?;
    let reference = seed_reference()?;

    let plans = if mixed { "basic, pro and enterprise" } else { "enterprise" };
    let team_count = layout.teams(args);
    eprintln!("kiln: set-up, {team_count} {plans} teams with one ready model each");
    let teams = open_teams(&state, team_count, mixed).await?;
    let models = crate::jobs::create_models(&state, &teams, &reference, 16).await?;
    let setup_workers = Workers::start(&state, args, "setup");
    wait_for(&counter_db, "model_creation", teams.len() as i64, POLL, Duration::from_secs(args.timeout_secs)).await?;
    setup_workers.stop().await;
    let jobs = generation_jobs(&state, &teams, &models, args.jobs).await?;
    let price = jobs.first().map_or(0, |job| job.cost.get());

    settle(&counter).await?;
    eprintln!("kiln: {} jobs, enqueue", args.jobs);
    let cpu_enqueue = CpuSample::take(&[]);
    let started = Instant::now();
    let submitted = futures::stream::iter(jobs)
        .map(|job| state.jobs.submit(job, "bench"))
        .buffer_unordered(args.submitters)
        .collect::<Vec<_>>()
        .await;
    let enqueue = started.elapsed();
    let failed = submitted.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} submissions failed, e.g. {:?}", submitted.iter().find(|r| r.is_err()));

    eprintln!("kiln: drain");
    let cpu_drain = CpuSample::take(&[]);
    let started = Instant::now();
    let workers = Workers::start(&state, args, "drain");
    wait_for(&counter_db, "image_generation", args.jobs as i64, POLL, Duration::from_secs(args.timeout_secs)).await?;
    let drain = started.elapsed();
    let cpu_end = CpuSample::take(&[]);
    workers.stop().await;
    // The workers run in this process here: "bench process" is the engine's own CPU.
    let cpu = match (cpu_enqueue, cpu_drain, cpu_end) {
        (Some(enqueue), Some(drain), Some(end)) => {
            format!("\n    enqueue {}\n    drain {}", drain.report_since(&enqueue, args.jobs, "job"), end.report_since(&drain, args.jobs, "job"))
        }
        _ => String::new(),
    };

    let check = crate::dispatch_check::check(&counter, args.jobs as i64, teams.len() as i64, settings.jobs.plan_weights, mixed).await?;
    Ok(Measurement {
        side: Side::Kiln { layout, mixed },
        system: format!("Kiln {}, {}{}", env!("CARGO_PKG_VERSION"), layout.label(args), if mixed { ", mixed plans" } else { "" }),
        jobs: args.jobs,
        enqueue,
        drain,
        settings: format!(
            "{} workers × {} slots + {} claimed ahead, poll {} ms, {} connections, {} joint commits in flight, {} {plans} teams, {} submitters, {price} credits a job; {check}{cpu}",
            args.workers, args.concurrency, args.kiln_local_queue, args.kiln_poll_interval_ms, connections, settings.credits.commits_in_flight, teams.len(), args.submitters
        ),
    })
}

async fn open_teams(state: &AppState, count: usize, mixed: bool) -> anyhow::Result<Vec<TeamId>> {
    let now = state.jobs.now();
    let teams: Vec<TeamId> = (0..count).map(|_| TeamId::new(Uuid::now_v7())).collect();
    let mix = [Plan::Basic, Plan::Pro, Plan::Enterprise];
    let results = futures::stream::iter(teams.iter().copied().enumerate())
        .map(|(n, team)| async move {
            let plan = if mixed { mix[n % mix.len()] } else { Plan::Enterprise };
            let open = TeamCreditsCommand::OpenTeam { team_id: team, name: format!("bench {team}"), plan, now };
            state.credits.execute(team, open, &json!({})).await?;
            let grant = TeamCreditsCommand::GrantCredits {
                grant_id: GrantId::new(Uuid::now_v7()),
                amount: Credits::parse(TEAM_GRANT)?,
                source: GrantSource::Admin,
                expires_at: None,
                key: IdempotencyKey::parse(format!("bench-{team}"))?,
                now,
            };
            state.credits.execute(team, grant, &json!({})).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(teams)
}

/// `count` image-generation jobs, round-robin over the teams, priced as the API prices
/// them; built before the clock starts so enqueue measures only the submissions.
async fn generation_jobs(state: &AppState, teams: &[TeamId], models: &[ModelId], count: usize) -> anyhow::Result<Vec<NewJob>> {
    let mut inputs = Vec::with_capacity(teams.len());
    for (team, model) in teams.iter().zip(models) {
        let loaded = state.jobs.model(*model).await?.aggregate;
        let version = loaded.usable()?.version;
        let quote = image_price(loaded.complexity_milli)?;
        let input = JobInput::ImageGeneration { model_id: *model, model_version: version, prompt: PROMPT.into(), resolution: RESOLUTION.into(), quality: QUALITY.into(), count: 1 };
        inputs.push((*team, input, quote));
    }
    Ok((0..count)
        .map(|n| {
            let (team, input, quote) = &inputs[n % inputs.len()];
            NewJob { team: *team, job_id: JobId::new(Uuid::now_v7()), input: input.clone(), cost: quote.amount, price_version: quote.price_version, model_change: None, uploads: Vec::new() }
        })
        .collect())
}

/// Credits each team starts with (both credit-carrying sides).
const TEAM_GRANT: i64 = 100_000_000;

/// How long [`settle`] waits at most for autovacuum to finish.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// Lets the server settle before a side's measured enqueue: a checkpoint (the dirty pages
/// of earlier sides and of the set-up written out, so no checkpoint is due inside the
/// measurement), then a wait until no autovacuum worker runs (on any database: the
/// sides before this one leave tables to vacuum). Each side's own enqueue and drain
/// still pay for what they write; only what earlier sides left behind is kept out.
async fn settle(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let started = Instant::now();
    sqlx::query("CHECKPOINT").execute(pool).await.context("CHECKPOINT before the measurement")?;
    loop {
        let (vacuuming,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'").fetch_one(pool).await?;
        if vacuuming == 0 || started.elapsed() > SETTLE_MAX {
            eprintln!("settled in {:.1} s (checkpoint; {vacuuming} autovacuum workers still running)", started.elapsed().as_secs_f64());
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
/// Every measured job is one standard 512×512 image.
const RESOLUTION: &str = "512x512";
const QUALITY: &str = "standard";
const PROMPT: &str = "noop";

/// The price of one measured job with a model of this complexity (price version 1).
fn image_price(model_complexity_milli: i64) -> anyhow::Result<domain::Quote> {
    let request = PriceRequest::ImageGeneration { resolution: RESOLUTION.into(), quality: QUALITY.into(), model_complexity_milli, count: 1 };
    Ok(PricingConfig::default_v1().quote(&request)?)
}

/// The reference model (id, complexity) Kiln's side builds its teams' models from: the
/// seed catalog's first by id. The seed design's jobs are priced with its complexity, so
/// they cost what Kiln's do.
fn seed_reference() -> anyhow::Result<(String, i64)> {
    infrastructure::catalog::seed_models()
        .into_iter()
        .min_by(|a, b| a.id.cmp(&b.id))
        .map(|model| (model.id, model.complexity_factor_milli))
        .context("empty seed catalog")
}
