//! One meaning per credit event: whatever batches and interleavings the appends come in,
//! and whatever order their times are in, the live read models equal a rebuild from the
//! log, row for row and column for column — and the audit's replay and the API's queries
//! (the same fold) tell the same balance, totals and ledger.
//!
//! Random command sequences on a few teams are decided by the real aggregate in memory,
//! with times that step back and forth (a command that lost an optimistic-concurrency race
//! and was decided again with its earlier time; workers whose clocks differ); their events
//! are appended through the real store (inline projections in the append) in random
//! batches, one team's or several teams' streams per append, with the projector catching
//! up at random points. Each case runs on a fresh database, so a failing case shrinks.

use std::time::Duration;

use application::event_store::{EventStore, NewEvent, StreamAppend};
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use domain::{AdjustmentId, Credits, GrantId, GrantSource, IdempotencyKey, JobId, Operation, Plan, SignedCredits};
use domain::{TeamCredits, TeamCreditsCommand, TeamId};
use infrastructure::event_store::SqlEventStore;
use projections::catalog;
use projections::projector::Projector;
use projections::rebuild::{self, NoProgress, RebuildOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::support::db::TestDb;

const TEAMS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Grant { amount: i64, expires_in_secs: Option<i64> },
    Reserve { amount: i64 },
    /// Ends the n-th pending reservation (modulo their count).
    Deduct(usize),
    Refund(usize),
    Adjust(i64),
    ChangePlan(u8),
    ExpireSubscription,
    ExpireCredits,
}

/// What is appended after a step's events are decided.
#[derive(Debug, Clone, Copy)]
enum Flush {
    /// Nothing yet: the events wait for a later append (a larger batch).
    Hold,
    /// The team's pending events, alone.
    Team,
    /// Every team's pending events, in one multi-stream append.
    All,
    /// Like `All`, then the projector catches up (the async ledger's batches differ too).
    AllAndProject,
}

#[derive(Debug, Clone)]
struct Step {
    team: usize,
    op: Op,
    /// How far the shared clock moves before the step.
    advance_secs: i64,
    /// This command's clock against the shared one (either way, microseconds).
    skew_micros: i64,
    flush: Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1i64..100, proptest::option::of(1i64..3_600)).prop_map(|(amount, expires_in_secs)| Op::Grant { amount, expires_in_secs }),
        3 => (1i64..60).prop_map(|amount| Op::Reserve { amount }),
        2 => any::<usize>().prop_map(Op::Deduct),
        1 => any::<usize>().prop_map(Op::Refund),
        1 => (1i64..40, any::<bool>()).prop_map(|(amount, negative)| Op::Adjust(if negative { -amount } else { amount })),
        1 => (0u8..3).prop_map(Op::ChangePlan),
        1 => Just(Op::ExpireSubscription),
        1 => Just(Op::ExpireCredits),
    ]
}

fn flush() -> impl Strategy<Value = Flush> {
    prop_oneof![3 => Just(Flush::Hold), 3 => Just(Flush::Team), 1 => Just(Flush::All), 1 => Just(Flush::AllAndProject)]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    // Mostly steps shorter than the skew (times out of order), sometimes long ones (blocks expire).
    let advance_secs = prop_oneof![4 => 0i64..3, 1 => 0i64..900];
    let step = (0..TEAMS, op(), advance_secs, -5_000_000i64..5_000_000, flush())
        .prop_map(|(team, op, advance_secs, skew_micros, flush)| Step { team, op, advance_secs, skew_micros, flush });
    proptest::collection::vec(step, 1..48)
}

/// The rebuild's own batching, drawn too: its batch size and, on PostgreSQL, the in-memory
/// fold (`bulk`) or the projection's code batch by batch.
fn rebuild_batch_size() -> impl Strategy<Value = i64> {
    prop_oneof![Just(1i64), 2i64..16, Just(5_000)]
}

/// One team's stream as the test drives it: the aggregate's state, the events decided but
/// not yet appended, and the sequence appended so far.
struct Stream {
    id: TeamId,
    state: TeamCredits,
    pending: Vec<NewEvent>,
    appended: i64,
    reservations: Vec<JobId>,
}

impl Stream {
    fn decide(&mut self, command: TeamCreditsCommand) {
        // Refusals (not enough credits, a stale plan change) record nothing, as in the app.
        let Ok(events) = self.state.decide(command) else { return };
        for event in events {
            self.pending.push(NewEvent {
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_value(&event).expect("event to JSON"),
                metadata: json!({}),
            });
            self.state.apply(event);
        }
    }

    fn take(&mut self) -> Option<StreamAppend> {
        if self.pending.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut self.pending);
        let append = StreamAppend {
            aggregate_type: "TeamCredits".into(),
            aggregate_id: self.id.to_string(),
            expected_sequence: self.appended,
            snapshot: None,
            events,
        };
        self.appended += append.events.len() as i64;
        Some(append)
    }
}

fn command(stream: &mut Stream, op: &Op, n: usize, now: DateTime<Utc>) -> Option<TeamCreditsCommand> {
    let key = || IdempotencyKey::parse(format!("step-{n}")).expect("key");
    let pick = |stream: &mut Stream, i: usize| (!stream.reservations.is_empty()).then(|| stream.reservations.swap_remove(i % stream.reservations.len()));
    Some(match op {
        Op::Grant { amount, expires_in_secs } => TeamCreditsCommand::GrantCredits {
            grant_id: GrantId::new(uuid::Uuid::now_v7()),
            amount: Credits::parse(*amount).expect("positive"),
            source: GrantSource::Admin,
            expires_at: expires_in_secs.map(|s| now + chrono::Duration::seconds(s)),
            key: key(),
            now,
        },
        Op::Reserve { amount } => {
            let job = JobId::new(uuid::Uuid::now_v7());
            stream.reservations.push(job);
            TeamCreditsCommand::ReserveCredits {
                reservation_id: job,
                amount: Credits::parse(*amount).expect("positive"),
                operation: Operation::ImageGeneration,
                price_version: 1,
                now,
            }
        }
        Op::Deduct(i) => TeamCreditsCommand::DeductCredits { reservation_id: pick(stream, *i)?, now },
        Op::Refund(i) => TeamCreditsCommand::RefundCredits { reservation_id: pick(stream, *i)?, now },
        Op::Adjust(amount) => TeamCreditsCommand::AdjustCredits {
            adjustment_id: AdjustmentId::new(uuid::Uuid::now_v7()),
            amount: SignedCredits::parse(*amount).expect("non-zero"),
            reason: "property".into(),
            actor: "test".into(),
            now,
        },
        Op::ChangePlan(p) => TeamCreditsCommand::ChangePlan {
            to: [Plan::Basic, Plan::Pro, Plan::Enterprise][usize::from(*p) % 3],
            effective_at: now,
            key: key(),
            now,
        },
        Op::ExpireSubscription => TeamCreditsCommand::ExpireSubscription { effective_at: now, key: key(), now },
        Op::ExpireCredits => TeamCreditsCommand::ExpireCredits { now },
    })
}

/// Runs one case on a fresh database; `Err` names what differs.
async fn case(db: &TestDb, steps: Vec<Step>, batch_size: i64) -> Result<(), String> {
    let store = SqlEventStore::with_inline_projections(db.db.clone(), projections::inline_projections());
    let projector = Projector::new(store.clone(), projections::async_projections());
    let mut clock: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("time");
    let mut streams: Vec<Stream> = (0..TEAMS)
        .map(|n| {
            let mut stream =
                Stream { id: TeamId::new(uuid::Uuid::now_v7()), state: TeamCredits::default(), pending: Vec::new(), appended: 0, reservations: Vec::new() };
            let opened_at = clock + chrono::Duration::microseconds(n as i64 * 1_234_567);
            stream.decide(TeamCreditsCommand::OpenTeam { team_id: stream.id, name: format!("T{n}"), plan: Plan::Pro, now: opened_at });
            stream
        })
        .collect();
    let append = |appends: Vec<StreamAppend>| {
        let store = store.clone();
        async move {
            if !appends.is_empty() {
                store.append(&appends).await.map_err(|e| format!("append: {e}"))?;
            }
            Ok::<(), String>(())
        }
    };
    for (n, step) in steps.iter().enumerate() {
        clock += chrono::Duration::seconds(step.advance_secs);
        let now = clock + chrono::Duration::microseconds(step.skew_micros);
        let stream = &mut streams[step.team];
        if let Some(command) = command(stream, &step.op, n, now) {
            stream.decide(command);
        }
        match step.flush {
            Flush::Hold => {}
            Flush::Team => append(streams[step.team].take().into_iter().collect()).await?,
            Flush::All | Flush::AllAndProject => {
                append(streams.iter_mut().filter_map(Stream::take).collect()).await?;
                if matches!(step.flush, Flush::AllAndProject) {
                    projector.catch_up().await.map_err(|e| format!("projector: {e}"))?;
                }
            }
        }
    }
    append(streams.iter_mut().filter_map(Stream::take).collect()).await?;
    projector.catch_up_to_head(Duration::from_secs(30)).await.map_err(|e| format!("projector: {e}"))?;

    // The live tables equal a rebuild, by the rebuild's in-memory fold and batch by batch.
    let postgres = db.name().is_some();
    for bulk in if postgres { vec![true, false] } else { vec![false] } {
        let options = RebuildOptions { verify: true, batch_size, bulk, ..RebuildOptions::default() };
        for info in catalog::catalog().into_iter().filter(|i| i.name == "team_balances" || i.name == "credit_history") {
            let report = rebuild::rebuild(&store, &info, &options, &NoProgress).await.map_err(|e| format!("rebuild: {e}"))?;
            if !report.matches() {
                return Err(format!("{} (bulk {bulk}, batch {batch_size}) differs: {:#?}", info.name, report.differences));
            }
        }
    }

    // The audit's replay (the same fold, from events alone) tells what the API serves.
    for stream in &streams {
        let team = stream.id.to_string();
        let replay = projections::audit::replay(&db.db, &team, None).await.map_err(|e| format!("replay: {e}"))?;
        if !replay.violations.is_empty() {
            return Err(format!("audit of {team}: {:#?}", replay.violations));
        }
        let served = kiln::queries::credits::balance(&db.db, stream.id).await.map_err(|e| format!("balance: {e:?}"))?.ok_or_else(|| "no balance".to_string())?;
        let (ours, theirs) = ((served.available, served.reserved, served.totals), (replay.available, replay.reserved, replay.totals));
        if ours != theirs {
            return Err(format!("balance of {team}: served {ours:?}, replayed {theirs:?}"));
        }
        let filter = kiln::queries::credits::LedgerFilter::default();
        let mut history = kiln::queries::credits::history(&db.db, stream.id, &filter, None, 10_000).await.map_err(|e| format!("history: {e:?}"))?;
        history.reverse();
        let replayed: Vec<_> = replay.entries.into_iter().map(|e| kiln::queries::credits::LedgerEntry { hash: None, ..e }).collect();
        if history != replayed {
            return Err(format!("ledger of {team}: served {history:#?}, replayed {replayed:#?}"));
        }
        if (served.available, served.reserved) != (stream.state.available(), stream.state.reserved()) {
            return Err(format!("balance of {team} is not the aggregate's"));
        }
    }
    Ok(())
}

fn run(cases: u32, database: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = TestDb>>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let config = Config { cases, max_shrink_iters: 32, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&(steps(), rebuild_batch_size()), |(steps, batch_size)| {
        runtime.block_on(async { case(&database().await, steps, batch_size).await }).map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn postgres_live_projections_equal_a_rebuild_for_any_batching_and_time_order() {
    run(10, || Box::pin(TestDb::postgres()));
}

#[test]
fn sqlite_live_projections_equal_a_rebuild_for_any_batching_and_time_order() {
    run(16, || Box::pin(TestDb::sqlite()));
}

/// Reservations made and ended in one append are stored ended, beside the ending of one
/// made in an earlier append (on PostgreSQL an append's money rows are one statement,
/// whose parts do not see each other's rows).
async fn made_and_ended_in_one_append(db: TestDb) {
    let step = |op, flush| Step { team: 0, op, advance_secs: 1, skew_micros: 0, flush };
    let steps = vec![
        step(Op::Grant { amount: 100, expires_in_secs: None }, Flush::Team),
        // One append: r1 made and deducted, r2 and r3 made.
        step(Op::Reserve { amount: 10 }, Flush::Hold),
        step(Op::Deduct(0), Flush::Hold),
        step(Op::Reserve { amount: 7 }, Flush::Hold),
        step(Op::Reserve { amount: 3 }, Flush::Team),
        // One append: r2 (made before) refunded, r4 made and refunded.
        step(Op::Refund(0), Flush::Hold),
        step(Op::Reserve { amount: 4 }, Flush::Hold),
        step(Op::Refund(1), Flush::AllAndProject),
    ];
    case(&db, steps, 5_000).await.expect("the live tables equal a rebuild and the audit's replay");
    let states = infrastructure::db_fetch_all!(&db.db, (String, i64), "SELECT state, COUNT(*) FROM credit_reservations GROUP BY state ORDER BY state")
        .expect("reservations");
    let states: Vec<(&str, i64)> = states.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(states, [("deducted", 1), ("pending", 1), ("refunded", 2)]);
    let ended = infrastructure::db_fetch_all!(&db.db, (i64,), "SELECT COUNT(*) FROM credit_reservations WHERE (state = 'pending') = (ended_at IS NULL)")
        .expect("ended times");
    assert_eq!(ended, [(4,)], "every ended reservation has its time, a pending one none");
    let block = infrastructure::db_fetch_all!(&db.db, (i64, i64, i64), "SELECT remaining, reserved, deducted FROM credit_grants").expect("block");
    assert_eq!(block, [(87, 3, 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reservations_made_and_ended_in_one_append_are_stored_ended() {
    made_and_ended_in_one_append(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reservations_made_and_ended_in_one_append_are_stored_ended() {
    made_and_ended_in_one_append(TestDb::sqlite().await).await;
}
