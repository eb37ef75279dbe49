//! The auditor's view of the credit ledger, from events alone (never from read models):
//!
//! - [`replay`]: one team's balance, open reservations, blocks and ledger entries as of
//!   an instant (folding the stream's prefix of events that occurred at or before it);
//! - [`verify`]: every ledger invariant over the whole store (or one team), plus the hash
//!   chain of every TeamCredits stream, naming each violating event ([`verify_observed`]
//!   reports its progress);
//! - [`operator_acts`]: operators' acts outside any team's ledger (dispatch for everyone,
//!   price versions, catalog changes, worker drains), each with who and why.
//!
//! The folding is pure ([`ledger::TeamLedger`], over [`crate::credit_fold`]'s effects, the
//! read models' own); this module only reads events, in one
//! consistent snapshot (PostgreSQL `REPEATABLE READ`, a SQLite read transaction), so a
//! job completed with its deduction in one append is never seen half-way.

mod acts;
pub mod ledger;
mod read;

pub use acts::{operator_acts, GlobalAct};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use domain::jobs::JobEvent;
use domain::TeamCreditsEvent;
use infrastructure::db::Database;
use infrastructure::event_store::chain::{event_digest, hash_matches, CHAINED_AGGREGATE_TYPE, GENESIS_HASH};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use ledger::{BlockView, LedgerEntry, ReservationEnd, ReservationView, TeamLedger, Totals};
use read::{AuditEvent, Pages, Snapshot, Streams};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no such team: {0}")]
    TeamNotFound(String),
    #[error("the checking thread failed: {0}")]
    Checker(String),
    #[error("an event does not decode: {0}")]
    Undecodable(String),
}

/// One broken rule, naming the event where it shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// Stable slug: `hash-mismatch`, `event-missing`, `negative-available`, …
    pub kind: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: Option<i64>,
    pub detail: String,
}

impl Violation {
    pub fn event(aggregate_type: &str, aggregate_id: &str, sequence: i64, kind: &str, detail: String) -> Self {
        Self {
            kind: kind.to_string(),
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence: Some(sequence),
            detail,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.kind, self.aggregate_type, self.aggregate_id)?;
        if let Some(sequence) = self.sequence {
            write!(f, " #{sequence}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// A team's ledger as of an instant.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub team_id: String,
    pub as_of: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub plan: Option<String>,
    /// Events folded, and the sequence of the last one.
    pub events: u64,
    pub last_sequence: i64,
    pub available: i64,
    pub reserved: i64,
    pub totals: Totals,
    pub grants: Vec<BlockView>,
    pub open_reservations: Vec<ReservationView>,
    pub entries: Vec<LedgerEntry>,
    /// Rules broken by the folded events (an empty list for a sound ledger).
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub teams: u64,
    pub team_events: u64,
    pub jobs: u64,
    pub job_events: u64,
    pub violations: Vec<Violation>,
    pub elapsed_ms: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks a stream's hash chain: sequences contiguous from 1, each `prev_hash` equal to the
/// predecessor's `hash`, each `hash` equal to the recomputed one.
#[derive(Debug)]
struct ChainCheck {
    aggregate_id: String,
    expected_sequence: i64,
    prev_hash: String,
}

impl ChainCheck {
    fn new(aggregate_id: &str) -> Self {
        Self { aggregate_id: aggregate_id.to_string(), expected_sequence: 1, prev_hash: GENESIS_HASH.to_string() }
    }

    /// `payload` is the event's payload parsed (`null` when it is not JSON).
    fn check(&mut self, event: &AuditEvent, payload: &Value, violations: &mut Vec<Violation>) {
        let name = |sequence, kind: &str, detail: String| Violation::event(CHAINED_AGGREGATE_TYPE, &self.aggregate_id, sequence, kind, detail);
        if event.sequence > self.expected_sequence {
            let missing = if event.sequence - self.expected_sequence == 1 {
                format!("event #{} is missing (deleted?)", self.expected_sequence)
            } else {
                format!("events #{} to #{} are missing (deleted?)", self.expected_sequence, event.sequence - 1)
            };
            violations.push(name(self.expected_sequence, "event-missing", missing));
        }
        self.expected_sequence = event.sequence + 1;
        let (Some(prev), Some(hash)) = (&event.prev_hash, &event.hash) else {
            violations.push(name(event.sequence, "hash-missing", "no prev_hash/hash in the metadata".into()));
            self.prev_hash.clear();
            return;
        };
        if *prev != self.prev_hash {
            let detail = "prev_hash is not the hash of the event before it (an event was deleted, inserted or reordered)";
            violations.push(name(event.sequence, "chain-broken", detail.into()));
        }
        let digest = event_digest(CHAINED_AGGREGATE_TYPE, &event.aggregate_id, event.sequence, &event.event_type, &event.event_version, payload, prev);
        if !hash_matches(hash, digest) {
            let detail = format!("{} does not match its recorded hash (edited or moved)", event.event_type);
            violations.push(name(event.sequence, "hash-mismatch", detail));
        }
        self.prev_hash.clone_from(hash);
    }
}

/// An event's payload decoded as `E`, which must be the type it was recorded as (the
/// checks of `decode_event`, without copying the payload).
fn decode_payload<E: DomainEvent + DeserializeOwned>(event: &AuditEvent, payload: &Value) -> Result<E, String> {
    let decoded = E::deserialize(payload).map_err(|e| format!("payload of {} does not decode: {e}", event.event_type))?;
    if decoded.event_type() != event.event_type {
        return Err(format!("recorded as {} but the payload is {}", event.event_type, decoded.event_type()));
    }
    Ok(decoded)
}

/// A TeamCredits event parsed once: the payload (for the hash) and the decoded event.
struct TeamEvent<'e> {
    event: &'e AuditEvent,
    payload: Value,
    decoded: Result<TeamCreditsEvent, String>,
}

impl<'e> TeamEvent<'e> {
    fn parse(event: &'e AuditEvent) -> Self {
        let payload: Value = serde_json::from_str(&event.payload).unwrap_or_default();
        let decoded = decode_payload::<TeamCreditsEvent>(event, &payload);
        Self { event, payload, decoded }
    }

    /// Checks the chain link, then folds the event into `ledger`.
    fn fold(self, ledger: &mut TeamLedger, chain: &mut ChainCheck) {
        chain.check(self.event, &self.payload, &mut ledger.violations);
        match self.decoded {
            Ok(decoded) => ledger.apply(self.event.sequence, decoded, self.event.hash.as_deref()),
            Err(detail) => {
                let violation = Violation::event(CHAINED_AGGREGATE_TYPE, &ledger.team_id, self.event.sequence, "undecodable", detail);
                ledger.violations.push(violation);
            }
        }
    }
}

/// Folds `team`'s events that occurred at or before `as_of` (all when `None`). The fold
/// stops at the first later event: the report is always a state the stream really passed
/// through.
pub async fn replay(db: &Database, team: &str, as_of: Option<DateTime<Utc>>) -> Result<ReplayReport, AuditError> {
    let mut snapshot = Snapshot::begin(db).await?;
    let events = snapshot.stream(CHAINED_AGGREGATE_TYPE, team).await?;
    snapshot.end().await?;
    if events.is_empty() {
        return Err(AuditError::TeamNotFound(team.to_string()));
    }
    let (mut ledger, mut chain) = (TeamLedger::new(team), ChainCheck::new(team));
    let mut folded = 0;
    for event in &events {
        let parsed = TeamEvent::parse(event);
        if let (Some(as_of), Ok(decoded)) = (as_of, &parsed.decoded) {
            if decoded.occurred_at() > as_of {
                break;
            }
        }
        parsed.fold(&mut ledger, &mut chain);
        folded += 1;
    }
    Ok(ReplayReport {
        team_id: team.to_string(),
        as_of,
        name: ledger.name.clone(),
        plan: ledger.plan.clone(),
        events: folded,
        last_sequence: ledger.last_sequence,
        available: ledger.balance.available,
        reserved: ledger.balance.reserved,
        totals: ledger.balance.totals,
        grants: ledger.open_blocks(),
        open_reservations: ledger.open_reservations(),
        entries: std::mem::take(&mut ledger.entries),
        violations: std::mem::take(&mut ledger.violations),
    })
}

/// How a job ended, as its own stream says.
struct JobFacts {
    team_id: String,
    cost: i64,
    status: &'static str,
}

/// Reservations of every team: id → (team, amount, end).
type Reservations = HashMap<String, (Arc<str>, i64, ReservationEnd), foldhash::fast::RandomState>;

/// Everything `verify` learns from the streams, checked stream by stream (sans-I/O, so
/// several can run on threads of their own while the next page is read).
#[derive(Default)]
struct Checker {
    report: VerifyReport,
    reservations: Reservations,
    /// (job id, facts, sequence of its first event).
    jobs: Vec<(String, Option<JobFacts>, i64)>,
    /// After each batch this checker was dealt: its violations and jobs so far, so that
    /// [`Checker::merge`] can put every batch's findings back in reading order.
    marks: Vec<(usize, usize)>,
}

impl Checker {
    fn team_stream(&mut self, events: &[AuditEvent]) {
        let Some(first) = events.first() else { return };
        // Only the balances and violations matter here: no ledger entries kept.
        let (mut ledger, mut chain) = (TeamLedger::without_entries(&first.aggregate_id), ChainCheck::new(&first.aggregate_id));
        for event in events {
            TeamEvent::parse(event).fold(&mut ledger, &mut chain);
        }
        self.report.teams += 1;
        self.report.team_events += events.len() as u64;
        self.report.violations.append(&mut ledger.violations);
        let team: Arc<str> = Arc::from(ledger.team_id.as_str());
        for (id, r) in ledger.reservations {
            self.reservations.insert(id, (team.clone(), r.amount, r.state));
        }
    }

    fn job_stream(&mut self, events: &[AuditEvent]) {
        let Some(first) = events.first() else { return };
        self.report.jobs += 1;
        self.report.job_events += events.len() as u64;
        let facts = job_facts(events, &mut self.report.violations);
        self.jobs.push((first.aggregate_id.clone(), facts, first.sequence));
    }

    /// Whole streams of one kind, in reading order.
    fn batch(&mut self, batch: &Batch) {
        for stream in &batch.streams {
            match batch.kind {
                Page::Team => self.team_stream(stream),
                Page::Job => self.job_stream(stream),
            }
        }
        self.marks.push((self.report.violations.len(), self.jobs.len()));
    }

    /// One checker from those that were dealt batches round-robin (batch `n` to checker
    /// `n % checkers.len()`): counts added, reservations joined (the streams are disjoint),
    /// violations and jobs in the order their batches were read — the report one checker
    /// would have made alone.
    fn merge(checkers: Vec<Checker>) -> Checker {
        let mut merged = Checker::default();
        let batches: usize = checkers.iter().map(|c| c.marks.len()).sum();
        let mut parts = Vec::new();
        for checker in checkers {
            let r = &checker.report;
            merged.report.teams += r.teams;
            merged.report.team_events += r.team_events;
            merged.report.jobs += r.jobs;
            merged.report.job_events += r.job_events;
            merged.reservations.extend(checker.reservations);
            // Each checker's findings, taken batch by batch from the front.
            parts.push((checker.marks, checker.report.violations.into_iter(), checker.jobs.into_iter(), 0usize, 0usize));
        }
        let count = parts.len();
        for n in 0..batches {
            let (marks, violations, jobs, violations_at, jobs_at) = &mut parts[n % count];
            let (violations_end, jobs_end) = marks[n / count];
            merged.report.violations.extend(violations.by_ref().take(violations_end - *violations_at));
            merged.jobs.extend(jobs.by_ref().take(jobs_end - *jobs_at));
            (*violations_at, *jobs_at) = (violations_end, jobs_end);
        }
        merged
    }

    fn finish(mut self) -> VerifyReport {
        for (job_id, facts, first_sequence) in std::mem::take(&mut self.jobs) {
            let Some(facts) = facts else { continue };
            check_job(&job_id, &facts, first_sequence, &self.reservations, &mut self.report.violations);
        }
        self.report
    }
}

/// Whole streams of one kind, dealt to one checker.
struct Batch {
    kind: Page,
    streams: Vec<Vec<AuditEvent>>,
    events: u64,
}

/// Events gathered into one batch before it is dealt (whole streams: a longer stream is a
/// batch of its own).
const BATCH_EVENTS: u64 = 2_000;

/// Splits pages into whole streams and deals them in batches, round-robin, to checkers
/// on threads of their own.
struct Dealer {
    checkers: Vec<std::sync::mpsc::SyncSender<Batch>>,
    next: usize,
    streams: Streams,
    batch: Batch,
}

impl Dealer {
    fn new(checkers: Vec<std::sync::mpsc::SyncSender<Batch>>) -> Self {
        Self { checkers, next: 0, streams: Streams::default(), batch: Batch { kind: Page::Team, streams: Vec::new(), events: 0 } }
    }

    fn page(&mut self, kind: Page, page: Vec<AuditEvent>) -> Result<(), AuditError> {
        if kind != self.batch.kind {
            self.end_streams()?;
            self.batch.kind = kind;
        }
        let mut full = Vec::new();
        for event in page {
            self.streams.push_owned(event, |stream| full.push(stream));
        }
        for stream in full {
            self.stream(stream)?;
        }
        Ok(())
    }

    fn stream(&mut self, stream: Vec<AuditEvent>) -> Result<(), AuditError> {
        self.batch.events += stream.len() as u64;
        self.batch.streams.push(stream);
        if self.batch.events >= BATCH_EVENTS {
            self.deal()?;
        }
        Ok(())
    }

    /// The last stream of a kind, and its batch.
    fn end_streams(&mut self) -> Result<(), AuditError> {
        if let Some(stream) = self.streams.take() {
            self.stream(stream)?;
        }
        if !self.batch.streams.is_empty() {
            self.deal()?;
        }
        Ok(())
    }

    fn deal(&mut self) -> Result<(), AuditError> {
        let batch = Batch { kind: self.batch.kind, streams: std::mem::take(&mut self.batch.streams), events: std::mem::take(&mut self.batch.events) };
        let checker = &self.checkers[self.next % self.checkers.len()];
        self.next += 1;
        checker.send(batch).map_err(|_| AuditError::Checker("a checking thread stopped".into()))
    }
}

/// Checks the pages `next_page` hands over (in reading order) on `threads` checking
/// threads fed by this one, and merges what they found.
fn check_pages(
    threads: usize,
    progress: Option<Arc<Progress>>,
    mut next_page: impl FnMut() -> Option<(Page, Vec<AuditEvent>)>,
) -> Result<Checker, AuditError> {
    let (senders, checkers): (Vec<_>, Vec<_>) = (0..threads.max(1))
        .map(|_| {
            let (batches_tx, batches_rx) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_AHEAD);
            let progress = progress.clone();
            let checker = std::thread::spawn(move || {
                let mut checker = Checker::default();
                for batch in batches_rx {
                    checker.batch(&batch);
                    if let Some(progress) = &progress {
                        progress.events_checked.fetch_add(batch.events, Ordering::Relaxed);
                    }
                }
                checker
            });
            (batches_tx, checker)
        })
        .unzip();
    let mut dealer = Dealer::new(senders);
    let mut dealt = Ok(());
    while let Some((kind, page)) = next_page() {
        dealt = dealer.page(kind, page);
        if dealt.is_err() {
            break;
        }
    }
    let dealt = dealt.and_then(|()| dealer.end_streams());
    // Closing the channels ends the checkers.
    drop(dealer);
    let checkers: Result<Vec<Checker>, AuditError> =
        checkers.into_iter().map(|thread| thread.join().map_err(|_| AuditError::Checker("a checking thread panicked".into()))).collect();
    dealt.and(checkers.map(Checker::merge))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Team,
    Job,
}

/// Pages read ahead of the dealing thread.
const PAGES_AHEAD: usize = 4;
/// Batches dealt ahead of each checking thread.
const BATCHES_AHEAD: usize = 4;
/// Checking threads at most (one per core up to this).
const CHECKERS_MAX: usize = 8;

/// How far a whole-log [`verify_observed`] has come: events checked of those to check
/// (counted in its snapshot first), for a page to show while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    events_total: AtomicU64,
    events_checked: AtomicU64,
}

impl Progress {
    /// Events the run checks in all (0 until counted).
    pub fn events_total(&self) -> u64 {
        self.events_total.load(Ordering::Relaxed)
    }

    pub fn events_checked(&self) -> u64 {
        self.events_checked.load(Ordering::Relaxed)
    }
}

/// Checks every ledger invariant and every hash chain over the whole store, or over one
/// team (its stream and the jobs its reservations name).
pub async fn verify(db: &Database, team: Option<&str>) -> Result<VerifyReport, AuditError> {
    verify_observed(db, team, None).await
}

/// [`verify`], reporting its progress over the whole store into `progress`.
pub async fn verify_observed(db: &Database, team: Option<&str>, progress: Option<Arc<Progress>>) -> Result<VerifyReport, AuditError> {
    let started = std::time::Instant::now();
    let mut snapshot = Snapshot::begin(db).await?;
    let mut checker = Checker::default();
    match team {
        Some(team) => {
            let events = snapshot.stream(CHAINED_AGGREGATE_TYPE, team).await?;
            if events.is_empty() {
                return Err(AuditError::TeamNotFound(team.to_string()));
            }
            checker.team_stream(&events);
            let ids: Vec<String> = checker.reservations.keys().cloned().collect();
            for events in snapshot.streams("GenerationJob", &ids).await? {
                checker.job_stream(&events);
            }
        }
        None => {
            const TYPES: [(&str, Page); 2] = [(CHAINED_AGGREGATE_TYPE, Page::Team), ("GenerationJob", Page::Job)];
            if let Some(progress) = &progress {
                let total = snapshot.count_events(&TYPES.map(|(t, _)| t)).await?;
                progress.events_total.store(total, Ordering::Relaxed);
            }
            // Reading (this task, and the database), dealing whole streams (a thread) and
            // checking them (parse, hash, fold: threads of their own, one per core) overlap,
            // a bounded number of pages and batches apart.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, CHECKERS_MAX);
            let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel::<(Page, Vec<AuditEvent>)>(PAGES_AHEAD);
            let worker = tokio::task::spawn_blocking(move || check_pages(threads, progress, || pages_rx.blocking_recv()));
            for (n, (aggregate_type, kind)) in TYPES.into_iter().enumerate() {
                let mut pages = Pages::new(aggregate_type, n);
                while let Some(page) = snapshot.next_page(&mut pages).await? {
                    if pages_tx.send((kind, page)).await.is_err() {
                        break;
                    }
                }
            }
            drop(pages_tx);
            checker = worker.await.map_err(|e| AuditError::Checker(e.to_string()))??;
        }
    }
    snapshot.end().await?;
    let mut report = checker.finish();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn job_facts(events: &[AuditEvent], violations: &mut Vec<Violation>) -> Option<JobFacts> {
    let mut facts: Option<JobFacts> = None;
    for event in events {
        let payload: Value = serde_json::from_str(&event.payload).unwrap_or_default();
        let decoded = match decode_payload::<JobEvent>(event, &payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                violations.push(Violation::event("GenerationJob", &event.aggregate_id, event.sequence, "undecodable", error));
                continue;
            }
        };
        match (decoded, facts.as_mut()) {
            (JobEvent::JobQueued { team_id, cost, .. }, _) => {
                facts = Some(JobFacts { team_id: team_id.to_string(), cost: cost.get(), status: "queued" });
            }
            (JobEvent::JobCompleted { .. }, Some(f)) => f.status = "completed",
            (JobEvent::JobFailed { .. }, Some(f)) => f.status = "failed",
            (JobEvent::JobCancelled { .. }, Some(f)) => f.status = "cancelled",
            (JobEvent::JobDispatched { .. } | JobEvent::JobProgressed { .. }, Some(f)) => f.status = "active",
            (JobEvent::JobRetryScheduled { .. }, Some(f)) => f.status = "queued",
            _ => {}
        }
    }
    facts
}

/// Deductions match completed jobs, refunds match failed or cancelled ones, and a job
/// still in progress holds a pending reservation of its cost.
fn check_job(job_id: &str, facts: &JobFacts, first_sequence: i64, reservations: &Reservations, violations: &mut Vec<Violation>) {
    let mut violation = |kind: &str, detail: String| {
        violations.push(Violation::event("GenerationJob", job_id, first_sequence, kind, detail));
    };
    let Some((team, amount, state)) = reservations.get(job_id) else {
        violation("job-without-reservation", format!("job of team {} reserved no credits", facts.team_id));
        return;
    };
    if **team != *facts.team_id {
        violation("reservation-team-mismatch", format!("job of team {} reserved credits of team {team}", facts.team_id));
    }
    if *amount != facts.cost {
        violation("cost-mismatch", format!("job costs {} but reserved {amount}", facts.cost));
    }
    let expected = match facts.status {
        "completed" => ReservationEnd::Deducted,
        "failed" | "cancelled" => ReservationEnd::Refunded,
        _ => ReservationEnd::Pending,
    };
    if *state != expected {
        let detail = format!("job is {} but its reservation is {:?}, expected {:?}", facts.status, state, expected);
        violation("job-ledger-mismatch", detail.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aggregate_id: &str, sequence: i64, payload: &str) -> AuditEvent {
        AuditEvent {
            aggregate_id: aggregate_id.into(),
            sequence,
            event_type: "CreditsGranted".into(),
            event_version: "1".into(),
            payload: payload.into(),
            prev_hash: None,
            hash: None,
        }
    }

    /// Streams of teams and jobs of varied lengths (some spanning pages, some longer than a
    /// batch), every event breaking rules, so each stream's findings are many and ordered.
    fn pages() -> Vec<(Page, Vec<AuditEvent>)> {
        let mut teams = Vec::new();
        for team in 0..40 {
            for sequence in 1..=(1 + team * 97 % 2_600) {
                // A gap now and then: `event-missing` findings too.
                if sequence % 500 != 7 {
                    teams.push(event(&format!("team-{team:03}"), sequence as i64, "{}"));
                }
            }
        }
        let jobs: Vec<AuditEvent> = (0..300).flat_map(|job| (1..=3).map(move |s| event(&format!("job-{job:04}"), s, "not json"))).collect();
        let mut pages: Vec<(Page, Vec<AuditEvent>)> = teams.chunks(1_700).map(|c| (Page::Team, c.to_vec())).collect();
        pages.extend(jobs.chunks(250).map(|c| (Page::Job, c.to_vec())));
        pages
    }

    #[test]
    fn checking_threads_report_what_one_checker_reports_in_the_same_order() {
        let check = |threads| {
            let mut pages = pages().into_iter();
            check_pages(threads, None, || pages.next()).expect("checked").finish()
        };
        let alone = check(1);
        assert!(alone.violations.len() > 10_000, "the streams break rules: {}", alone.violations.len());
        assert_eq!((alone.teams, alone.jobs), (40, 300));
        for threads in [2, 3, 8] {
            let report = check(threads);
            assert_eq!(report.violations, alone.violations, "{threads} threads");
            assert_eq!((report.teams, report.team_events, report.jobs, report.job_events), (alone.teams, alone.team_events, alone.jobs, alone.job_events));
        }
    }
}
