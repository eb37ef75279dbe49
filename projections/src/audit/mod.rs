//! The auditor's view of the credit ledger, from events alone (never from read models):
//!
//! - [`replay`]: one team's balance, open reservations, blocks and ledger entries as of
//!   an instant (folding the stream's prefix of events that occurred at or before it);
//! - [`verify`]: every ledger invariant over the whole store (or one team), plus the hash
//!   chain of every TeamCredits stream, naming each violating event.
//!
//! The folding is pure ([`ledger::TeamLedger`]); this module only reads events, in one
//! consistent snapshot (PostgreSQL `REPEATABLE READ`, a SQLite read transaction), so a
//! job completed with its deduction in one append is never seen half-way.

pub mod ledger;
mod read;

use std::collections::HashMap;
use std::fmt;

use application::event_store::StoredEvent;
use chrono::{DateTime, Utc};
use domain::jobs::{GenerationJob, JobEvent};
use domain::TeamCredits;
use infrastructure::db::Database;
use infrastructure::event_store::chain::{event_hash, GENESIS_HASH};
use serde::Serialize;

use ledger::{BlockView, LedgerEntry, ReservationEnd, ReservationView, TeamLedger, Totals};
use read::Snapshot;

/// Events read per query.
const PAGE_SIZE: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no such team: {0}")]
    TeamNotFound(String),
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

#[derive(Debug, Clone, Serialize)]
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

    fn check(&mut self, event: &StoredEvent, violations: &mut Vec<Violation>) {
        let name = |sequence, kind: &str, detail: String| Violation::event(&event.aggregate_type, &self.aggregate_id, sequence, kind, detail);
        if event.sequence > self.expected_sequence {
            let missing = if event.sequence - self.expected_sequence == 1 {
                format!("event #{} is missing (deleted?)", self.expected_sequence)
            } else {
                format!("events #{} to #{} are missing (deleted?)", self.expected_sequence, event.sequence - 1)
            };
            violations.push(name(self.expected_sequence, "event-missing", missing));
        }
        self.expected_sequence = event.sequence + 1;
        let recorded = |key: &str| event.metadata.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(prev), Some(hash)) = (recorded("prev_hash"), recorded("hash")) else {
            violations.push(name(event.sequence, "hash-missing", "no prev_hash/hash in the metadata".into()));
            self.prev_hash = String::new();
            return;
        };
        if prev != self.prev_hash {
            let detail = "prev_hash is not the hash of the event before it (an event was deleted, inserted or reordered)";
            violations.push(name(event.sequence, "chain-broken", detail.into()));
        }
        let computed = event_hash(
            &event.aggregate_type,
            &event.aggregate_id,
            event.sequence,
            &event.event_type,
            &event.event_version,
            &event.payload,
            &prev,
        );
        if computed != hash {
            let detail = format!("{} does not match its recorded hash (edited or moved)", event.event_type);
            violations.push(name(event.sequence, "hash-mismatch", detail));
        }
        self.prev_hash = hash;
    }
}

/// Folds one event of a team stream into `ledger`, checking its chain link first.
fn fold_team_event(ledger: &mut TeamLedger, chain: &mut ChainCheck, event: &StoredEvent) {
    chain.check(event, &mut ledger.violations);
    match crate::decode::<TeamCredits>(event) {
        Ok(decoded) => {
            let hash = event.metadata.get("hash").and_then(|v| v.as_str()).map(str::to_string);
            ledger.apply(event.sequence, decoded, hash);
        }
        Err(error) => {
            let violation = Violation::event("TeamCredits", &ledger.team_id, event.sequence, "undecodable", error.to_string());
            ledger.violations.push(violation);
        }
    }
}

fn team_occurred_at(event: &StoredEvent) -> Option<DateTime<Utc>> {
    crate::decode::<TeamCredits>(event).ok().map(|e| e.occurred_at())
}

/// Folds `team`'s events that occurred at or before `as_of` (all when `None`). The fold
/// stops at the first later event: the report is always a state the stream really passed
/// through.
pub async fn replay(db: &Database, team: &str, as_of: Option<DateTime<Utc>>) -> Result<ReplayReport, AuditError> {
    let mut snapshot = Snapshot::begin(db).await?;
    let events = snapshot.stream("TeamCredits", team).await?;
    snapshot.end().await?;
    if events.is_empty() {
        return Err(AuditError::TeamNotFound(team.to_string()));
    }
    let (mut ledger, mut chain) = (TeamLedger::new(team), ChainCheck::new(team));
    let mut folded = 0;
    for event in &events {
        if let (Some(as_of), Some(at)) = (as_of, team_occurred_at(event)) {
            if at > as_of {
                break;
            }
        }
        fold_team_event(&mut ledger, &mut chain, event);
        folded += 1;
    }
    Ok(ReplayReport {
        team_id: team.to_string(),
        as_of,
        name: ledger.name.clone(),
        plan: ledger.plan.clone(),
        events: folded,
        last_sequence: ledger.last_sequence,
        available: ledger.available,
        reserved: ledger.reserved,
        totals: ledger.totals.clone(),
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
type Reservations = HashMap<String, (String, i64, ReservationEnd)>;

/// Checks every ledger invariant and every hash chain over the whole store, or over one
/// team (its stream and the jobs its reservations name).
pub async fn verify(db: &Database, team: Option<&str>) -> Result<VerifyReport, AuditError> {
    let started = std::time::Instant::now();
    let mut snapshot = Snapshot::begin(db).await?;
    let mut report = VerifyReport { teams: 0, team_events: 0, jobs: 0, job_events: 0, violations: Vec::new(), elapsed_ms: 0 };
    let mut reservations: Reservations = HashMap::new();
    let mut fold_team = |events: &[StoredEvent], report: &mut VerifyReport| {
        let Some(first) = events.first() else { return };
        let (mut ledger, mut chain) = (TeamLedger::new(&first.aggregate_id), ChainCheck::new(&first.aggregate_id));
        for event in events {
            fold_team_event(&mut ledger, &mut chain, event);
        }
        report.teams += 1;
        report.team_events += events.len() as u64;
        report.violations.append(&mut ledger.violations);
        for (id, r) in ledger.reservations {
            reservations.insert(id, (ledger.team_id.clone(), r.amount, r.state));
        }
    };
    match team {
        Some(team) => {
            let events = snapshot.stream("TeamCredits", team).await?;
            if events.is_empty() {
                return Err(AuditError::TeamNotFound(team.to_string()));
            }
            fold_team(&events, &mut report);
        }
        None => snapshot.each_stream("TeamCredits", PAGE_SIZE, |events| fold_team(events, &mut report)).await?,
    }
    let mut jobs: Vec<(String, Option<JobFacts>, i64)> = Vec::new();
    let mut fold_job = |events: &[StoredEvent], report: &mut VerifyReport| {
        let Some(first) = events.first() else { return };
        report.jobs += 1;
        report.job_events += events.len() as u64;
        jobs.push((first.aggregate_id.clone(), job_facts(events, &mut report.violations), first.sequence));
    };
    match team {
        Some(_) => {
            let ids: Vec<String> = reservations.keys().cloned().collect();
            for events in snapshot.streams("GenerationJob", &ids).await? {
                fold_job(&events, &mut report);
            }
        }
        None => snapshot.each_stream("GenerationJob", PAGE_SIZE, |events| fold_job(events, &mut report)).await?,
    }
    snapshot.end().await?;
    for (job_id, facts, first_sequence) in jobs {
        let Some(facts) = facts else { continue };
        check_job(&job_id, &facts, first_sequence, &reservations, &mut report.violations);
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn job_facts(events: &[StoredEvent], violations: &mut Vec<Violation>) -> Option<JobFacts> {
    let mut facts: Option<JobFacts> = None;
    for event in events {
        let decoded = match crate::decode::<GenerationJob>(event) {
            Ok(decoded) => decoded,
            Err(error) => {
                violations.push(Violation::event("GenerationJob", &event.aggregate_id, event.sequence, "undecodable", error.to_string()));
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
    if *team != facts.team_id {
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
