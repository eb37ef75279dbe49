//! Draining a worker process: an operator tells one worker to stop claiming jobs (it
//! finishes those it holds), and may let it claim again. Owns the [`WorkerDrain`]
//! aggregate (id = the worker's id, as its heartbeats name it); each event carries the
//! operator and the reason. The worker reads its drain with each heartbeat.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::operators::OperatorAct;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerDrainCommand {
    /// `seen`: whether the worker has ever sent a heartbeat (an unknown id drains nothing).
    Drain { seen: bool, act: OperatorAct, now: DateTime<Utc> },
    Undrain { act: OperatorAct, now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WorkerDrainEvent {
    WorkerDrainOrdered { worker_id: String, act: OperatorAct, occurred_at: DateTime<Utc> },
    WorkerDrainCancelled { worker_id: String, act: OperatorAct, occurred_at: DateTime<Utc> },
}

impl WorkerDrainEvent {
    pub fn act(&self) -> &OperatorAct {
        match self {
            WorkerDrainEvent::WorkerDrainOrdered { act, .. } | WorkerDrainEvent::WorkerDrainCancelled { act, .. } => act,
        }
    }

    /// The action's name as the audit shows it.
    pub fn action(&self) -> &'static str {
        match self {
            WorkerDrainEvent::WorkerDrainOrdered { .. } => "drain_worker",
            WorkerDrainEvent::WorkerDrainCancelled { .. } => "undrain_worker",
        }
    }
}

impl DomainEvent for WorkerDrainEvent {
    fn event_type(&self) -> String {
        match self {
            WorkerDrainEvent::WorkerDrainOrdered { .. } => "WorkerDrainOrdered",
            WorkerDrainEvent::WorkerDrainCancelled { .. } => "WorkerDrainCancelled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerDrainError {
    #[error("no such worker")]
    UnknownWorker,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDrain {
    pub draining: bool,
}

impl WorkerDrain {
    /// Draining a draining worker (or letting a working one claim) records nothing.
    pub fn decide(&self, worker_id: &str, command: WorkerDrainCommand) -> Result<Vec<WorkerDrainEvent>, WorkerDrainError> {
        let worker_id = worker_id.to_string();
        match command {
            WorkerDrainCommand::Drain { seen: false, .. } if !self.draining => Err(WorkerDrainError::UnknownWorker),
            WorkerDrainCommand::Drain { act, now, .. } if !self.draining => {
                Ok(vec![WorkerDrainEvent::WorkerDrainOrdered { worker_id, act, occurred_at: now }])
            }
            WorkerDrainCommand::Undrain { act, now } if self.draining => {
                Ok(vec![WorkerDrainEvent::WorkerDrainCancelled { worker_id, act, occurred_at: now }])
            }
            _ => Ok(Vec::new()),
        }
    }
}

impl Aggregate for WorkerDrain {
    const TYPE: &'static str = "WorkerDrain";
    type Command = (String, WorkerDrainCommand);
    type Event = WorkerDrainEvent;
    type Error = WorkerDrainError;
    type Services = ();

    async fn handle(&mut self, (id, command): (String, WorkerDrainCommand), _: &(), sink: &EventSink<Self>) -> Result<(), WorkerDrainError> {
        for event in self.decide(&id, command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WorkerDrainEvent) {
        self.draining = matches!(event, WorkerDrainEvent::WorkerDrainOrdered { .. });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OperatorId;

    fn act() -> OperatorAct {
        OperatorAct { operator_id: OperatorId::new(uuid::Uuid::from_u128(3)), operator: "alice".into(), reason: Some("kernel update".into()) }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    #[test]
    fn a_seen_worker_is_drained_once_and_undrained_once() {
        let drain = |seen| WorkerDrainCommand::Drain { seen, act: act(), now: now() };
        let working = WorkerDrain::default();
        assert_eq!(working.decide("w1", drain(false)), Err(WorkerDrainError::UnknownWorker));
        assert_eq!(working.decide("w1", drain(true)).map(|e| e.len()), Ok(1));
        assert_eq!(working.decide("w1", WorkerDrainCommand::Undrain { act: act(), now: now() }), Ok(Vec::new()));
        let draining = WorkerDrain { draining: true };
        assert_eq!(draining.decide("w1", drain(true)), Ok(Vec::new()));
        assert_eq!(draining.decide("w1", WorkerDrainCommand::Undrain { act: act(), now: now() }).map(|e| e.len()), Ok(1));
    }
}
