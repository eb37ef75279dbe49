//! `/keys`: the team's API keys, for team admins (`Role::can_manage_keys`): create a
//! named key with a role (the key is shown once, on the answer to the form, never
//! again), the list with each key's last use, revoke. Through the same use cases as
//! `/api/keys` (`Services::issue_key`, `Services::revoke_key`: a revoked key stops
//! working at once) and the same read side (`queries::keys`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use domain::keys::{ApiKeyError, Role};
use domain::ApiKeyId;
use serde::Deserialize;

use super::errors::{Notice, WebError};
use super::form::PageForm;
use super::layout::{time, Layout};
use super::session::Session;
use crate::queries;
use crate::state::AppState;
use application::aggregate_store::CommandError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/keys", get(list).post(create)).route("/keys/{key_id}/revoke", post(revoke))
}

/// A role as the form offers it.
pub struct RoleChoice {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Member => "Member — generates, creates models, spends credits",
        Role::Auditor => "Auditor — reads everything, changes nothing",
        Role::Admin => "Admin — a member who also manages the team's keys",
    }
}

pub struct KeyRow {
    pub key_id: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub last_used: String,
    /// `None` while the key works.
    pub revoked_at: Option<String>,
    /// The key this browser signed in with (revoking it signs the browser out).
    pub this_session: bool,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    layout: Layout,
    notice: Option<Notice>,
    /// A key just issued: (name, the key itself). Shown this once.
    issued: Option<(String, String)>,
    keys: Vec<KeyRow>,
    roles: Vec<RoleChoice>,
    name: String,
}

async fn render(
    state: &AppState,
    session: &Session,
    notice: Option<Notice>,
    issued: Option<(String, String)>,
    form: &CreateForm,
) -> Result<Html<String>, WebError> {
    let keys = queries::keys::of_team(&state.db, session.team_id).await?;
    let this_key = session.key_id.to_string();
    let keys = keys
        .into_iter()
        .map(|k| KeyRow {
            this_session: k.key_id == this_key,
            key_id: k.key_id,
            name: k.name,
            role: k.role,
            created_at: time(k.created_at),
            last_used: k.last_used_at.map(time).unwrap_or_else(|| "never".to_string()),
            revoked_at: k.revoked_at.map(time),
        })
        .collect();
    let chosen = Role::parse(&form.role).unwrap_or(Role::Member);
    let page = KeysPage {
        layout: Layout::load(state, session, "API keys", "keys").await?,
        notice,
        issued,
        keys,
        roles: Role::ALL.iter().map(|r| RoleChoice { value: r.as_str(), label: role_label(*r), selected: *r == chosen }).collect(),
        name: form.name.clone(),
    };
    Ok(Html(page.render()?))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    /// Set by the redirect after a revocation: the revoked key's id.
    revoked: Option<String>,
}

async fn list(State(state): State<AppState>, session: Session, Query(query): Query<ListQuery>) -> Result<Html<String>, WebError> {
    session.key_admin()?;
    let notice = query
        .revoked
        .is_some()
        .then(|| Notice::new("Key revoked", "It stopped working at once: the API refuses requests made with it."));
    render(&state, &session, notice, None, &CreateForm::default()).await
}

#[derive(Debug, Default, Deserialize)]
struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

/// What a refused key form says, on the form.
fn refusal(error: CommandError<ApiKeyError>) -> Result<Notice, WebError> {
    match error {
        CommandError::Rejected(ApiKeyError::InvalidName(reason)) => Ok(Notice::new("Check the name", format!("The key's name {reason}."))),
        other => Err(other.into()),
    }
}

async fn create(State(state): State<AppState>, session: Session, PageForm(form): PageForm<CreateForm>) -> Result<Response, WebError> {
    session.key_admin()?;
    let Some(role) = Role::parse(form.role.trim()) else {
        let notice = Notice::new("Pick a role", "A key is a member, an auditor or an admin key.");
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&state, &session, Some(notice), None, &form).await?).into_response());
    };
    let actor = serde_json::json!({ "actor": session.actor() });
    match state.issue_key(session.team_id, role, form.name.clone(), &actor).await {
        Ok(issued) => {
            let name = form.name.trim().to_string();
            let html = render(&state, &session, None, Some((name, issued.secret)), &CreateForm::default()).await?;
            // The answer holds the key itself: no cache may keep it.
            let mut response = (StatusCode::CREATED, html).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Err(error) => {
            let notice = refusal(error)?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&state, &session, Some(notice), None, &form).await?).into_response())
        }
    }
}

async fn revoke(State(state): State<AppState>, session: Session, Path(key_id): Path<String>) -> Result<Response, WebError> {
    session.key_admin()?;
    let key_id: ApiKeyId = key_id.parse().map_err(|_| WebError::NotFound)?;
    let actor = serde_json::json!({ "actor": session.actor() });
    state.revoke_key(session.team_id, key_id, &actor).await?;
    if key_id == session.key_id {
        // The browser's own key: its session ends with it.
        return Ok(Redirect::to("/sign-in").into_response());
    }
    Ok(Redirect::to(&format!("/keys?revoked={key_id}")).into_response())
}
