//! `/events`: the signed-in team's live stream for its pages (server-sent events, the
//! session cookie as credential — browsers' `EventSource` sends no headers). It sends
//! what a page shows of the team as it changes, drawn by the same code as the page:
//! `team` (the header's summary and the overview's cards, JSON) and `job` (a job row of
//! the lists, its HTML, for each job the page follows with `?jobs=id,…`, until it ends).
//! It looks again whenever this process commits an append and at least every
//! [`LOOK_EVERY`] (other processes' commits wake nothing here), sends only what changed,
//! and ends after [`STREAM_FOR`]; `EventSource` then reconnects, which checks the
//! session again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::errors::WebError;
use super::jobs::JobRow;
use super::layout::Layout;
use super::overview::Cards;
use super::session::Session;
use crate::queries;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// The longest wait between two looks.
const LOOK_EVERY: Duration = Duration::from_millis(700);
/// How long one connection lasts.
const STREAM_FOR: Duration = Duration::from_secs(300);
/// Most jobs one page follows.
const FOLLOWED_MAX: usize = 25;

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Comma-separated ids of the jobs the page shows that have not ended.
    jobs: Option<String>,
}

/// What the header and the overview's cards show.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct TeamNews {
    summary: String,
    #[serde(flatten)]
    cards: Cards,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct JobNews {
    job_id: String,
    html: String,
    /// False once the job ended: the page stops following it.
    live: bool,
}

#[derive(Template)]
#[template(path = "job_row.html")]
struct JobRowFragment {
    job: JobRow,
}

struct Watch {
    state: AppState,
    session: Session,
    commits: tokio::sync::watch::Receiver<u64>,
    followed: Vec<String>,
    last_team: Option<TeamNews>,
    last_rows: HashMap<String, String>,
    until: tokio::time::Instant,
    first: bool,
}

impl Watch {
    /// What changed since the last look, as events.
    async fn look(&mut self) -> Result<Vec<Event>, WebError> {
        let mut out = Vec::new();
        let team = self.session.team_id;
        let balance = self.state.balances.balance(&self.state.db, team).await?.ok_or(WebError::SignedOut)?;
        let usage = queries::jobs::plan_usage(&self.state.db, team).await?.ok_or(WebError::SignedOut)?;
        let news = TeamNews { summary: Layout::team_summary(&balance), cards: Cards::of(&balance, &usage) };
        if self.last_team.as_ref() != Some(&news) {
            out.push(Event::default().event("team").data(serde_json::to_string(&news).unwrap_or_default()));
            self.last_team = Some(news);
        }
        if !self.followed.is_empty() {
            for item in queries::jobs::items(&self.state.db, team, &self.followed).await? {
                let row = JobRow::from(&item);
                let live = row.live;
                let html = JobRowFragment { job: row }.render()?;
                let job_id = item.job.job_id;
                if !live {
                    self.followed.retain(|id| *id != job_id);
                }
                // The first look sends every row: the job may have moved on between the
                // page's drawing and this connection.
                if self.last_rows.get(&job_id) != Some(&html) {
                    self.last_rows.insert(job_id.clone(), html.clone());
                    let news = JobNews { job_id, html, live };
                    out.push(Event::default().event("job").data(serde_json::to_string(&news).unwrap_or_default()));
                }
            }
        }
        Ok(out)
    }

    /// Waits for a commit of this process or the next look.
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.commits.changed() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

async fn events(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let followed: Vec<String> = query
        .jobs
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .take(FOLLOWED_MAX)
        .map(str::to_string)
        .collect();
    let commits = state.store.subscribe_commits();
    let watch = Watch {
        state,
        session,
        commits,
        followed,
        last_team: None,
        last_rows: HashMap::new(),
        until: tokio::time::Instant::now() + STREAM_FOR,
        first: true,
    };
    let stream = futures::stream::unfold(watch, |mut watch| async move {
        loop {
            if tokio::time::Instant::now() >= watch.until {
                return None;
            }
            if !std::mem::take(&mut watch.first) {
                watch.wait().await;
            }
            match watch.look().await {
                Ok(events) if events.is_empty() => continue,
                Ok(events) => return Some((futures::stream::iter(events.into_iter().map(Ok::<Event, Infallible>)), watch)),
                // The database is away or the key revoked: end; the browser reconnects
                // (and a signed-out session gets no stream).
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}
