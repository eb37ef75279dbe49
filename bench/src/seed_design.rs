//! The seed plan's design on graphile-worker, the `kiln-bench dispatch` side that does the
//! same work as Kiln's: every job is a credit reservation that is deducted when the job
//! completes.
//!
//! The seed plan (`shared/seed-plan.txt`, "Credit Transaction Atomicity") accepts a job in
//! one transaction: lock the team's balance row (`SELECT … FOR UPDATE`), check what is
//! available, reserve, insert a credit-transaction row, insert the job. Here the balance
//! and ledger tables and those statements are the credits benchmark's row-lock baseline
//! ([`crate::baseline`]: `credit_balances`, `credit_transactions`, [`baseline::reserve_in`]);
//! the job is a row of the seed's unified job table (`generation_jobs`) plus
//! `graphile_worker.add_job`, in the same transaction. The API server enqueues, and Kiln's
//! API server is this Rust process, so the enqueue runs here on sqlx with the same
//! submitters and connections as Kiln's side (the seed's Node.js server would be no
//! faster at sending the same statements).
//!
//! The task (`charge` in `bench/graphile/dispatch.mjs`, run by graphile-worker's runners)
//! deducts in one transaction: lock the balance row, check the reservation, move reserved
//! → deducted, insert the ledger row, mark the job completed. graphile-worker then
//! completes its own job (batched, as in the no-op run).

use sqlx::PgPool;
use uuid::Uuid;

use crate::baseline;

/// The task identifier the jobs are added under (dispatch.mjs's `charge` task).
pub const TASK: &str = "charge";

/// The seed's unified job table ("Unified Job Table" in the seed plan), beside the
/// baseline's credit tables; indexed by team for the team's job list, as the credit
/// history is.
const SCHEMA: &[&str] = &[
    "CREATE TABLE generation_jobs (
        id         uuid        PRIMARY KEY,
        team_id    uuid        NOT NULL,
        kind       text        NOT NULL,
        status     text        NOT NULL,
        cost       bigint      NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    "CREATE INDEX generation_jobs_team_idx ON generation_jobs (team_id, created_at)",
];

/// Creates the tables (graphile-worker's schema must exist already) and one balance row
/// per team holding `grant` credits.
pub async fn setup(pool: &PgPool, teams: &[Uuid], grant: i64) -> anyhow::Result<()> {
    baseline::setup(pool, teams, grant).await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// Accepts one job of `amount` credits for `team`: the reservation, the job row and the
/// graphile-worker job in one transaction.
pub async fn enqueue(pool: &PgPool, team: Uuid, job: Uuid, amount: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    baseline::reserve_in(&mut tx, team, job, amount).await?;
    sqlx::query("INSERT INTO generation_jobs (id, team_id, kind, status, cost) VALUES ($1, $2, 'image_generation', 'queued', $3)")
        .bind(job)
        .bind(team)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT id FROM graphile_worker.add_job($1, json_build_object('team', $2::uuid, 'job', $3::uuid, 'amount', $4::bigint))")
        .bind(TASK)
        .bind(team)
        .bind(job)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// After the drain: every job completed once and every reservation deducted once, nothing
/// left reserved, the ledger holding one reserve and one deduct row per job.
pub async fn check(pool: &PgPool, jobs: i64, amount: i64) -> anyhow::Result<String> {
    let (completed, queued): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status <> 'completed') FROM generation_jobs")
            .fetch_one(pool)
            .await?;
    let (reserves, deducts, deducted_jobs): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE kind = 'reserve'), COUNT(*) FILTER (WHERE kind = 'deduct'), \
         COUNT(DISTINCT job_id) FILTER (WHERE kind = 'deduct') FROM credit_transactions",
    )
    .fetch_one(pool)
    .await?;
    let (reserved_left, deducted): (i64, i64) =
        sqlx::query_as("SELECT COALESCE(SUM(reserved), 0)::bigint, COALESCE(SUM(deducted), 0)::bigint FROM credit_balances").fetch_one(pool).await?;
    let (graphile_left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM graphile_worker._private_jobs").fetch_one(pool).await?;
    anyhow::ensure!(completed == jobs && queued == 0, "seed design: {completed} of {jobs} jobs completed, {queued} not");
    anyhow::ensure!(
        reserves == jobs && deducts == jobs && deducted_jobs == jobs,
        "seed design: {reserves} reservations, {deducts} deductions ({deducted_jobs} distinct jobs) for {jobs} jobs"
    );
    anyhow::ensure!(
        reserved_left == 0 && deducted == jobs * amount,
        "seed design: {reserved_left} credits left reserved, {deducted} deducted (expected {})",
        jobs * amount
    );
    anyhow::ensure!(graphile_left == 0, "seed design: {graphile_left} graphile-worker jobs left");
    Ok(format!("check: {completed} completed, {deducts} reservations deducted once each, none left reserved"))
}
