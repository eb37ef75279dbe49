//! Set-based writes of the `jobs` projection for appends that carry many jobs — a
//! worker's batch of claims, or many teams' submissions and endings joined into one
//! transaction: a fixed handful of statements per append instead of several per event.
//!
//! Used only when the per-event order cannot matter: every job appears once, and claims
//! (the only events with a check, the team's free slots) are not mixed with other job
//! events. A claim batch takes each team's slots at once (`running + n <= limit`), so it
//! is refused exactly when applying its claims one by one would be.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use domain::jobs::{JobEvent, JobStatus};
use infrastructure::event_store::{ProjectionError, Tx};
use infrastructure::{tx_execute_rows, tx_fetch_rows};

use application::jobs::LIMIT_REACHED;

/// Whether `events` (the job events of one append, by stream id) can be written
/// set-based.
pub(super) fn fits(events: &[(&str, &JobEvent)]) -> bool {
    if events.len() < 2 {
        return false;
    }
    let mut seen = HashSet::with_capacity(events.len());
    if !events.iter().all(|(id, _)| seen.insert(*id)) {
        return false;
    }
    let claims = events.iter().filter(|(_, e)| matches!(e, JobEvent::JobDispatched { .. })).count();
    let simple = events.iter().all(|(_, e)| {
        matches!(
            e,
            JobEvent::JobQueued { .. }
                | JobEvent::JobDispatched { .. }
                | JobEvent::JobCompleted { .. }
                | JobEvent::JobFailed { .. }
                | JobEvent::JobCancelled { .. }
        )
    });
    simple && (claims == 0 || claims == events.len())
}

/// Writes `events` (which [`fits`] accepted): the jobs' own rows first, then the teams'
/// `team_dispatch` rows, locked in one order and held only from there to the commit.
/// Every claim and every ending of the same teams writes those rows (a claim batch: a
/// hundred teams' rows; a joint commit of endings: dozens), so the less each transaction
/// does while holding them, the less the others wait.
pub(super) async fn write(tx: &mut Tx<'_>, events: &[(&str, &JobEvent)]) -> Result<(), ProjectionError> {
    let claims = claims(events);
    if !claims.is_empty() {
        // A claim batch (nothing but claims, [`fits`]): the claimed rows name their teams,
        // so nothing is read first (a claim runs inside the dispatch turn).
        let teams = claim_jobs(tx, &claims).await?;
        lock_teams(tx, teams.values().map(String::as_str).collect()).await?;
        return claim_slots(tx, &claims, &teams).await;
    }
    let known = rows_of(tx, events.iter().filter(|(_, e)| !matches!(e, JobEvent::JobQueued { .. })).map(|(job, _)| *job)).await?;
    queue_jobs(tx, events).await?;
    let ended = ended(events)?;
    end_jobs(tx, &ended, &known).await?;
    let queued = queued_per_team(events);
    let teams: Vec<&str> = known.values().map(|row| row.team.as_str()).chain(queued.keys().map(String::as_str)).collect();
    lock_teams(tx, teams).await?;
    queue_slots(tx, queued).await?;
    end_slots(tx, &ended, &known).await?;
    Ok(())
}

/// Locks the teams' `team_dispatch` rows in one fixed order (PostgreSQL). Appends that
/// carry many teams (claim batches, joint commits of many teams' submissions and
/// endings, from several processes) would otherwise lock shared rows in whatever order
/// their plans visit them, and deadlock each other. SQLite has one writer at a time.
async fn lock_teams(tx: &mut Tx<'_>, mut teams: Vec<&str>) -> Result<(), ProjectionError> {
    let Tx::Postgres(conn) = tx else { return Ok(()) };
    teams.sort_unstable();
    teams.dedup();
    if teams.len() < 2 {
        return Ok(());
    }
    sqlx::query("SELECT team_id FROM team_dispatch WHERE team_id = ANY($1) ORDER BY team_id COLLATE \"C\" FOR UPDATE")
        .bind(&teams)
        .fetch_all(&mut **conn)
        .await?;
    Ok(())
}

async fn queue_jobs(tx: &mut Tx<'_>, events: &[(&str, &JobEvent)]) -> Result<(), ProjectionError> {
    let mut rows = Vec::new();
    for (job, event) in events {
        if let JobEvent::JobQueued { team_id, input, cost, price_version, occurred_at, .. } = event {
            let kind = input.operation().as_str();
            rows.push((*job, team_id.to_string(), kind, input.model_id().to_string(), cost.get(), *price_version, serde_json::to_string(input)?, *occurred_at));
        }
    }
    tx_execute_rows!(
        tx,
        "INSERT INTO jobs (job_id, team_id, kind, status, model_id, cost, price_version, input, queued_at, not_before, updated_at)",
        "",
        rows,
        [
            "text" => |r| r.0,
            "text" => |r| r.1.as_str(),
            "text" => |r| r.2,
            "text" => |_r| "queued",
            "text" => |r| r.3.as_str(),
            "bigint" => |r| r.4,
            "bigint" => |r| r.5,
            "text" => |r| r.6.as_str(),
            "timestamptz" => |r| r.7,
            "timestamptz" => |r| r.7,
            "timestamptz" => |r| r.7,
        ]
    )?;
    Ok(())
}

/// How many jobs each team queues here, by team id.
fn queued_per_team(events: &[(&str, &JobEvent)]) -> BTreeMap<String, i64> {
    let mut per_team: BTreeMap<String, i64> = BTreeMap::new();
    for (_, event) in events {
        if let JobEvent::JobQueued { team_id, .. } = event {
            *per_team.entry(team_id.to_string()).or_default() += 1;
        }
    }
    per_team
}

/// Each team's queue grows by its jobs queued here.
async fn queue_slots(tx: &mut Tx<'_>, per_team: BTreeMap<String, i64>) -> Result<(), ProjectionError> {
    let per_team: Vec<(String, i64)> = per_team.into_iter().collect();
    tx_execute_rows!(
        tx,
        "INSERT INTO team_dispatch (team_id, queued)",
        "ON CONFLICT (team_id) DO UPDATE SET queued = team_dispatch.queued + excluded.queued",
        per_team,
        ["text" => |r| r.0.as_str(), "bigint" => |r| r.1]
    )?;
    Ok(())
}

/// A claim batch's jobs as `(job, attempt, provider, worker, time, share tag)`.
type Claim<'a> = (&'a str, i64, &'a str, &'a str, DateTime<Utc>, Option<i64>);

fn claims<'a>(events: &[(&'a str, &'a JobEvent)]) -> Vec<Claim<'a>> {
    events
        .iter()
        .filter_map(|(job, event)| match event {
            JobEvent::JobDispatched { provider, worker, attempt, share_tag, occurred_at } => {
                Some((*job, i64::from(*attempt), provider.as_str(), worker.as_str(), *occurred_at, *share_tag))
            }
            _ => None,
        })
        .collect()
}

/// Marks the claimed jobs dispatched; returns each one's team (by job id).
async fn claim_jobs(tx: &mut Tx<'_>, claims: &[Claim<'_>]) -> Result<HashMap<String, String>, ProjectionError> {
    let claimed = tx_fetch_rows!(
        tx,
        (String, String),
        "UPDATE jobs SET status = 'dispatched', attempt = v.column2, provider = v.column3, worker = v.column4, provider_request_id = NULL, \
         dispatched_at = v.column5, updated_at = v.column5 FROM (",
        ") AS v WHERE jobs.job_id = v.column1 RETURNING jobs.job_id, jobs.team_id",
        claims,
        ["text" => |c| c.0, "bigint" => |c| c.1, "text" => |c| c.2, "text" => |c| c.3, "timestamptz" => |c| c.4]
    )?;
    Ok(claimed.into_iter().collect())
}

/// Takes each team's slots for its claims here at once; a team without room for all of
/// them refuses the whole batch ([`LIMIT_REACHED`]).
async fn claim_slots(tx: &mut Tx<'_>, claims: &[Claim<'_>], teams: &HashMap<String, String>) -> Result<(), ProjectionError> {
    // Per team: claims, the latest claim's time, the highest share tag.
    let mut per_team: BTreeMap<String, (i64, DateTime<Utc>, Option<i64>)> = BTreeMap::new();
    for (job, _, _, _, at, tag) in claims {
        let team = known_row(teams, job)?;
        let entry = per_team.entry(team.clone()).or_insert((0, *at, *tag));
        entry.0 += 1;
        entry.1 = entry.1.max(*at);
        entry.2 = entry.2.max(*tag);
    }
    // Takes each team's slots at once; a team without room for all of its claims is not
    // updated, which the RETURNING list shows.
    let per_team: Vec<(String, (i64, DateTime<Utc>, Option<i64>))> = per_team.into_iter().collect();
    let taken: Vec<(String,)> = tx_fetch_rows!(
        tx,
        (String,),
        "UPDATE team_dispatch SET running = running + v.column2, queued = queued - v.column2, \
         last_dispatched_at = CASE WHEN team_dispatch.last_dispatched_at IS NULL OR v.column3 > team_dispatch.last_dispatched_at \
         THEN v.column3 ELSE team_dispatch.last_dispatched_at END, \
         share_tag = CASE WHEN v.column4 > team_dispatch.share_tag THEN v.column4 ELSE team_dispatch.share_tag END FROM (",
        ") AS v WHERE team_dispatch.team_id = v.column1 AND team_dispatch.running + v.column2 <= team_dispatch.running_limit \
         RETURNING team_dispatch.team_id",
        per_team,
        ["text" => |r| r.0.as_str(), "bigint" => |r| r.1 .0, "timestamptz" => |r| r.1 .1, "bigint" => |r| r.1 .2]
    )?;
    let taken: HashSet<String> = taken.into_iter().map(|(team,)| team).collect();
    if let Some((team, _)) = per_team.iter().find(|(team, _)| !taken.contains(team)) {
        return Err(format!("{LIMIT_REACHED} (team {team})").into());
    }
    Ok(())
}

struct Ended<'a> {
    job: &'a str,
    event: &'a JobEvent,
    status: &'static str,
    outputs: Option<String>,
    error: Option<String>,
    at: DateTime<Utc>,
}

fn ended<'a>(events: &[(&'a str, &'a JobEvent)]) -> Result<Vec<Ended<'a>>, ProjectionError> {
    let mut ended: Vec<Ended> = Vec::new();
    for (job, event) in events {
        let (status, outputs, error, at) = match event {
            JobEvent::JobCompleted { outputs, occurred_at } => ("completed", Some(serde_json::to_string(outputs)?), None, *occurred_at),
            JobEvent::JobFailed { reason, occurred_at } => ("failed", None, Some(reason.clone()), *occurred_at),
            JobEvent::JobCancelled { reason, occurred_at } => ("cancelled", None, Some(reason.clone()), *occurred_at),
            _ => continue,
        };
        ended.push(Ended { job, event, status, outputs, error, at });
    }
    Ok(ended)
}

fn known_row<'a, Row>(known: &'a HashMap<String, Row>, job: &str) -> Result<&'a Row, ProjectionError> {
    known.get(job).ok_or_else(|| format!("job {job} missing from the jobs read model").into())
}

/// The ended jobs' rows and the images of the completed generations.
async fn end_jobs(tx: &mut Tx<'_>, ended: &[Ended<'_>], known: &HashMap<String, JobRow>) -> Result<(), ProjectionError> {
    let mut images = Vec::new();
    for end in ended {
        let row = known_row(known, end.job)?;
        if end.status == "completed" && row.kind == domain::Operation::ImageGeneration.as_str() {
            if let JobEvent::JobCompleted { outputs, .. } = end.event {
                for (position, output) in outputs.iter().enumerate() {
                    images.push((output.key.clone(), row.team.clone(), end.job, row.model.clone(), position as i64, output.bytes as i64, end.at));
                }
            }
        }
    }
    tx_execute_rows!(
        tx,
        "UPDATE jobs SET status = v.column2, outputs = COALESCE(v.column3, jobs.outputs), error = COALESCE(v.column4, jobs.error), \
         finished_at = v.column5, updated_at = v.column5 FROM (",
        ") AS v WHERE jobs.job_id = v.column1",
        ended,
        [
            "text" => |e| e.job,
            "text" => |e| e.status,
            "text" => |e| e.outputs.as_deref(),
            "text" => |e| e.error.as_deref(),
            "timestamptz" => |e| e.at,
        ]
    )?;
    tx_execute_rows!(
        tx,
        "INSERT INTO images (key, team_id, job_id, model_id, position, bytes, created_at)",
        "",
        images,
        [
            "text" => |i| i.0.as_str(),
            "text" => |i| i.1.as_str(),
            "text" => |i| i.2,
            "text" => |i| i.3.as_str(),
            "bigint" => |i| i.4,
            "bigint" => |i| i.5,
            "timestamptz" => |i| i.6,
        ]
    )?;
    Ok(())
}

/// What each team gets back for its ended jobs: slots of active ones, queue places of
/// queued ones.
async fn end_slots(tx: &mut Tx<'_>, ended: &[Ended<'_>], known: &HashMap<String, JobRow>) -> Result<(), ProjectionError> {
    let mut per_team: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for end in ended {
        let row = known_row(known, end.job)?;
        match JobStatus::parse(&row.status) {
            Some(status) if status.is_active() => per_team.entry(row.team.clone()).or_default().0 += 1,
            Some(JobStatus::Queued) => per_team.entry(row.team.clone()).or_default().1 += 1,
            _ => {}
        }
    }
    let per_team: Vec<(String, (i64, i64))> = per_team.into_iter().collect();
    tx_execute_rows!(
        tx,
        "UPDATE team_dispatch SET running = running - v.column2, queued = queued - v.column3 FROM (",
        ") AS v WHERE team_dispatch.team_id = v.column1",
        per_team,
        ["text" => |r| r.0.as_str(), "bigint" => |r| r.1 .0, "bigint" => |r| r.1 .1]
    )?;
    Ok(())
}

/// What the read model knows of a job before this append.
struct JobRow {
    team: String,
    status: String,
    model: String,
    kind: String,
}

/// The read-model rows of `jobs`, by id.
async fn rows_of<'a>(tx: &mut Tx<'_>, jobs: impl Iterator<Item = &'a str>) -> Result<HashMap<String, JobRow>, ProjectionError> {
    let jobs: Vec<&str> = jobs.collect();
    let rows = tx_fetch_rows!(
        tx,
        (String, String, String, String, String),
        "SELECT job_id, team_id, status, model_id, kind FROM jobs WHERE job_id IN (SELECT column1 FROM (",
        ") AS v)",
        jobs,
        ["text" => |job| *job]
    )?;
    Ok(rows.into_iter().map(|(job, team, status, model, kind)| (job, JobRow { team, status, model, kind })).collect())
}
