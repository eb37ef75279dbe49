//! `/history`: the team's jobs (search by prompt, filter by kind, status, model and day,
//! pages both ways, the filtered list as CSV or JSON — `history_export.rs`) and its
//! credit history (every ledger entry, with a link to its job), with a CSV download.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::consistency::PageReadToken;
use super::errors::{Notice, WebError};
use super::jobs::JobRow;
use super::layout::{time, Layout};
use super::paging;
use super::session::Session;
use crate::state::AppState;
use crate::queries;
use crate::queries::credits::{LedgerEntry, LedgerFilter};
use crate::queries::jobs::{JobFilter, JobFilterInput, Page, Position};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/history", get(page))
        .route("/history/credits.csv", get(csv))
        .route("/history/jobs.csv", get(export::jobs_csv))
        .route("/history/jobs.json", get(export::jobs_json))
}

#[path = "history_export.rs"]
mod export;

const JOBS_PER_PAGE: usize = 25;
const ENTRIES_PER_PAGE: usize = 25;
/// Rows read per query while writing the CSV, and the most the CSV holds.
const CSV_BATCH: i64 = 1_000;
const CSV_ROWS_MAX: usize = 100_000;
/// Models offered in the model filter (newest first).
const MODELS_MAX: i64 = 200;

pub const KINDS: [(&str, &str); 3] =
    [("model_creation", "Model creation"), ("model_refinement", "Model refinement"), ("image_generation", "Image generation")];
pub const STATUSES: [&str; 6] = ["queued", "dispatched", "running", "completed", "failed", "cancelled"];

/// The job list's filter as the form sends it (and its links keep it).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct JobsQuery {
    pub kind: Option<String>,
    pub status: Option<String>,
    pub model_id: Option<String>,
    pub q: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl JobsQuery {
    /// Read by the same rule as the API's list (`JobFilter::parse`); a filter that
    /// cannot be read is a message on the page.
    pub fn filter(&self) -> Result<JobFilter, Notice> {
        let input = JobFilterInput {
            status: self.status.as_deref(),
            kind: self.kind.as_deref(),
            model_id: self.model_id.as_deref(),
            search: self.q.as_deref(),
            from: self.from.as_deref(),
            to: self.to.as_deref(),
        };
        JobFilter::parse(&input).map_err(|e| Notice::new("Check the filter", format!("The {e}.")))
    }
}

/// (Not `#[serde(flatten)]` of a `JobsQuery`: flattened fields reach serde_urlencoded
/// as text, which `before`, a number, would then refuse.)
#[derive(Debug, Default, Deserialize)]
struct HistoryQuery {
    kind: Option<String>,
    status: Option<String>,
    model_id: Option<String>,
    q: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// The page of jobs older than this position (`Position::to_text`).
    older: Option<String>,
    /// The page of jobs newer than this position.
    newer: Option<String>,
    /// Ledger entries below this entry number.
    before: Option<i64>,
}

pub struct EntryView {
    pub entry_no: i64,
    pub entry_type: String,
    pub amount: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    pub operation: String,
    /// The job of a reservation, deduction or refund.
    pub job_id: Option<String>,
    pub detail: String,
    pub occurred_at: String,
}

impl From<LedgerEntry> for EntryView {
    fn from(e: LedgerEntry) -> Self {
        let job_id = e.job_id().map(str::to_string);
        EntryView {
            entry_no: e.entry_no,
            entry_type: e.entry_type,
            amount: e.amount,
            available_after: e.available_after,
            reserved_after: e.reserved_after,
            operation: e.operation.unwrap_or_default(),
            job_id,
            detail: e.detail.unwrap_or_default(),
            occurred_at: time(e.occurred_at),
        }
    }
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    layout: Layout,
    notice: Option<Notice>,
    kinds: [(&'static str, &'static str); 3],
    statuses: [&'static str; 6],
    models: Vec<(String, String)>,
    /// The filter's values as sent, to show in the form.
    kind: String,
    status: String,
    model_id: String,
    q: String,
    from: String,
    to: String,
    jobs: Vec<JobRow>,
    older_jobs: Option<String>,
    newer_jobs: Option<String>,
    /// The exports of exactly this filter.
    csv_href: String,
    json_href: String,
    entries: Vec<EntryView>,
    next_entries: Option<String>,
}

/// A query string of `pairs`.
fn query_string(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(name, value)| format!("{name}={}", paging::q(value))).collect::<Vec<_>>().join("&")
}

async fn page(
    State(state): State<AppState>,
    session: Session,
    PageReadToken(token): PageReadToken,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, WebError> {
    let db = queries::read_db(&state.reads, token).await;
    let jobs_query = JobsQuery {
        kind: query.kind.clone(),
        status: query.status.clone(),
        model_id: query.model_id.clone(),
        q: query.q.clone(),
        from: query.from.clone(),
        to: query.to.clone(),
    };
    let (filter, notice) = match jobs_query.filter() {
        Ok(filter) => (Some(filter), None),
        Err(notice) => (None, Some(notice)),
    };
    let at = match (query.older.as_deref().and_then(Position::from_text), query.newer.as_deref().and_then(Position::from_text)) {
        (Some(older), _) => Page::Older(older),
        (None, Some(newer)) => Page::Newer(newer),
        (None, None) => Page::First,
    };
    let filters = filter.as_ref().map(JobFilter::query_pairs).unwrap_or_default();
    let link = |name: &'static str, position: Option<Position>| {
        position.map(|p| {
            let mut pairs = filters.clone();
            pairs.push((name, p.to_text()));
            format!("/history?{}#jobs-heading", query_string(&pairs))
        })
    };
    let (jobs, older_jobs, newer_jobs) = match &filter {
        Some(filter) => {
            let found = queries::jobs::page(db, session.team_id, filter, &at, JOBS_PER_PAGE).await?;
            let rows = found.items.iter().map(JobRow::from).collect();
            (rows, link("older", found.older), link("newer", found.newer))
        }
        None => (Vec::new(), None, None),
    };
    let mut entries = queries::credits::history(db, session.team_id, &LedgerFilter::default(), query.before, ENTRIES_PER_PAGE as i64 + 1).await?;
    let filter_query = query_string(&filters);
    let next_entries = paging::cut(&mut entries, ENTRIES_PER_PAGE)
        .then(|| entries.last().map(|last| format!("/history?{filter_query}&before={}#credit-history", last.entry_no)))
        .flatten();
    let models = queries::models::list(db, session.team_id, true, None, MODELS_MAX).await?.into_iter().map(|m| (m.model_id, m.name)).collect();
    let status = if notice.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let page = HistoryPage {
        layout: Layout::load(&state, &session, "History", "history").await?,
        notice,
        kinds: KINDS,
        statuses: STATUSES,
        models,
        kind: text(&jobs_query.kind),
        status: text(&jobs_query.status),
        model_id: text(&jobs_query.model_id),
        q: text(&jobs_query.q),
        from: text(&jobs_query.from),
        to: text(&jobs_query.to),
        jobs,
        older_jobs,
        newer_jobs,
        csv_href: format!("/history/jobs.csv?{filter_query}"),
        json_href: format!("/history/jobs.json?{filter_query}"),
        entries: entries.into_iter().map(EntryView::from).collect(),
        next_entries,
    };
    Ok((status, Html(page.render()?)).into_response())
}

/// A CSV cell with a leading formula character defused (spreadsheets would run it).
pub fn defused(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@']) && text.parse::<i64>().is_err() {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// A CSV field, quoted when it holds a separator, quote or line break; a leading
/// formula character is defused.
fn field(text: &str) -> String {
    let text = defused(text);
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The whole credit history (newest first, up to `CSV_ROWS_MAX` entries) as CSV.
async fn csv(State(state): State<AppState>, session: Session) -> Result<Response, WebError> {
    let mut out = String::from("entry_no,occurred_at,entry_type,amount,available_after,reserved_after,operation,reference,detail\n");
    let (mut before, mut rows) = (None, 0usize);
    loop {
        let batch = queries::credits::history(&state.db, session.team_id, &LedgerFilter::default(), before, CSV_BATCH).await?;
        let done = (batch.len() as i64) < CSV_BATCH;
        for e in &batch {
            let at = e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let cells = [
                e.entry_no.to_string(),
                at,
                e.entry_type.clone(),
                e.amount.to_string(),
                e.available_after.to_string(),
                e.reserved_after.to_string(),
                e.operation.clone().unwrap_or_default(),
                e.reference.clone().unwrap_or_default(),
                e.detail.clone().unwrap_or_default(),
            ];
            out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        rows += batch.len();
        before = batch.last().map(|e| e.entry_no);
        if done || rows >= CSV_ROWS_MAX {
            break;
        }
    }
    let headers = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"kiln-credit-history.csv\""),
    ];
    Ok((headers, out).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(super::field("plain"), "plain");
        assert_eq!(super::field("a,b"), "\"a,b\"");
        assert_eq!(super::field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(super::field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(super::field("-25"), "-25");
    }
}
