//! Operators: the people who run Kiln (the console under `/ops`, `/api/admin/*`), each
//! with a name, a role and a key, revoked at most once.
//!
//! Owns the [`Operator`] aggregate (id = operator id), [`OperatorRole`] (who may change
//! what) and [`OperatorAct`] (who acted and why, carried by the events an operator's
//! action records). Only the key's SHA-256 is ever recorded, as for API keys.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::OperatorId;
use crate::keys::is_sha256_hex;
use crate::text::{OperatorName, Reason, TextError};

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRole {
    /// Sees every team, job, worker and price; changes nothing.
    Viewer,
    /// Also acts: grants, adjustments, plans, cancels, retries, pauses, prices, keys.
    Admin,
}

impl OperatorRole {
    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<OperatorRole> {
        match text {
            "viewer" => Some(OperatorRole::Viewer),
            "admin" => Some(OperatorRole::Admin),
            _ => None,
        }
    }

    /// Whether the role may change anything. The one rule every door asks.
    pub const fn can_write(self) -> bool {
        matches!(self, OperatorRole::Admin)
    }
}

/// The name the configured operator key (the bootstrap admin) acts under.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// Who did something and why: recorded on the events an operator's action causes, so
/// the team's history and the audit name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAct {
    pub operator_id: OperatorId,
    /// The operator's name when they acted (names are not changed, but a revoked
    /// operator's stream stays readable only by id: the name travels with the act).
    pub operator: String,
    /// Why. The console requires one; the API's grants may omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl OperatorAct {
    /// An act with its reason checked by the text rule (trimmed; an empty reason is
    /// none). `required` refuses a missing one (the console's forms).
    pub fn new(operator_id: OperatorId, operator: &str, reason: Option<&str>, required: bool) -> Result<Self, TextError> {
        let reason = match reason.map(str::trim).filter(|r| !r.is_empty()) {
            Some(reason) => Some(Reason::parse(reason)?.into_string()),
            None if required => return Err(TextError::Empty { chars_max: Reason::CHARS_MAX }),
            None => None,
        };
        Ok(Self { operator_id, operator: operator.to_string(), reason })
    }

    /// "alice: goodwill for a failed batch", as the history and the audit show it.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(reason) => format!("{}: {reason}", self.operator),
            None => self.operator.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorCommand {
    Create { name: String, role: OperatorRole, key_hash: String, now: DateTime<Utc> },
    Revoke { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OperatorEvent {
    OperatorCreated {
        operator_id: OperatorId,
        name: String,
        role: OperatorRole,
        /// Lower-case hex SHA-256 of the operator's key.
        key_hash: String,
        occurred_at: DateTime<Utc>,
    },
    OperatorRevoked { operator_id: OperatorId, occurred_at: DateTime<Utc> },
}

impl DomainEvent for OperatorEvent {
    fn event_type(&self) -> String {
        match self {
            OperatorEvent::OperatorCreated { .. } => "OperatorCreated",
            OperatorEvent::OperatorRevoked { .. } => "OperatorRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorError {
    #[error("operator not found")]
    NotFound,
    #[error("operator already created")]
    AlreadyCreated,
    /// The name breaks the text rule (`crate::text::OperatorName`).
    #[error("operator name {0}")]
    InvalidName(TextError),
    #[error("key hash must be 64 lower-case hex digits")]
    InvalidHash,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub operator_id: Option<OperatorId>,
    pub role: Option<OperatorRole>,
    pub revoked: bool,
}

impl Operator {
    /// Decides the events for `command` against the operator `operator_id`.
    pub fn decide(&self, operator_id: OperatorId, command: OperatorCommand) -> Result<Vec<OperatorEvent>, OperatorError> {
        match command {
            OperatorCommand::Create { name, role, key_hash, now } => {
                if self.operator_id.is_some() || operator_id == OperatorId::BOOTSTRAP {
                    return Err(OperatorError::AlreadyCreated);
                }
                let name = OperatorName::parse(&name).map_err(OperatorError::InvalidName)?.into_string();
                if !is_sha256_hex(&key_hash) {
                    return Err(OperatorError::InvalidHash);
                }
                Ok(vec![OperatorEvent::OperatorCreated { operator_id, name, role, key_hash, occurred_at: now }])
            }
            OperatorCommand::Revoke { now } => {
                let Some(operator_id) = self.operator_id else {
                    return Err(OperatorError::NotFound);
                };
                if self.revoked {
                    return Ok(Vec::new());
                }
                Ok(vec![OperatorEvent::OperatorRevoked { operator_id, occurred_at: now }])
            }
        }
    }
}

/// Commands carry the operator id they are for, since `decide` needs it for a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRequest {
    pub operator_id: OperatorId,
    pub command: OperatorCommand,
}

impl Aggregate for Operator {
    const TYPE: &'static str = "Operator";
    type Command = OperatorRequest;
    type Event = OperatorEvent;
    type Error = OperatorError;
    type Services = ();

    async fn handle(&mut self, request: OperatorRequest, _: &(), sink: &EventSink<Self>) -> Result<(), OperatorError> {
        for event in self.decide(request.operator_id, request.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: OperatorEvent) {
        match event {
            OperatorEvent::OperatorCreated { operator_id, role, .. } => {
                self.operator_id = Some(operator_id);
                self.role = Some(role);
            }
            OperatorEvent::OperatorRevoked { .. } => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
    }

    fn id() -> OperatorId {
        OperatorId::new(uuid::Uuid::from_u128(7))
    }

    fn create(name: &str, hash: &str) -> OperatorRequest {
        OperatorRequest { operator_id: id(), command: OperatorCommand::Create { name: name.into(), role: OperatorRole::Viewer, key_hash: hash.into(), now: now() } }
    }

    fn created() -> OperatorEvent {
        OperatorEvent::OperatorCreated { operator_id: id(), name: "alice".into(), role: OperatorRole::Viewer, key_hash: "b".repeat(64), occurred_at: now() }
    }

    #[test]
    fn create_then_revoke_once() {
        TestFramework::<Operator>::with(()).given_no_previous_events().when(create(" alice ", &"b".repeat(64))).then_expect_events(vec![created()]);
        let revoke = OperatorRequest { operator_id: id(), command: OperatorCommand::Revoke { now: now() } };
        let revoked = OperatorEvent::OperatorRevoked { operator_id: id(), occurred_at: now() };
        TestFramework::<Operator>::with(()).given(vec![created()]).when(revoke.clone()).then_expect_events(vec![revoked.clone()]);
        TestFramework::<Operator>::with(()).given(vec![created(), revoked]).when(revoke).then_expect_events(vec![]);
    }

    #[test]
    fn rejections() {
        TestFramework::<Operator>::with(()).given(vec![created()]).when(create("alice", &"b".repeat(64))).then_expect_error(OperatorError::AlreadyCreated);
        TestFramework::<Operator>::with(())
            .given_no_previous_events()
            .when(create("", &"b".repeat(64)))
            .then_expect_error(OperatorError::InvalidName(TextError::Empty { chars_max: crate::text::OPERATOR_NAME_CHARS_MAX }));
        TestFramework::<Operator>::with(()).given_no_previous_events().when(create("alice", "kiln_op_secret")).then_expect_error(OperatorError::InvalidHash);
        TestFramework::<Operator>::with(())
            .given_no_previous_events()
            .when(OperatorRequest { operator_id: id(), command: OperatorCommand::Revoke { now: now() } })
            .then_expect_error(OperatorError::NotFound);
        let bootstrap = OperatorRequest { operator_id: OperatorId::BOOTSTRAP, ..create("alice", &"b".repeat(64)) };
        TestFramework::<Operator>::with(()).given_no_previous_events().when(bootstrap).then_expect_error(OperatorError::AlreadyCreated);
    }

    #[test]
    fn only_admins_write_and_acts_check_their_reason() {
        assert!(OperatorRole::Admin.can_write());
        assert!(!OperatorRole::Viewer.can_write());
        assert_eq!(OperatorRole::parse("viewer"), Some(OperatorRole::Viewer));
        assert_eq!(OperatorRole::parse("member"), None);
        let act = OperatorAct::new(id(), "alice", Some("  refund a failed batch "), true).expect("a reason");
        assert_eq!(act.describe(), "alice: refund a failed batch");
        assert_eq!(OperatorAct::new(id(), "alice", Some("  "), false).expect("optional").reason, None);
        assert!(OperatorAct::new(id(), "alice", None, true).is_err(), "the console requires a reason");
        assert!(OperatorAct::new(id(), "alice", Some("a\u{0}b"), false).is_err(), "the text rule holds");
    }
}
