//! Which of the team's jobs a list shows and where a page of it starts: read once from
//! what a person or a client sent (the pages' query string, the API's parameters), so
//! both doors refuse the same filter the same way and page the same list.

use chrono::{DateTime, Days, NaiveDate, Utc};
use domain::jobs::JobStatus;
use domain::Operation;

use super::{JobListItem, JobView};

/// A filter as sent: every value optional, an empty one meaning "any".
#[derive(Debug, Default, Clone, Copy)]
pub struct JobFilterInput<'a> {
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub model_id: Option<&'a str>,
    /// Words the prompt (a model creation's description) contains, any case.
    pub search: Option<&'a str>,
    /// First day (UTC, `YYYY-MM-DD`) a job was queued on.
    pub from: Option<&'a str>,
    /// Last day (UTC, `YYYY-MM-DD`, included) a job was queued on.
    pub to: Option<&'a str>,
}

/// A filter that was read: each value known to be one the list can match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<Operation>,
    pub model_id: Option<String>,
    pub search: Option<String>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// Why a filter cannot be read: the parameter and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct FilterError {
    /// The parameter, as the API and the page's form name it.
    pub field: &'static str,
    pub reason: String,
}

fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn date(field: &'static str, value: Option<&str>) -> Result<Option<NaiveDate>, FilterError> {
    given(value)
        .map(|text| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| FilterError { field, reason: format!("must be a date as YYYY-MM-DD, not {text:?}") })
        })
        .transpose()
}

impl JobFilter {
    pub fn parse(input: &JobFilterInput<'_>) -> Result<JobFilter, FilterError> {
        let status = given(input.status)
            .map(|s| {
                JobStatus::parse(s).ok_or_else(|| FilterError {
                    field: "status",
                    reason: "must be one of queued, dispatched, running, completed, failed, cancelled".into(),
                })
            })
            .transpose()?;
        let kinds = || Operation::ALL.map(|o| o.as_str()).join(", ");
        let kind = given(input.kind)
            .map(|k| k.parse::<Operation>().map_err(|_| FilterError { field: "kind", reason: format!("must be one of {}", kinds()) }))
            .transpose()?;
        let model_id = given(input.model_id)
            .map(|m| {
                m.parse::<domain::ModelId>().map(|id| id.to_string()).map_err(|_| FilterError { field: "model_id", reason: "is not a model id".into() })
            })
            .transpose()?;
        // Searched text follows the prompt's own rule (bounded, no control characters).
        let search = given(input.search)
            .map(|q| domain::text::Prompt::parse(q).map(|p| p.into_string()).map_err(|e| FilterError { field: "q", reason: e.to_string() }))
            .transpose()?;
        let (from, to) = (date("from", input.from)?, date("to", input.to)?);
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(FilterError { field: "to", reason: format!("({to}) is before from ({from})") });
            }
        }
        Ok(JobFilter { status, kind, model_id, search, from, to })
    }

    /// The `LIKE` pattern of the search, lower-cased, its wildcards taken literally.
    pub fn like_pattern(&self) -> Option<String> {
        self.search.as_deref().map(crate::queries::like_pattern)
    }

    /// The first instant of `from`.
    pub fn from_instant(&self) -> Option<DateTime<Utc>> {
        self.from.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
    }

    /// The first instant after `to` (the whole of its day is included).
    pub fn until_instant(&self) -> Option<DateTime<Utc>> {
        self.to.and_then(|d| d.checked_add_days(Days::new(1))).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc())
    }

    /// The filter as query-string pairs (empty values left out), for links that keep it.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let mut push = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                pairs.push((name, value));
            }
        };
        push("status", self.status.map(|s| s.as_str().to_string()));
        push("kind", self.kind.map(|k| k.as_str().to_string()));
        push("model_id", self.model_id.clone());
        push("q", self.search.clone());
        push("from", self.from.map(|d| d.to_string()));
        push("to", self.to.map(|d| d.to_string()));
        pairs
    }
}

/// A job's place in the list (newest first): when it was queued, then its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub at: DateTime<Utc>,
    pub job_id: String,
}

impl Position {
    pub fn of(job: &JobView) -> Position {
        Position { at: job.queued_at, job_id: job.job_id.clone() }
    }

    /// `{rfc3339}|{id}`: the text a cursor carries.
    pub fn to_text(&self) -> String {
        format!("{}|{}", self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), self.job_id)
    }

    pub fn from_text(text: &str) -> Option<Position> {
        let (at, id) = text.split_once('|')?;
        let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
        Some(Position { at, job_id: id.to_string() })
    }
}

/// Which page of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The newest jobs.
    First,
    /// The jobs just older than the position.
    Older(Position),
    /// The jobs just newer than the position (shown newest first too).
    Newer(Position),
}

/// Prefix of a newer-page cursor's text; an older page's is the bare position (the
/// cursors issued before paging went both ways).
const NEWER: &str = "newer|";

impl Page {
    pub fn to_text(&self) -> Option<String> {
        match self {
            Page::First => None,
            Page::Older(p) => Some(p.to_text()),
            Page::Newer(p) => Some(format!("{NEWER}{}", p.to_text())),
        }
    }

    /// A page from a cursor's text; `None` for text that is not one.
    pub fn from_text(text: &str) -> Option<Page> {
        match text.strip_prefix(NEWER) {
            Some(rest) => Position::from_text(rest).map(Page::Newer),
            None => Position::from_text(text).map(Page::Older),
        }
    }
}

/// A page of jobs, newest first, with where the older and the newer pages start (none
/// when there is nothing beyond).
#[derive(Debug, Clone)]
pub struct JobsPage {
    pub items: Vec<JobListItem>,
    pub older: Option<Position>,
    pub newer: Option<Position>,
}

impl JobsPage {
    pub fn older_page(&self) -> Option<Page> {
        self.older.clone().map(Page::Older)
    }

    pub fn newer_page(&self) -> Option<Page> {
        self.newer.clone().map(Page::Newer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: JobFilterInput<'_>, expected: Result<(), &str>) {
        match (JobFilter::parse(&input), expected) {
            (Ok(_), Ok(())) => {}
            (Err(error), Err(field)) => assert_eq!(error.field, field, "{error}"),
            (got, want) => panic!("{input:?}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn filters_are_read_once_and_bad_values_name_their_field() {
        check(JobFilterInput::default(), Ok(()));
        check(JobFilterInput { status: Some("running"), kind: Some("image_generation"), ..Default::default() }, Ok(()));
        check(JobFilterInput { status: Some(""), kind: Some(" "), from: Some(""), ..Default::default() }, Ok(()));
        check(JobFilterInput { status: Some("done"), ..Default::default() }, Err("status"));
        check(JobFilterInput { kind: Some("painting"), ..Default::default() }, Err("kind"));
        check(JobFilterInput { model_id: Some("nope"), ..Default::default() }, Err("model_id"));
        check(JobFilterInput { from: Some("2026-13-01"), ..Default::default() }, Err("from"));
        check(JobFilterInput { to: Some("yesterday"), ..Default::default() }, Err("to"));
        check(JobFilterInput { from: Some("2026-12-02"), to: Some("2026-12-01"), ..Default::default() }, Err("to"));
        check(JobFilterInput { search: Some("a\u{0}b"), ..Default::default() }, Err("q"));
        let long = "x".repeat(domain::text::PROMPT_CHARS_MAX + 1);
        check(JobFilterInput { search: Some(&long), ..Default::default() }, Err("q"));
    }

    #[test]
    fn search_wildcards_are_literal_and_the_last_day_is_included() {
        let filter = JobFilter::parse(&JobFilterInput { search: Some("50%_Off\\"), from: Some("2026-12-01"), to: Some("2026-12-01"), ..Default::default() })
            .expect("filter");
        assert_eq!(filter.like_pattern().as_deref(), Some("%50\\%\\_off\\\\%"));
        assert_eq!(filter.from_instant().map(|t| t.to_rfc3339()), Some("2026-12-01T00:00:00+00:00".into()));
        assert_eq!(filter.until_instant().map(|t| t.to_rfc3339()), Some("2026-12-02T00:00:00+00:00".into()));
    }

    #[test]
    fn pages_round_trip_through_text() {
        let at = DateTime::from_timestamp(1_790_000_000, 5_000).expect("instant");
        let position = Position { at, job_id: "job-1".into() };
        for page in [Page::Older(position.clone()), Page::Newer(position)] {
            assert_eq!(Page::from_text(&page.to_text().expect("text")), Some(page));
        }
        assert_eq!(Page::from_text("nonsense"), None);
        assert_eq!(Page::from_text("newer|nonsense"), None);
    }
}
