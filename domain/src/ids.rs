//! Identifiers and idempotency keys.
//!
//! Owns the uuid newtypes for every entity the domain names ([`TeamId`], [`JobId`],
//! [`ModelId`], [`ApiKeyId`], [`GrantId`], [`AdjustmentId`]) and [`IdempotencyKey`], the
//! client- or webhook-supplied key recorded on events that can be repeated from outside.
//! The domain never mints ids: callers generate them (uuid v7 in the application layer) and
//! pass them in, so the domain stays deterministic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A string that did not parse as an id of the given kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {source}")]
pub struct IdParseError {
    /// Which id type was being parsed, e.g. `"TeamId"`.
    pub kind: &'static str,
    /// What uuid parsing objected to.
    #[source]
    pub source: uuid::Error,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an id minted by the caller.
            pub const fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// The underlying uuid, e.g. for a database column.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|source| IdParseError {
                    kind: stringify!($name),
                    source,
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A team: the owner of credits, models, jobs and API keys. Also the TeamCredits aggregate id.
    TeamId
);
uuid_id!(
    /// A generation job. A job's credit reservation uses the same id, so a job can hold at most
    /// one reservation and retries of "accept this job" cannot reserve twice.
    JobId
);
uuid_id!(
    /// A team's custom model.
    ModelId
);
uuid_id!(
    /// An API key (the key's id, never its secret).
    ApiKeyId
);
uuid_id!(
    /// A credit grant, i.e. one credit block. It is the grant's idempotency key: a webhook
    /// delivered twice must map to the same `GrantId` (e.g. derived from the Stripe event id).
    GrantId
);
uuid_id!(
    /// A manual credit adjustment; its idempotency key.
    AdjustmentId
);
uuid_id!(
    /// A team's webhook endpoint (also the WebhookEndpoint aggregate id).
    WebhookEndpointId
);
uuid_id!(
    /// A person who runs Kiln (the operator console, `/api/admin`). Also the Operator
    /// aggregate id. [`OperatorId::BOOTSTRAP`] is the configured operator key.
    OperatorId
);

impl OperatorId {
    /// The operator key from configuration (`auth.operator_key`): an admin named
    /// "bootstrap", recorded under the nil uuid since it has no Operator stream.
    pub const BOOTSTRAP: OperatorId = OperatorId(Uuid::nil());
}

impl From<AdjustmentId> for GrantId {
    /// A positive adjustment opens a credit block of its own; the block is named by the
    /// adjustment's uuid so allocations can point at it like at any grant.
    fn from(id: AdjustmentId) -> Self {
        Self(id.0)
    }
}

/// Why a string is not an acceptable idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    /// Keys must say something.
    #[error("idempotency key must not be empty")]
    Empty,
    /// Keys are stored and indexed; an unbounded key is a bug (and a DoS vector).
    #[error("idempotency key is longer than {max} bytes")]
    TooLong {
        /// The limit, [`IdempotencyKey::BYTES_MAX`].
        max: usize,
    },
    /// Keys travel in HTTP headers and logs, where control characters do harm.
    #[error("idempotency key contains a control character")]
    ControlCharacter,
}

/// A key supplied from outside (an `Idempotency-Key` header, a Stripe event id) so that a
/// repeated request can be recognised. Recorded on the events it caused, for audit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest accepted key, in bytes. Stripe event ids and uuids are far shorter.
    pub const BYTES_MAX: usize = 255;

    /// Accepts 1..=255 bytes without control characters.
    pub fn parse(key: impl Into<String>) -> Result<Self, IdempotencyKeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(IdempotencyKeyError::Empty);
        }
        if key.len() > Self::BYTES_MAX {
            return Err(IdempotencyKeyError::TooLong {
                max: Self::BYTES_MAX,
            });
        }
        if key.chars().any(char::is_control) {
            return Err(IdempotencyKeyError::ControlCharacter);
        }
        Ok(Self(key))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_display_from_str_and_serde() {
        let id = TeamId::new(Uuid::from_u128(0x1234));
        assert_eq!(id.to_string().parse::<TeamId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TeamId>(&json).unwrap(), id);
    }

    #[test]
    fn bad_id_names_its_kind() {
        let err = "nope".parse::<JobId>().unwrap_err();
        assert_eq!(err.kind, "JobId");
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert_eq!(IdempotencyKey::parse(""), Err(IdempotencyKeyError::Empty));
        assert!(IdempotencyKey::parse("evt_1").is_ok());
        assert!(IdempotencyKey::parse("a".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::parse("a".repeat(256)),
            Err(IdempotencyKeyError::TooLong { max: 255 })
        );
        assert_eq!(
            IdempotencyKey::parse("a\nb"),
            Err(IdempotencyKeyError::ControlCharacter)
        );
    }
}
