//! `application::jobs::index::JobIndex` over the job read model (`jobs`, `team_dispatch`,
//! `workers`), with SQL that runs unchanged on PostgreSQL and SQLite.

use application::event_store::EventStoreError;
use std::sync::Arc;

use application::jobs::index::{ActiveJob, JobIndex, Lost, PickHold, Picked, PickedJob, WorkerOrders, WorkerReport};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::share::PlanWeights;
use domain::{JobId, Plan, TeamId};

use crate::db::Database;
use crate::event_store::store_error;
use crate::{db_execute, db_fetch_all, db_fetch_optional};

pub struct SqlJobIndex {
    db: Database,
    /// SQLite's dispatch turns (one process's workers take turns here; the database
    /// serializes writers anyway).
    local_turn: Arc<tokio::sync::Mutex<()>>,
    /// The strides of basic, pro, enterprise and any other plan (`domain::share`).
    strides: [i64; 4],
}

impl SqlJobIndex {
    /// Dispatching with the default plan weights.
    pub fn new(db: Database) -> Self {
        Self::with_weights(db, PlanWeights::default())
    }

    pub fn with_weights(db: Database, weights: PlanWeights) -> Self {
        let strides = [Plan::Basic, Plan::Pro, Plan::Enterprise, Plan::Free].map(|plan| weights.stride(plan));
        Self { db, local_turn: Arc::default(), strides }
    }

    /// The dispatch walk on PostgreSQL (`walk`: [`DISPATCHABLE_POSTGRES`] or
    /// [`PICKABLE_POSTGRES`]), in `conn`'s snapshot.
    async fn walk_postgres(&self, walk: &'static str, conn: &mut sqlx::PgConnection, now: DateTime<Utc>, limit: i64) -> Result<Vec<PickedJob>, sqlx::Error> {
        let [basic, pro, enterprise, other] = self.strides;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(walk)
            .bind(now)
            .bind(limit)
            .bind(basic)
            .bind(pro)
            .bind(enterprise)
            .bind(other)
            .fetch_all(conn)
            .await?;
        Ok(picked(rows))
    }
}

/// A pick's transaction begun with the dispatch turn taken, in one round trip: the turn
/// is a transaction-level advisory lock on (`0x6b6c6e64` "klnd", 0), any fixed key
/// (advisory locks are per database).
const PICK_BEGIN: &str = "BEGIN; SELECT pg_advisory_xact_lock(1802268260, 0)";

/// One plan's walk in [`DISPATCHABLE_POSTGRES`]: its teams that can take a job, in
/// share-tag order (`team_dispatch_ready_idx`), each probed for a ready job, at most `$2`.
macro_rules! plan_walk {
    ($plan:literal, $stride:literal) => {
        concat!(
            "(SELECT d.team_id, d.running_limit - d.running AS free, d.last_dispatched_at, d.share_tag, ",
            $stride,
            "::bigint AS stride FROM team_dispatch d CROSS JOIN LATERAL ( \
                SELECT 1 FROM jobs j WHERE j.team_id = d.team_id AND j.status = 'queued' AND j.not_before <= $1 LIMIT 1 \
             ) ready_job WHERE d.plan = '",
            $plan,
            "' AND d.queued > 0 AND d.running < d.running_limit \
             ORDER BY d.share_tag, d.last_dispatched_at NULLS FIRST, d.team_id LIMIT $2)"
        )
    };
}

/// The dispatch walk on PostgreSQL (see [`SqlJobIndex::dispatchable`] and `domain::share`):
/// `$1` now, `$2` jobs wanted, `$3`–`$6` the strides of basic, pro, enterprise and free
/// (free teams have no slots; only rows written by hand with a limit reach that walk).
/// Returns (job, team, share tag). `$ready_if` is a condition on the whole walk.
macro_rules! dispatchable_postgres {
    ($ready_if:expr) => {
        concat!(
            "WITH front AS (SELECT COALESCE(MAX(share_tag), 0) AS tag FROM team_dispatch), walked AS (",
            plan_walk!("basic", "$3"),
            " UNION ALL ",
            plan_walk!("pro", "$4"),
            " UNION ALL ",
            plan_walk!("enterprise", "$5"),
            " UNION ALL ",
            plan_walk!("free", "$6"),
            "), \
             ready AS ( \
                SELECT w.*, GREATEST(w.share_tag, f.tag - w.stride) AS start FROM walked w CROSS JOIN front f WHERE ",
            $ready_if,
            " ORDER BY GREATEST(w.share_tag, f.tag - w.stride) + w.stride, w.share_tag, w.last_dispatched_at NULLS FIRST, w.team_id LIMIT $2 \
             ) \
             SELECT c.job_id, r.team_id, r.start + c.n * r.stride AS tag FROM ready r CROSS JOIN LATERAL ( \
                SELECT q.job_id, q.queued_at, ROW_NUMBER() OVER (ORDER BY q.queued_at, q.job_id) AS n FROM ( \
                    SELECT j.job_id, j.queued_at FROM jobs j \
                    WHERE j.team_id = r.team_id AND j.status = 'queued' AND j.not_before <= $1 \
                    ORDER BY j.queued_at, j.job_id LIMIT LEAST(r.free, $2)) q \
             ) c \
             ORDER BY tag, r.share_tag, r.last_dispatched_at NULLS FIRST, r.team_id, c.queued_at LIMIT $2"
        )
    };
}

/// What is dispatchable now, whether or not dispatch is paused.
const DISPATCHABLE_POSTGRES: &str = dispatchable_postgres!("true");

/// Whether an operator paused dispatch for everyone (`dispatch_control`, the Dispatch
/// stream's read model): one row, or none before the first pause.
macro_rules! paused_for_all {
    () => {
        "SELECT paused FROM dispatch_control WHERE id = 'global'"
    };
}

/// A pick's walk: nothing while an operator has paused dispatch for everyone
/// ([`PAUSED_FOR_ALL`]), in the same statement (an uncorrelated condition, checked once
/// before any team is walked).
const PICKABLE_POSTGRES: &str = dispatchable_postgres!(concat!("NOT COALESCE((", paused_for_all!(), "), false)"));

/// The same rule on SQLite, ranking every queued job (one process's small store).
const DISPATCHABLE_SQLITE: &str = "SELECT c.job_id, c.team_id, MAX(c.share_tag, f.tag - c.stride) + c.n * c.stride AS tag FROM ( \
        SELECT j.job_id, j.team_id, j.queued_at, d.last_dispatched_at, d.share_tag, d.running_limit - d.running AS free, \
               CASE d.plan WHEN 'basic' THEN $3 WHEN 'pro' THEN $4 WHEN 'enterprise' THEN $5 ELSE $6 END AS stride, \
               ROW_NUMBER() OVER (PARTITION BY j.team_id ORDER BY j.queued_at, j.job_id) AS n \
        FROM jobs j JOIN team_dispatch d ON d.team_id = j.team_id \
        WHERE j.status = 'queued' AND j.not_before <= $1 AND d.running < d.running_limit \
     ) c, (SELECT COALESCE(MAX(share_tag), 0) AS tag FROM team_dispatch) f \
     WHERE c.n <= c.free \
     ORDER BY tag, c.share_tag, (c.last_dispatched_at IS NOT NULL), c.last_dispatched_at, c.team_id, c.queued_at \
     LIMIT $2";

/// A PostgreSQL pick's hold: the transaction that holds the dispatch turn (a
/// transaction-level advisory lock). It writes nothing and has no transaction id, so it
/// holds back no log reader. Dropped unreleased, sqlx rolls it back when the
/// connection returns to the pool.
struct PgHold(sqlx::Transaction<'static, sqlx::Postgres>);

#[async_trait]
impl PickHold for PgHold {
    async fn release(self: Box<Self>) {
        if let Err(error) = self.0.commit().await {
            tracing::warn!(%error, "releasing the dispatch turn failed");
        }
    }
}

/// SQLite's hold: one process's pickers take turns (the database serializes writers
/// anyway).
struct LocalHold(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

#[async_trait]
impl PickHold for LocalHold {
    async fn release(self: Box<Self>) {}
}


fn picked(rows: Vec<(String, String, i64)>) -> Vec<PickedJob> {
    rows.into_iter()
        .filter_map(|(job, team, share_tag)| Some(PickedJob { job_id: job.parse().ok()?, team_id: team.parse().ok()?, share_tag }))
        .collect()
}

fn parse_pairs(rows: Vec<(String, String)>) -> Vec<(JobId, TeamId)> {
    rows.into_iter().filter_map(|(job, team)| Some((job.parse().ok()?, team.parse().ok()?))).collect()
}

type ActiveRow = (String, String, Option<String>, Option<String>);

fn parse_active(rows: Vec<ActiveRow>) -> Vec<ActiveJob> {
    rows.into_iter()
        .filter_map(|(job, team, worker, provider_request_id)| {
            Some(ActiveJob { job_id: job.parse().ok()?, team_id: team.parse().ok()?, worker, provider_request_id })
        })
        .collect()
}

/// See [`paused_for_all!`].
const PAUSED_FOR_ALL: &str = paused_for_all!();

impl SqlJobIndex {
    async fn paused_for_all(&self) -> Result<bool, EventStoreError> {
        let row = db_fetch_optional!(&self.db, (bool,), PAUSED_FOR_ALL).map_err(store_error)?;
        Ok(row.is_some_and(|(paused,)| paused))
    }
}

#[async_trait]
impl JobIndex for SqlJobIndex {
    async fn pick(&self, now: DateTime<Utc>, limit: i64) -> Result<Picked, EventStoreError> {
        let Database::Postgres(pool) = &self.db else {
            let hold = LocalHold(self.local_turn.clone().lock_owned().await);
            let jobs = if self.paused_for_all().await? { Vec::new() } else { self.dispatchable(now, limit).await? };
            return Ok(Picked { jobs, hold: Box::new(hold) });
        };
        // One picker at a time per database: the turn is a transaction-level advisory
        // lock, held until the claim has committed. The walk then reads, in a snapshot
        // taken after the turn was granted, every claim committed before it, so each
        // pick ranks all ready teams together (every team's oldest job before anyone's
        // second). Pickers that held disjoint teams in parallel served the teams each
        // held ahead of the others' (measured: a team 22–58 jobs behind in
        // `kiln-bench dispatch`); with claims of a hundred jobs, the turn is short beside
        // the work it hands out.
        // Two round trips: the turn taken with the transaction's begin, then the walk
        // (which hands out nothing while an operator has paused dispatch for everyone).
        let mut tx = pool.begin_with(PICK_BEGIN).await.map_err(store_error)?;
        let jobs = self.walk_postgres(PICKABLE_POSTGRES, &mut tx, now, limit).await.map_err(store_error)?;
        Ok(Picked { jobs, hold: Box::new(PgHold(tx)) })
    }

    async fn dispatchable(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<PickedJob>, EventStoreError> {
        // Each team's next jobs are tagged with virtual times by its plan's weight
        // (`domain::share`); the lowest tags go first, ties to the team served least
        // recently, each team's own jobs in their order, no more than its free slots.
        let walked = match &self.db {
            // Without ranking every queued job on each turn: the first `limit` tags all
            // come from the `limit` teams with the lowest first tags that have a job ready
            // (a team's later tags only grow), and within a plan a team's first tag grows
            // with its share tag. So: per plan, walk the teams that can take a job in
            // share-tag order (partial index `team_dispatch_ready_idx`), probe each for a
            // ready job, stop after `limit`; rank those few teams across plans, and tag
            // only their oldest few jobs. A turn costs O(limit) rows per plan, not
            // O(queued jobs) or O(teams). The probe is a `LATERAL … LIMIT 1`, not `EXISTS`:
            // the planner may turn an `EXISTS` into a semi-join that first collects every
            // queued job (it did, in the lifecycle benchmark, before the tables had
            // statistics: 12–24 ms per turn).
            Database::Postgres(pool) => match pool.acquire().await {
                Ok(mut conn) => self.walk_postgres(DISPATCHABLE_POSTGRES, &mut conn, now, limit).await,
                Err(error) => Err(error),
            },
            Database::Sqlite { .. } => {
                let [basic, pro, enterprise, other] = self.strides;
                db_fetch_all!(&self.db, (String, String, i64), DISPATCHABLE_SQLITE, now, limit, basic, pro, enterprise, other).map(picked)
            }
        };
        walked.map_err(store_error)
    }

    async fn queued_of_team(&self, team: TeamId) -> Result<Vec<JobId>, EventStoreError> {
        let rows = db_fetch_all!(
            &self.db,
            (String,),
            "SELECT job_id FROM jobs WHERE team_id = $1 AND status = 'queued' ORDER BY queued_at",
            team.to_string()
        )
        .map_err(store_error)?;
        Ok(rows.into_iter().filter_map(|(job,)| job.parse().ok()).collect())
    }

    async fn queued_count(&self, team: TeamId) -> Result<i64, EventStoreError> {
        let row = db_fetch_optional!(&self.db, (i64,), "SELECT CAST(queued AS BIGINT) FROM team_dispatch WHERE team_id = $1", team.to_string())
            .map_err(store_error)?;
        Ok(row.map(|r| r.0).unwrap_or(0))
    }

    async fn queued_without_plan(&self, limit: i64) -> Result<Vec<(JobId, TeamId)>, EventStoreError> {
        let rows = db_fetch_all!(
            &self.db,
            (String, String),
            "SELECT j.job_id, j.team_id FROM jobs j JOIN team_dispatch d ON d.team_id = j.team_id \
             WHERE j.status = 'queued' AND d.running_limit = 0 AND NOT d.paused ORDER BY j.queued_at LIMIT $1",
            limit
        )
        .map_err(store_error)?;
        Ok(parse_pairs(rows))
    }

    async fn orphaned(&self, lost: Lost, limit: i64) -> Result<Vec<ActiveJob>, EventStoreError> {
        // A lease counts for the attempt it was taken for only: a job retried and claimed
        // again is leased afresh by its new claim.
        let rows = db_fetch_all!(
            &self.db,
            ActiveRow,
            "SELECT j.job_id, j.team_id, j.worker, j.provider_request_id FROM jobs j \
             LEFT JOIN workers w ON w.worker_id = j.worker \
             LEFT JOIN job_leases l ON l.job_id = j.job_id AND l.attempt = j.attempt \
             WHERE j.status IN ('dispatched', 'running') AND ( \
                w.worker_id IS NULL OR w.heartbeat_at < $1 \
                OR (j.provider_request_id IS NULL AND ( \
                    (l.job_id IS NULL AND j.updated_at < $2) OR l.expires_at < $3))) \
             ORDER BY j.updated_at LIMIT $4",
            lost.heartbeat_before,
            lost.unleased_before,
            lost.now,
            limit
        )
        .map_err(store_error)?;
        Ok(parse_active(rows))
    }

    async fn renew_leases(&self, worker: &str, held: &[(JobId, u32)], until: DateTime<Utc>) -> Result<(), EventStoreError> {
        let jobs: Vec<String> = held.iter().map(|(job, _)| job.to_string()).collect();
        let attempts: Vec<i64> = held.iter().map(|(_, attempt)| i64::from(*attempt)).collect();
        // The lists travel as JSON arrays: one statement text for any number of jobs, on
        // both databases.
        let (jobs, attempts) = (serde_json::to_string(&jobs).unwrap_or_default(), serde_json::to_string(&attempts).unwrap_or_default());
        let (upsert, release) = match self.db {
            Database::Postgres(_) => (
                "INSERT INTO job_leases (job_id, worker_id, attempt, expires_at) \
                 SELECT j.value, $1, a.value::integer, $4 FROM jsonb_array_elements_text($2::jsonb) WITH ORDINALITY j(value, n) \
                 JOIN jsonb_array_elements_text($3::jsonb) WITH ORDINALITY a(value, n) USING (n) \
                 ON CONFLICT (job_id) DO UPDATE SET worker_id = excluded.worker_id, attempt = excluded.attempt, expires_at = excluded.expires_at",
                "DELETE FROM job_leases WHERE (worker_id = $1 AND job_id NOT IN (SELECT jsonb_array_elements_text($2::jsonb))) OR expires_at < $3",
            ),
            Database::Sqlite { .. } => (
                "INSERT INTO job_leases (job_id, worker_id, attempt, expires_at) \
                 SELECT j.value, $1, a.value, $4 FROM json_each($2) j JOIN json_each($3) a ON a.key = j.key WHERE true \
                 ON CONFLICT (job_id) DO UPDATE SET worker_id = excluded.worker_id, attempt = excluded.attempt, expires_at = excluded.expires_at",
                "DELETE FROM job_leases WHERE (worker_id = $1 AND job_id NOT IN (SELECT value FROM json_each($2))) OR expires_at < $3",
            ),
        };
        if !held.is_empty() {
            db_execute!(&self.db, upsert, worker, &jobs, &attempts, until).map_err(store_error)?;
        }
        // Leases of gone workers go too, long after they lapsed (a lapsed lease and none
        // at all mean the same to `orphaned`).
        let long_lapsed = until - chrono::Duration::hours(1);
        db_execute!(&self.db, release, worker, &jobs, long_lapsed).map_err(store_error)?;
        Ok(())
    }

    async fn without_news(&self, updated_before: DateTime<Utc>, limit: i64) -> Result<Vec<ActiveJob>, EventStoreError> {
        let rows = db_fetch_all!(
            &self.db,
            ActiveRow,
            "SELECT job_id, team_id, worker, provider_request_id FROM jobs \
             WHERE status IN ('dispatched', 'running') AND provider_request_id IS NOT NULL AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2",
            updated_before,
            limit
        )
        .map_err(store_error)?;
        Ok(parse_active(rows))
    }

    async fn heartbeat(&self, worker: &str, now: DateTime<Utc>) -> Result<(), EventStoreError> {
        db_execute!(
            &self.db,
            "INSERT INTO workers (worker_id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            worker,
            now
        )
        .map_err(store_error)?;
        Ok(())
    }

    async fn report(&self, worker: &str, now: DateTime<Utc>, report: &WorkerReport) -> Result<WorkerOrders, EventStoreError> {
        let (last_error, last_error_at) = report.last_error.clone().map_or((None, None), |(e, at)| (Some(e), Some(at)));
        db_execute!(
            &self.db,
            "INSERT INTO workers (worker_id, started_at, heartbeat_at, jobs_done, last_error, last_error_at) VALUES ($1, $2, $2, $3, $4, $5) \
             ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, jobs_done = excluded.jobs_done, \
             last_error = COALESCE(excluded.last_error, workers.last_error), last_error_at = COALESCE(excluded.last_error_at, workers.last_error_at)",
            worker,
            now,
            i64::try_from(report.jobs_done).unwrap_or(i64::MAX),
            last_error,
            last_error_at
        )
        .map_err(store_error)?;
        let drained = db_fetch_optional!(&self.db, (bool,), "SELECT draining FROM worker_drains WHERE worker_id = $1", worker).map_err(store_error)?;
        Ok(WorkerOrders { draining: drained.is_some_and(|(draining,)| draining) })
    }

    async fn worker_seen(&self, worker: &str) -> Result<bool, EventStoreError> {
        let row = db_fetch_optional!(&self.db, (String,), "SELECT worker_id FROM workers WHERE worker_id = $1", worker).map_err(store_error)?;
        Ok(row.is_some())
    }

    async fn reference_characteristics(&self, reference_model_id: &str) -> Result<Option<serde_json::Value>, EventStoreError> {
        let row = db_fetch_optional!(
            &self.db,
            (String, String),
            "SELECT category, characteristics FROM reference_models WHERE id = $1",
            reference_model_id
        )
        .map_err(store_error)?;
        // The category beside the characteristics: it decides how a trainer learns.
        Ok(row.and_then(|(category, text)| {
            let mut characteristics: serde_json::Value = serde_json::from_str(&text).ok()?;
            characteristics.as_object_mut()?.insert("category".into(), category.into());
            Some(characteristics)
        }))
    }

    async fn reference_complexity(&self, reference_model_id: &str) -> Result<Option<i64>, EventStoreError> {
        let row = db_fetch_optional!(
            &self.db,
            (i64,),
            "SELECT complexity_factor_milli FROM reference_models WHERE id = $1 AND active = $2",
            reference_model_id,
            true
        )
        .map_err(store_error)?;
        Ok(row.map(|(milli,)| milli))
    }

    async fn job_of_request(&self, provider_request_id: &str) -> Result<Option<JobId>, EventStoreError> {
        let row = db_fetch_optional!(&self.db, (String,), "SELECT job_id FROM jobs WHERE provider_request_id = $1", provider_request_id)
            .map_err(store_error)?;
        Ok(row.and_then(|(job,)| job.parse().ok()))
    }
}
