//! cqrs-es's `PersistedEventRepository` over [`SqlEventStore`], so cqrs-es's own
//! `PersistedEventStore` / `CqrsFramework` can run on Kiln's store unchanged.

use application::event_store::{EventStore, EventStoreError, LogPosition, NewEvent, StoredEvent, StreamAppend};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot};
use cqrs_es::Aggregate;
use serde_json::Value;

use super::SqlEventStore;

const REPLAY_CHANNEL_SIZE: usize = 256;
const REPLAY_PAGE_SIZE: i64 = 1_000;

/// Snapshots offered by cqrs-es are not stored: cqrs-es 0.5 builds them by applying the
/// new events to an aggregate whose `handle` already applied them through the
/// `EventSink`, so they count every event of the commit twice. Snapshots written by
/// `application::aggregate_store::AggregateStore` are correct, and are what
/// `get_snapshot` serves to cqrs-es.
#[derive(Clone)]
pub struct CqrsRepository {
    store: SqlEventStore,
}

impl CqrsRepository {
    pub fn new(store: SqlEventStore) -> Self {
        Self { store }
    }
}

fn to_persistence(error: EventStoreError) -> PersistenceError {
    match error {
        EventStoreError::Conflict { .. } => PersistenceError::OptimisticLockError,
        EventStoreError::Corrupt { .. } => PersistenceError::DeserializationError(Box::new(error)),
        EventStoreError::Unavailable(_) => PersistenceError::ConnectionError(Box::new(error)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

fn to_serialized(event: StoredEvent) -> SerializedEvent {
    SerializedEvent {
        aggregate_id: event.aggregate_id,
        sequence: event.sequence as usize,
        aggregate_type: event.aggregate_type,
        event_type: event.event_type,
        event_version: event.event_version,
        payload: event.payload,
        metadata: event.metadata,
    }
}

impl PersistedEventRepository for CqrsRepository {
    async fn get_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.get_last_events::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self
            .store
            .load_stream(A::TYPE, aggregate_id, last_sequence as i64)
            .await
            .map_err(to_persistence)?;
        Ok(events.into_iter().map(to_serialized).collect())
    }

    async fn get_snapshot<A: Aggregate>(&self, aggregate_id: &str) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let snapshot = self.store.load_snapshot(A::TYPE, aggregate_id).await.map_err(to_persistence)?;
        Ok(snapshot.map(|s| SerializedSnapshot {
            aggregate_id: aggregate_id.to_string(),
            aggregate: s.state,
            current_sequence: s.sequence as usize,
            current_snapshot: s.sequence as usize,
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let current_sequence = first.sequence.saturating_sub(1);
        let append = StreamAppend {
            aggregate_type: A::TYPE.to_string(),
            aggregate_id: first.aggregate_id.clone(),
            expected_sequence: current_sequence as i64,
            events: events
                .iter()
                .map(|e| NewEvent {
                    event_type: e.event_type.clone(),
                    event_version: e.event_version.clone(),
                    payload: e.payload.clone(),
                    metadata: e.metadata.clone(),
                })
                .collect(),
            snapshot: None,
        };
        self.store.append(std::slice::from_ref(&append)).await.map_err(to_persistence)?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<ReplayStream, PersistenceError> {
        let events = self.get_events::<A>(aggregate_id).await?;
        let (mut feed, stream) = ReplayStream::new(REPLAY_CHANNEL_SIZE);
        tokio::spawn(async move {
            for event in events {
                if feed.push(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let (mut feed, stream) = ReplayStream::new(REPLAY_CHANNEL_SIZE);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut after = LogPosition::START;
            loop {
                let page = match store.read_log(after, REPLAY_PAGE_SIZE).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = feed.push(Err(to_persistence(error))).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                after = last.log_position;
                for event in page.into_iter().filter(|e| e.aggregate_type == A::TYPE) {
                    if feed.push(Ok(to_serialized(event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }
}
