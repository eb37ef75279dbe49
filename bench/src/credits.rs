//! `kiln-bench credits`: reserve+deduct, Kiln against the row-lock baseline, in one run.
//!
//! One scratch database, one connection pool shared by both designs (so neither gets
//! more connections), the same teams and the same load generator. Four scenarios run in
//! this order, each with a warm-up and the same measured duration:
//! baseline-spread, kiln-spread, baseline-hot, kiln-hot. Afterwards both ledgers are
//! checked: credits deducted must equal successful operations × amount.

use std::sync::Arc;

use anyhow::Context;
use domain::Credits;
use infrastructure::db::Database;
use sqlx::PgPool;
use uuid::Uuid;

use crate::kiln::Kiln;
use crate::load::{self, Measured, Teams};
use crate::report::{Consistency, Design, Report, Scenario};
use crate::scratch::ScratchDb;
use crate::{baseline, CreditsArgs};

/// Credits per operation. The amount does not change the work done; 1 keeps the grant small.
const AMOUNT_CREDITS: i64 = 1;
/// Granted to every team up front: more than any run can spend, even all on one team.
const GRANT_CREDITS: i64 = 1_000_000_000_000;

pub async fn run(args: CreditsArgs) -> anyhow::Result<()> {
    let scratch = ScratchDb::create(&args.database_url).await?;
    eprintln!("scratch database {}", scratch.name);
    // Whatever happens, the scratch database is dropped before we report.
    let outcome = tokio::select! {
        outcome = run_in(&args, &scratch.url) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let name = scratch.name.clone();
    let dropped = scratch.drop_database().await;
    if let Err(error) = &dropped {
        // Said here because a failed run's own error would hide this one.
        eprintln!("could not drop scratch database {name} (drop it by hand): {error:#}");
    }
    outcome?.print(args.json)?;
    dropped
}

async fn run_in(args: &CreditsArgs, url: &str) -> anyhow::Result<Report> {
    let db = Database::connect_and_migrate(url, args.connections).await.context("cannot migrate the scratch database")?;
    let Database::Postgres(pool) = &db else { anyhow::bail!("the benchmark runs on PostgreSQL only") };
    let pool = pool.clone();
    let postgres_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await?;

    let teams: Arc<[Uuid]> = (0..args.teams).map(|_| Uuid::now_v7()).collect();
    let kiln = Arc::new(Kiln::new(&db, args.snapshot_every, args.commits_in_flight));
    eprintln!("setup: {} teams, baseline and Kiln", teams.len());
    baseline::setup(&pool, &teams, GRANT_CREDITS).await.context("baseline setup")?;
    kiln.setup(&teams, GRANT_CREDITS).await.context("Kiln setup")?;

    let spread = Teams::Spread { count: teams.len() };
    let mut scenarios = Vec::new();
    let mut succeeded = [0u64; 2];
    for (name, design, pick) in [
        ("baseline-spread", Design::Baseline, spread),
        ("kiln-spread", Design::Kiln, spread),
        ("baseline-hot", Design::Baseline, Teams::Hot),
        ("kiln-hot", Design::Kiln, Teams::Hot),
    ] {
        if !args.only.is_empty() && !args.only.iter().any(|only| only == name) {
            continue;
        }
        checkpoint(&pool).await?;
        eprintln!("running {name} ({}s warm-up, {}s measured)", args.warmup_secs, args.duration_secs);
        let log_before = log_end(&pool).await?;
        let measured = match design {
            Design::Baseline => run_baseline(args, &pool, &teams, pick).await?,
            Design::Kiln => run_kiln(args, &kiln, &teams, pick).await?,
        };
        succeeded[design as usize] += measured.succeeded_total;
        let mut scenario = Scenario::new(name, design, measured);
        if design == Design::Kiln {
            scenario.events_per_commit = Some(events_per_commit(&pool, log_before).await?);
        }
        scenarios.push(scenario);
    }

    let consistency = Consistency {
        baseline_expected_credits: succeeded[Design::Baseline as usize] as i64 * AMOUNT_CREDITS,
        baseline_deducted_credits: baseline::deducted_total(&pool).await?,
        kiln_expected_credits: succeeded[Design::Kiln as usize] as i64 * AMOUNT_CREDITS,
        kiln_deducted_credits: crate::kiln::deducted_total(&db).await?,
    };
    db.close().await;
    Ok(Report::new(args, postgres_version, scenarios, consistency))
}

/// The last position in Kiln's event log (0 when empty).
async fn log_end(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(pool).await?)
}

/// Events per committed transaction after `position` (warm-up included): how many
/// commands Kiln's group commit joined per transaction (one reserve or deduct is one event).
async fn events_per_commit(pool: &PgPool, after: i64) -> anyhow::Result<f64> {
    let (events, commits): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT transaction_id) FROM events WHERE position > $1")
            .bind(after)
            .fetch_one(pool)
            .await?;
    Ok(events as f64 / commits.max(1) as f64)
}

/// Flushes dirty pages between scenarios, so one scenario does not pay for the writes of
/// the one before it.
async fn checkpoint(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CHECKPOINT").execute(pool).await.context("CHECKPOINT (needs a superuser admin URL)")?;
    Ok(())
}

async fn run_baseline(args: &CreditsArgs, pool: &PgPool, teams: &Arc<[Uuid]>, pick: Teams) -> anyhow::Result<Measured> {
    let (pool, teams) = (pool.clone(), teams.clone());
    load::run(args.clients, args.warmup(), args.duration(), pick, move |index| {
        let (pool, team) = (pool.clone(), teams[index]);
        async move { baseline::reserve_and_deduct(&pool, team, AMOUNT_CREDITS).await }
    })
    .await
}

async fn run_kiln(args: &CreditsArgs, kiln: &Arc<Kiln>, teams: &Arc<[Uuid]>, pick: Teams) -> anyhow::Result<Measured> {
    let (kiln, teams) = (kiln.clone(), teams.clone());
    let amount = Credits::parse(AMOUNT_CREDITS)?;
    load::run(args.clients, args.warmup(), args.duration(), pick, move |index| {
        let (kiln, team) = (kiln.clone(), teams[index]);
        async move { kiln.reserve_and_deduct(team, amount).await }
    })
    .await
}
