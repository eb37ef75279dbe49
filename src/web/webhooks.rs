//! `/webhooks`: the team's webhook endpoints — create (the secret is shown once),
//! enable/disable, rotate the secret, send a test event, delete — and each endpoint's
//! delivery log with redelivery. Through the same use cases as `/api/webhook-endpoints`
//! (`WebhookService`) and the same read side (`queries::webhooks`).

use application::webhooks::EndpointInput;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use domain::webhooks::{EventType, WebhookError};
use domain::WebhookEndpointId;

use super::errors::{Notice, WebError};
use super::form::PageForm;
use super::layout::{time, time_opt, Layout};
use super::paging;
use super::session::Session;
use crate::queries::webhooks::{self as q, DeliveryView, EndpointView};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{endpoint_id}", get(detail))
        .route("/webhooks/{endpoint_id}/{action}", post(act))
        .route("/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver", post(redeliver))
}

impl From<WebhookError> for WebError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::NotFound => WebError::NotFound,
            other => WebError::Refused(Notice::new("Not saved", other.to_string()).next("/webhooks", "Back to webhooks")),
        }
    }
}

/// Deliveries shown on an endpoint's page (the API pages through all of them).
const DELIVERIES_SHOWN: i64 = 50;

pub struct TypeChoice {
    pub name: &'static str,
    pub checked: bool,
}

pub struct EndpointRow {
    pub id: String,
    pub url: String,
    pub event_types: String,
    pub status: String,
    pub failing: bool,
}

fn status(e: &EndpointView) -> String {
    match (e.enabled, e.disabled_reason.as_deref()) {
        (true, _) => match e.failing_since {
            Some(since) => format!("enabled — failing since {}", time(since)),
            None => "enabled".to_string(),
        },
        (false, Some("failing")) => "disabled by Kiln: every delivery failed for days. Fix the receiver, then enable it.".to_string(),
        (false, _) => "disabled".to_string(),
    }
}

fn row(e: &EndpointView) -> EndpointRow {
    EndpointRow {
        id: e.id.clone(),
        url: e.url.clone(),
        event_types: e.event_types.join(", "),
        status: status(e),
        failing: e.failing_since.is_some() || e.disabled_reason.as_deref() == Some("failing"),
    }
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct ListPage {
    layout: Layout,
    notice: Option<Notice>,
    /// A secret just made: shown this once.
    secret: Option<String>,
    endpoints: Vec<EndpointRow>,
    /// The next page of endpoints, if there are more.
    next: Option<String>,
    types: Vec<TypeChoice>,
    url: String,
    threshold: String,
}

/// Endpoints shown on one page of the list.
const ENDPOINTS_PER_PAGE: usize = 50;

async fn render_list(
    state: &AppState,
    session: &Session,
    notice: Option<Notice>,
    secret: Option<String>,
    typed: Option<&Typed>,
    cursor: Option<&str>,
) -> Result<Html<String>, WebError> {
    let mut endpoints = q::endpoints(&state.db, session.team_id, paging::decode(cursor), ENDPOINTS_PER_PAGE as i64 + 1).await?;
    let next = paging::cut(&mut endpoints, ENDPOINTS_PER_PAGE)
        .then(|| endpoints.last().map(|last| format!("/webhooks?cursor={}", paging::q(&paging::encode(last.created_at, &last.id)))))
        .flatten();
    let chosen = |t: EventType| typed.is_some_and(|typed| typed.event_types.iter().any(|c| c == t.as_str()));
    let page = ListPage {
        layout: Layout::load(state, session, "Webhooks", "webhooks").await?,
        notice,
        secret,
        endpoints: endpoints.iter().map(row).collect(),
        next,
        types: EventType::ALL.iter().map(|t| TypeChoice { name: t.as_str(), checked: chosen(*t) }).collect(),
        url: typed.map(|t| t.url.clone()).unwrap_or_default(),
        threshold: typed.map(|t| t.threshold.clone()).unwrap_or_default(),
    };
    Ok(Html(page.render()?))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    cursor: Option<String>,
}

async fn list(State(state): State<AppState>, session: Session, Query(query): Query<ListQuery>) -> Result<Html<String>, WebError> {
    render_list(&state, &session, None, None, None, query.cursor.as_deref()).await
}

/// What the create form carried, kept to show again after a refusal.
#[derive(Default)]
struct Typed {
    url: String,
    event_types: Vec<String>,
    threshold: String,
}

/// The create form: `event_types` repeats (checkboxes), so it is read as pairs.
async fn create(State(state): State<AppState>, session: Session, PageForm(fields): PageForm<Vec<(String, String)>>) -> Result<Response, WebError> {
    session.writer()?;
    let mut typed = Typed::default();
    for (name, value) in fields {
        match name.as_str() {
            "url" => typed.url = value,
            "event_types" => typed.event_types.push(value),
            "credits_low_threshold" => typed.threshold = value,
            _ => {}
        }
    }
    let threshold = match typed.threshold.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let notice = Notice::new("Not saved", "The credits.low threshold must be a whole number of credits.");
                return Ok(render_list(&state, &session, Some(notice), None, Some(&typed), None).await?.into_response());
            }
        },
    };
    let input = EndpointInput { url: Some(typed.url.clone()), event_types: Some(typed.event_types.clone()), credits_low_threshold: threshold };
    match state.webhooks.create(session.team_id, input, &metadata(&session)).await {
        Ok((_, secret)) => {
            let notice = Notice::new("Endpoint created", "Copy its secret now: it is shown only this once.");
            Ok(render_list(&state, &session, Some(notice), Some(secret), None, None).await?.into_response())
        }
        Err(error) => match WebError::from(error) {
            WebError::Refused(notice) => Ok(render_list(&state, &session, Some(notice), None, Some(&typed), None).await?.into_response()),
            other => Err(other),
        },
    }
}

fn metadata(session: &Session) -> serde_json::Value {
    serde_json::json!({ "actor": format!("dashboard:{}", session.key_id) })
}

pub struct DeliveryRow {
    pub id: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub last: String,
    pub created_at: String,
    pub next_attempt_at: String,
}

fn delivery_row(d: &DeliveryView) -> DeliveryRow {
    let last = match (d.last_status, &d.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "—".to_string(),
    };
    DeliveryRow {
        id: d.id.clone(),
        event_type: d.event_type.clone(),
        state: d.state.clone(),
        attempts: d.attempts,
        last,
        created_at: time(d.created_at),
        next_attempt_at: time_opt(d.next_attempt_at),
    }
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct DetailPage {
    layout: Layout,
    notice: Option<Notice>,
    secret: Option<String>,
    endpoint: EndpointRow,
    enabled: bool,
    previous_secret_until: String,
    deliveries: Vec<DeliveryRow>,
}

async fn render_detail(state: &AppState, session: &Session, endpoint_id: &str, notice: Option<Notice>, secret: Option<String>) -> Result<Html<String>, WebError> {
    let id: WebhookEndpointId = endpoint_id.parse().map_err(|_| WebError::NotFound)?;
    let endpoint = q::endpoint_of(&state.db, session.team_id, &id.to_string()).await?.ok_or(WebError::NotFound)?;
    let deliveries = q::deliveries(&state.db, session.team_id, &endpoint.id, None, DELIVERIES_SHOWN).await?;
    let page = DetailPage {
        layout: Layout::load(state, session, "Webhook endpoint", "webhooks").await?,
        notice,
        secret,
        enabled: endpoint.enabled,
        previous_secret_until: time_opt(endpoint.previous_secret_until),
        endpoint: row(&endpoint),
        deliveries: deliveries.iter().map(delivery_row).collect(),
    };
    Ok(Html(page.render()?))
}

async fn detail(State(state): State<AppState>, session: Session, Path(endpoint_id): Path<String>) -> Result<Html<String>, WebError> {
    render_detail(&state, &session, &endpoint_id, None, None).await
}

/// The endpoint's buttons: `enable`, `disable`, `rotate`, `test`, `delete`.
async fn act(State(state): State<AppState>, session: Session, Path((endpoint_id, action)): Path<(String, String)>) -> Result<Response, WebError> {
    session.writer()?;
    let id: WebhookEndpointId = endpoint_id.parse().map_err(|_| WebError::NotFound)?;
    let (team, metadata) = (session.team_id, metadata(&session));
    let (notice, secret) = match action.as_str() {
        "enable" | "disable" => {
            state.webhooks.set_enabled(team, id, action == "enable", &metadata).await?;
            (Notice::new(if action == "enable" { "Enabled" } else { "Disabled" }, "Saved."), None)
        }
        "rotate" => {
            let secret = state.webhooks.rotate(team, id, &metadata).await?;
            (Notice::new("Secret rotated", "Copy the new secret now: it is shown only this once. Deliveries carry both signatures until the old secret's overlap ends."), Some(secret))
        }
        "test" => {
            let delivery_id = state.webhooks.send_test(team, id).await?;
            state.webhook_sender.wake();
            (Notice::new("Test event queued", format!("Delivery {delivery_id} is on its way; it shows below.")), None)
        }
        "delete" => {
            state.webhooks.delete(team, id, &metadata).await?;
            return Ok(Redirect::to("/webhooks").into_response());
        }
        _ => return Err(WebError::NotFound),
    };
    Ok(render_detail(&state, &session, &endpoint_id, Some(notice), secret).await?.into_response())
}

async fn redeliver(
    State(state): State<AppState>,
    session: Session,
    Path((endpoint_id, delivery_id)): Path<(String, String)>,
) -> Result<Response, WebError> {
    session.writer()?;
    let id: WebhookEndpointId = endpoint_id.parse().map_err(|_| WebError::NotFound)?;
    q::delivery_of(&state.db, session.team_id, &id.to_string(), &delivery_id).await?.ok_or(WebError::NotFound)?;
    state.webhooks.redeliver(session.team_id, &delivery_id).await?;
    state.webhook_sender.wake();
    let notice = Notice::new("Redelivery queued", format!("Delivery {delivery_id} is sent again, with the same webhook-id."));
    Ok(render_detail(&state, &session, &endpoint_id, Some(notice), None).await?.into_response())
}
