//! `/history`: the team's jobs (filter by kind and status, cursor pages) and its credit
//! history (every ledger entry, with a link to its job), with a CSV download.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::consistency::PageReadToken;
use super::errors::WebError;
use super::jobs::JobRow;
use super::layout::{time, Layout};
use super::paging;
use super::session::Session;
use crate::state::AppState;
use crate::queries;
use crate::queries::credits::{LedgerEntry, LedgerFilter};
use crate::queries::jobs::JobFilter;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/history", get(page))
        .route("/history/credits.csv", get(csv))
}

const JOBS_PER_PAGE: usize = 25;
const ENTRIES_PER_PAGE: usize = 25;
/// Rows read per query while writing the CSV, and the most the CSV holds.
const CSV_BATCH: i64 = 1_000;
const CSV_ROWS_MAX: usize = 100_000;

pub const KINDS: [(&str, &str); 3] =
    [("model_creation", "Model creation"), ("model_refinement", "Model refinement"), ("image_generation", "Image generation")];
pub const STATUSES: [&str; 6] = ["queued", "dispatched", "running", "completed", "failed", "cancelled"];

#[derive(Debug, Default, Deserialize)]
struct HistoryQuery {
    kind: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
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
    kinds: [(&'static str, &'static str); 3],
    statuses: [&'static str; 6],
    kind: String,
    status: String,
    jobs: Vec<JobRow>,
    next_jobs: Option<String>,
    entries: Vec<EntryView>,
    next_entries: Option<String>,
}

async fn page(
    State(state): State<AppState>,
    session: Session,
    PageReadToken(token): PageReadToken,
    Query(query): Query<HistoryQuery>,
) -> Result<Html<String>, WebError> {
    let db = queries::read_db(&state.reads, token).await;
    // Unknown filter values are ignored (a page, unlike the API, just shows everything).
    let kind = query.kind.filter(|k| KINDS.iter().any(|(value, _)| value == k)).unwrap_or_default();
    let status = query.status.filter(|s| STATUSES.contains(&s.as_str())).unwrap_or_default();
    let filter = JobFilter { status: Some(status.as_str()).filter(|s| !s.is_empty()), kind: Some(kind.as_str()).filter(|k| !k.is_empty()) };
    let after = paging::decode(query.cursor.as_deref());
    let mut jobs = queries::jobs::list(db, session.team_id, &filter, after, JOBS_PER_PAGE as i64 + 1).await?;
    let filters = format!("kind={}&status={}", paging::q(&kind), paging::q(&status));
    let next_jobs = paging::cut(&mut jobs, JOBS_PER_PAGE)
        .then(|| jobs.last().map(|last| format!("/history?{filters}&cursor={}", paging::q(&paging::encode(last.queued_at, &last.job_id)))))
        .flatten();
    let mut entries = queries::credits::history(db, session.team_id, &LedgerFilter::default(), query.before, ENTRIES_PER_PAGE as i64 + 1).await?;
    let next_entries = paging::cut(&mut entries, ENTRIES_PER_PAGE)
        .then(|| entries.last().map(|last| format!("/history?{filters}&before={}#credit-history", last.entry_no)))
        .flatten();
    let page = HistoryPage {
        layout: Layout::load(&state, &session, "History", "history").await?,
        kinds: KINDS,
        statuses: STATUSES,
        kind,
        status,
        jobs: jobs.iter().map(JobRow::from).collect(),
        next_jobs,
        entries: entries.into_iter().map(EntryView::from).collect(),
        next_entries,
    };
    Ok(Html(page.render()?))
}

/// A CSV field, quoted when it holds a separator, quote or line break; a leading
/// formula character is defused (spreadsheets would run it).
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) && text.parse::<i64>().is_err() { format!("'{text}") } else { text.to_string() };
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
