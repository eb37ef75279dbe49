//! Webhooks out: a team's endpoints, the event types they subscribe to, and the address
//! rule that keeps Kiln from calling into its own network (SSRF).
//!
//! Owns the [`WebhookEndpoint`] aggregate (id = endpoint id), [`EventType`], the
//! [`WebhookUrl`] value type (its only constructor applies the URL rule) and
//! [`AddressPolicy::check_ip`], the one place that says which addresses Kiln may connect
//! to: the URL is checked when an endpoint is saved, the resolved address before every
//! attempt. Secrets are not here: events carry a non-secret salt from which the
//! application derives the signing secret with a key only Kiln holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{TeamId, WebhookEndpointId};

/// The notifications an endpoint may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "job.completed")]
    JobCompleted,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    #[serde(rename = "model.ready")]
    ModelReady,
    #[serde(rename = "model.failed")]
    ModelFailed,
    #[serde(rename = "credits.granted")]
    CreditsGranted,
    /// The team's available credits fell below the endpoint's threshold.
    #[serde(rename = "credits.low")]
    CreditsLow,
    #[serde(rename = "subscription.expired")]
    SubscriptionExpired,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobCancelled,
        EventType::ModelReady,
        EventType::ModelFailed,
        EventType::CreditsGranted,
        EventType::CreditsLow,
        EventType::SubscriptionExpired,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::JobCompleted => "job.completed",
            EventType::JobFailed => "job.failed",
            EventType::JobCancelled => "job.cancelled",
            EventType::ModelReady => "model.ready",
            EventType::ModelFailed => "model.failed",
            EventType::CreditsGranted => "credits.granted",
            EventType::CreditsLow => "credits.low",
            EventType::SubscriptionExpired => "subscription.expired",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// Upper bound of a URL, in bytes.
pub const URL_BYTES_MAX: usize = 2048;

/// What configuration allows beyond the safe default (https to public addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPolicy {
    /// Plain `http://` URLs.
    pub allow_http: bool,
    /// Loopback, private, link-local, metadata and other non-public addresses (tests).
    pub allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is not an absolute URL")]
    Malformed,
    #[error("is longer than {URL_BYTES_MAX} bytes")]
    TooLong,
    #[error("must use https")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("names no host")]
    NoHost,
    /// The address (written in the URL or resolved from its host) is not a public one.
    #[error("points at a {kind} address ({address}), which webhooks may not call")]
    RefusedAddress { kind: &'static str, address: IpAddr },
}

impl AddressPolicy {
    /// Whether Kiln may connect to `ip`: public unicast addresses only, unless
    /// configuration allows the rest. `Err` names the kind of address refused.
    pub fn check_ip(self, ip: IpAddr) -> Result<(), UrlError> {
        match refused_kind(ip) {
            Some(kind) if !self.allow_private => Err(UrlError::RefusedAddress { kind, address: ip }),
            _ => Ok(()),
        }
    }
}

/// The kind of a non-public address, `None` for a public one.
pub fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    // The cloud metadata services first: they are link-local or shared too, but are
    // the address an attacker is after, so the refusal says so.
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some("metadata");
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) || (a == 192 && b == 0 && c == 0) {
        Some("reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("private")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("reserved")
    } else if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible and NAT64 forms carry a v4 address: judge that one.
        if first == 0 || (first == 0x64 && ip.segments()[1] == 0xff9b) { refused_v4(v4) } else { None }
    } else {
        None
    }
}

/// An endpoint URL that passed the rule: absolute, http(s) as configured, no
/// credentials, and, if its host is an address, one Kiln may call. A host name is
/// checked again by address before each delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(text: &str, policy: AddressPolicy) -> Result<WebhookUrl, UrlError> {
        let text = text.trim();
        if text.len() > URL_BYTES_MAX {
            return Err(UrlError::TooLong);
        }
        let url = url::Url::parse(text).map_err(|_| UrlError::Malformed)?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_http => {}
            _ => return Err(UrlError::NotHttps),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        match url.host() {
            None => return Err(UrlError::NoHost),
            Some(url::Host::Ipv4(v4)) => policy.check_ip(IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => policy.check_ip(IpAddr::V6(v6))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(WebhookUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn host(&self) -> String {
        // The constructor refused URLs without a host.
        self.0.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string()
    }

    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }

    pub fn into_string(self) -> String {
        self.0.into()
    }
}

/// Why an endpoint stopped receiving deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// The team turned it off.
    Manual,
    /// Every delivery failed for `webhooks.disable_after_hours`.
    Failing,
}

impl DisabledReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Manual => "manual",
            DisabledReason::Failing => "failing",
        }
    }
}

/// What an endpoint subscribes to; checked once, here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub event_types: Vec<EventType>,
    /// `credits.low` fires when available credits fall below this.
    pub credits_low_threshold: Option<i64>,
}

impl Subscription {
    /// The subscription a door received as text.
    pub fn parse(event_types: &[String], credits_low_threshold: Option<i64>) -> Result<Subscription, WebhookError> {
        let parsed = event_types
            .iter()
            .map(|text| EventType::parse(text.trim()).ok_or_else(|| WebhookError::UnknownEventType(text.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Subscription::new(parsed, credits_low_threshold)
    }

    pub fn new(mut event_types: Vec<EventType>, credits_low_threshold: Option<i64>) -> Result<Subscription, WebhookError> {
        event_types.sort();
        event_types.dedup();
        if event_types.is_empty() {
            return Err(WebhookError::NoEventTypes);
        }
        let wants_low = event_types.contains(&EventType::CreditsLow);
        match credits_low_threshold {
            Some(threshold) if threshold <= 0 => return Err(WebhookError::InvalidThreshold),
            None if wants_low => return Err(WebhookError::InvalidThreshold),
            _ => {}
        }
        Ok(Subscription { event_types, credits_low_threshold: credits_low_threshold.filter(|_| wants_low) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookCommand {
    Create { team_id: TeamId, url: WebhookUrl, subscription: Subscription, secret_salt: String, now: DateTime<Utc> },
    Update { url: Option<WebhookUrl>, subscription: Option<Subscription>, now: DateTime<Utc> },
    Enable { now: DateTime<Utc> },
    Disable { reason: DisabledReason, now: DateTime<Utc> },
    /// A new secret from `secret_salt`; the previous one is still sent until `previous_until`.
    RotateSecret { secret_salt: String, previous_until: DateTime<Utc>, now: DateTime<Utc> },
    Delete { now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WebhookEvent {
    WebhookEndpointCreated {
        endpoint_id: WebhookEndpointId,
        team_id: TeamId,
        url: String,
        subscription: Subscription,
        /// Not secret: the secret is derived from it with Kiln's own key.
        secret_salt: String,
        occurred_at: DateTime<Utc>,
    },
    WebhookEndpointUpdated { endpoint_id: WebhookEndpointId, url: String, subscription: Subscription, occurred_at: DateTime<Utc> },
    WebhookEndpointEnabled { endpoint_id: WebhookEndpointId, occurred_at: DateTime<Utc> },
    WebhookEndpointDisabled { endpoint_id: WebhookEndpointId, reason: DisabledReason, occurred_at: DateTime<Utc> },
    WebhookSecretRotated {
        endpoint_id: WebhookEndpointId,
        secret_salt: String,
        previous_salt: String,
        previous_until: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
    },
    WebhookEndpointDeleted { endpoint_id: WebhookEndpointId, occurred_at: DateTime<Utc> },
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> String {
        match self {
            WebhookEvent::WebhookEndpointCreated { .. } => "WebhookEndpointCreated",
            WebhookEvent::WebhookEndpointUpdated { .. } => "WebhookEndpointUpdated",
            WebhookEvent::WebhookEndpointEnabled { .. } => "WebhookEndpointEnabled",
            WebhookEvent::WebhookEndpointDisabled { .. } => "WebhookEndpointDisabled",
            WebhookEvent::WebhookSecretRotated { .. } => "WebhookSecretRotated",
            WebhookEvent::WebhookEndpointDeleted { .. } => "WebhookEndpointDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("webhook endpoint not found")]
    NotFound,
    #[error("webhook endpoint already exists")]
    AlreadyExists,
    #[error("url {0}")]
    InvalidUrl(UrlError),
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("subscribe to at least one event type")]
    NoEventTypes,
    #[error("credits.low needs a threshold of at least 1 credit (credits_low_threshold)")]
    InvalidThreshold,
    #[error("secret salt must be 32 lower-case hex digits")]
    InvalidSalt,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub endpoint_id: Option<WebhookEndpointId>,
    pub team_id: Option<TeamId>,
    pub enabled: bool,
    pub deleted: bool,
    pub secret_salt: String,
    pub url: String,
    pub subscription: Option<Subscription>,
}

fn valid_salt(salt: &str) -> bool {
    salt.len() == 32 && salt.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl WebhookEndpoint {
    /// Whether `team` owns this (live) endpoint: anything else is "not found".
    pub fn owned_by(&self, team: TeamId) -> bool {
        self.team_id == Some(team) && !self.deleted
    }

    pub fn decide(&self, endpoint_id: WebhookEndpointId, command: WebhookCommand) -> Result<Vec<WebhookEvent>, WebhookError> {
        if let WebhookCommand::Create { team_id, url, subscription, secret_salt, now } = command {
            if self.endpoint_id.is_some() {
                return Err(WebhookError::AlreadyExists);
            }
            if !valid_salt(&secret_salt) {
                return Err(WebhookError::InvalidSalt);
            }
            let url = url.into_string();
            return Ok(vec![WebhookEvent::WebhookEndpointCreated { endpoint_id, team_id, url, subscription, secret_salt, occurred_at: now }]);
        }
        if self.endpoint_id.is_none() || self.deleted {
            return Err(WebhookError::NotFound);
        }
        let occurred_at = match &command {
            WebhookCommand::Update { now, .. }
            | WebhookCommand::Enable { now }
            | WebhookCommand::Disable { now, .. }
            | WebhookCommand::RotateSecret { now, .. }
            | WebhookCommand::Delete { now } => *now,
            WebhookCommand::Create { .. } => unreachable!("handled above"),
        };
        Ok(match command {
            WebhookCommand::Create { .. } => unreachable!("handled above"),
            WebhookCommand::Update { url, subscription, .. } => {
                // An update names the whole new state; what it leaves out stays.
                let url = url.map(WebhookUrl::into_string).unwrap_or_else(|| self.url.clone());
                let subscription = subscription.or_else(|| self.subscription.clone()).ok_or(WebhookError::NotFound)?;
                vec![WebhookEvent::WebhookEndpointUpdated { endpoint_id, url, subscription, occurred_at }]
            }
            WebhookCommand::Enable { .. } if self.enabled => vec![],
            WebhookCommand::Enable { .. } => vec![WebhookEvent::WebhookEndpointEnabled { endpoint_id, occurred_at }],
            WebhookCommand::Disable { .. } if !self.enabled => vec![],
            WebhookCommand::Disable { reason, .. } => vec![WebhookEvent::WebhookEndpointDisabled { endpoint_id, reason, occurred_at }],
            WebhookCommand::RotateSecret { secret_salt, previous_until, .. } => {
                if !valid_salt(&secret_salt) {
                    return Err(WebhookError::InvalidSalt);
                }
                let previous_salt = self.secret_salt.clone();
                vec![WebhookEvent::WebhookSecretRotated { endpoint_id, secret_salt, previous_salt, previous_until, occurred_at }]
            }
            WebhookCommand::Delete { .. } => vec![WebhookEvent::WebhookEndpointDeleted { endpoint_id, occurred_at }],
        })
    }
}

/// Commands carry the endpoint id, which `decide` needs for a new endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub endpoint_id: WebhookEndpointId,
    pub command: WebhookCommand,
}

impl Aggregate for WebhookEndpoint {
    const TYPE: &'static str = "WebhookEndpoint";
    type Command = WebhookRequest;
    type Event = WebhookEvent;
    type Error = WebhookError;
    type Services = ();

    async fn handle(&mut self, request: WebhookRequest, _: &(), sink: &EventSink<Self>) -> Result<(), WebhookError> {
        for event in self.decide(request.endpoint_id, request.command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WebhookEvent) {
        match event {
            WebhookEvent::WebhookEndpointCreated { endpoint_id, team_id, secret_salt, url, subscription, .. } => {
                self.endpoint_id = Some(endpoint_id);
                self.url = url;
                self.subscription = Some(subscription);
                self.team_id = Some(team_id);
                self.enabled = true;
                self.secret_salt = secret_salt;
            }
            WebhookEvent::WebhookEndpointUpdated { url, subscription, .. } => {
                self.url = url;
                self.subscription = Some(subscription);
            }
            WebhookEvent::WebhookEndpointEnabled { .. } => self.enabled = true,
            WebhookEvent::WebhookEndpointDisabled { .. } => self.enabled = false,
            WebhookEvent::WebhookSecretRotated { secret_salt, .. } => self.secret_salt = secret_salt,
            WebhookEvent::WebhookEndpointDeleted { .. } => {
                self.deleted = true;
                self.enabled = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: AddressPolicy = AddressPolicy { allow_http: false, allow_private: false };

    #[track_caller]
    fn check(url: &str, policy: AddressPolicy, expected: Result<(), &str>) {
        let got = WebhookUrl::parse(url, policy).map(|_| ()).map_err(|e| e.to_string());
        match expected {
            Ok(()) => assert_eq!(got, Ok(()), "{url}"),
            Err(part) => assert!(got.as_ref().is_err_and(|e| e.contains(part)), "{url}: {got:?}"),
        }
    }

    #[test]
    fn the_url_rule() {
        let open = AddressPolicy { allow_http: true, allow_private: true };
        check("https://hooks.example.com/kiln", STRICT, Ok(()));
        check("http://hooks.example.com/kiln", STRICT, Err("https"));
        check("http://hooks.example.com/kiln", open, Ok(()));
        check("ftp://hooks.example.com/", open, Err("https"));
        check("hooks.example.com", STRICT, Err("absolute"));
        check("https://user:pw@hooks.example.com/", STRICT, Err("password"));
        check("https://127.0.0.1/", STRICT, Err("loopback"));
        check("https://127.0.0.1/", open, Ok(()));
        check("https://10.1.2.3/", STRICT, Err("private"));
        check("https://172.16.0.1/", STRICT, Err("private"));
        check("https://192.168.1.1/", STRICT, Err("private"));
        check("https://169.254.169.254/latest/meta-data", STRICT, Err("metadata"));
        check("https://169.254.1.1/", STRICT, Err("link-local"));
        check("https://[::1]/", STRICT, Err("loopback"));
        check("https://[fe80::1]/", STRICT, Err("link-local"));
        check("https://[fd12::1]/", STRICT, Err("private"));
        check("https://[::ffff:127.0.0.1]/", STRICT, Err("loopback"));
        check("https://[fd00:ec2::254]/", STRICT, Err("metadata"));
        check("https://0.0.0.0/", STRICT, Err("unspecified"));
        check("https://100.64.0.1/", STRICT, Err("shared"));
        check("https://8.8.8.8/", STRICT, Ok(()));
        check("https://[2606:4700::1111]/", STRICT, Ok(()));
        check(&format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX)), STRICT, Err("longer"));
    }

    #[test]
    fn subscriptions() {
        assert_eq!(Subscription::new(vec![], None), Err(WebhookError::NoEventTypes));
        assert_eq!(Subscription::new(vec![EventType::CreditsLow], None), Err(WebhookError::InvalidThreshold));
        assert_eq!(Subscription::new(vec![EventType::CreditsLow], Some(0)), Err(WebhookError::InvalidThreshold));
        let s = Subscription::new(vec![EventType::JobFailed, EventType::JobCompleted, EventType::JobFailed], Some(5)).unwrap();
        assert_eq!(s.event_types, vec![EventType::JobCompleted, EventType::JobFailed]);
        assert_eq!(s.credits_low_threshold, None, "a threshold without credits.low means nothing");
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn lifecycle() {
        let id = WebhookEndpointId::new(uuid::Uuid::from_u128(1));
        let team = TeamId::new(uuid::Uuid::from_u128(2));
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let url = WebhookUrl::parse("https://example.com/h", STRICT).unwrap();
        let subscription = Subscription::new(vec![EventType::JobCompleted], None).unwrap();
        let mut endpoint = WebhookEndpoint::default();
        let create = WebhookCommand::Create { team_id: team, url, subscription, secret_salt: "a".repeat(32), now };
        for event in endpoint.decide(id, create.clone()).unwrap() {
            endpoint.apply(event);
        }
        assert!(endpoint.owned_by(team) && endpoint.enabled);
        assert_eq!(endpoint.decide(id, create), Err(WebhookError::AlreadyExists));
        assert_eq!(endpoint.decide(id, WebhookCommand::Enable { now }).unwrap(), vec![]);
        let rotated = endpoint.decide(id, WebhookCommand::RotateSecret { secret_salt: "b".repeat(32), previous_until: now, now }).unwrap();
        assert!(matches!(&rotated[0], WebhookEvent::WebhookSecretRotated { previous_salt, .. } if *previous_salt == "a".repeat(32)));
        for event in endpoint.decide(id, WebhookCommand::Delete { now }).unwrap() {
            endpoint.apply(event);
        }
        assert_eq!(endpoint.decide(id, WebhookCommand::Enable { now }), Err(WebhookError::NotFound));
        assert!(!endpoint.owned_by(team));
    }
}
