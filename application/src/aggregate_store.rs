//! Typed access to aggregates over the [`EventStore`] port: load (snapshot + events),
//! decide (run a command against the loaded state), and commit one or several streams
//! in one append. Optimistic-concurrency conflicts are retried a bounded number of times.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;

use crate::event_store::{EventStore, EventStoreError, NewEvent, Snapshot, StoredEvent, StreamAppend};

/// How often a command is retried after losing an optimistic-concurrency race. Generous:
/// with jittered exponential backoff (capped at ~13 ms) the worst case is about a second
/// of retrying under heavy cross-process contention on one stream.
pub const CONFLICT_RETRIES_MAX: u32 = 64;
const CONFLICT_BACKOFF_BASE: Duration = Duration::from_micros(200);

/// An aggregate as of its stream's `sequence`.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub id: String,
    pub aggregate: A,
    pub sequence: i64,
    /// The sequence of the stream's latest snapshot (0: none).
    pub snapshot_sequence: i64,
}

/// The outcome of a command run against a loaded aggregate: the new events (already
/// applied to `state`) and the append that records them.
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    pub state: Loaded<A>,
    pub events: Vec<A::Event>,
    pub append: StreamAppend,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("gave up after {attempts} concurrency conflicts")]
    Contention { attempts: u32 },
}

#[derive(Clone)]
pub struct AggregateStore {
    store: Arc<dyn EventStore>,
    /// A snapshot is written each time a stream crosses a multiple of this many events.
    snapshot_every: i64,
}

impl AggregateStore {
    pub fn new(store: Arc<dyn EventStore>, snapshot_every: i64) -> Self {
        Self { store, snapshot_every: snapshot_every.max(1) }
    }

    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, EventStoreError> {
        let (snapshot, events) = self.store.load_latest(A::TYPE, id).await?;
        // A snapshot is a cache: if it no longer deserializes (the state's shape
        // changed), replay the stream from the start instead.
        let (mut aggregate, mut sequence, events) = match snapshot {
            None => (A::default(), 0, events),
            Some(snapshot) => match serde_json::from_value::<A>(snapshot.state) {
                Ok(aggregate) => (aggregate, snapshot.sequence, events),
                Err(_) => (A::default(), 0, self.store.load_stream(A::TYPE, id, 0).await?),
            },
        };
        let snapshot_sequence = sequence;
        for stored in events {
            aggregate.apply(decode_event::<A>(&stored)?);
            sequence = stored.sequence;
        }
        Ok(Loaded { id: id.to_string(), aggregate, sequence, snapshot_sequence })
    }

    /// The streams `ids`, in that order, each replayed from its first event, all read in
    /// one query ([`EventStore::load_streams`]): for many short streams (jobs), where a
    /// snapshot look-up and a read per stream would cost two round trips each. A stream
    /// with no events loads as the default state at sequence 0, as with [`Self::load`].
    pub async fn load_many<A: Aggregate>(&self, ids: &[String]) -> Result<Vec<Loaded<A>>, EventStoreError> {
        let mut by_id: std::collections::HashMap<&str, Loaded<A>> = ids
            .iter()
            .map(|id| (id.as_str(), Loaded { id: id.clone(), aggregate: A::default(), sequence: 0, snapshot_sequence: 0 }))
            .collect();
        for stored in self.store.load_streams(A::TYPE, ids).await? {
            let Some(loaded) = by_id.get_mut(stored.aggregate_id.as_str()) else { continue };
            let corrupt = |reason: String| EventStoreError::Corrupt {
                aggregate_type: A::TYPE.to_string(),
                aggregate_id: stored.aggregate_id.clone(),
                sequence: stored.sequence,
                reason,
            };
            if stored.sequence != loaded.sequence + 1 {
                return Err(corrupt(format!("follows sequence {} in a stream read", loaded.sequence)));
            }
            let decoded = serde_json::from_str(&stored.payload);
            loaded.aggregate.apply(checked_event::<A>(&stored.event_type, decoded, corrupt)?);
            loaded.sequence = stored.sequence;
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id.as_str())).collect())
    }

    /// Runs `command` against `loaded`. Nothing is written.
    pub async fn decide<A: Aggregate>(
        &self,
        mut loaded: Loaded<A>,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let (events, append) = self.decide_in_place(&mut loaded, command, services, metadata).await?;
        Ok(Decided { state: loaded, events, append })
    }

    /// Runs `command` against `loaded`, applying the new events to it (and advancing its
    /// sequence) without cloning the state. Nothing is written. If this fails, or the
    /// returned append is not committed, `loaded` must be discarded.
    pub async fn decide_in_place<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
    ) -> Result<(Vec<A::Event>, StreamAppend), CommandError<A::Error>> {
        self.decide_in_place_with(loaded, command, services, metadata, true).await
    }

    /// [`Self::decide_in_place`] whose append never carries a snapshot: for a caller that
    /// keeps the state in memory and writes snapshots itself after committing
    /// ([`Self::snapshot_due`], [`Self::save_snapshot`]), off its critical path.
    pub async fn decide_in_place_unsnapshotted<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
    ) -> Result<(Vec<A::Event>, StreamAppend), CommandError<A::Error>> {
        self.decide_in_place_with(loaded, command, services, metadata, false).await
    }

    async fn decide_in_place_with<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
        snapshots: bool,
    ) -> Result<(Vec<A::Event>, StreamAppend), CommandError<A::Error>> {
        let sink = EventSink::<A>::default();
        loaded.aggregate.handle(command, services, &sink).await.map_err(CommandError::Rejected)?;
        let events = sink.collect().await;
        let append = self.to_append(loaded, &events, metadata, snapshots)?;
        loaded.sequence += events.len() as i64;
        if let Some(snapshot) = &append.snapshot {
            loaded.snapshot_sequence = snapshot.sequence;
        }
        Ok((events, append))
    }

    /// Whether a stream that went from `before` to `loaded.sequence` events should be
    /// snapshotted now (the policy of appends, see `wants_snapshot`).
    pub fn snapshot_due<A>(&self, before: i64, loaded: &Loaded<A>) -> bool {
        loaded.sequence > before && self.wants_snapshot(before, loaded.sequence, loaded.snapshot_sequence)
    }

    /// Writes `state` as the snapshot of stream `id` at `sequence`, outside any append.
    /// The events up to `sequence` must be committed.
    pub async fn save_snapshot<A: Aggregate>(&self, id: &str, sequence: i64, state: &A) -> Result<(), EventStoreError> {
        let state = serde_json::to_value(state)
            .map_err(|e| EventStoreError::InvalidAppend(format!("cannot serialize snapshot of {} {id}: {e}", A::TYPE)))?;
        self.store.save_snapshot(A::TYPE, id, Snapshot { sequence, state }).await
    }

    /// Load, decide and append one stream, retrying on concurrency conflicts.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
    ) -> Result<Decided<A>, CommandError<A::Error>>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            let loaded = self.load::<A>(id).await?;
            let decided = self.decide(loaded, command.clone(), services, metadata).await?;
            match self.commit(std::slice::from_ref(&decided.append)).await {
                Ok(_) => return Ok(decided),
                Err(EventStoreError::Conflict { .. }) => {
                    attempt += 1;
                    if attempt >= CONFLICT_RETRIES_MAX {
                        return Err(CommandError::Contention { attempts: attempt });
                    }
                    conflict_backoff(attempt).await;
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Appends every non-empty append in one transaction.
    pub async fn commit(&self, appends: &[StreamAppend]) -> Result<Vec<StoredEvent>, EventStoreError> {
        if appends.iter().all(|a| a.events.is_empty()) {
            return Ok(Vec::new());
        }
        self.store.append(appends).await
    }

    /// The append recording `events` on `loaded` (whose aggregate already has them
    /// applied), with a snapshot when the policy asks for one.
    fn to_append<A: Aggregate>(
        &self,
        loaded: &Loaded<A>,
        events: &[A::Event],
        metadata: &Value,
        snapshots: bool,
    ) -> Result<StreamAppend, EventStoreError> {
        let (id, sequence, after) = (loaded.id.as_str(), loaded.sequence, &loaded.aggregate);
        let serialize = |what: &str, error: serde_json::Error| {
            EventStoreError::InvalidAppend(format!("cannot serialize {what} of {} {id}: {error}", A::TYPE))
        };
        let new_events = events
            .iter()
            .map(|event| {
                Ok(NewEvent {
                    event_type: event.event_type(),
                    event_version: event.event_version(),
                    payload: serde_json::to_value(event).map_err(|e| serialize("event", e))?,
                    metadata: metadata.clone(),
                })
            })
            .collect::<Result<Vec<_>, EventStoreError>>()?;
        let last = sequence + events.len() as i64;
        let snapshot = if snapshots && self.wants_snapshot(sequence, last, loaded.snapshot_sequence) && !events.is_empty() {
            let state = serde_json::to_value(after).map_err(|e| serialize("snapshot", e))?;
            Some(Snapshot { sequence: last, state })
        } else {
            None
        };
        Ok(StreamAppend {
            aggregate_type: A::TYPE.to_string(),
            aggregate_id: id.to_string(),
            expected_sequence: sequence,
            events: new_events,
            snapshot,
        })
    }
}

impl AggregateStore {
    /// Snapshot when the stream crosses a multiple of `snapshot_every`, and only once it
    /// has grown by a quarter since the last snapshot. A snapshot costs the size of the
    /// whole state, which grows with the stream (a team keeps every reservation); spacing
    /// snapshots in proportion keeps their cost per event constant, and a load replays at
    /// most a quarter of the stream.
    fn wants_snapshot(&self, sequence: i64, last: i64, snapshot_sequence: i64) -> bool {
        let crosses = last / self.snapshot_every > sequence / self.snapshot_every;
        crosses && last - snapshot_sequence >= self.snapshot_every.max(last / 4)
    }
}

/// Decodes a stored event into `A`'s event type, naming the stream and sequence if the
/// payload is corrupt, of an unknown type, or does not match its recorded type.
pub fn decode_event<A: Aggregate>(stored: &StoredEvent) -> Result<A::Event, EventStoreError> {
    let corrupt = |reason: String| EventStoreError::Corrupt {
        aggregate_type: stored.aggregate_type.clone(),
        aggregate_id: stored.aggregate_id.clone(),
        sequence: stored.sequence,
        reason,
    };
    // Deserialized from the borrowed value: no copy of the payload.
    checked_event::<A>(&stored.event_type, serde::Deserialize::deserialize(&stored.payload), corrupt)
}

/// A decoded payload, if it decoded and is the event its row says it is.
fn checked_event<A: Aggregate>(
    event_type: &str,
    decoded: Result<A::Event, serde_json::Error>,
    corrupt: impl Fn(String) -> EventStoreError,
) -> Result<A::Event, EventStoreError> {
    let event = decoded.map_err(|e| corrupt(format!("payload of {event_type} does not decode: {e}")))?;
    if event.event_type() != event_type {
        return Err(corrupt(format!("recorded as {event_type} but the payload is {}", event.event_type())));
    }
    Ok(event)
}

/// Exponential backoff with jitter from the clock's low bits, so racing writers spread out.
async fn conflict_backoff(attempt: u32) {
    let base = CONFLICT_BACKOFF_BASE * 2u32.saturating_pow(attempt.min(6));
    let jitter_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % base.as_nanos().max(1) as u64)
        .unwrap_or(0);
    tokio::time::sleep(base + Duration::from_nanos(jitter_ns)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoStore;

    #[async_trait::async_trait]
    impl EventStore for NoStore {
        async fn append(&self, _: &[StreamAppend]) -> Result<Vec<StoredEvent>, EventStoreError> {
            Ok(Vec::new())
        }
        async fn load_stream(&self, _: &str, _: &str, _: i64) -> Result<Vec<StoredEvent>, EventStoreError> {
            Ok(Vec::new())
        }
        async fn load_streams(&self, _: &str, _: &[String]) -> Result<Vec<crate::event_store::StreamEvent>, EventStoreError> {
            Ok(Vec::new())
        }
        async fn load_snapshot(&self, _: &str, _: &str) -> Result<Option<Snapshot>, EventStoreError> {
            Ok(None)
        }
        async fn save_snapshot(&self, _: &str, _: &str, _: Snapshot) -> Result<(), EventStoreError> {
            Ok(())
        }
        async fn stale_streams(&self, _: &[(String, String, i64)]) -> Result<Vec<(String, String)>, EventStoreError> {
            Ok(Vec::new())
        }
        async fn read_log(&self, _: crate::event_store::LogPosition, _: i64) -> Result<Vec<StoredEvent>, EventStoreError> {
            Ok(Vec::new())
        }
        async fn head(&self) -> Result<Option<crate::event_store::LogPosition>, EventStoreError> {
            Ok(None)
        }
    }

    #[track_caller]
    fn check(every: i64, sequence: i64, last: i64, snapshot_sequence: i64, expected: bool) {
        let store = AggregateStore::new(Arc::new(NoStore), every);
        assert_eq!(store.wants_snapshot(sequence, last, snapshot_sequence), expected, "{sequence}->{last} after {snapshot_sequence}");
    }

    #[test]
    fn snapshots_every_multiple_while_small_then_every_quarter() {
        check(100, 99, 100, 0, true); // the first multiple
        check(100, 100, 101, 100, false); // no multiple crossed
        check(100, 199, 200, 100, true); // 100 since the last >= max(100, 50)
        check(100, 799, 800, 700, false); // 100 < max(100, 200)
        check(100, 999, 1_000, 700, true); // 300 >= 250
        check(100, 3_999, 4_000, 3_300, false); // 700 < 1,000
        check(100, 4_399, 4_400, 3_300, true); // 1,100 >= 1,100
    }
}
