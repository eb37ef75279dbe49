//! The event store's behavioural suite. Every scenario is written once and runs against
//! both PostgreSQL and SQLite (see `both_backends!` at the bottom).

use std::sync::Arc;

use application::aggregate_store::{AggregateStore, CommandError};
use application::event_store::{EventStore, EventStoreError, LogPosition, NewEvent, Snapshot, StoredEvent, StreamAppend};
use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent};
use infrastructure::db::{Backend, Database};
use infrastructure::event_store::{CqrsRepository, InlineProjection, ProjectionError, SqlEventStore, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Barrier, Notify};

use crate::support::db::TestDb;

// ---- a tiny aggregate to drive the store ------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum CounterEvent {
    Added { amount: i64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Added".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, Clone)]
enum CounterCommand {
    Add(Vec<i64>),
}

#[derive(Debug, thiserror::Error)]
#[error("amounts must be positive")]
struct CounterError;

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(&mut self, command: CounterCommand, _: &(), sink: &EventSink<Self>) -> Result<(), CounterError> {
        let CounterCommand::Add(amounts) = command;
        if amounts.iter().any(|a| *a <= 0) {
            return Err(CounterError);
        }
        for amount in amounts {
            sink.write(CounterEvent::Added { amount }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Added { amount } = event;
        self.value += amount;
    }
}

fn added(amount: i64) -> NewEvent {
    NewEvent {
        event_type: "Added".into(),
        event_version: "1".into(),
        payload: json!({"type": "Added", "amount": amount}),
        metadata: json!({}),
    }
}

fn append(id: &str, expected_sequence: i64, amounts: &[i64]) -> StreamAppend {
    StreamAppend {
        aggregate_type: Counter::TYPE.into(),
        aggregate_id: id.into(),
        expected_sequence,
        events: amounts.iter().map(|a| added(*a)).collect(),
        snapshot: None,
    }
}

fn amounts(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.payload["amount"].as_i64().expect("amount")).collect()
}

async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        Database::Sqlite { write, .. } => sqlx::query(sql).execute(write).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads the whole log once it holds at least `count` events. On PostgreSQL the reader
/// only sees transactions older than every running one, cluster-wide, so parallel tests
/// can hold it back for a moment: wait for the condition, bounded.
async fn read_all(store: &SqlEventStore, count: usize) -> Vec<StoredEvent> {
    let mut reader = Reader::default();
    reader.poll_until(store, count).await;
    reader.seen
}

// ---- inline projections used by the scenarios --------------------------------------

/// Counts events per stream in `tally`; refuses streams named "poison".
struct Tally;

#[async_trait]
impl InlineProjection for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    async fn apply(&self, tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_id == "poison" {
                return Err("poison stream refused".into());
            }
            infrastructure::tx_execute!(
                &mut *tx,
                "INSERT INTO tally (aggregate_id, events) VALUES ($1, 1) \
                 ON CONFLICT (aggregate_id) DO UPDATE SET events = tally.events + 1",
                event.aggregate_id.clone()
            )?;
        }
        Ok(())
    }
}

async fn tally_of(db: &Database, id: &str) -> i64 {
    let sql = "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM tally WHERE aggregate_id = $1";
    match db {
        Database::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(pool).await,
        Database::Sqlite { read, .. } => sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(read).await,
    }
    .expect("tally")
}

/// Holds the append transaction of stream "slow" open, after its events are inserted,
/// until released.
#[derive(Default)]
struct Gate {
    inside: Notify,
    release: Notify,
}

#[async_trait]
impl InlineProjection for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    async fn apply(&self, _tx: &mut Tx<'_>, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        if events.iter().any(|e| e.aggregate_id == "slow") {
            self.inside.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

// ---- scenarios ------------------------------------------------------------------------

async fn append_and_load_round_trip(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    let stored = store.append(&[append("a", 0, &[1, 2, 3]), append("b", 0, &[10])]).await.expect("append");
    assert_eq!(stored.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2, 3, 1]);

    let a = store.load_stream("Counter", "a", 0).await.expect("load a");
    assert_eq!(amounts(&a), vec![1, 2, 3]);
    assert_eq!(a.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(a, stored[..3].to_vec(), "load returns exactly what append reported");
    assert_eq!(amounts(&store.load_stream("Counter", "a", 2).await.expect("tail")), vec![3]);
    assert!(store.load_stream("Counter", "missing", 0).await.expect("empty").is_empty());

    let log = read_all(&store, 4).await;
    assert_eq!(amounts(&log), vec![1, 2, 3, 10]);
    assert!(log.windows(2).all(|w| w[0].log_position < w[1].log_position));

    let counter = AggregateStore::new(Arc::new(store), 100).load::<Counter>("a").await.expect("typed load");
    assert_eq!((counter.aggregate.value, counter.sequence), (6, 3));
}

async fn conflicting_writers_exactly_one_wins(t: TestDb) {
    const WRITERS: usize = 8;
    let store = SqlEventStore::new(t.db.clone());
    store.append(&[append("hot", 0, &[1])]).await.expect("seed");
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.append(&[append("hot", 1, &[100 + writer as i64])]).await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => wins += 1,
            Err(EventStoreError::Conflict { aggregate_id, expected_sequence, .. }) => {
                assert_eq!((aggregate_id.as_str(), expected_sequence), ("hot", 1));
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(wins, 1, "exactly one writer may append at sequence 2");
    assert_eq!(store.load_stream("Counter", "hot", 0).await.expect("load").len(), 2);
}

async fn concurrent_commands_retry_and_lose_nothing(t: TestDb) {
    const WRITERS: i64 = 8;
    const COMMANDS: i64 = 10;
    let aggregates = AggregateStore::new(Arc::new(SqlEventStore::new(t.db.clone())), 1_000);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let aggregates = aggregates.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..COMMANDS {
                let amount = writer * 1_000 + n + 1;
                aggregates
                    .execute::<Counter>("shared", CounterCommand::Add(vec![amount]), &(), &json!({}))
                    .await
                    .expect("command eventually commits");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let expected: i64 = (0..WRITERS).flat_map(|w| (0..COMMANDS).map(move |n| w * 1_000 + n + 1)).sum();
    let loaded = aggregates.load::<Counter>("shared").await.expect("load");
    assert_eq!((loaded.aggregate.value, loaded.sequence), (expected, WRITERS * COMMANDS));
    let events = aggregates.event_store().load_stream("Counter", "shared", 0).await.expect("events");
    assert!(events.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1), "sequences are contiguous");
}

async fn multi_stream_append_is_all_or_nothing(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    store.append(&[append("existing", 0, &[1])]).await.expect("seed");

    // The second stream's expected sequence is stale: the first must not be recorded.
    let result = store.append(&[append("fresh", 0, &[5]), append("existing", 0, &[7])]).await;
    match result {
        Err(EventStoreError::Conflict { aggregate_id, .. }) => assert_eq!(aggregate_id, "existing"),
        other => panic!("expected a conflict on the second stream, got {other:?}"),
    }
    assert!(store.load_stream("Counter", "fresh", 0).await.expect("load").is_empty());
    assert_eq!(store.load_stream("Counter", "existing", 0).await.expect("load").len(), 1);

    // The same pair with the right expectations commits both.
    store.append(&[append("fresh", 0, &[5]), append("existing", 1, &[7])]).await.expect("append both");
    assert_eq!(amounts(&read_all(&store, 3).await), vec![1, 5, 7]);
}

async fn inline_projection_commits_and_rolls_back_with_the_append(t: TestDb) {
    exec(&t.db, "CREATE TABLE tally (aggregate_id TEXT PRIMARY KEY, events BIGINT NOT NULL)").await;
    let store = SqlEventStore::with_inline_projections(t.db.clone(), vec![Arc::new(Tally)]);

    store.append(&[append("x", 0, &[1, 2])]).await.expect("append");
    assert_eq!(tally_of(&t.db, "x").await, 2, "read-your-writes right after append");

    // A failed append (conflict in its second stream) leaves the projection untouched.
    let failed = store.append(&[append("y", 0, &[1]), append("x", 1, &[3])]).await;
    assert!(matches!(failed, Err(EventStoreError::Conflict { .. })), "{failed:?}");
    assert_eq!((tally_of(&t.db, "x").await, tally_of(&t.db, "y").await), (2, 0));

    // A projection that fails takes the events down with it.
    let refused = store.append(&[append("z", 0, &[1]), append("poison", 0, &[1])]).await;
    match refused {
        Err(EventStoreError::Projection { projection, .. }) => assert_eq!(projection, "tally"),
        other => panic!("expected a projection error, got {other:?}"),
    }
    assert!(store.load_stream("Counter", "z", 0).await.expect("load").is_empty());
    assert_eq!(tally_of(&t.db, "z").await, 0);
}

/// A log follower: a checkpoint and everything it has read so far.
#[derive(Default)]
struct Reader {
    checkpoint: LogPosition,
    seen: Vec<StoredEvent>,
}

impl Reader {
    async fn poll(&mut self, store: &SqlEventStore) {
        let events = store.read_log(self.checkpoint, 100).await.expect("poll");
        if let Some(last) = events.last() {
            self.checkpoint = last.log_position;
        }
        self.seen.extend(events);
    }

    async fn poll_until(&mut self, store: &SqlEventStore, count: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            self.poll(store).await;
            if self.seen.len() >= count || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

async fn log_reader_never_skips_a_late_commit(t: TestDb) {
    let gate = Arc::new(Gate::default());
    let store = SqlEventStore::with_inline_projections(t.db.clone(), vec![gate.clone()]);
    store.append(&[append("before", 0, &[1])]).await.expect("seed");

    let mut reader = Reader::default();
    reader.poll_until(&store, 1).await;

    // A: inserts its event first, then holds its transaction open.
    let slow = {
        let store = store.clone();
        tokio::spawn(async move { store.append(&[append("slow", 0, &[2])]).await })
    };
    gate.inside.notified().await;
    // B: appends after A inserted, so its position is higher; it commits first
    // (PostgreSQL) or waits for A's write lock (SQLite).
    let fast = {
        let store = store.clone();
        tokio::spawn(async move { store.append(&[append("fast", 0, &[3])]).await })
    };
    let fast = if t.db.backend() == Backend::Postgres {
        fast.await.expect("task").expect("fast commits while slow is open");
        assert_eq!(store.load_stream("Counter", "fast", 0).await.expect("load").len(), 1, "B is committed");
        None
    } else {
        Some(fast)
    };

    // Polling now must not return B: a checkpoint past B would skip A forever.
    reader.poll(&store).await;
    assert_eq!(amounts(&reader.seen), vec![1], "nothing after an uncommitted event is visible");

    gate.release.notify_one();
    slow.await.expect("task").expect("slow commits");
    if let Some(fast) = fast {
        fast.await.expect("task").expect("fast commits");
    }
    reader.poll_until(&store, 3).await;
    reader.poll(&store).await;
    let ids: Vec<&str> = reader.seen.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, vec!["before", "slow", "fast"], "each event exactly once, in commit order");
}

async fn snapshots_are_written_and_used(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    let aggregates = AggregateStore::new(Arc::new(store.clone()), 3);
    for amount in 1..=7 {
        aggregates.execute::<Counter>("s", CounterCommand::Add(vec![amount]), &(), &json!({})).await.expect("add");
    }
    let snapshot = store.load_snapshot("Counter", "s").await.expect("snapshot").expect("one was written");
    assert_eq!(snapshot.sequence, 6);
    assert_eq!(snapshot.state, json!({"value": 21}));
    let loaded = aggregates.load::<Counter>("s").await.expect("load");
    assert_eq!((loaded.aggregate.value, loaded.sequence), (28, 7));
    // `load_latest` (one statement on PostgreSQL): the snapshot and only the events after it.
    let (latest, after) = store.load_latest("Counter", "s").await.expect("load latest");
    assert_eq!(latest.map(|s| (s.sequence, s.state)), Some((6, json!({"value": 21}))));
    assert_eq!(after.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![7]);
    assert_eq!(after[0].payload, store.load_stream("Counter", "s", 6).await.expect("load")[0].payload);
    // Without a snapshot: every event; an unknown stream: nothing.
    aggregates.execute::<Counter>("short", CounterCommand::Add(vec![1, 2]), &(), &json!({})).await.expect("add");
    let (none, all) = store.load_latest("Counter", "short").await.expect("load latest");
    assert!(none.is_none());
    assert_eq!(all, store.load_stream("Counter", "short", 0).await.expect("load"));
    let (none, nothing) = store.load_latest("Counter", "unknown").await.expect("load latest");
    assert!(none.is_none() && nothing.is_empty());

    // Proof the snapshot is read: a snapshot claiming another state changes the load.
    exec(&t.db, "UPDATE snapshots SET payload = '{\"value\": 1000}' WHERE aggregate_id = 's'").await;
    assert_eq!(aggregates.load::<Counter>("s").await.expect("load").aggregate.value, 1007);
    // A snapshot that no longer deserializes is ignored: the stream is replayed.
    exec(&t.db, "UPDATE snapshots SET payload = '{\"bogus\": true}' WHERE aggregate_id = 's'").await;
    assert_eq!(aggregates.load::<Counter>("s").await.expect("load").aggregate.value, 28);
}

async fn cqrs_es_framework_runs_on_the_store(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    let cqrs = CqrsFramework::new(
        PersistedEventStore::<_, Counter>::new_snapshot_store(CqrsRepository::new(store.clone()), 5),
        vec![],
        (),
    );
    // Commands of several events each, so cqrs-es's snapshot points fall inside commits.
    for n in 1..=6 {
        cqrs.execute("c", CounterCommand::Add(vec![n, n, n])).await.expect("execute");
    }
    assert!(cqrs.execute("c", CounterCommand::Add(vec![-1])).await.is_err());
    let expected = 3 * (1..=6).sum::<i64>();
    let aggregates = AggregateStore::new(Arc::new(store.clone()), 4);
    let loaded = aggregates.load::<Counter>("c").await.expect("load");
    assert_eq!((loaded.aggregate.value, loaded.sequence), (expected, 18));

    // Our own snapshots (written by AggregateStore) are what cqrs-es then loads from.
    aggregates.execute::<Counter>("c", CounterCommand::Add(vec![1, 1]), &(), &json!({})).await.expect("add");
    assert_eq!(store.load_snapshot("Counter", "c").await.expect("snapshot").map(|s| s.sequence), Some(20));
    cqrs.execute("c", CounterCommand::Add(vec![2])).await.expect("execute");
    let loaded = aggregates.load::<Counter>("c").await.expect("load");
    assert_eq!((loaded.aggregate.value, loaded.sequence), (expected + 4, 21));
}

async fn corrupt_or_unknown_events_name_their_stream_and_sequence(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    let aggregates = AggregateStore::new(Arc::new(store.clone()), 1_000);
    store.append(&[append("bad", 0, &[1])]).await.expect("seed");
    let unknown = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                   VALUES ('Counter', 'bad', 2, 'Exploded', '1', '{\"type\": \"Exploded\"}', '{}')";
    exec(&t.db, unknown).await;
    match aggregates.load::<Counter>("bad").await {
        Err(EventStoreError::Corrupt { aggregate_type, aggregate_id, sequence, .. }) => {
            assert_eq!((aggregate_type.as_str(), aggregate_id.as_str(), sequence), ("Counter", "bad", 2));
        }
        other => panic!("expected a corrupt-event error, got {other:?}"),
    }

    // A payload whose recorded type does not match its content is corrupt too.
    let mismatched = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                      VALUES ('Counter', 'odd', 1, 'Removed', '1', '{\"type\": \"Added\", \"amount\": 1}', '{}')";
    exec(&t.db, mismatched).await;
    let error = aggregates.load::<Counter>("odd").await.expect_err("mismatch");
    assert!(matches!(error, EventStoreError::Corrupt { sequence: 1, .. }), "{error}");

    // Commands against a corrupt stream fail with the same error instead of writing.
    let result = aggregates.execute::<Counter>("bad", CounterCommand::Add(vec![1]), &(), &json!({})).await;
    assert!(matches!(result, Err(CommandError::Store(EventStoreError::Corrupt { sequence: 2, .. }))));
}

async fn the_log_is_append_only(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    store.append(&[append("fixed", 0, &[1])]).await.expect("seed");
    for sql in ["UPDATE events SET payload = '{}'", "DELETE FROM events"] {
        let refused = match &t.db {
            Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.is_err(),
            Database::Sqlite { write, .. } => sqlx::query(sql).execute(write).await.is_err(),
        };
        assert!(refused, "{sql} must be refused");
    }
    assert_eq!(amounts(&store.load_stream("Counter", "fixed", 0).await.expect("load")), vec![1]);
}

/// `stale_streams` names exactly the streams whose append at the given sequence would
/// conflict; `save_snapshot` never moves a snapshot backwards.
async fn stale_streams_and_saved_snapshots(t: TestDb) {
    let store = SqlEventStore::new(t.db.clone());
    store.append(&[append("a", 0, &[1, 2]), append("b", 0, &[5])]).await.expect("seed");
    let ask = |id: &str, expected: i64| ("Counter".to_string(), id.to_string(), expected);
    let stale = store.stale_streams(&[ask("a", 1), ask("a", 2), ask("b", 1), ask("new", 0), ask("b", 0)]).await.expect("stale");
    let mut stale: Vec<&str> = stale.iter().map(|(_, id)| id.as_str()).collect();
    stale.sort_unstable();
    assert_eq!(stale, vec!["a", "b"], "a at 1 and b at 0 are behind; a at 2, b at 1 and a new stream are not");

    let snapshot = |sequence: i64, value: i64| Snapshot { sequence, state: serde_json::json!({ "value": value }) };
    store.save_snapshot("Counter", "a", snapshot(2, 3)).await.expect("save");
    store.save_snapshot("Counter", "a", snapshot(1, 1)).await.expect("older is ignored");
    let kept = store.load_snapshot("Counter", "a").await.expect("load").expect("snapshot");
    assert_eq!((kept.sequence, kept.state["value"].as_i64()), (2, Some(3)));
    assert!(store.save_snapshot("Counter", "a", snapshot(0, 0)).await.is_err(), "sequence 0 is refused");
}

/// A multi-row statement (`tx_execute_rows!`, `tx_fetch_rows!`) writes, updates and
/// returns the same rows on both databases, NULLs included, and sends nothing for no rows;
/// on PostgreSQL its text does not depend on the number of rows, so a connection prepares
/// it once for every batch size (a `VALUES` list was a statement per row count).
async fn multi_row_statements_are_one_text_whatever_the_rows(t: TestDb) {
    exec(&t.db, "CREATE TABLE batch_rows (id text PRIMARY KEY, n bigint NOT NULL, note text)").await;
    let mut conn = match &t.db {
        Database::Postgres(pool) => Either::Postgres(pool.acquire().await.expect("connection")),
        Database::Sqlite { write, .. } => Either::Sqlite(write.acquire().await.expect("connection")),
    };
    let mut tx = match &mut conn {
        Either::Postgres(conn) => Tx::Postgres(&mut *conn),
        Either::Sqlite(conn) => Tx::Sqlite(&mut *conn),
    };
    for size in 1..=3i64 {
        let rows: Vec<(String, i64, Option<String>)> =
            (0..size).map(|n| (format!("{size}-{n}"), n, (n % 2 == 0).then(|| format!("note {n}")))).collect();
        let written = infrastructure::tx_execute_rows!(
            &mut tx,
            "INSERT INTO batch_rows (id, n, note)",
            "",
            rows,
            ["text" => |r| r.0.as_str(), "bigint" => |r| r.1, "text" => |r| r.2.as_deref()]
        )
        .expect("insert");
        assert_eq!(written, size as u64);
    }
    let none: Vec<(String, i64, Option<String>)> = Vec::new();
    let written = infrastructure::tx_execute_rows!(&mut tx, "INSERT INTO batch_rows (id, n, note)", "", none, ["text" => |r| r.0.as_str(), "bigint" => |r| r.1, "text" => |r| r.2.as_deref()]);
    assert_eq!(written.expect("no rows"), 0);
    let raises = [("3-1", 10i64), ("2-0", 20), ("absent", 30)];
    let mut raised: Vec<(String, i64, Option<String>)> = infrastructure::tx_fetch_rows!(
        &mut tx,
        (String, i64, Option<String>),
        "UPDATE batch_rows SET n = batch_rows.n + v.column2 FROM (",
        ") AS v WHERE batch_rows.id = v.column1 RETURNING batch_rows.id, batch_rows.n, batch_rows.note",
        raises,
        ["text" => |r| r.0, "bigint" => |r| r.1]
    )
    .expect("update");
    raised.sort();
    assert_eq!(raised, vec![("2-0".to_string(), 20, Some("note 0".to_string())), ("3-1".to_string(), 11, None)]);
    if let Tx::Postgres(conn) = &mut tx {
        let prepared: Vec<String> = sqlx::query_scalar("SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO batch_rows%'")
            .fetch_all(&mut **conn)
            .await
            .expect("prepared statements");
        assert_eq!(prepared.len(), 1, "one text for three batch sizes: {prepared:#?}");
    }
}

/// A pooled connection of either database.
enum Either {
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(crate::support::db::TestDb::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(crate::support::db::TestDb::sqlite().await).await;
                }
            )*
        }
    };
}

both_backends!(
    append_and_load_round_trip,
    conflicting_writers_exactly_one_wins,
    concurrent_commands_retry_and_lose_nothing,
    multi_stream_append_is_all_or_nothing,
    inline_projection_commits_and_rolls_back_with_the_append,
    log_reader_never_skips_a_late_commit,
    snapshots_are_written_and_used,
    cqrs_es_framework_runs_on_the_store,
    corrupt_or_unknown_events_name_their_stream_and_sequence,
    the_log_is_append_only,
    stale_streams_and_saved_snapshots,
    multi_row_statements_are_one_text_whatever_the_rows,
);

/// An append's statements are planned once per connection, as generic plans that find
/// their rows through indexes: no whole-table scan, no hash or merge join, even when
/// planned on the nearly empty tables of a fresh database (the plans a connection then
/// keeps while the tables grow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_plan_once_with_key_lookups() {
    use domain::{Credits, Operation, Plan, TeamCreditsCommand, TeamId};
    let t = TestDb::postgres().await;
    // One connection: the prepared statements read below are the appends' own.
    let one = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&t.url).await.expect("pool");
    let team = TeamId::new(uuid::Uuid::now_v7());
    let (meta, now) = (json!({}), chrono::Utc::now());
    let store = Arc::new(SqlEventStore::with_inline_projections(Database::Postgres(one.clone()), projections::inline_projections()));
    let credits = application::credits::CreditsService::new(AggregateStore::new(store, 100), Arc::new(application::clock::SystemClock));
    let open = TeamCreditsCommand::OpenTeam { team_id: team, name: "T".into(), plan: Plan::Pro, now };
    credits.execute(team, open, &meta).await.expect("open");
    let grant = TeamCreditsCommand::GrantCredits {
        grant_id: domain::GrantId::new(uuid::Uuid::now_v7()),
        amount: Credits::parse(1_000).expect("positive"),
        source: domain::GrantSource::Admin,
        expires_at: None,
        key: domain::IdempotencyKey::parse("g").expect("key"),
        now,
    };
    credits.execute(team, grant, &meta).await.expect("grant");
    for n in 0..6 {
        let job = domain::JobId::new(uuid::Uuid::now_v7());
        let amount = Credits::parse(1).expect("positive");
        let reserve = TeamCreditsCommand::ReserveCredits { reservation_id: job, amount, operation: Operation::ImageGeneration, price_version: 1, now };
        credits.execute(team, reserve, &meta).await.expect("reserve");
        let end = if n % 2 == 0 {
            TeamCreditsCommand::DeductCredits { reservation_id: job, now }
        } else {
            TeamCreditsCommand::RefundCredits { reservation_id: job, now }
        };
        credits.execute(team, end, &meta).await.expect("end");
    }

    let mut conn = one.acquire().await.expect("connection");
    // The chain's predecessor lookup runs only for a stream whose last hash the process
    // does not remember (not in this flow): prepared here, as sqlx prepares it.
    sqlx::raw_sql(&format!("PREPARE predecessors(text, text[], bigint[]) AS {}", infrastructure::event_store::PREDECESSOR_HASHES_SQL))
        .execute(&mut *conn)
        .await
        .expect("prepare");
    let statements: Vec<(String, String, i64, i64, i32)> = sqlx::query_as(
        "SELECT name, statement, generic_plans, custom_plans, COALESCE(cardinality(parameter_types), 0) FROM pg_prepared_statements \
         WHERE statement ~ '^(INSERT INTO (events|credit_reservations|credit_reservation_allocations)|UPDATE (team_balances|credit_grants|credit_reservations)|WITH reservations AS) ' \
            OR name = 'predecessors'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("prepared statements");
    // The events, the balance projection's money rows (one statement), and the chain lookup.
    assert_eq!(statements.len(), 3, "the credit appends' statements: {statements:#?}");
    for (name, statement, generic, custom, parameters) in statements {
        if name != "predecessors" {
            assert!(custom == 0 && generic >= 2, "planned afresh {custom} times, generic plan used {generic} times: {statement}");
        }
        // The plan kept (made now for the lookup), shown under the append's settings: a
        // plan made again, say after an ANALYZE, is made as an append would make it.
        sqlx::raw_sql(infrastructure::event_store::APPEND_BEGIN).execute(&mut *conn).await.expect("begin");
        let arguments = vec!["NULL"; parameters as usize].join(", ");
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({arguments})")).fetch_all(&mut *conn).await.expect("explain");
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.expect("rollback");
        let plan = plan.join("\n");
        for shape in ["Seq Scan", "Hash Join", "Merge Join"] {
            assert!(!plan.contains(shape), "{statement}\n{plan}");
        }
    }
}

/// The log-position queries walk the commit-order index and sort nothing. (A converted
/// column left unnamed is named `transaction_id`, and `ORDER BY transaction_id` then sorted
/// the whole log by the converted value on every call: 0.2 s per million events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_log_position_queries_sort_nothing() {
    let t = TestDb::postgres().await;
    let Database::Postgres(pool) = &t.db else { unreachable!("a PostgreSQL test database") };
    let mut conn = pool.acquire().await.expect("connection");
    // A plan that needs a sort still sorts with this; one that can use the index does not.
    sqlx::query("SET enable_sort = off").execute(&mut *conn).await.expect("set");
    let mut plans = Vec::new();
    for sql in [infrastructure::event_store::LOG_HEAD_SQL, infrastructure::event_store::READABLE_LOG_HEAD_SQL] {
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}")).fetch_all(&mut *conn).await.expect("explain");
        plans.push((sql, plan));
    }
    let tail: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", projections::rebuild::TAIL_SQL))
        .bind("1")
        .bind(1i64)
        .bind("100")
        .bind(100i64)
        .bind(10i64)
        .fetch_all(&mut *conn)
        .await
        .expect("explain the tail");
    plans.push((projections::rebuild::TAIL_SQL, tail));
    for (sql, plan) in plans {
        assert!(plan.iter().any(|line| line.contains("events_commit_order_idx")), "{sql}\n{}", plan.join("\n"));
        assert!(!plan.iter().any(|line| line.contains("Sort")), "{sql} sorts:\n{}", plan.join("\n"));
    }
}
