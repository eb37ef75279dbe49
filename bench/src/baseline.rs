//! The baseline: the seed plan's design of a balance row per team, locked with
//! `SELECT … FOR UPDATE`, plus a row per money movement in `credit_transactions`.
//!
//! One transaction to reserve (lock, check available, move available → reserved, record)
//! and one to deduct (lock, check reserved, move reserved → deducted, record). The tables
//! live in the scratch database beside Kiln's but are not Kiln migrations: they exist only
//! to be measured against. `kiln-bench dispatch` uses the same tables and the same
//! reservation for its graphile-worker side with the seed's design (`crate::seed_design`;
//! its deduct runs in `bench/graphile/dispatch.mjs`, the same statements as [`deduct`]).

use sqlx::PgPool;
use uuid::Uuid;

const SCHEMA: &[&str] = &[
    "CREATE TABLE credit_balances (
        team_id    uuid        PRIMARY KEY,
        available  bigint      NOT NULL CHECK (available >= 0),
        reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
        deducted   bigint      NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now()
    )",
    "CREATE TABLE credit_transactions (
        id         bigserial   PRIMARY KEY,
        team_id    uuid        NOT NULL,
        job_id     uuid        NOT NULL,
        kind       text        NOT NULL,
        amount     bigint      NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )",
    // A team's history is what such a table is read for; the seed design would index it.
    "CREATE INDEX credit_transactions_team_idx ON credit_transactions (team_id, created_at)",
];

/// Creates the baseline tables and one balance row per team holding `grant` credits.
pub async fn setup(pool: &PgPool, teams: &[Uuid], grant: i64) -> anyhow::Result<()> {
    for statement in SCHEMA {
        sqlx::query(statement).execute(pool).await?;
    }
    // Setup is not timed: one set-based insert per chunk keeps it quick.
    for chunk in teams.chunks(5_000) {
        sqlx::query("INSERT INTO credit_balances (team_id, available) SELECT t, $2 FROM UNNEST($1::uuid[]) AS t")
            .bind(chunk)
            .bind(grant)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// One operation: reserve `amount` for a fresh job, then deduct it.
pub async fn reserve_and_deduct(pool: &PgPool, team: Uuid, amount: i64) -> anyhow::Result<()> {
    let job = Uuid::now_v7();
    reserve(pool, team, job, amount).await?;
    deduct(pool, team, job, amount).await
}

async fn reserve(pool: &PgPool, team: Uuid, job: Uuid, amount: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    reserve_in(&mut tx, team, job, amount).await?;
    tx.commit().await?;
    Ok(())
}

/// The reservation's statements inside the caller's transaction (which must commit):
/// lock the balance row, check available, move available → reserved, record. The seed
/// design's enqueue (`crate::seed_design`) adds the job to the same transaction.
/// Dropping the transaction without commit rolls back and releases the lock.
pub async fn reserve_in(tx: &mut sqlx::PgConnection, team: Uuid, job: Uuid, amount: i64) -> anyhow::Result<()> {
    let available: i64 = sqlx::query_scalar("SELECT available FROM credit_balances WHERE team_id = $1 FOR UPDATE")
        .bind(team)
        .fetch_one(&mut *tx)
        .await?;
    anyhow::ensure!(available >= amount, "baseline: insufficient credits");
    sqlx::query("UPDATE credit_balances SET available = available - $2, reserved = reserved + $2, updated_at = now() WHERE team_id = $1")
        .bind(team)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    record(tx, team, job, "reserve", amount).await
}

async fn deduct(pool: &PgPool, team: Uuid, job: Uuid, amount: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let reserved: i64 = sqlx::query_scalar("SELECT reserved FROM credit_balances WHERE team_id = $1 FOR UPDATE")
        .bind(team)
        .fetch_one(&mut *tx)
        .await?;
    anyhow::ensure!(reserved >= amount, "baseline: reservation missing");
    sqlx::query("UPDATE credit_balances SET reserved = reserved - $2, deducted = deducted + $2, updated_at = now() WHERE team_id = $1")
        .bind(team)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, team, job, "deduct", amount).await?;
    tx.commit().await?;
    Ok(())
}

async fn record(tx: &mut sqlx::PgConnection, team: Uuid, job: Uuid, kind: &str, amount: i64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO credit_transactions (team_id, job_id, kind, amount) VALUES ($1, $2, $3, $4)")
        .bind(team)
        .bind(job)
        .bind(kind)
        .bind(amount)
        .execute(tx)
        .await?;
    Ok(())
}

/// Total credits deducted over all teams: must equal successful operations × amount.
pub async fn deducted_total(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(SUM(deducted), 0)::bigint FROM credit_balances").fetch_one(pool).await?)
}
