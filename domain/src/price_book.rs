//! New price versions, added by operators: the [`PriceBook`] aggregate (one stream,
//! [`PRICE_BOOK`]). A version is a whole [`PricingConfig`] that applies to jobs
//! submitted from its `effective_at` on (a job keeps the version it was reserved at).
//! Versions are appended, never edited; each names the operator and the reason.
//! (Version 1 is seeded by the store at first start, before any event.)

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::operators::OperatorAct;
use crate::pricing::PricingConfig;

/// The one PriceBook stream's id.
pub const PRICE_BOOK: &str = "prices";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PriceBookCommand {
    /// Add `config` (its `version` the next after `latest`, the newest version stored)
    /// effective from `effective_at` (not before `now`).
    AddVersion { config: PricingConfig, latest: i64, effective_at: DateTime<Utc>, act: OperatorAct, now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PriceBookEvent {
    PriceVersionAdded { config: PricingConfig, effective_at: DateTime<Utc>, act: OperatorAct, occurred_at: DateTime<Utc> },
}

impl DomainEvent for PriceBookEvent {
    fn event_type(&self) -> String {
        "PriceVersionAdded".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceBookError {
    #[error("prices invalid: {0}")]
    Invalid(String),
    #[error("version {version} does not follow the newest version {latest}")]
    VersionOutOfOrder { version: i64, latest: i64 },
    #[error("a new price version cannot take effect in the past")]
    EffectiveInPast,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    /// The newest version this stream added (0: none yet).
    pub latest: i64,
}

impl PriceBook {
    pub fn decide(&self, command: PriceBookCommand) -> Result<Vec<PriceBookEvent>, PriceBookError> {
        let PriceBookCommand::AddVersion { config, latest, effective_at, act, now } = command;
        let latest = latest.max(self.latest);
        if config.version != latest + 1 {
            return Err(PriceBookError::VersionOutOfOrder { version: config.version, latest });
        }
        config.validate().map_err(|e| PriceBookError::Invalid(e.to_string()))?;
        if effective_at < now {
            return Err(PriceBookError::EffectiveInPast);
        }
        Ok(vec![PriceBookEvent::PriceVersionAdded { config, effective_at, act, occurred_at: now }])
    }
}

impl Aggregate for PriceBook {
    const TYPE: &'static str = "PriceBook";
    type Command = PriceBookCommand;
    type Event = PriceBookEvent;
    type Error = PriceBookError;
    type Services = ();

    async fn handle(&mut self, command: PriceBookCommand, _: &(), sink: &EventSink<Self>) -> Result<(), PriceBookError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PriceBookEvent) {
        let PriceBookEvent::PriceVersionAdded { config, .. } = event;
        self.latest = self.latest.max(config.version);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::OperatorId;

    fn act() -> OperatorAct {
        OperatorAct { operator_id: OperatorId::new(uuid::Uuid::from_u128(3)), operator: "alice".into(), reason: Some("new GPU costs".into()) }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn add(version: i64, latest: i64, effective_at: DateTime<Utc>) -> PriceBookCommand {
        PriceBookCommand::AddVersion { config: PricingConfig { version, ..PricingConfig::default_v1() }, latest, effective_at, act: act(), now: now() }
    }

    #[test]
    fn versions_follow_each_other_and_take_effect_now_or_later() {
        let book = PriceBook::default();
        assert_eq!(book.decide(add(2, 1, now() + Duration::hours(1))).map(|e| e.len()), Ok(1));
        assert_eq!(book.decide(add(3, 1, now())), Err(PriceBookError::VersionOutOfOrder { version: 3, latest: 1 }));
        assert_eq!(PriceBook { latest: 2 }.decide(add(2, 1, now())), Err(PriceBookError::VersionOutOfOrder { version: 2, latest: 2 }));
        assert_eq!(book.decide(add(2, 1, now() - Duration::seconds(1))), Err(PriceBookError::EffectiveInPast));
        let mut broken = PricingConfig { version: 2, ..PricingConfig::default_v1() };
        broken.image_generation.base_cost = -1;
        let invalid = PriceBookCommand::AddVersion { config: broken, latest: 1, effective_at: now(), act: act(), now: now() };
        assert!(matches!(book.decide(invalid), Err(PriceBookError::Invalid(_))));
    }
}
