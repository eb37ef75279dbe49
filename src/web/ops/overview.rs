//! `/ops`: the console's overview — charts of the last hour drawn from the read models
//! (jobs completed and failed per minute, queue depth by plan, running against plan
//! slots, credits reserved / deducted / refunded per minute, job run time p50/p95 per
//! minute), kept live by server-sent events (`/ops/overview/live` sends the charts again
//! every few seconds).

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use futures::Stream;

use super::charts::{self, Line, Minutes};
use super::layout::OpsLayout;
use super::session::OpsSession;
use crate::queries::ops;
use crate::state::AppState;
use crate::web::errors::WebError;

/// Minutes the charts cover.
const WINDOW_MINUTES: usize = 60;
/// How often the live overview sends the charts again.
const LIVE_EVERY: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops", get(page)).route("/ops/overview/live", get(live))
}

/// A drawn chart and what it shows, in words (for people who do not see it).
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub summary: String,
    pub svg: String,
}

#[derive(Template)]
#[template(path = "ops/charts.html")]
struct ChartsFragment {
    charts: Vec<Chart>,
}

#[derive(Template)]
#[template(path = "ops/overview.html")]
struct OverviewPage {
    layout: OpsLayout,
    /// The rendered `ChartsFragment` (the live stream sends the same markup).
    charts: String,
}

fn chart(id: &'static str, title: &'static str, summary: String, svg: Option<String>) -> Option<Chart> {
    svg.map(|svg| Chart { id, title, summary, svg })
}

/// Every chart of the overview, from the read models as they are now.
async fn charts(state: &AppState) -> Result<Vec<Chart>, WebError> {
    let window = Minutes { now: state.credits.now(), count: WINDOW_MINUTES };
    let ended = ops::ended_jobs(&state.db, window.start()).await?;
    let movements = ops::movements(&state.db, window.start()).await?;
    let plans = ops::load_by_plan(&state.db).await?;

    let count = |status: &'static str| window.sums(ended.iter().filter(|j| j.status == status), |j| j.finished_at, |_| 1.0);
    let (completed, failed) = (count("completed"), count("failed"));
    let credits = |entry_type: &'static str| window.sums(movements.iter().filter(|m| m.entry_type == entry_type), |m| m.occurred_at, |m| m.amount as f64);
    let (reserved, deducted, refunded) = (credits("reserved"), credits("deducted"), credits("refunded"));
    let run_secs: Vec<_> = ended
        .iter()
        .filter(|j| j.status == "completed")
        .filter_map(|j| j.dispatched_at.map(|d| (j.finished_at, (j.finished_at - d).num_milliseconds() as f64 / 1000.0)))
        .collect();
    let (p50, p95) = (window.quantiles(&run_secs, 0.5), window.quantiles(&run_secs, 0.95));
    let names: Vec<String> = plans.iter().map(|p| p.plan.clone()).collect();
    let queued: Vec<i64> = plans.iter().map(|p| p.queued).collect();
    let running: Vec<i64> = plans.iter().map(|p| p.running).collect();
    let slots: Vec<i64> = plans.iter().map(|p| p.slots).collect();
    let total = |v: &[f64]| v.iter().sum::<f64>() as i64;
    let last = |v: &[f64]| v.last().copied().unwrap_or(0.0);

    let drawn = [
        chart(
            "chart-jobs",
            "Jobs ended per minute",
            format!("Last hour: {} completed, {} failed.", total(&completed), total(&failed)),
            charts::lines("jobs", "jobs", &[Line { name: "completed", color: charts::GREEN_LINE, values: completed }, Line { name: "failed", color: charts::RED_LINE, values: failed }]),
        ),
        chart(
            "chart-queue",
            "Queue depth by plan",
            format!("Queued now: {}.", plans.iter().map(|p| format!("{} {}", p.plan, p.queued)).collect::<Vec<_>>().join(", ")),
            charts::bars("queue", &names, &queued, None),
        ),
        chart(
            "chart-slots",
            "Running jobs against plan slots",
            format!("Running now: {}.", plans.iter().map(|p| format!("{} {} of {}", p.plan, p.running, p.slots)).collect::<Vec<_>>().join(", ")),
            charts::bars("slots", &names, &running, Some(&slots)),
        ),
        chart(
            "chart-credits",
            "Credits per minute",
            format!("Last hour: {} reserved, {} deducted, {} refunded.", total(&reserved), total(&deducted), total(&refunded)),
            charts::lines(
                "credits",
                "credits",
                &[
                    Line { name: "reserved", color: charts::BLUE_LINE, values: reserved },
                    Line { name: "deducted", color: charts::GREEN_LINE, values: deducted },
                    Line { name: "refunded", color: charts::AMBER_LINE, values: refunded },
                ],
            ),
        ),
        chart(
            "chart-latency",
            "Job run time (provider) p50 / p95",
            format!("This minute: p50 {:.1} s, p95 {:.1} s (from dispatch to completion).", last(&p50), last(&p95)),
            charts::lines("latency", "seconds", &[Line { name: "p50", color: charts::BLUE_LINE, values: p50 }, Line { name: "p95", color: charts::RED_LINE, values: p95 }]),
        ),
    ];
    Ok(drawn.into_iter().flatten().collect())
}

async fn page(State(state): State<AppState>, session: OpsSession) -> Result<Html<String>, WebError> {
    let charts = ChartsFragment { charts: charts(&state).await? }.render()?;
    Ok(Html(OverviewPage { layout: OpsLayout::new(&session, "Operations", "overview"), charts }.render()?))
}

/// The charts again every [`LIVE_EVERY`], as `charts` events carrying their HTML.
async fn live(State(state): State<AppState>, _: OpsSession) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold(state, |state| async move {
        tokio::time::sleep(LIVE_EVERY).await;
        let html = match charts(&state).await {
            Ok(charts) => ChartsFragment { charts }.render().unwrap_or_default(),
            Err(_) => String::new(),
        };
        Some((Ok(Event::default().event("charts").data(html)), state))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
