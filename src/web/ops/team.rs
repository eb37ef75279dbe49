//! `/ops/teams/{team_id}`: one team as an operator sees it — balance and grants, ledger,
//! jobs, models, keys — and what an admin operator may do to it: grant or adjust credits,
//! change the plan, revoke a key, cancel a job (each with a required reason, through
//! `OperatorActions`), and verify its audit chain (the result shown on the page).

use application::operator_actions::{Grant, ReasonRule};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use domain::{AdjustmentId, ApiKeyId, Credits, GrantId, GrantSource, JobId, Plan, SignedCredits, TeamId};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries;
use crate::queries::credits::{BalanceView, LedgerEntry, LedgerFilter};
use crate::queries::jobs::{JobFilter, JobView};
use crate::queries::keys::KeyView;
use crate::queries::models::ModelView;
use crate::state::AppState;
use crate::web::errors::{Notice, WebError};
use crate::web::form::PageForm;
use crate::web::layout::{time, time_opt};

/// Rows each section of the page shows (newest first).
const ROWS_MAX: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/teams/{team_id}", get(page))
        .route("/ops/teams/{team_id}/grant", post(grant))
        .route("/ops/teams/{team_id}/adjust", post(adjust))
        .route("/ops/teams/{team_id}/plan", post(change_plan))
        .route("/ops/teams/{team_id}/keys/{key_id}/revoke", post(revoke_key))
        .route("/ops/teams/{team_id}/jobs/{job_id}/cancel", post(cancel_job))
        .route("/ops/teams/{team_id}/dispatch/pause", post(pause_dispatch))
        .route("/ops/teams/{team_id}/dispatch/resume", post(resume_dispatch))
        .route("/ops/teams/{team_id}/verify", get(verify))
}

fn parse_team(text: &str) -> Result<TeamId, WebError> {
    text.parse().map_err(|_| WebError::NotFound)
}

/// What the page says after an action (`?done=…`, set by the action's redirect).
fn done_notice(done: &str) -> Option<Notice> {
    let (title, detail) = match done {
        "grant" => ("Credits granted", "The grant and your reason are on the team's ledger."),
        "adjust" => ("Balance adjusted", "The adjustment and your reason are on the team's ledger."),
        "plan" => ("Plan changed", "The new plan applies now; the change and your reason are on the team's ledger."),
        "revoke" => ("Key revoked", "It stopped working at once; the revocation and your reason are on the team's ledger."),
        "cancel" => ("Job cancelled", "Its credits were refunded; the cancel and your reason are on the team's ledger."),
        "pause" => ("Dispatch paused", "The team's jobs are accepted and reserved but not started until you resume; its pages say so."),
        "resume" => ("Dispatch resumed", "The team's queued jobs are handed to workers again."),
        _ => return None,
    };
    Some(Notice::new(title, detail))
}

struct LedgerLine {
    entry: LedgerEntry,
    at: String,
}

struct JobLine {
    job: JobView,
    queued: String,
    active: bool,
}

struct KeyLine {
    key: KeyView,
    created: String,
    revoked: String,
}

/// The outcome of an audit verify run from the page.
struct Verified {
    ok: bool,
    team_events: u64,
    jobs: u64,
    violations: Vec<String>,
    elapsed_ms: u64,
}

#[derive(Template)]
#[template(path = "ops/team.html")]
struct TeamPage {
    layout: OpsLayout,
    notice: Option<Notice>,
    team: BalanceView,
    ledger: Vec<LedgerLine>,
    jobs: Vec<JobLine>,
    models: Vec<ModelView>,
    keys: Vec<KeyLine>,
    plans: Vec<&'static str>,
    verified: Option<Verified>,
    /// The team's own dispatch is paused.
    paused: bool,
    /// A fresh id for each form that records something new (grant, adjustment, plan
    /// change): sending one twice records it once.
    nonces: [String; 3],
}

async fn render(state: &AppState, session: &OpsSession, team: TeamId, notice: Option<Notice>, verified: Option<Verified>) -> Result<Html<String>, WebError> {
    let balance = queries::credits::balance(&state.db, team).await?.ok_or(WebError::NotFound)?;
    let ledger = queries::credits::history(&state.db, team, &LedgerFilter::default(), None, ROWS_MAX).await?;
    let jobs = queries::jobs::list(&state.db, team, &JobFilter::default(), None, ROWS_MAX).await?;
    let models = queries::models::list(&state.db, team, true, None, ROWS_MAX).await?;
    let keys = queries::keys::of_team(&state.db, team).await?;
    let paused = queries::ops::team_paused(&state.db, team).await?;
    let page = TeamPage {
        paused,
        layout: OpsLayout::new(session, &balance.name, "teams"),
        notice,
        ledger: ledger.into_iter().map(|entry| LedgerLine { at: time(entry.occurred_at), entry }).collect(),
        jobs: jobs
            .into_iter()
            .map(|job| JobLine { queued: time(job.queued_at), active: !crate::web::layout::is_final(&job.status), job })
            .collect(),
        models,
        keys: keys.into_iter().map(|key| KeyLine { created: time(key.created_at), revoked: time_opt(key.revoked_at), key }).collect(),
        plans: Plan::ALL.iter().map(|p| p.as_str()).collect(),
        team: balance,
        verified,
        nonces: [(); 3].map(|()| Uuid::now_v7().to_string()),
    };
    Ok(Html(page.render()?))
}

#[derive(Deserialize, Default)]
struct PageQuery {
    done: Option<String>,
}

async fn page(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, Query(query): Query<PageQuery>) -> Result<Html<String>, WebError> {
    let notice = query.done.as_deref().and_then(done_notice);
    render(&state, &session, parse_team(&team)?, notice, None).await
}

fn done(team: TeamId, what: &str) -> Response {
    Redirect::to(&format!("/ops/teams/{team}?done={what}")).into_response()
}

/// The form's nonce as the id of what it records (a resent form names the same grant).
fn nonce_id(nonce: &str) -> Result<Uuid, WebError> {
    nonce.parse().map_err(|_| WebError::BadForm("The form is missing its id; reload the page and send it again.".into()))
}

fn whole_number(text: &str, what: &str) -> Result<i64, WebError> {
    text.trim().parse().map_err(|_| WebError::Refused(Notice::new(format!("Check the {what}"), format!("The {what} must be a whole number of credits."))))
}

#[derive(Deserialize)]
struct GrantForm {
    amount: String,
    reason: String,
    nonce: String,
}

async fn grant(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, PageForm(form): PageForm<GrantForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    let amount = Credits::parse(whole_number(&form.amount, "amount")?).map_err(|e| WebError::from(domain::TeamCreditsError::Amount(e)))?;
    let id = nonce_id(&form.nonce)?;
    let key = domain::IdempotencyKey::parse(format!("ops-grant-{id}")).map_err(|e| WebError::internal(&e))?;
    let grant = Grant { grant_id: GrantId::new(id), amount, source: GrantSource::Admin, expires_at: None, key };
    state.operator_actions.grant(&session.operator, team, grant, Some(&form.reason), ReasonRule::Required).await?;
    Ok(done(team, "grant"))
}

async fn adjust(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, PageForm(form): PageForm<GrantForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    let amount = SignedCredits::parse(whole_number(&form.amount, "amount")?).map_err(|e| WebError::from(domain::TeamCreditsError::Amount(e)))?;
    let id = AdjustmentId::new(nonce_id(&form.nonce)?);
    state.operator_actions.adjust(&session.operator, team, id, amount, &form.reason).await?;
    Ok(done(team, "adjust"))
}

#[derive(Deserialize)]
struct PlanForm {
    plan: String,
    reason: String,
    nonce: String,
}

async fn change_plan(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, PageForm(form): PageForm<PlanForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    let to: Plan = form.plan.parse().map_err(|_| WebError::BadForm("Pick one of the plans offered.".into()))?;
    let key = domain::IdempotencyKey::parse(format!("ops-plan-{}", nonce_id(&form.nonce)?)).map_err(|e| WebError::internal(&e))?;
    state.operator_actions.change_plan(&session.operator, team, to, key, Some(&form.reason), ReasonRule::Required).await?;
    Ok(done(team, "plan"))
}

#[derive(Deserialize)]
struct ReasonForm {
    reason: String,
}

async fn revoke_key(State(state): State<AppState>, session: OpsSession, Path((team, key)): Path<(String, String)>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    let key: ApiKeyId = key.parse().map_err(|_| WebError::NotFound)?;
    state.operator_actions.revoke_key(&session.operator, team, key, Some(&form.reason), ReasonRule::Required).await?;
    state.keys.forget_all();
    Ok(done(team, "revoke"))
}

async fn cancel_job(State(state): State<AppState>, session: OpsSession, Path((team, job)): Path<(String, String)>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    let job: JobId = job.parse().map_err(|_| WebError::NotFound)?;
    state.operator_actions.cancel_job(&session.operator, team, job, Some(&form.reason), ReasonRule::Required).await?;
    Ok(done(team, "cancel"))
}

async fn pause_dispatch(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    state.operator_actions.pause_dispatch(&session.operator, team, Some(&form.reason), ReasonRule::Required).await?;
    Ok(done(team, "pause"))
}

async fn resume_dispatch(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>, PageForm(form): PageForm<ReasonForm>) -> Result<Response, WebError> {
    let team = parse_team(&team)?;
    state.operator_actions.resume_dispatch(&session.operator, team, Some(&form.reason), ReasonRule::Required).await?;
    Ok(done(team, "resume"))
}

/// Verifies the team's ledger and hash chain from its events: reading only (a GET), so
/// viewers may too.
async fn verify(State(state): State<AppState>, session: OpsSession, Path(team): Path<String>) -> Result<Html<String>, WebError> {
    let team = parse_team(&team)?;
    let report = projections::audit::verify(&state.db, Some(&team.to_string())).await.map_err(|e| match e {
        projections::audit::AuditError::TeamNotFound(_) => WebError::NotFound,
        other => WebError::internal(&other),
    })?;
    let verified = Verified {
        ok: report.ok(),
        team_events: report.team_events,
        jobs: report.jobs,
        violations: report.violations.iter().map(ToString::to_string).collect(),
        elapsed_ms: report.elapsed_ms,
    };
    render(&state, &session, team, None, Some(verified)).await
}
