//! Inline read models of the job engine: `jobs` (which is also the dispatch queue),
//! `team_dispatch` (running / queued per team and the plan's limit), `custom_models`,
//! `model_versions` and `images`.
//!
//! `team_dispatch` is where plan limits hold across worker processes: a `JobDispatched`
//! takes a slot with `running = running + 1 … WHERE running < running_limit`; when no row
//! matches, this projection fails and the claim's append rolls back. The row lock makes
//! concurrent claims for one team take turns.

use application::event_store::StoredEvent;
use application::jobs::LIMIT_REACHED;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::jobs::{GenerationJob, JobEvent, JobStatus};
use domain::models::{CustomModel, ModelEvent};
use domain::{TeamCredits, TeamCreditsEvent};
use infrastructure::event_store::{InlineProjection, ProjectionError, Tx};
use infrastructure::{tx_execute, tx_fetch_optional};

use crate::decode;

pub struct Jobs;

pub const NAME: &str = "jobs";
pub const TABLES: &[&str] = &["images", "job_image_expiries", "model_versions", "custom_models", "team_dispatch", "jobs"];

#[async_trait]
impl InlineProjection for Jobs {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let mut job_events: Vec<(&str, JobEvent)> = Vec::new();
        for stored in events.iter().filter(|stored| stored.aggregate_type == GenerationJob::TYPE) {
            job_events.push((stored.aggregate_id.as_str(), decode::<GenerationJob>(stored)?));
        }
        let by_ref: Vec<(&str, &JobEvent)> = job_events.iter().map(|(id, event)| (*id, event)).collect();
        if batch::fits(&by_ref) {
            // Job events touch only job rows and team counters, so the other events
            // (models, plans) keep their order among themselves and go first.
            for stored in events.iter().filter(|stored| stored.aggregate_type != GenerationJob::TYPE) {
                other_event(tx, stored).await?;
            }
            return batch::write(tx, &by_ref).await;
        }
        // Runs of `ImagesExpired` (the retention sweeper appends thousands at once) are
        // written set-based by `images::expire`, before the next job event: order holds.
        let mut expired: Vec<crate::images::Expired> = Vec::new();
        let mut job_events = job_events.into_iter();
        for stored in events {
            if stored.aggregate_type != GenerationJob::TYPE {
                other_event(tx, stored).await?;
                continue;
            }
            let (id, event) = job_events.next().ok_or("job events out of step")?;
            match event {
                JobEvent::ImagesExpired { occurred_at, .. } => expired.push((id.to_string(), occurred_at)),
                event => {
                    crate::images::expire(tx, &std::mem::take(&mut expired)).await?;
                    job_event(tx, id, event).await?
                }
            }
        }
        crate::images::expire(tx, &expired).await
    }
}

#[path = "jobs_batch.rs"]
mod batch;

async fn other_event(tx: &mut Tx<'_>, stored: &StoredEvent) -> Result<(), ProjectionError> {
    let id = stored.aggregate_id.as_str();
    match stored.aggregate_type.as_str() {
        CustomModel::TYPE => model_event(tx, id, decode::<CustomModel>(stored)?).await?,
        TeamCredits::TYPE => plan_event(tx, id, decode::<TeamCredits>(stored)?).await?,
        _ => {}
    }
    Ok(())
}

/// The team's plan and its limit (the plan also names its dispatch weight).
async fn set_plan(tx: &mut Tx<'_>, team: &str, plan: domain::Plan) -> Result<(), sqlx::Error> {
    tx_execute!(
        tx,
        "INSERT INTO team_dispatch (team_id, running_limit, plan) VALUES ($1, $2, $3) \
         ON CONFLICT (team_id) DO UPDATE SET running_limit = CASE WHEN team_dispatch.paused THEN 0 ELSE excluded.running_limit END, \
         plan = excluded.plan",
        team,
        i64::from(plan.concurrency_limit()),
        plan.as_str()
    )?;
    Ok(())
}

async fn plan_event(tx: &mut Tx<'_>, team: &str, event: TeamCreditsEvent) -> Result<(), ProjectionError> {
    match event {
        TeamCreditsEvent::TeamOpened { plan, .. } | TeamCreditsEvent::PlanChanged { to: plan, .. } => set_plan(tx, team, plan).await?,
        TeamCreditsEvent::SubscriptionExpired { .. } => set_plan(tx, team, domain::Plan::Free).await?,
        // A paused team takes no slot: its limit is 0 until resumed (see 0050_dispatch_pause).
        TeamCreditsEvent::DispatchPaused { .. } => {
            tx_execute!(
                &mut *tx,
                "INSERT INTO team_dispatch (team_id, paused, running_limit) VALUES ($1, $2, 0) \
                 ON CONFLICT (team_id) DO UPDATE SET paused = $2, running_limit = 0",
                team,
                true
            )?;
        }
        TeamCreditsEvent::DispatchResumed { .. } => {
            let plan = infrastructure::tx_fetch_optional!(&mut *tx, (String,), "SELECT plan FROM team_dispatch WHERE team_id = $1", team)?;
            let limit = plan.and_then(|(plan,)| plan.parse::<domain::Plan>().ok()).map_or(0, |plan| i64::from(plan.concurrency_limit()));
            tx_execute!(&mut *tx, "UPDATE team_dispatch SET paused = $2, running_limit = $3 WHERE team_id = $1", team, false, limit)?;
        }
        _ => {}
    }
    Ok(())
}

async fn job_event(tx: &mut Tx<'_>, job: &str, event: JobEvent) -> Result<(), ProjectionError> {
    match event {
        JobEvent::JobQueued { team_id, input, cost, price_version, occurred_at, .. } => {
            let team = team_id.to_string();
            tx_execute!(
                &mut *tx,
                "INSERT INTO jobs (job_id, team_id, kind, status, model_id, cost, price_version, input, queued_at, not_before, updated_at) \
                 VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $8, $8)",
                job,
                &team,
                input.operation().as_str(),
                input.model_id().to_string(),
                cost.get(),
                price_version,
                serde_json::to_string(&input)?,
                occurred_at
            )?;
            tx_execute!(
                &mut *tx,
                "INSERT INTO team_dispatch (team_id, queued) VALUES ($1, 1) \
                 ON CONFLICT (team_id) DO UPDATE SET queued = team_dispatch.queued + 1",
                &team
            )?;
        }
        JobEvent::JobDispatched { provider, worker, attempt, share_tag, occurred_at } => {
            // The job's row first, the team's shared row last (see `jobs_batch::write`).
            let team = team_of(tx, job).await?.0;
            tx_execute!(
                &mut *tx,
                "UPDATE jobs SET status = 'dispatched', attempt = $2, provider = $3, worker = $4, provider_request_id = NULL, \
                 dispatched_at = $5, updated_at = $5 WHERE job_id = $1",
                job,
                i64::from(attempt),
                provider,
                worker,
                occurred_at
            )?;
            let taken = tx_execute!(
                &mut *tx,
                "UPDATE team_dispatch SET running = running + 1, queued = queued - 1, \
                 last_dispatched_at = CASE WHEN last_dispatched_at IS NULL OR $2 > last_dispatched_at THEN $2 ELSE last_dispatched_at END, \
                 share_tag = CASE WHEN $3 > share_tag THEN $3 ELSE share_tag END \
                 WHERE team_id = $1 AND running < running_limit",
                &team,
                occurred_at,
                share_tag
            )?;
            if taken == 0 {
                return Err(format!("{LIMIT_REACHED} (team {team})").into());
            }
        }
        JobEvent::JobProgressed { provider_request_id, running, occurred_at, .. } => {
            tx_execute!(
                &mut *tx,
                "UPDATE jobs SET provider_request_id = COALESCE($2, provider_request_id), \
                 status = CASE WHEN $3 THEN 'running' ELSE status END, updated_at = $4 WHERE job_id = $1",
                job,
                provider_request_id,
                running,
                occurred_at
            )?;
        }
        JobEvent::JobCompleted { outputs, occurred_at } => {
            let (team, previous, model, kind) = team_of(tx, job).await?;
            let outputs_json = serde_json::to_string(&outputs)?;
            finish(tx, job, "completed", Some(outputs_json), None, occurred_at).await?;
            if kind == domain::Operation::ImageGeneration.as_str() {
                for (position, output) in outputs.iter().enumerate() {
                    tx_execute!(
                        &mut *tx,
                        "INSERT INTO images (key, team_id, job_id, model_id, position, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &output.key,
                        &team,
                        job,
                        &model,
                        position as i64,
                        output.bytes as i64,
                        occurred_at
                    )?;
                }
            }
            release(tx, &team, &previous).await?;
        }
        JobEvent::JobFailed { reason, occurred_at } => end(tx, job, "failed", reason, occurred_at).await?,
        JobEvent::JobCancelled { reason, occurred_at } => end(tx, job, "cancelled", reason, occurred_at).await?,
        JobEvent::JobRetryScheduled { reason, retry_at, occurred_at, .. } => {
            let (team, previous, _, _) = team_of(tx, job).await?;
            release(tx, &team, &previous).await?;
            tx_execute!(&mut *tx, "UPDATE team_dispatch SET queued = queued + 1 WHERE team_id = $1", &team)?;
            tx_execute!(
                &mut *tx,
                "UPDATE jobs SET status = 'queued', not_before = $2, error = $3, worker = NULL, updated_at = $4 WHERE job_id = $1",
                job,
                retry_at,
                reason,
                occurred_at
            )?;
        }
        JobEvent::ImagesExpired { occurred_at, .. } => crate::images::expire(tx, &[(job.to_string(), occurred_at)]).await?,
        // The step's provider request is over: webhooks and status checks no longer
        // lead to this job through it.
        JobEvent::JobStepCompleted { occurred_at, .. } => {
            tx_execute!(&mut *tx, "UPDATE jobs SET provider_request_id = NULL, updated_at = $2 WHERE job_id = $1", job, occurred_at)?;
        }
    }
    Ok(())
}

/// The job's team, status before this event, model and kind.
async fn team_of(tx: &mut Tx<'_>, job: &str) -> Result<(String, String, String, String), ProjectionError> {
    let row = tx_fetch_optional!(
        &mut *tx,
        (String, String, String, String),
        "SELECT team_id, status, model_id, kind FROM jobs WHERE job_id = $1",
        job
    )?;
    row.ok_or_else(|| format!("job {job} missing from the jobs read model").into())
}

/// Frees what the job held: its slot if it was active, its queue place if queued.
async fn release(tx: &mut Tx<'_>, team: &str, previous: &str) -> Result<(), sqlx::Error> {
    let sql = match JobStatus::parse(previous) {
        Some(status) if status.is_active() => "UPDATE team_dispatch SET running = running - 1 WHERE team_id = $1",
        Some(JobStatus::Queued) => "UPDATE team_dispatch SET queued = queued - 1 WHERE team_id = $1",
        _ => return Ok(()),
    };
    tx_execute!(tx, sql, team)?;
    Ok(())
}

async fn end(tx: &mut Tx<'_>, job: &str, status: &str, reason: String, at: DateTime<Utc>) -> Result<(), ProjectionError> {
    let (team, previous, _, _) = team_of(tx, job).await?;
    finish(tx, job, status, None, Some(reason), at).await?;
    release(tx, &team, &previous).await?;
    Ok(())
}

async fn finish(
    tx: &mut Tx<'_>,
    job: &str,
    status: &str,
    outputs: Option<String>,
    error: Option<String>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    tx_execute!(
        tx,
        "UPDATE jobs SET status = $2, outputs = COALESCE($3, outputs), error = COALESCE($4, error), finished_at = $5, updated_at = $5 \
         WHERE job_id = $1",
        job,
        status,
        outputs,
        error,
        at
    )?;
    Ok(())
}

async fn model_event(tx: &mut Tx<'_>, model: &str, event: ModelEvent) -> Result<(), ProjectionError> {
    match event {
        ModelEvent::ModelCreationRequested { team_id, name, description, reference_model_id, complexity_milli, job_id, occurred_at, .. } => {
            tx_execute!(
                tx,
                "INSERT INTO custom_models (model_id, team_id, name, description, reference_model_id, complexity_milli, status, \
                 pending_job_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'training', $7, $8, $8)",
                model,
                team_id.to_string(),
                name,
                description,
                reference_model_id,
                complexity_milli,
                job_id.to_string(),
                occurred_at
            )?;
        }
        ModelEvent::ModelTrained { job_id, version, artifact_key, occurred_at }
        | ModelEvent::ModelRefined { job_id, version, artifact_key, occurred_at } => {
            // The refinement prompt waits in `pending_prompt` since the request.
            tx_execute!(
                &mut *tx,
                "INSERT INTO model_versions (model_id, version, artifact_key, job_id, created_at, prompt) \
                 SELECT $1, $2, $3, $4, $5, pending_prompt FROM custom_models WHERE model_id = $1",
                model,
                i64::from(version),
                artifact_key,
                job_id.to_string(),
                occurred_at
            )?;
            tx_execute!(
                &mut *tx,
                "UPDATE custom_models SET status = 'ready', current_version = $2, pending_job_id = NULL, pending_prompt = NULL, \
                 updated_at = $3 WHERE model_id = $1",
                model,
                i64::from(version),
                occurred_at
            )?;
        }
        ModelEvent::ModelCreationFailed { occurred_at, .. } => {
            tx_execute!(tx, "UPDATE custom_models SET status = 'failed', pending_job_id = NULL, updated_at = $2 WHERE model_id = $1", model, occurred_at)?;
        }
        ModelEvent::ModelRefinementRequested { job_id, prompt, occurred_at, .. } => {
            tx_execute!(
                tx,
                "UPDATE custom_models SET pending_job_id = $2, pending_prompt = $3, updated_at = $4 WHERE model_id = $1",
                model,
                job_id.to_string(),
                prompt,
                occurred_at
            )?;
        }
        ModelEvent::ModelRefinementFailed { occurred_at, .. } => {
            tx_execute!(tx, "UPDATE custom_models SET pending_job_id = NULL, pending_prompt = NULL, updated_at = $2 WHERE model_id = $1", model, occurred_at)?;
        }
        ModelEvent::ModelDetailsUpdated { name, description, occurred_at } => {
            tx_execute!(tx, "UPDATE custom_models SET name = $2, description = $3, updated_at = $4 WHERE model_id = $1", model, name, description, occurred_at)?;
        }
        ModelEvent::ModelArchived { occurred_at } => {
            tx_execute!(tx, "UPDATE custom_models SET archived = $2, updated_at = $3 WHERE model_id = $1", model, true, occurred_at)?;
        }
    }
    Ok(())
}
