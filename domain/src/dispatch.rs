//! Dispatch for everyone at once: an operator may pause it (a provider outage) and
//! resume it. Owns the [`Dispatch`] aggregate, one stream ([`GLOBAL`]). Jobs are still
//! accepted and reserved while paused; no worker takes one. A team's own pause is on
//! its TeamCredits stream (`DispatchPaused`).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::operators::OperatorAct;

/// The one Dispatch stream's id.
pub const GLOBAL: &str = "global";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatchCommand {
    Pause { act: OperatorAct, now: DateTime<Utc> },
    Resume { act: OperatorAct, now: DateTime<Utc> },
}

/// Each carries who did it and why (there is no team ledger to put the act on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DispatchEvent {
    AllDispatchPaused { act: OperatorAct, occurred_at: DateTime<Utc> },
    AllDispatchResumed { act: OperatorAct, occurred_at: DateTime<Utc> },
}

impl DomainEvent for DispatchEvent {
    fn event_type(&self) -> String {
        match self {
            DispatchEvent::AllDispatchPaused { .. } => "AllDispatchPaused",
            DispatchEvent::AllDispatchResumed { .. } => "AllDispatchResumed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Nothing refuses: pausing a paused dispatch (or resuming a running one) records nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub paused: bool,
}

impl Dispatch {
    pub fn decide(&self, command: DispatchCommand) -> Vec<DispatchEvent> {
        match command {
            DispatchCommand::Pause { act, now } if !self.paused => vec![DispatchEvent::AllDispatchPaused { act, occurred_at: now }],
            DispatchCommand::Resume { act, now } if self.paused => vec![DispatchEvent::AllDispatchResumed { act, occurred_at: now }],
            _ => Vec::new(),
        }
    }
}

impl Aggregate for Dispatch {
    const TYPE: &'static str = "Dispatch";
    type Command = DispatchCommand;
    type Event = DispatchEvent;
    type Error = DispatchError;
    type Services = ();

    async fn handle(&mut self, command: DispatchCommand, _: &(), sink: &EventSink<Self>) -> Result<(), DispatchError> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: DispatchEvent) {
        self.paused = matches!(event, DispatchEvent::AllDispatchPaused { .. });
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::OperatorId;

    fn act() -> OperatorAct {
        OperatorAct { operator_id: OperatorId::new(uuid::Uuid::from_u128(3)), operator: "alice".into(), reason: Some("provider outage".into()) }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    #[test]
    fn pause_and_resume_once_each() {
        let paused = DispatchEvent::AllDispatchPaused { act: act(), occurred_at: now() };
        TestFramework::<Dispatch>::with(()).given_no_previous_events().when(DispatchCommand::Pause { act: act(), now: now() }).then_expect_events(vec![paused.clone()]);
        TestFramework::<Dispatch>::with(()).given(vec![paused.clone()]).when(DispatchCommand::Pause { act: act(), now: now() }).then_expect_events(vec![]);
        TestFramework::<Dispatch>::with(()).given_no_previous_events().when(DispatchCommand::Resume { act: act(), now: now() }).then_expect_events(vec![]);
        let resumed = DispatchEvent::AllDispatchResumed { act: act(), occurred_at: now() };
        TestFramework::<Dispatch>::with(()).given(vec![paused]).when(DispatchCommand::Resume { act: act(), now: now() }).then_expect_events(vec![resumed]);
    }
}
