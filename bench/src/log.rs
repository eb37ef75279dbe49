//! `kiln-bench log`: the operator's scans of a large credit log on PostgreSQL — projection
//! rebuild and `audit verify` — against an ordered raw read of the same log, in one run and
//! one scratch database.
//!
//! The log: `--events` TeamCredits events in streams of `--events-per-team` (opened, one
//! large grant, then reserve + deduct pairs), appended through the real event store with its
//! inline projections (so `team_balances` is live), by four writer tasks.
//!
//! Then, in order:
//! - **raw read** (the baseline): one cursor over the TeamCredits events in stream order,
//!   the columns a rebuild reads, fetched and decoded into rows, nothing else done;
//! - **reference** `credit_history` rebuilt batch by batch with the projection's own code
//!   (the async projection has no projector here, so this is its live table), then
//!   `rebuild --verify` of `team_balances` and `credit_history`: the bulk pass must equal the
//!   projections' own code, else the run fails;
//! - **rebuild** of each (bulk pass, keys, swap), timed;
//! - **`audit verify`** of the whole log, timed; it must find no violation.
//!
//! Each timed phase reports events/s, its ratio to the raw read, where the CPU went
//! (PostgreSQL and this process) and this process's peak resident memory during it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use application::event_store::{EventStore, NewEvent, StreamAppend};
use chrono::Utc;
use domain::{Allocation, Credits, GrantId, GrantSource, IdempotencyKey, JobId, Operation, Plan, TeamCreditsEvent, TeamId};
use futures::TryStreamExt;
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use projections::rebuild::{self, NoProgress, RebuildOptions};
use sqlx::{Connection, Executor};

use crate::cpu::CpuSample;
use crate::scratch::ScratchDb;

/// Targets of issue 32: rebuild ≥ 200k events/s, audit verify < 5 s per million events.
const REBUILD_TARGET_EVENTS_PER_SEC: f64 = 200_000.0;
const VERIFY_TARGET_SECS_PER_MILLION: f64 = 5.0;

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// TeamCredits events in the log.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per team stream.
    #[arg(long, default_value_t = 1_000)]
    pub events_per_team: usize,
    /// Skip the reference rebuild and the two `--verify` runs (they check the bulk pass
    /// against the projections' own code; skip them only while profiling).
    #[arg(long)]
    pub skip_verify: bool,
    /// Run only these timed phases (repeatable; default all).
    #[arg(long, value_parser = ["raw", "team_balances", "credit_history", "audit"])]
    pub only: Vec<String>,
    /// Log as `kiln` does (its default filter, `info`) to stderr: the rebuild's own lines
    /// say how long each stage was busy.
    #[arg(long)]
    pub log: bool,
    /// Keep the scratch database afterwards (its name is printed), e.g. to look at plans.
    #[arg(long)]
    pub keep_database: bool,
}

pub async fn run(args: LogArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1_000..=20_000_000).contains(&args.events), "--events must be 1000..=20000000");
    anyhow::ensure!((4..=100_000).contains(&args.events_per_team), "--events-per-team must be 4..=100000");
    if args.log {
        let settings = infrastructure::config::Settings::default();
        infrastructure::telemetry::init(&settings.log, infrastructure::telemetry::Output::Plain);
    }
    let scratch = ScratchDb::create(&args.admin_url).await?;
    eprintln!("scratch database {}", scratch.name);
    let result = measure(&args, &scratch.url).await;
    if args.keep_database {
        eprintln!("kept database {}", scratch.name);
    } else {
        scratch.drop_database().await?;
    }
    for line in result? {
        println!("{line}");
    }
    Ok(())
}

/// One timed phase.
struct Phase {
    name: &'static str,
    events: u64,
    secs: f64,
    cpu: String,
    peak_rss_mib: Option<u64>,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.events as f64 / self.secs.max(1e-9)
    }
}

async fn measure(args: &LogArgs, url: &str) -> anyhow::Result<Vec<String>> {
    let db = Database::connect_and_migrate(url, 16).await?;
    let store = Arc::new(SqlEventStore::with_inline_projections(db.clone(), projections::inline_projections()));
    let started = Instant::now();
    let events = load(&store, args.events, args.events_per_team).await?;
    eprintln!("loaded {events} events in {:.1} s", started.elapsed().as_secs_f64());
    let Database::Postgres(pool) = &db else { anyhow::bail!("the log bench needs PostgreSQL") };
    // The log as it would be at rest on a running server: autovacuum has vacuumed it (hint
    // bits set, so the first reader does not write every page back) and analyzed it.
    sqlx::query("VACUUM (ANALYZE) events").execute(pool).await?;

    let history = projections::catalog::find("credit_history").context("credit_history projection")?;
    let balances = projections::catalog::find("team_balances").context("team_balances projection")?;
    if !args.skip_verify {
        let per_batch = RebuildOptions { bulk: false, ..RebuildOptions::default() };
        let report = rebuild::rebuild(&store, &history, &per_batch, &NoProgress).await?;
        eprintln!("reference: credit_history rebuilt batch by batch by its own code: {} events/s", report.events_per_sec);
        for info in [&balances, &history] {
            let verify = RebuildOptions { verify: true, ..RebuildOptions::default() };
            let report = rebuild::rebuild(&store, info, &verify, &NoProgress).await?;
            anyhow::ensure!(report.matches(), "rebuild --verify {}: the bulk pass differs: {:#?}", info.name, report.differences);
            eprintln!("rebuild --verify {}: equal to the projection's own code", info.name);
        }
    }

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut phases = Vec::new();
    eprintln!("load average before the timed phases: {}", load_average());
    if wanted("raw") {
        phases.push(timed("raw ordered read", || raw_read(pool)).await?);
    }
    for info in [&balances, &history] {
        if wanted(info.name) {
            let name = if info.name == "team_balances" { "rebuild team_balances" } else { "rebuild credit_history" };
            phases.push(
                timed(name, || async {
                    let report = rebuild::rebuild(&store, info, &RebuildOptions::default(), &NoProgress).await?;
                    Ok(report.events)
                })
                .await?,
            );
        }
    }
    if wanted("audit") {
        phases.push(
            timed("audit verify", || async {
                let report = projections::audit::verify(&db, None).await?;
                anyhow::ensure!(report.ok(), "audit verify found violations: {:?}", &report.violations[..report.violations.len().min(5)]);
                Ok(report.team_events + report.job_events)
            })
            .await?,
        );
    }
    let load_after = load_average();
    db.close().await;
    Ok(table(args, &phases, &load_after))
}

fn table(args: &LogArgs, phases: &[Phase], load_after: &str) -> Vec<String> {
    let raw = phases.iter().find(|p| p.name == "raw ordered read").map(Phase::per_sec);
    let mut lines = vec![
        format!("log: {} TeamCredits events, {} per team; load average after {load_after}", args.events, args.events_per_team),
        "| phase | events | seconds | events/s | vs raw read | s per 1M events | peak RSS | target |".into(),
        "|---|---:|---:|---:|---:|---:|---:|---|".into(),
    ];
    for p in phases {
        let ratio = raw.map_or("—".into(), |raw| format!("{:.2}×", p.per_sec() / raw));
        let per_million = p.secs * 1_000_000.0 / p.events.max(1) as f64;
        let target = if p.name.starts_with("rebuild") {
            let met = p.per_sec() >= REBUILD_TARGET_EVENTS_PER_SEC;
            format!("≥ 200k events/s: {}", if met { "met" } else { "MISSED" })
        } else if p.name == "audit verify" {
            let met = per_million < VERIFY_TARGET_SECS_PER_MILLION;
            format!("< 5 s per 1M: {}", if met { "met" } else { "MISSED" })
        } else {
            "baseline".into()
        };
        let rss = p.peak_rss_mib.map_or("—".into(), |m| format!("{m} MiB"));
        lines.push(format!(
            "| {} | {} | {:.2} | {:.0} | {ratio} | {per_million:.2} | {rss} | {target} |",
            p.name,
            p.events,
            p.secs,
            p.per_sec()
        ));
    }
    lines.push(String::new());
    for p in phases {
        lines.push(format!("{}: {}", p.name, p.cpu));
    }
    lines
}

async fn timed<F, Fut>(name: &'static str, phase: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    reset_peak_rss();
    let cpu_before = CpuSample::take(&[]);
    let started = Instant::now();
    let events = phase().await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, CpuSample::take(&[])) {
        (Some(before), Some(after)) => {
            // Per million events: CPU seconds, the scale these phases are judged at.
            let per = after.per_unit_since(&before, events as usize);
            let busy = (per.postgres + per.bench) * events as f64 / 1_000.0 / (secs * cores());
            format!(
                "cpu seconds per 1M events: postgres {:.2}, this process {:.2} ({:.0}% of {} cores busy)",
                per.postgres * 1_000.0,
                per.bench * 1_000.0,
                busy * 100.0,
                cores()
            )
        }
        _ => "cpu: not measured here".into(),
    };
    let phase = Phase { name, events, secs, cpu, peak_rss_mib: peak_rss_mib() };
    eprintln!("{name}: {} events in {:.2} s = {:.0} events/s", phase.events, phase.secs, phase.per_sec());
    Ok(phase)
}

/// The baseline: the TeamCredits events in stream order (the key's index), the columns a
/// rebuild reads, through one cursor in a read-only snapshot; rows decoded, nothing else.
async fn raw_read(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    tx.execute(
        "DECLARE kiln_bench_raw NO SCROLL CURSOR FOR \
         SELECT aggregate_id, sequence, event_type, payload::text, transaction_id::text::bigint, position \
         FROM events WHERE aggregate_type = 'TeamCredits' ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .await?;
    let mut events = 0u64;
    loop {
        let mut rows = sqlx::query_as::<_, (String, i64, String, String, i64, i64)>("FETCH FORWARD 10000 FROM kiln_bench_raw").fetch(&mut *tx);
        let mut fetched = 0u64;
        while let Some(row) = rows.try_next().await? {
            std::hint::black_box(&row);
            fetched += 1;
        }
        drop(rows);
        events += fetched;
        if fetched < 10_000 {
            break;
        }
    }
    tx.rollback().await?;
    Ok(events)
}

/// Appends the log through the real store (inline projections included), four writers.
async fn load(store: &Arc<SqlEventStore>, total: usize, per_team: usize) -> anyhow::Result<u64> {
    let teams = total.div_ceil(per_team);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut appended = 0u64;
            for team in (worker..teams).step_by(4) {
                let events = per_team.min(total - team * per_team);
                let stream = team_stream(events);
                appended += stream.events.len() as u64;
                store.append(std::slice::from_ref(&stream)).await?;
            }
            Ok::<u64, anyhow::Error>(appended)
        }));
    }
    let mut appended = 0;
    for task in tasks {
        appended += task.await??;
    }
    Ok(appended)
}

fn new_event(event: TeamCreditsEvent) -> NewEvent {
    NewEvent {
        event_type: event.name().to_string(),
        event_version: "1".into(),
        payload: serde_json::to_value(&event).expect("a credit event serializes"),
        metadata: serde_json::json!({}),
    }
}

/// One team's stream of (about) `events` events: opened, one large grant, then reserve +
/// deduct pairs.
fn team_stream(events: usize) -> StreamAppend {
    let team = TeamId::new(uuid::Uuid::now_v7());
    let grant = GrantId::new(uuid::Uuid::now_v7());
    let now = Utc::now();
    let mut stream = vec![
        new_event(TeamCreditsEvent::TeamOpened { team_id: team, name: "bench".into(), plan: Plan::Pro, occurred_at: now }),
        new_event(TeamCreditsEvent::CreditsGranted {
            grant_id: grant,
            amount: Credits::parse(1_000_000_000).expect("positive"),
            source: GrantSource::Admin,
            expires_at: None,
            key: IdempotencyKey::parse(format!("bench-{team}")).expect("a valid key"),
            occurred_at: now,
        }),
    ];
    while stream.len() + 2 <= events {
        let job = JobId::new(uuid::Uuid::now_v7());
        let amount = Credits::parse(3).expect("positive");
        stream.push(new_event(TeamCreditsEvent::CreditsReserved {
            reservation_id: job,
            amount,
            operation: Operation::ImageGeneration,
            price_version: 1,
            allocations: vec![Allocation { grant_id: grant, amount }],
            occurred_at: now,
        }));
        stream.push(new_event(TeamCreditsEvent::CreditsDeducted { reservation_id: job, amount, occurred_at: now }));
    }
    StreamAppend { aggregate_type: "TeamCredits".into(), aggregate_id: team.to_string(), expected_sequence: 0, events: stream, snapshot: None }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Linux: resets this process's peak resident set (`VmHWM`) to its current size.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Linux: this process's peak resident set since the last reset, in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
