//! `/history/jobs.csv` and `/history/jobs.json`: the team's jobs that the list's filter
//! lets through — the same filter, read by the same rule, as the page and the API —
//! newest first, streamed a batch at a time (nothing holds the whole export), up to
//! [`EXPORT_ROWS_MAX`] rows. The JSON is an array of the API list's items.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::web::errors::WebError;
use crate::web::session::Session;
use super::{defused, JobsQuery};
use crate::queries;
use crate::queries::jobs::{JobFilter, JobListItem, Page};
use crate::state::AppState;

/// Rows read per query.
const EXPORT_BATCH: usize = 500;
/// The most rows one export holds.
const EXPORT_ROWS_MAX: usize = 100_000;

#[derive(Clone, Copy)]
enum Format {
    Csv,
    Json,
}

const CSV_HEADER: [&str; 12] =
    ["job_id", "queued_at", "finished_at", "kind", "status", "model_id", "model_name", "prompt", "cost_credits", "duration_seconds", "attempt", "error"];

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One batch in the format; `first`: the batch that opens the export.
fn encode(format: Format, items: &[JobListItem], first: bool) -> Result<Vec<u8>, String> {
    match format {
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            if first {
                writer.write_record(CSV_HEADER).map_err(|e| e.to_string())?;
            }
            for item in items {
                let job = &item.job;
                let record = [
                    job.job_id.clone(),
                    rfc3339(job.queued_at),
                    job.finished_at.map(rfc3339).unwrap_or_default(),
                    job.kind.clone(),
                    job.status.clone(),
                    job.model_id.clone(),
                    defused(item.model_name.as_deref().unwrap_or_default()),
                    defused(item.prompt.as_deref().unwrap_or_default()),
                    job.cost_credits.to_string(),
                    item.duration().map(|d| format!("{:.3}", d.num_milliseconds() as f64 / 1_000.0)).unwrap_or_default(),
                    job.attempt.to_string(),
                    defused(job.error.as_deref().unwrap_or_default()),
                ];
                writer.write_record(&record).map_err(|e| e.to_string())?;
            }
            writer.into_inner().map_err(|e| e.to_string())
        }
        Format::Json => {
            let mut out = Vec::new();
            for (index, item) in items.iter().enumerate() {
                if !(first && index == 0) {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, item).map_err(|e| e.to_string())?;
            }
            Ok(out)
        }
    }
}

struct Cursor {
    db: infrastructure::db::Database,
    team: domain::TeamId,
    filter: JobFilter,
    next: Option<Page>,
    rows: usize,
}

/// The export as a stream of chunks: batches of the list, each read after the last was
/// sent. A read that fails ends the body early (the client sees a cut download).
fn export(cursor: Cursor, format: Format) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let open = match format {
        Format::Json => Some(Bytes::from_static(b"[")),
        Format::Csv => None,
    };
    let batches = futures::stream::unfold(cursor, move |mut cursor| async move {
        let page = cursor.next.take()?;
        let first = page == Page::First;
        let rows = EXPORT_BATCH.min(EXPORT_ROWS_MAX - cursor.rows);
        let found = match queries::jobs::page(&cursor.db, cursor.team, &cursor.filter, &page, rows).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "jobs export: a batch could not be read");
                return Some((Err(std::io::Error::other("read failed")), cursor));
            }
        };
        cursor.rows += found.items.len();
        cursor.next = found.older_page().filter(|_| cursor.rows < EXPORT_ROWS_MAX);
        let chunk = encode(format, &found.items, first).map(Bytes::from).map_err(std::io::Error::other);
        Some((chunk, cursor))
    });
    let close = match format {
        Format::Json => Some(Bytes::from_static(b"]\n")),
        // A CSV of no rows still names its columns.
        Format::Csv => None,
    };
    futures::stream::iter(open.map(Ok)).chain(batches).chain(futures::stream::iter(close.map(Ok)))
}

async fn respond(state: AppState, session: Session, query: JobsQuery, format: Format) -> Result<Response, WebError> {
    let filter = query.filter().map_err(WebError::Refused)?;
    let db = state.db.clone();
    let cursor = Cursor { db, team: session.team_id, filter, next: Some(Page::First), rows: 0 };
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "kiln-jobs.csv"),
        Format::Json => ("application/json", "kiln-jobs.json"),
    };
    let headers = [(header::CONTENT_TYPE, content_type.to_string()), (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))];
    Ok((headers, Body::from_stream(export(cursor, format))).into_response())
}

pub async fn jobs_csv(State(state): State<AppState>, session: Session, Query(query): Query<JobsQuery>) -> Result<Response, WebError> {
    respond(state, session, query, Format::Csv).await
}

pub async fn jobs_json(State(state): State<AppState>, session: Session, Query(query): Query<JobsQuery>) -> Result<Response, WebError> {
    respond(state, session, query, Format::Json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(prompt: &str) -> JobListItem {
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("instant");
        JobListItem {
            job: queries::jobs::JobView {
                job_id: "j1".into(),
                kind: "image_generation".into(),
                status: "completed".into(),
                model_id: "m1".into(),
                cost_credits: 12,
                price_version: 1,
                attempt: 1,
                error: None,
                images_expired: false,
                queued_at: at,
                dispatched_at: Some(at),
                finished_at: Some(at + chrono::Duration::milliseconds(2_500)),
                updated_at: at,
            },
            model_name: Some("Ava".into()),
            prompt: Some(prompt.into()),
        }
    }

    #[test]
    fn batches_join_into_one_csv_and_one_json_array() {
        let items = [item("=cmd, \"quoted\"\nline"), item("plain")];
        let mut csv_bytes = encode(Format::Csv, &items[..1], true).expect("csv");
        csv_bytes.extend(encode(Format::Csv, &items[1..], false).expect("csv"));
        let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
        assert_eq!(reader.headers().expect("header").iter().collect::<Vec<_>>(), CSV_HEADER.to_vec());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][7], "'=cmd, \"quoted\"\nline", "a formula is defused, the rest kept");
        assert_eq!(&rows[1][9], "2.500");
        let mut json = b"[".to_vec();
        json.extend(encode(Format::Json, &items[..1], true).expect("json"));
        json.extend(encode(Format::Json, &items[1..], false).expect("json"));
        json.extend(b"]");
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&json).expect("one array");
        assert_eq!(parsed[1]["prompt"], "plain");
        assert_eq!(parsed[0]["model_name"], "Ava");
    }
}
