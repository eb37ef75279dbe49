//! API keys: issued to a team with a role, revoked at most once.
//!
//! Owns the [`ApiKey`] aggregate (id = key id). Only the key's SHA-256 hash is ever
//! recorded; the key itself is shown to its owner once, by the application.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, TeamId};

/// What a key may do within its team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Spends and reads the team's credits and jobs.
    Member,
    /// Reads everything of the team, including audit endpoints; changes nothing.
    Auditor,
    /// A member who may also manage the team's API keys.
    Admin,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "member" => Some(Role::Member),
            "auditor" => Some(Role::Auditor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether the role may change state (spend, submit, cancel).
    pub const fn can_write(self) -> bool {
        matches!(self, Role::Member | Role::Admin)
    }

    /// Whether the role may issue, list and revoke the team's API keys (the API's
    /// `/api/keys` and the dashboard's keys page): team admins only.
    pub const fn can_manage_keys(self) -> bool {
        matches!(self, Role::Admin)
    }

    /// Every role, in the order forms offer them.
    pub const ALL: [Role; 3] = [Role::Member, Role::Auditor, Role::Admin];
}

pub use crate::text::KEY_NAME_CHARS_MAX;

/// Whether `text` is a SHA-256 as recorded for keys: 64 lower-case hex digits (so a
/// key itself can never be recorded by mistake).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyCommand {
    Issue { team_id: TeamId, role: Role, name: String, key_hash: String, now: DateTime<Utc> },
    Revoke { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ApiKeyEvent {
    ApiKeyIssued {
        key_id: ApiKeyId,
        team_id: TeamId,
        role: Role,
        name: String,
        /// Lower-case hex SHA-256 of the key.
        key_hash: String,
        occurred_at: DateTime<Utc>,
    },
    ApiKeyRevoked { key_id: ApiKeyId, team_id: TeamId, occurred_at: DateTime<Utc> },
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            ApiKeyEvent::ApiKeyIssued { .. } => "ApiKeyIssued",
            ApiKeyEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error("API key not found")]
    NotFound,
    #[error("API key already issued")]
    AlreadyIssued,
    /// The name breaks the text rule (`crate::text::KeyName`).
    #[error("key name {0}")]
    InvalidName(crate::text::TextError),
    #[error("key hash must be 64 lower-case hex digits")]
    InvalidHash,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: Option<ApiKeyId>,
    pub team_id: Option<TeamId>,
    pub role: Option<Role>,
    pub revoked: bool,
}

impl ApiKey {
    /// Decides the events for `command` against the key `key_id`.
    pub fn decide(&self, key_id: ApiKeyId, command: ApiKeyCommand) -> Result<Vec<ApiKeyEvent>, ApiKeyError> {
        match command {
            ApiKeyCommand::Issue { team_id, role, name, key_hash, now } => {
                if self.key_id.is_some() {
                    return Err(ApiKeyError::AlreadyIssued);
                }
                let name = crate::text::KeyName::parse(&name).map_err(ApiKeyError::InvalidName)?.into_string();
                if !is_sha256_hex(&key_hash) {
                    return Err(ApiKeyError::InvalidHash);
                }
                Ok(vec![ApiKeyEvent::ApiKeyIssued { key_id, team_id, role, name, key_hash, occurred_at: now }])
            }
            ApiKeyCommand::Revoke { now } => {
                let (Some(key_id), Some(team_id)) = (self.key_id, self.team_id) else {
                    return Err(ApiKeyError::NotFound);
                };
                if self.revoked {
                    return Ok(Vec::new());
                }
                Ok(vec![ApiKeyEvent::ApiKeyRevoked { key_id, team_id, occurred_at: now }])
            }
        }
    }
}

/// Commands carry the key id they are for, since `decide` needs it for a new key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRequest {
    pub key_id: ApiKeyId,
    pub command: ApiKeyCommand,
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = "ApiKey";
    type Command = ApiKeyRequest;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ();

    async fn handle(&mut self, request: ApiKeyRequest, _: &(), sink: &EventSink<Self>) -> Result<(), ApiKeyError> {
        for event in self.decide(request.key_id, request.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyIssued { key_id, team_id, role, .. } => {
                self.key_id = Some(key_id);
                self.team_id = Some(team_id);
                self.role = Some(role);
            }
            ApiKeyEvent::ApiKeyRevoked { .. } => self.revoked = true,
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

    fn ids() -> (ApiKeyId, TeamId) {
        (ApiKeyId::new(uuid::Uuid::from_u128(1)), TeamId::new(uuid::Uuid::from_u128(2)))
    }

    fn issue(name: &str, hash: &str) -> ApiKeyRequest {
        let (key_id, team_id) = ids();
        ApiKeyRequest {
            key_id,
            command: ApiKeyCommand::Issue { team_id, role: Role::Member, name: name.into(), key_hash: hash.into(), now: now() },
        }
    }

    fn issued() -> ApiKeyEvent {
        let (key_id, team_id) = ids();
        ApiKeyEvent::ApiKeyIssued { key_id, team_id, role: Role::Member, name: "ci".into(), key_hash: "a".repeat(64), occurred_at: now() }
    }

    #[test]
    fn issue_then_revoke_once() {
        let (key_id, team_id) = ids();
        TestFramework::<ApiKey>::with(()).given_no_previous_events().when(issue("ci", &"a".repeat(64))).then_expect_events(vec![issued()]);
        let revoke = ApiKeyRequest { key_id, command: ApiKeyCommand::Revoke { now: now() } };
        TestFramework::<ApiKey>::with(())
            .given(vec![issued()])
            .when(revoke.clone())
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRevoked { key_id, team_id, occurred_at: now() }]);
        let revoked = ApiKeyEvent::ApiKeyRevoked { key_id, team_id, occurred_at: now() };
        TestFramework::<ApiKey>::with(()).given(vec![issued(), revoked]).when(revoke).then_expect_events(vec![]);
    }

    #[test]
    fn only_admins_manage_keys_and_auditors_only_read() {
        for (role, write, manage) in [(Role::Member, true, false), (Role::Auditor, false, false), (Role::Admin, true, true)] {
            assert_eq!((role.can_write(), role.can_manage_keys()), (write, manage), "{role:?}");
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::ALL.len(), 3);
        assert_eq!(Role::parse("owner"), None);
    }

    #[test]
    fn rejections() {
        let (key_id, _) = ids();
        TestFramework::<ApiKey>::with(()).given(vec![issued()]).when(issue("ci", &"a".repeat(64))).then_expect_error(ApiKeyError::AlreadyIssued);
        TestFramework::<ApiKey>::with(()).given_no_previous_events().when(issue(" ", &"a".repeat(64))).then_expect_error(ApiKeyError::InvalidName(crate::text::TextError::Empty { chars_max: KEY_NAME_CHARS_MAX }));
        TestFramework::<ApiKey>::with(()).given_no_previous_events().when(issue("ci", "secret")).then_expect_error(ApiKeyError::InvalidHash);
        TestFramework::<ApiKey>::with(())
            .given_no_previous_events()
            .when(ApiKeyRequest { key_id, command: ApiKeyCommand::Revoke { now: now() } })
            .then_expect_error(ApiKeyError::NotFound);
    }
}
