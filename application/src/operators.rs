//! Operators: create one (the key is returned once; only its SHA-256 is recorded),
//! revoke one, and who an authenticated operator is ([`OperatorIdentity`]): the rule of
//! what a role may do and the act an action records are asked of it, by every door.

use domain::operators::{Operator, OperatorAct, OperatorCommand, OperatorError, OperatorEvent, OperatorRequest, OperatorRole, BOOTSTRAP_NAME};
use domain::text::TextError;
use domain::OperatorId;
use serde_json::{json, Value};

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::api_keys::{hash_key, new_secret};
use crate::clock::Clock;

/// Every operator key starts with this (team keys with `kiln_`), so a leaked one is
/// recognised for what it opens.
pub const OPERATOR_KEY_PREFIX: &str = "kiln_op_";

pub type OperatorCommandError = CommandError<OperatorError>;

/// A signed-in (or key-authenticated) operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorIdentity {
    pub id: OperatorId,
    pub name: String,
    pub role: OperatorRole,
}

/// An operator may not do this (a viewer asked to change something).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("operator role {0} may only read")]
pub struct ReadOnlyOperator(pub &'static str);

impl OperatorIdentity {
    /// The configured operator key (`auth.operator_key`): an admin named "bootstrap".
    pub fn bootstrap() -> Self {
        Self { id: OperatorId::BOOTSTRAP, name: BOOTSTRAP_NAME.to_string(), role: OperatorRole::Admin }
    }

    /// Refuses a viewer for anything that changes state.
    pub fn writer(&self) -> Result<&Self, ReadOnlyOperator> {
        if self.role.can_write() {
            Ok(self)
        } else {
            Err(ReadOnlyOperator(self.role.as_str()))
        }
    }

    /// The act an action of this operator records, its reason checked by the text rule
    /// (`required`: the console's forms; the API's grants may omit it). Viewers act on
    /// nothing.
    pub fn act(&self, reason: Option<&str>, required: bool) -> Result<OperatorAct, ActError> {
        self.writer()?;
        OperatorAct::new(self.id, &self.name, reason, required).map_err(ActError::Reason)
    }

    /// The event metadata of this operator's actions on streams that do not carry the
    /// act themselves (`actor` as the rest of Kiln records it, and the operator's id).
    pub fn metadata(&self) -> Value {
        json!({ "actor": format!("operator:{}", self.name), "operator_id": self.id.to_string() })
    }
}

/// Why an operator's act was refused before anything was decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    #[error(transparent)]
    ReadOnly(#[from] ReadOnlyOperator),
    #[error("reason {0}")]
    Reason(TextError),
}

/// A freshly created operator: `secret` is shown once and never stored.
#[derive(Debug, Clone)]
pub struct CreatedOperator {
    pub operator_id: OperatorId,
    pub name: String,
    pub role: OperatorRole,
    pub secret: String,
}

pub async fn create(
    aggregates: &AggregateStore,
    clock: &dyn Clock,
    name: &str,
    role: OperatorRole,
    metadata: &Value,
) -> Result<CreatedOperator, OperatorCommandError> {
    let secret = new_secret(OPERATOR_KEY_PREFIX);
    let operator_id = OperatorId::new(uuid::Uuid::now_v7());
    let command = OperatorCommand::Create { name: name.to_string(), role, key_hash: hash_key(&secret), now: clock.now() };
    let decided = aggregates.execute::<Operator>(&operator_id.to_string(), OperatorRequest { operator_id, command }, &(), metadata).await?;
    // The name as recorded: trimmed by the text rule.
    let name = decided
        .events
        .into_iter()
        .find_map(|event| match event {
            OperatorEvent::OperatorCreated { name, .. } => Some(name),
            OperatorEvent::OperatorRevoked { .. } => None,
        })
        .unwrap_or_else(|| name.trim().to_string());
    Ok(CreatedOperator { operator_id, name, role, secret })
}

/// Revokes an operator: their key and sessions stop working at once. The bootstrap
/// operator is configuration, not a stream: it is "not found" here.
pub async fn revoke(aggregates: &AggregateStore, clock: &dyn Clock, operator_id: OperatorId, metadata: &Value) -> Result<(), OperatorCommandError> {
    let request = OperatorRequest { operator_id, command: OperatorCommand::Revoke { now: clock.now() } };
    aggregates.execute::<Operator>(&operator_id.to_string(), request, &(), metadata).await?;
    Ok(())
}
