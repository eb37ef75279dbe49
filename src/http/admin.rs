//! `/api/admin/*`: the operator's endpoints (operator key from configuration): teams,
//! plans, API keys, grants and adjustments. Also `/api/keys` for a team's admin keys.

use application::operator_actions::{Grant, ReasonRule};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::keys::Role;
use domain::{AdjustmentId, ApiKeyId, Credits, GrantId, GrantSource, Plan, SignedCredits, TeamCreditsCommand, TeamId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Operator, TeamKey};
use super::credits::{load_balance, BalanceView};
use super::extract::{ApiJson, IdempotencyKey};
use super::problem::Problem;
use crate::state::AppState;

/// Namespace of the ids Kiln derives from idempotency keys (UUIDv5), so a repeated
/// request names the same team, grant or adjustment.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b69_6c6e_2d69_6465_6d70_6f74_656e_6379);

fn derived_id(scope: &str, key: &domain::IdempotencyKey) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, format!("{scope}:{}", key.as_str()).as_bytes())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/teams", post(create_team).get(super::admin_reads::list_teams))
        .route("/api/admin/teams/{team_id}", get(get_team))
        .route("/api/admin/teams/{team_id}/plan", put(change_plan))
        .route("/api/admin/teams/{team_id}/api-keys", post(issue_key).get(list_keys))
        .route("/api/admin/teams/{team_id}/api-keys/{key_id}", delete(revoke_key))
        .route("/api/admin/teams/{team_id}/grants", post(grant))
        .route("/api/admin/teams/{team_id}/adjustments", post(adjust))
        .route("/api/admin/teams/{team_id}/subscription-expiry", post(expire_subscription))
        .route("/api/keys", post(issue_own_key).get(list_own_keys))
        .route("/api/keys/{key_id}", delete(revoke_own_key))
}

fn parse_team(text: &str) -> Result<TeamId, Problem> {
    text.parse().map_err(|_| Problem::not_found().detail("no such team"))
}

fn parse_plan(text: &str) -> Result<Plan, Problem> {
    text.parse().map_err(|_| Problem::invalid("plan must be free, basic, pro or enterprise"))
}

fn actor_metadata(actor: &str) -> serde_json::Value {
    json!({ "actor": actor })
}

async fn team_view(state: &AppState, team: TeamId) -> Result<BalanceView, Problem> {
    load_balance(state, team).await?.ok_or_else(|| Problem::not_found().detail("no such team"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The plan (default free).
    #[schema(schema_with = plan_schema)]
    pub plan: Option<String>,
}

fn plan_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(["free", "basic", "pro", "enterprise"])
}

fn role_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(["member", "auditor", "admin"])
}

/// Opens a team. With an `Idempotency-Key`, repeating the request returns the same team.
#[utoipa::path(post, path = "/api/admin/teams", tag = "admin", operation_id = "createTeam",
    request_body(content = CreateTeam, example = json!({"name": "Acme Studio", "plan": "pro"})),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "makes a retry return the same team")),
    responses((status = 201, body = BalanceView), (status = 409, description = "The team exists (`/problems/team-exists`)"),
        (status = 422, description = "Invalid name or plan (`/problems/invalid-request`)")),
    security(("operator_key" = [])))]
async fn create_team(
    State(state): State<AppState>,
    operator: Operator,
    key: IdempotencyKey,
    ApiJson(body): ApiJson<CreateTeam>,
) -> Result<(StatusCode, Json<BalanceView>), Problem> {
    let plan = parse_plan(body.plan.as_deref().unwrap_or("free"))?;
    let team_id = TeamId::new(key.0.as_ref().map(|k| derived_id("team", k)).unwrap_or_else(Uuid::now_v7));
    let command = TeamCreditsCommand::OpenTeam { team_id, name: body.name, plan, now: state.credits.now() };
    state.credits.execute(team_id, command, &operator.metadata()).await?;
    Ok((StatusCode::CREATED, Json(team_view(&state, team_id).await?)))
}

#[utoipa::path(get, path = "/api/admin/teams/{team_id}", tag = "admin", operation_id = "getTeam", params(("team_id" = uuid::Uuid, Path, description = "The team's id")),
    responses((status = 200, body = BalanceView)), security(("operator_key" = [])))]
async fn get_team(State(state): State<AppState>, _: Operator, Path(team): Path<String>) -> Result<Json<BalanceView>, Problem> {
    Ok(Json(team_view(&state, parse_team(&team)?).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    #[schema(schema_with = plan_schema)]
    pub plan: String,
    /// Why (recorded with the operator on the team's ledger).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: Option<String>,
}

/// Changes a team's plan, effective now.
#[utoipa::path(put, path = "/api/admin/teams/{team_id}/plan", tag = "admin", operation_id = "changeTeamPlan",
    request_body(content = ChangePlan, example = json!({"plan": "basic"})),
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "makes a retry a no-op")),
    responses((status = 200, body = BalanceView)), security(("operator_key" = [])))]
async fn change_plan(
    State(state): State<AppState>,
    operator: Operator,
    Path(team): Path<String>,
    key: IdempotencyKey,
    ApiJson(body): ApiJson<ChangePlan>,
) -> Result<Json<BalanceView>, Problem> {
    let team_id = parse_team(&team)?;
    let to = parse_plan(&body.plan)?;
    let key = match key.0 {
        Some(key) => key,
        None => domain::IdempotencyKey::parse(format!("plan:{}", Uuid::now_v7())).map_err(|e| Problem::internal(&e))?,
    };
    state.operator_actions.change_plan(&operator.0, team_id, to, key, body.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(team_view(&state, team_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    /// What the key may do: `member` reads and spends, `auditor` only reads, `admin` also manages the team's keys.
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// A label for humans.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKeyView {
    pub key_id: String,
    pub team_id: String,
    pub role: String,
    /// The key itself. Shown this once; Kiln keeps only its hash.
    pub api_key: String,
}

pub use crate::queries::keys::KeyView;

async fn issue_for(state: &AppState, team_id: TeamId, body: IssueKey, metadata: &serde_json::Value) -> Result<IssuedKeyView, Problem> {
    let role = Role::parse(&body.role).ok_or_else(|| Problem::invalid("role must be member, auditor or admin"))?;
    if !state.credits.state(team_id).await?.is_open() {
        return Err(Problem::not_found().detail("no such team"));
    }
    let issued = state.issue_key(team_id, role, body.name, metadata).await?;
    Ok(IssuedKeyView {
        key_id: issued.key_id.to_string(),
        team_id: issued.team_id.to_string(),
        role: issued.role.as_str().to_string(),
        api_key: issued.secret,
    })
}

async fn keys_of(state: &AppState, team_id: TeamId) -> Result<Vec<KeyView>, Problem> {
    crate::queries::keys::of_team(&state.db, team_id).await.map_err(|e| Problem::internal(&e))
}

async fn revoke_for(state: &AppState, team_id: TeamId, key_id: &str, metadata: &serde_json::Value) -> Result<StatusCode, Problem> {
    let key_id: ApiKeyId = key_id.parse().map_err(|_| Problem::not_found().detail("no such API key"))?;
    state.revoke_key(team_id, key_id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues an API key for a team. The key is in the response, once.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/api-keys", tag = "admin", operation_id = "issueTeamApiKey",
    request_body(content = IssueKey, example = json!({"role": "member", "name": "render pipeline"})), params(("team_id" = uuid::Uuid, Path, description = "The team's id")),
    responses((status = 201, body = IssuedKeyView)), security(("operator_key" = [])))]
async fn issue_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(team): Path<String>,
    ApiJson(body): ApiJson<IssueKey>,
) -> Result<(StatusCode, Json<IssuedKeyView>), Problem> {
    Ok((StatusCode::CREATED, Json(issue_for(&state, parse_team(&team)?, body, &operator.metadata()).await?)))
}

#[utoipa::path(get, path = "/api/admin/teams/{team_id}/api-keys", tag = "admin", operation_id = "listTeamApiKeys", params(("team_id" = uuid::Uuid, Path, description = "The team's id")),
    responses((status = 200, body = Vec<KeyView>)), security(("operator_key" = [])))]
async fn list_keys(State(state): State<AppState>, _: Operator, Path(team): Path<String>) -> Result<Json<Vec<KeyView>>, Problem> {
    let team_id = parse_team(&team)?;
    team_view(&state, team_id).await?;
    Ok(Json(keys_of(&state, team_id).await?))
}

/// Revokes a key; it stops working at once.
#[utoipa::path(delete, path = "/api/admin/teams/{team_id}/api-keys/{key_id}", tag = "admin", operation_id = "revokeTeamApiKey",
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("key_id" = uuid::Uuid, Path, description = "The key's id (`key_id`, not the key itself)"), ReasonQuery), responses((status = 204, description = "Revoked")), security(("operator_key" = [])))]
async fn revoke_key(
    State(state): State<AppState>,
    operator: Operator,
    Path((team, key_id)): Path<(String, String)>,
    Query(query): Query<ReasonQuery>,
) -> Result<StatusCode, Problem> {
    let team_id = parse_team(&team)?;
    let key_id: ApiKeyId = key_id.parse().map_err(|_| Problem::not_found().detail("no such API key"))?;
    state.operator_actions.revoke_key(&operator.0, team_id, key_id, query.reason.as_deref(), ReasonRule::Optional).await?;
    state.keys.forget_all();
    Ok(StatusCode::NO_CONTENT)
}

/// An optional reason for an operator's action without a body.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReasonQuery {
    /// Why (recorded with the operator on the team's ledger).
    pub reason: Option<String>,
}

/// Issues a key for the caller's own team (admin keys only).
#[utoipa::path(post, path = "/api/keys", tag = "keys", operation_id = "createApiKey",
    request_body(content = IssueKey, example = json!({"role": "auditor", "name": "finance dashboard"})),
    responses((status = 201, body = IssuedKeyView), (status = 403, description = "Not an admin key of the team (`/problems/forbidden`)")),
    security(("api_key" = [])))]
async fn issue_own_key(
    State(state): State<AppState>,
    key: TeamKey,
    ApiJson(body): ApiJson<IssueKey>,
) -> Result<(StatusCode, Json<IssuedKeyView>), Problem> {
    let key = key.admin()?;
    Ok((StatusCode::CREATED, Json(issue_for(&state, key.team_id, body, &actor_metadata(&format!("key:{}", key.key_id))).await?)))
}

#[utoipa::path(get, path = "/api/keys", tag = "keys", operation_id = "listApiKeys",
    responses((status = 200, body = Vec<KeyView>), (status = 403, description = "Not an admin key of the team (`/problems/forbidden`)")),
    security(("api_key" = [])))]
async fn list_own_keys(State(state): State<AppState>, key: TeamKey) -> Result<Json<Vec<KeyView>>, Problem> {
    Ok(Json(keys_of(&state, key.admin()?.team_id).await?))
}

#[utoipa::path(delete, path = "/api/keys/{key_id}", tag = "keys", operation_id = "revokeApiKey", params(("key_id" = uuid::Uuid, Path, description = "The key's id (`key_id`, not the key itself)")),
    responses((status = 204, description = "Revoked"), (status = 403, description = "Not an admin key of the team (`/problems/forbidden`)")),
    security(("api_key" = [])))]
async fn revoke_own_key(State(state): State<AppState>, key: TeamKey, Path(key_id): Path<String>) -> Result<StatusCode, Problem> {
    let key = key.admin()?;
    revoke_for(&state, key.team_id, &key_id, &actor_metadata(&format!("key:{}", key.key_id))).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Whole credits, > 0.
    #[schema(minimum = 1)]
    pub amount: i64,
    /// When the unspent part expires (RFC 3339, in the future); never if absent.
    pub expires_at: Option<DateTime<Utc>>,
    /// Where the credits come from (default admin; Stripe grants come from Stripe).
    #[schema(schema_with = source_schema)]
    pub source: Option<String>,
    /// Why (optional; recorded with the operator on the team's ledger).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: Option<String>,
}

fn source_schema() -> utoipa::openapi::schema::Object {
    super::openapi::one_of(["admin", "plan"])
}

/// Grants credits. Requires an `Idempotency-Key`: a retry grants nothing more.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/grants", tag = "admin", operation_id = "grantCredits",
    request_body(content = GrantRequest, example = json!({"amount": 500, "expires_at": "2030-01-01T00:00:00Z", "source": "admin"})),
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "required: a retry grants nothing more")),
    responses((status = 200, body = BalanceView),
        (status = 400, description = "No `Idempotency-Key` (`/problems/idempotency-key-required`), or the body is not JSON (`/problems/malformed-json`)"),
        (status = 409, description = "The key was used for another grant (`/problems/idempotency-conflict`)"),
        (status = 422, description = "Not a positive amount (`/problems/invalid-amount`), an expiry in the past, or an invalid body (`/problems/invalid-request`)")),
    security(("operator_key" = [])))]
async fn grant(
    State(state): State<AppState>,
    operator: Operator,
    Path(team): Path<String>,
    key: IdempotencyKey,
    ApiJson(body): ApiJson<GrantRequest>,
) -> Result<Json<BalanceView>, Problem> {
    let team_id = parse_team(&team)?;
    let key = key.required()?;
    let amount = Credits::parse(body.amount).map_err(|e| Problem::from(domain::TeamCreditsError::Amount(e)))?;
    let source = match body.source.as_deref().unwrap_or("admin") {
        "admin" => GrantSource::Admin,
        "plan" => GrantSource::Plan,
        _ => return Err(Problem::invalid("source must be admin or plan (Stripe grants come from Stripe)")),
    };
    let grant_id = GrantId::new(derived_id(&format!("grant:{team_id}"), &key));
    let grant = Grant { grant_id, amount, source, expires_at: body.expires_at, key };
    state.operator_actions.grant(&operator.0, team_id, grant, body.reason.as_deref(), ReasonRule::Optional).await?;
    Ok(Json(team_view(&state, team_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustRequest {
    /// Signed whole credits, not 0. Negative takes credits away (never below 0 available).
    pub amount: i64,
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// Adjusts a balance by a signed amount, with a reason. Requires an `Idempotency-Key`.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/adjustments", tag = "admin", operation_id = "adjustCredits",
    request_body(content = AdjustRequest, example = json!({"amount": 25, "reason": "goodwill for a failed batch"})),
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "required: a retry adjusts nothing more")),
    responses((status = 200, body = BalanceView),
        (status = 400, description = "No `Idempotency-Key` (`/problems/idempotency-key-required`), or the body is not JSON (`/problems/malformed-json`)"),
        (status = 402, description = "A negative amount larger than the available credits (`/problems/insufficient-credits`)"),
        (status = 409, description = "The key was used for another request (`/problems/idempotency-conflict`)"),
        (status = 422, description = "Amount 0 (`/problems/invalid-amount`), or an invalid reason or body (`/problems/invalid-request`)")),
    security(("operator_key" = [])))]
async fn adjust(
    State(state): State<AppState>,
    operator: Operator,
    Path(team): Path<String>,
    key: IdempotencyKey,
    ApiJson(body): ApiJson<AdjustRequest>,
) -> Result<Json<BalanceView>, Problem> {
    let team_id = parse_team(&team)?;
    let key = key.required()?;
    let amount = SignedCredits::parse(body.amount).map_err(|e| Problem::from(domain::TeamCreditsError::Amount(e)))?;
    let adjustment_id = AdjustmentId::new(derived_id(&format!("adjustment:{team_id}"), &key));
    state.operator_actions.adjust(&operator.0, team_id, adjustment_id, amount, &body.reason).await?;
    Ok(Json(team_view(&state, team_id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionExpired {
    pub team: BalanceView,
    /// Queued jobs cancelled and refunded by this request (the dispatcher's upkeep may
    /// cancel others of the team at the same moment, under the same policy).
    pub cancelled_jobs: usize,
}

/// Ends a team's subscription now: the plan becomes free, running jobs finish and are
/// charged, queued jobs are cancelled and refunded, new submissions are refused.
#[utoipa::path(post, path = "/api/admin/teams/{team_id}/subscription-expiry", tag = "admin", operation_id = "expireSubscription",
    params(("team_id" = uuid::Uuid, Path, description = "The team's id"), ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "makes a retry a no-op")),
    responses((status = 200, body = SubscriptionExpired)), security(("operator_key" = [])))]
async fn expire_subscription(
    State(state): State<AppState>,
    operator: Operator,
    Path(team): Path<String>,
    key: IdempotencyKey,
) -> Result<Json<SubscriptionExpired>, Problem> {
    let team_id = parse_team(&team)?;
    team_view(&state, team_id).await?;
    let key = match key.0 {
        Some(key) => key,
        None => domain::IdempotencyKey::parse(format!("expiry:{}", Uuid::now_v7())).map_err(|e| Problem::internal(&e))?,
    };
    let now = state.jobs.now();
    let cancelled_jobs = state.jobs.expire_subscription(team_id, now, key, state.job_index.as_ref(), &operator.metadata()).await?;
    Ok(Json(SubscriptionExpired { team: team_view(&state, team_id).await?, cancelled_jobs }))
}
