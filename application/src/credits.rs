//! Credit use cases over the TeamCredits aggregate: open teams, change plans, grant,
//! reserve, deduct, refund, adjust, expire.
//!
//! **One writer per team per process, with group commit.** Each team that receives
//! commands gets a small task owning its latest state. Commands queue to it; it decides
//! every queued command in order against the in-memory state and commits all their events
//! in one append (one transaction), then answers each caller. A hot team therefore costs
//! one transaction per *batch*, not per command, and never races itself.
//!
//! Snapshots of a team are written after its commit, in the background (see
//! [`spawn_snapshot`]), never inside the append.
//!
//! **Group commit across teams.** The writers do not commit themselves: they hand their
//! appends to one committer per service, which joins whatever has queued from many teams
//! into one transaction, with at most [`COMMITS_IN_FLIGHT`] transactions open at once. At
//! low load every batch commits alone at once; under load the queue that forms while a
//! transaction runs becomes the next one, so commits per second stay bounded while commands
//! per commit grow. A further transaction opens beside a running one only for a queue of
//! [`JOIN_EARLY_MIN`] or more: a trickle waits for the running commit and joins the next.
//! A conflict on one stream fails only the writer that owns it (the rest commit without
//! it); any other failure of a joint transaction is retried stream-group by stream-group,
//! so every writer gets the answer of its own append.
//!
//! Across processes the append's optimistic check decides: a conflict means another
//! process wrote the team, so the task reloads the state and decides the batch again
//! (bounded, with jittered backoff). Decisions that wrote nothing (rejections, repeats)
//! are only answered once the state they were made on is known to be current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{Plan, Reservation, TeamCredits, TeamCreditsCommand, TeamCreditsError, TeamCreditsEvent, TeamId};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::aggregate_store::{decode_event, AggregateStore, CommandError, Loaded, CONFLICT_RETRIES_MAX};
use crate::clock::Clock;
use crate::event_store::{EventStoreError, StreamAppend};

pub type CreditsError = CommandError<TeamCreditsError>;

/// Teams handled per credit-expiry pass, at most; the next pass takes the rest.
pub const EXPIRY_TEAMS_PER_PASS_MAX: i64 = 1_000;

/// The grants read model, as the credit-expiry pass reads it.
#[async_trait::async_trait]
pub trait DueGrants: Send + Sync {
    /// Up to `limit` teams holding credits in blocks that expired at or before `now`.
    async fn teams_with_expired_credits(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TeamId>, EventStoreError>;
}

/// Teams with a live writer task; beyond it, the least recently used are let go.
pub const WRITERS_MAX: usize = 10_000;
/// Commands decided and committed together, at most.
pub const BATCH_COMMANDS_MAX: usize = 256;
/// Commands waiting for one team, at most; callers beyond it wait for room.
pub const QUEUE_DEPTH_MAX: usize = 4_096;
const CONFLICT_BACKOFF_BASE: Duration = Duration::from_micros(250);
/// Joint transactions open at once by one service's committer.
pub const COMMITS_IN_FLIGHT: usize = 4;
/// Writers' appends joined into one transaction, at most.
pub const COMMIT_GROUP_MAX: usize = 128;
/// Appends waiting before the committer opens another transaction beside an open one.
const JOIN_EARLY_MIN: usize = 8;

/// Builds a team command (and the other streams to append atomically with it) from the
/// team's current state. May run more than once: after a conflict it runs on fresh state.
pub type Build = Box<dyn FnMut(&TeamCredits) -> Result<(TeamCreditsCommand, Vec<StreamAppend>), CreditsError> + Send>;

/// What a committed (or idempotently repeated) command left behind. A summary, not the
/// whole state: the state of a busy team is large and copying it per command is waste.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The events this call recorded; empty for a repeat.
    pub events: Vec<TeamCreditsEvent>,
    pub available: i64,
    pub reserved: i64,
    pub plan: Plan,
    /// For reserve, deduct and refund: the reservation as it now stands (for a repeat,
    /// the first outcome).
    pub reservation: Option<Reservation>,
}

impl Outcome {
    fn of(state: &TeamCredits, command: &TeamCreditsCommand, events: Vec<TeamCreditsEvent>) -> Self {
        let reservation_id = match command.inner() {
            TeamCreditsCommand::ReserveCredits { reservation_id, .. }
            | TeamCreditsCommand::DeductCredits { reservation_id, .. }
            | TeamCreditsCommand::RefundCredits { reservation_id, .. } => Some(*reservation_id),
            _ => None,
        };
        Outcome {
            events,
            available: state.available(),
            reserved: state.reserved(),
            plan: state.plan(),
            reservation: reservation_id.and_then(|id| state.reservation(id).cloned()),
        }
    }
}

struct Request {
    build: Build,
    metadata: Value,
    reply: oneshot::Sender<Result<Outcome, CreditsError>>,
}

struct Writer {
    queue: mpsc::Sender<Request>,
    last_used: Instant,
}

#[derive(Clone)]
pub struct CreditsService {
    aggregates: AggregateStore,
    clock: Arc<dyn Clock>,
    writers: Arc<Mutex<HashMap<TeamId, Writer>>>,
    /// Started on first use (it needs a runtime; `new` may run outside one).
    committer: Arc<OnceLock<Committer>>,
    commits_in_flight: usize,
}

impl CreditsService {
    pub fn new(aggregates: AggregateStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            aggregates,
            clock,
            writers: Arc::new(Mutex::new(HashMap::new())),
            committer: Arc::new(OnceLock::new()),
            commits_in_flight: COMMITS_IN_FLIGHT,
        }
    }

    /// At most `n` joint transactions open at once; 1 makes every team's commits wait
    /// for each other, 0 turns joining off (each team's batch is its own transaction).
    /// For diagnosis and benchmarks; the default suits most pools.
    pub fn with_commits_in_flight(mut self, n: usize) -> Self {
        self.commits_in_flight = n;
        self.committer = Arc::new(OnceLock::new());
        self
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// One credit-expiry pass: records `CreditsExpired` (through each team's writer,
    /// like any command) for the teams `due` names; returns how many had credits expired.
    pub async fn expire_due(&self, due: &dyn DueGrants) -> Result<usize, CreditsError> {
        let now = self.now();
        let mut expired = 0;
        for team in due.teams_with_expired_credits(now, EXPIRY_TEAMS_PER_PASS_MAX).await? {
            let outcome = self.execute(team, TeamCreditsCommand::ExpireCredits { now }, &serde_json::json!({"actor": "expiry-sweeper"})).await?;
            if !outcome.events.is_empty() {
                expired += 1;
            }
        }
        if expired > 0 {
            tracing::info!(teams = expired, "expired credits");
        }
        Ok(expired)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The team's current state, loaded from the store.
    pub async fn state(&self, team: TeamId) -> Result<TeamCredits, CreditsError> {
        Ok(self.aggregates.load::<TeamCredits>(&team.to_string()).await?.aggregate)
    }

    /// Runs `command` for `team` and commits its events.
    pub async fn execute(&self, team: TeamId, command: TeamCreditsCommand, metadata: &Value) -> Result<Outcome, CreditsError> {
        self.execute_with(team, metadata, Box::new(move |_| Ok((command.clone(), Vec::new())))).await
    }

    /// Runs the command `build` makes from the team's current state and commits its
    /// events together with the extra appends `build` returns (other streams recorded
    /// atomically with the credit change, e.g. a job being accepted).
    pub async fn execute_with(&self, team: TeamId, metadata: &Value, build: Build) -> Result<Outcome, CreditsError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { build, metadata: metadata.clone(), reply };
        let queue = self.writer(team);
        if let Err(mpsc::error::SendError(request)) = queue.send(request).await {
            // The writer was let go between lookup and send: start a new one.
            self.forget(team);
            self.writer(team).send(request).await.map_err(|_| writer_gone())?;
        }
        let outcome = answer.await.map_err(|_| writer_gone())??;
        // Here, not in the writer task: this runs in the caller's span (its request id).
        crate::observe::credits_recorded(team, &outcome.events, outcome.available);
        Ok(outcome)
    }

    fn writer(&self, team: TeamId) -> mpsc::Sender<Request> {
        let mut writers = self.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(writer) = writers.get_mut(&team) {
            if !writer.queue.is_closed() {
                writer.last_used = Instant::now();
                return writer.queue.clone();
            }
        }
        if writers.len() >= WRITERS_MAX {
            evict_least_recent(&mut writers);
        }
        let (queue, requests) = mpsc::channel(QUEUE_DEPTH_MAX);
        let committer = self.committer.get_or_init(|| Committer::start(self.aggregates.clone(), self.commits_in_flight)).clone();
        tokio::spawn(run_writer(self.aggregates.clone(), committer, team, requests));
        writers.insert(team, Writer { queue: queue.clone(), last_used: Instant::now() });
        queue
    }

    fn forget(&self, team: TeamId) {
        self.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&team);
    }
}

fn writer_gone() -> CreditsError {
    CommandError::Store(EventStoreError::Unavailable("team writer stopped".into()))
}

/// Drops the oldest tenth of the writers: their tasks finish what is queued and stop
/// (the channel closes once the last sender is gone).
fn evict_least_recent(writers: &mut HashMap<TeamId, Writer>) {
    let mut by_age: Vec<(Instant, TeamId)> = writers.iter().map(|(team, w)| (w.last_used, *team)).collect();
    by_age.sort_unstable();
    for (_, team) in by_age.into_iter().take((WRITERS_MAX / 10).max(1)) {
        writers.remove(&team);
    }
}

/// The writer task of one team: takes whatever is queued (up to a batch), decides it,
/// commits it, answers.
async fn run_writer(aggregates: AggregateStore, committer: Committer, team: TeamId, mut requests: mpsc::Receiver<Request>) {
    let mut state: Option<Loaded<TeamCredits>> = None;
    // Set once another process is seen writing this team (a conflict): from then on the
    // cached state is caught up (one query for newer events) before each batch is decided,
    // instead of deciding on it, conflicting and reloading the whole state.
    let mut shared = false;
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        take_queued(&mut requests, &mut batch, BATCH_COMMANDS_MAX);
        process_batch(&aggregates, &committer, team, &mut state, &mut shared, batch).await;
    }
}

/// One command of a batch as decided in one attempt.
struct Decision {
    result: Result<Outcome, CreditsError>,
    /// Other streams' appends of the command (moved into the batch's commit), and
    /// which streams those are (to tell whose command a conflict on one of them is).
    extra: Vec<StreamAppend>,
    extra_streams: Vec<(String, String)>,
}

async fn process_batch(
    aggregates: &AggregateStore,
    committer: &Committer,
    team: TeamId,
    state: &mut Option<Loaded<TeamCredits>>,
    shared: &mut bool,
    mut batch: Vec<Request>,
) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let cached = match state.take() {
            Some(loaded) if *shared => catch_up(aggregates, team, loaded).await.map(|(fresh, _)| fresh).ok(),
            cached => cached,
        };
        let mut loaded = match cached {
            Some(loaded) => loaded,
            None => match aggregates.load::<TeamCredits>(&team.to_string()).await {
                Ok(loaded) => loaded,
                Err(error) => return answer_all(batch, |_| Err(error_copy(&error))),
            },
        };
        let start_sequence = loaded.sequence;
        let (mut decisions, append) = decide_batch(aggregates, &mut loaded, &mut batch).await;
        let Some(append) = append else {
            // Nothing to write: the answers are rejections and repeats, which are only
            // right if no other process has moved the team meanwhile.
            match catch_up(aggregates, team, loaded).await {
                Ok((fresh, false)) => {
                    *state = Some(fresh);
                    return answer(batch, decisions);
                }
                Ok((fresh, true)) => {
                    *state = Some(fresh);
                    continue;
                }
                Err(error) => return answer_all(batch, |_| Err(error_copy(&error))),
            }
        };
        let mut appends = vec![append];
        for decision in &mut decisions {
            appends.append(&mut decision.extra);
        }
        match committer.commit(appends, *shared).await {
            Ok(()) => {
                if aggregates.snapshot_due(start_sequence, &loaded) {
                    loaded.snapshot_sequence = loaded.sequence;
                    spawn_snapshot(aggregates.clone(), team, loaded.sequence, loaded.aggregate.clone());
                }
                *state = Some(loaded);
                return answer(batch, decisions);
            }
            Err(EventStoreError::Conflict { aggregate_type, aggregate_id, .. })
                if aggregate_type != <TeamCredits as cqrs_es::Aggregate>::TYPE =>
            {
                // Another stream of one command is taken (e.g. a job id reused): that
                // command fails, the rest of the batch is decided again.
                let (failed, rest) = split_by_extra(batch, decisions, &aggregate_type, &aggregate_id);
                for request in failed {
                    let _ = request.reply.send(Err(CommandError::Store(EventStoreError::Conflict {
                        aggregate_type: aggregate_type.clone(),
                        aggregate_id: aggregate_id.clone(),
                        expected_sequence: 0,
                    })));
                }
                batch = rest;
                if batch.is_empty() {
                    return;
                }
            }
            Err(EventStoreError::Conflict { .. }) => {
                *shared = true;
                if attempt >= CONFLICT_RETRIES_MAX {
                    return answer_all(batch, |_| Err(CommandError::Contention { attempts: attempt }));
                }
                tracing::debug!(%team, attempt, start_sequence, "team written by another process; deciding again");
                // The first conflict is usually a stale cache, not a race: reload at once.
                if attempt > 1 {
                    backoff(attempt).await;
                }
            }
            Err(error) => return answer_all(batch, |_| Err(error_copy(&error))),
        }
    }
}

/// Decides every request in order on `loaded`, applying each one's events before the
/// next. Returns each request's decision and the single append of all their events.
async fn decide_batch(
    aggregates: &AggregateStore,
    loaded: &mut Loaded<TeamCredits>,
    batch: &mut [Request],
) -> (Vec<Decision>, Option<StreamAppend>) {
    let mut decisions = Vec::with_capacity(batch.len());
    let mut combined: Option<StreamAppend> = None;
    for request in batch.iter_mut() {
        let (command, extra) = match (request.build)(&loaded.aggregate) {
            Ok(built) => built,
            Err(error) => {
                decisions.push(Decision { result: Err(error), extra: Vec::new(), extra_streams: Vec::new() });
                continue;
            }
        };
        // TeamCredits decides before it applies anything, so a rejected command leaves
        // `loaded` untouched.
        match aggregates.decide_in_place_unsnapshotted(loaded, command.clone(), &(), &request.metadata).await {
            Ok((events, append)) => {
                let extra = if events.is_empty() { Vec::new() } else { extra };
                combined = Some(match combined {
                    None => append,
                    Some(mut all) => {
                        all.events.extend(append.events);
                        all
                    }
                });
                let extra_streams = extra.iter().map(|a| (a.aggregate_type.clone(), a.aggregate_id.clone())).collect();
                decisions.push(Decision { result: Ok(Outcome::of(&loaded.aggregate, &command, events)), extra, extra_streams });
            }
            Err(error) => decisions.push(Decision { result: Err(error), extra: Vec::new(), extra_streams: Vec::new() }),
        }
    }
    let combined = combined.filter(|append| !append.events.is_empty());
    (decisions, combined)
}

/// Writes a snapshot of a team's committed state in the background. The writer keeps
/// the state in memory, so the snapshot only shortens later loads (by another process,
/// or after the writer is let go); serializing and storing a large state inside the
/// append would hold up every command queued behind it.
fn spawn_snapshot(aggregates: AggregateStore, team: TeamId, sequence: i64, state: TeamCredits) {
    tokio::spawn(async move {
        if let Err(error) = aggregates.save_snapshot(&team.to_string(), sequence, &state).await {
            tracing::warn!(%team, sequence, %error, "team snapshot not written; later loads replay more events");
        }
    });
}

/// One writer's appends waiting to be committed, and where to say how it went.
struct CommitRequest {
    appends: Vec<StreamAppend>,
    /// Its writer has seen another process write its team ([`without_stale`] asks then).
    shared: bool,
    reply: oneshot::Sender<Result<(), EventStoreError>>,
}

/// The service's committer: joins the appends of many writers into few transactions
/// (or, with joining off, lets each writer commit its own).
#[derive(Clone)]
enum Committer {
    Joint(mpsc::Sender<CommitRequest>),
    Direct(AggregateStore),
}

impl Committer {
    /// Starts the committer task; it stops once every writer (and the service) let go.
    fn start(aggregates: AggregateStore, in_flight: usize) -> Self {
        if in_flight == 0 {
            return Self::Direct(aggregates);
        }
        let (queue, requests) = mpsc::channel(WRITERS_MAX);
        tokio::spawn(run_committer(aggregates, requests, in_flight));
        Self::Joint(queue)
    }

    async fn commit(&self, appends: Vec<StreamAppend>, shared: bool) -> Result<(), EventStoreError> {
        let queue = match self {
            Self::Joint(queue) => queue,
            Self::Direct(aggregates) => return aggregates.commit(&appends).await.map(|_| ()),
        };
        let (reply, answer) = oneshot::channel();
        queue.send(CommitRequest { appends, shared, reply }).await.map_err(|_| committer_gone())?;
        answer.await.map_err(|_| committer_gone())?
    }
}

fn committer_gone() -> EventStoreError {
    EventStoreError::Unavailable("credit committer stopped".into())
}

/// Forms groups of what is queued and commits each in the background, at most
/// `in_flight` at once. A group starts at once when no transaction is open; while one is,
/// the next starts only once [`JOIN_EARLY_MIN`] appends wait (or a transaction ends, and
/// then with everything that queued meanwhile): a trickle of appends waits for the open
/// transaction and goes in one, a flood still uses every slot.
async fn run_committer(aggregates: AggregateStore, mut requests: mpsc::Receiver<CommitRequest>, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let ended = Arc::new(Notify::new());
    let mut closed = false;
    while !closed {
        let Some(first) = requests.recv().await else { return };
        let mut group = vec![first];
        loop {
            take_queued(&mut requests, &mut group, COMMIT_GROUP_MAX);
            if closed || opens_now(in_flight - slots.available_permits(), in_flight, group.len()) {
                break;
            }
            tokio::select! {
                _ = ended.notified() => {}
                request = requests.recv(), if group.len() < COMMIT_GROUP_MAX => match request {
                    Some(request) => group.push(request),
                    None => closed = true,
                },
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let open = OpenCommit { slot: Some(slot), ended: ended.clone() };
        let aggregates = aggregates.clone();
        tokio::spawn(async move {
            commit_group(&aggregates, group).await;
            drop(open);
        });
    }
}

/// A joint transaction's slot. Let go however the commit ends (a panic included), it
/// frees the slot and then wakes the committer, whose waiting group may start now.
struct OpenCommit {
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ended: Arc<Notify>,
}

impl Drop for OpenCommit {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.ended.notify_one();
    }
}

/// Whether a group of `waiting` appends starts its transaction now, with `open` of at most
/// `in_flight` transactions running: at once when none runs, beside running ones only
/// when [`JOIN_EARLY_MIN`] or more wait and a slot is free.
fn opens_now(open: usize, in_flight: usize, waiting: usize) -> bool {
    open == 0 || (open < in_flight && waiting >= JOIN_EARLY_MIN)
}

/// Moves what is queued into `into`, until it holds `max`.
fn take_queued<T>(requests: &mut mpsc::Receiver<T>, into: &mut Vec<T>, max: usize) {
    while into.len() < max {
        match requests.try_recv() {
            Ok(request) => into.push(request),
            Err(_) => break,
        }
    }
}

/// Commits `group` in one transaction. A conflict names one stream: its writer is told,
/// the others are committed again without it. Any other failure may belong to any member
/// (an inline projection refusing one writer's events, say), so each is then committed
/// alone and gets its own answer.
async fn commit_group(aggregates: &AggregateStore, mut group: Vec<CommitRequest>) {
    if group.len() > 1 {
        if group.iter().any(|r| r.shared) {
            group = without_stale(aggregates, group).await;
        }
        // Members in team order: two processes' joint transactions that take the same
        // teams (one of them will lose those) then wait for each other in one order and
        // never deadlock. A member's team stream comes first in its appends.
        group.sort_by_cached_key(|r| r.appends.first().map(|a| (a.aggregate_type.clone(), a.aggregate_id.clone())));
    }
    while group.len() > 1 {
        // The members' appends moved into one list, and given back if it fails (a
        // retry commits them again): nothing is copied.
        let lengths: Vec<usize> = group.iter().map(|r| r.appends.len()).collect();
        let mut joint: Vec<StreamAppend> = Vec::with_capacity(lengths.iter().sum());
        for request in &mut group {
            joint.append(&mut request.appends);
        }
        let result = aggregates.commit(&joint).await;
        if result.is_err() {
            for (request, length) in group.iter_mut().zip(&lengths).rev() {
                request.appends = joint.split_off(joint.len() - length);
            }
        }
        match result {
            Ok(_) => {
                for request in group {
                    let _ = request.reply.send(Ok(()));
                }
                return;
            }
            Err(EventStoreError::Conflict { aggregate_type, aggregate_id, expected_sequence })
                if group.iter().any(|r| owns(r, &aggregate_type, &aggregate_id)) =>
            {
                let (hit, rest): (Vec<_>, Vec<_>) = group.into_iter().partition(|r| owns(r, &aggregate_type, &aggregate_id));
                for request in hit {
                    let conflict = EventStoreError::Conflict {
                        aggregate_type: aggregate_type.clone(),
                        aggregate_id: aggregate_id.clone(),
                        expected_sequence,
                    };
                    let _ = request.reply.send(Err(conflict));
                }
                group = rest;
            }
            Err(error) => {
                tracing::debug!(%error, members = group.len(), "joint credit commit failed; committing each writer alone");
                for request in group {
                    let result = aggregates.commit(&request.appends).await.map(|_| ());
                    let _ = request.reply.send(result);
                }
                return;
            }
        }
    }
    if let Some(request) = group.pop() {
        let result = aggregates.commit(&request.appends).await.map(|_| ());
        let _ = request.reply.send(result);
    }
}

/// Tells the writers whose team another process has moved (their state is stale, their
/// append would conflict) at once, and returns the rest: one stale team must not roll back
/// a whole joint transaction. A team's state goes stale whenever two processes take turns
/// on it (the API reserving, a worker deducting), so this is the common case, not a race.
/// Asked only for a group with a member whose writer has met another process's append
/// (`shared`): a team only this process writes is never stale, and the query is a round
/// trip every member would wait for. (A team's first conflict, before its writer knows,
/// costs the joint transaction one retry without it, as the conflict handling below does.)
async fn without_stale(aggregates: &AggregateStore, group: Vec<CommitRequest>) -> Vec<CommitRequest> {
    let streams: Vec<(String, String, i64)> = group
        .iter()
        .flat_map(|r| r.appends.iter())
        .filter(|a| a.expected_sequence > 0)
        .map(|a| (a.aggregate_type.clone(), a.aggregate_id.clone(), a.expected_sequence))
        .collect();
    let stale = match aggregates.event_store().stale_streams(&streams).await {
        Ok(stale) if !stale.is_empty() => stale,
        // Unknown (or none): the append's own check decides.
        _ => return group,
    };
    let mut rest = Vec::with_capacity(group.len());
    for request in group {
        let hit = request.appends.iter().find(|a| stale.iter().any(|(t, i)| *t == a.aggregate_type && *i == a.aggregate_id));
        match hit {
            Some(append) => {
                let conflict = EventStoreError::Conflict {
                    aggregate_type: append.aggregate_type.clone(),
                    aggregate_id: append.aggregate_id.clone(),
                    expected_sequence: append.expected_sequence,
                };
                let _ = request.reply.send(Err(conflict));
            }
            None => rest.push(request),
        }
    }
    rest
}

fn owns(request: &CommitRequest, aggregate_type: &str, aggregate_id: &str) -> bool {
    request.appends.iter().any(|a| a.aggregate_type == aggregate_type && a.aggregate_id == aggregate_id)
}

/// Applies events other processes appended after `loaded`; says whether there were any.
async fn catch_up(
    aggregates: &AggregateStore,
    team: TeamId,
    mut loaded: Loaded<TeamCredits>,
) -> Result<(Loaded<TeamCredits>, bool), EventStoreError> {
    let newer = aggregates.event_store().load_stream(<TeamCredits as cqrs_es::Aggregate>::TYPE, &team.to_string(), loaded.sequence).await?;
    let moved = !newer.is_empty();
    for stored in newer {
        cqrs_es::Aggregate::apply(&mut loaded.aggregate, decode_event::<TeamCredits>(&stored)?);
        loaded.sequence = stored.sequence;
    }
    Ok((loaded, moved))
}

fn answer(batch: Vec<Request>, decisions: Vec<Decision>) {
    for (request, decision) in batch.into_iter().zip(decisions) {
        let _ = request.reply.send(decision.result);
    }
}

fn answer_all(batch: Vec<Request>, result: impl Fn(&Request) -> Result<Outcome, CreditsError>) {
    for request in batch {
        let outcome = result(&request);
        let _ = request.reply.send(outcome);
    }
}

fn split_by_extra(batch: Vec<Request>, decisions: Vec<Decision>, aggregate_type: &str, aggregate_id: &str) -> (Vec<Request>, Vec<Request>) {
    let mut failed = Vec::new();
    let mut rest = Vec::new();
    for (request, decision) in batch.into_iter().zip(decisions) {
        let hit = decision.extra_streams.iter().any(|(t, i)| t == aggregate_type && i == aggregate_id);
        if hit {
            failed.push(request);
        } else {
            rest.push(request);
        }
    }
    (failed, rest)
}

/// `EventStoreError` is not `Clone` (it may wrap sources); every caller of a failed
/// batch gets the same description.
fn error_copy(error: &EventStoreError) -> CreditsError {
    CommandError::Store(match error {
        EventStoreError::Conflict { aggregate_type, aggregate_id, expected_sequence } => EventStoreError::Conflict {
            aggregate_type: aggregate_type.clone(),
            aggregate_id: aggregate_id.clone(),
            expected_sequence: *expected_sequence,
        },
        EventStoreError::Corrupt { aggregate_type, aggregate_id, sequence, reason } => EventStoreError::Corrupt {
            aggregate_type: aggregate_type.clone(),
            aggregate_id: aggregate_id.clone(),
            sequence: *sequence,
            reason: reason.clone(),
        },
        EventStoreError::Projection { projection, reason } => {
            EventStoreError::Projection { projection: projection.clone(), reason: reason.clone() }
        }
        EventStoreError::InvalidAppend(reason) => EventStoreError::InvalidAppend(reason.clone()),
        EventStoreError::Unavailable(reason) => EventStoreError::Unavailable(reason.clone()),
        EventStoreError::Database(reason) => EventStoreError::Database(reason.clone()),
    })
}

/// Exponential backoff with jitter, so two processes fighting over a team spread out.
async fn backoff(attempt: u32) {
    let base = CONFLICT_BACKOFF_BASE * 2u32.saturating_pow(attempt.min(6));
    let jitter = rand::random::<u64>() % (base.as_micros() as u64).max(1);
    tokio::time::sleep(base + Duration::from_micros(jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_waits_for_the_open_commit_and_a_flood_uses_every_slot() {
        // Nothing open: even one append commits at once.
        assert!(opens_now(0, 4, 1));
        // One open: a few waiting appends wait for it (and then go together) …
        assert!(!opens_now(1, 4, 1));
        assert!(!opens_now(1, 4, JOIN_EARLY_MIN - 1));
        // … a queue of JOIN_EARLY_MIN or more opens another transaction beside it …
        assert!(opens_now(1, 4, JOIN_EARLY_MIN));
        assert!(opens_now(3, 4, COMMIT_GROUP_MAX));
        // … but never more than the cap.
        assert!(!opens_now(4, 4, COMMIT_GROUP_MAX));
        // One transaction in flight: groups form while it runs, as before.
        assert!(opens_now(0, 1, 1));
        assert!(!opens_now(1, 1, COMMIT_GROUP_MAX));
    }
}
