//! Payments: what a verified Stripe event does to the ledger. The door verifies the
//! signature and parses the event; an adapter tells what it means (an [`Interpretation`]:
//! who it is about, what to do); this use case decides the rest, once for every door:
//!
//! - an event seen before is answered from its record, unless it was kept unresolved
//!   (then it is tried again);
//! - the team is the one named in the event's metadata (and its customer is remembered
//!   for events without metadata), else the one the customer was first seen paying for;
//! - a subscription's status is recorded as of the event (a newer one wins);
//! - a subscription ending while another of the team still pays leaves the plan to the
//!   live one; otherwise it ends through the job engine's own
//!   [`JobsService::expire_subscription`] (queued jobs of a team left without a plan are
//!   cancelled and refunded);
//! - only Kiln's own failures are errors (so Stripe delivers again); a refusal by the
//!   ledger, an unknown team or an event that says too little is an outcome, recorded.
//!
//! And starting a checkout ([`PaymentsService::start_checkout`]), behind both
//! `POST /api/credits/checkout` and the dashboard's "Buy credits" buttons: a price must be
//! a configured pack or plan; a plan is refused while the team has a live subscription (a
//! second one would bill twice); the team's customer is reused; a caller's idempotency
//! key becomes a payment-provider idempotency key scoped to the team. The credits (or the
//! plan) arrive later through the provider's signed webhook, never from here.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Credits, GrantId, GrantSource, IdempotencyKey, Plan, TeamCreditsCommand, TeamCreditsError, TeamId};
use serde_json::json;

use crate::aggregate_store::CommandError;
use crate::credits::CreditsService;
use crate::event_store::EventStoreError;
use crate::jobs::index::JobIndex;
use crate::jobs::{JobsError, JobsService};

/// Who the event is about, as far as it says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeamHint {
    /// From metadata Kiln set at checkout (or `client_reference_id`).
    pub team_id: Option<TeamId>,
    /// The Stripe customer (`cus_…`), resolved through the stored mapping.
    pub customer: Option<String>,
    /// The subscription (`sub_…`) the event concerns, if any.
    pub subscription: Option<String>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Grant { grant_id: GrantId, amount: Credits, source: GrantSource, expires_at: Option<DateTime<Utc>> },
    ChangePlan { plan: Plan, effective_at: DateTime<Utc> },
    ExpireSubscription { effective_at: DateTime<Utc> },
    /// Nothing to do (not an event Kiln acts on, or not yet).
    Ignore(String),
    /// Something should happen but the event does not say what (e.g. a price in no
    /// pack): kept for an operator.
    Unresolved(String),
}

impl Action {
    /// The ledger command, for actions that have one.
    pub fn command(&self, key: IdempotencyKey, now: DateTime<Utc>) -> Option<TeamCreditsCommand> {
        Some(match *self {
            Action::Grant { grant_id, amount, source, expires_at } => {
                TeamCreditsCommand::GrantCredits { grant_id, amount, source, expires_at, key, now }
            }
            Action::ChangePlan { plan, effective_at } => TeamCreditsCommand::ChangePlan { to: plan, effective_at, key, now },
            Action::ExpireSubscription { effective_at } => TeamCreditsCommand::ExpireSubscription { effective_at, key, now },
            Action::Ignore(_) | Action::Unresolved(_) => return None,
        })
    }
}

/// A subscription's status as of the event (subscription events only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStatus {
    pub subscription_id: String,
    /// Stripe's status: active, trialing, past_due, canceled, unpaid, …
    pub status: String,
}

/// What an event means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpretation {
    pub hint: TeamHint,
    pub action: Action,
    pub subscription: Option<SubscriptionStatus>,
}

impl Interpretation {
    pub fn new(hint: TeamHint, action: Action) -> Self {
        Self { hint, action, subscription: None }
    }
}

/// What became of a payment event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Its command ran (or was an idempotent repeat) on the ledger.
    Applied,
    /// Nothing to do: an event type or state Kiln does not act on.
    Ignored,
    /// Kiln could not tell which team or what to grant; payload kept, retried on redelivery.
    Unresolved,
    /// The ledger refused the command (e.g. a grant already expired), or the event holds
    /// text Kiln cannot store; payload kept.
    Rejected,
}

impl EventStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventStatus::Applied => "applied",
            EventStatus::Ignored => "ignored",
            EventStatus::Unresolved => "unresolved",
            EventStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Applied, Self::Ignored, Self::Unresolved, Self::Rejected].into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the payload is kept for an operator.
    pub const fn keeps_payload(self) -> bool {
        matches!(self, EventStatus::Unresolved | EventStatus::Rejected)
    }
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct EventRecord<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub team_id: Option<TeamId>,
    pub status: EventStatus,
    pub detail: Option<&'a str>,
    pub payload: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// The payment bookkeeping port: events seen, customers and subscriptions.
#[async_trait]
pub trait PaymentRecords: Send + Sync {
    /// How an earlier delivery of `event_id` ended, if there was one.
    async fn status_of(&self, event_id: &str) -> Result<Option<EventStatus>, EventStoreError>;
    /// Records an event; a record is only overwritten while it is unresolved.
    async fn record(&self, record: &EventRecord<'_>) -> Result<(), EventStoreError>;
    /// The team a customer was first seen paying for.
    async fn team_of_customer(&self, customer: &str) -> Result<Option<TeamId>, EventStoreError>;
    /// The team's most recently seen customer.
    async fn customer_of_team(&self, team: TeamId) -> Result<Option<String>, EventStoreError>;
    /// Remembers that `customer` pays for `team` (the first mapping stays).
    async fn remember_customer(&self, customer: &str, team: TeamId, now: DateTime<Utc>) -> Result<(), EventStoreError>;
    /// Records a subscription's status unless a newer event already said otherwise.
    async fn record_subscription(&self, subscription: &SubscriptionStatus, team: TeamId, at: DateTime<Utc>) -> Result<(), EventStoreError>;
    /// A live subscription of the team other than `except`, if there is one.
    async fn live_subscription(&self, team: TeamId, except: Option<&str>) -> Result<Option<String>, EventStoreError>;
}

/// What a checkout sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purchase {
    /// A one-off payment (`mode=payment`) for a credit pack.
    Pack { credits: Credits },
    /// A subscription (`mode=subscription`) to a plan.
    Plan { plan: Plan },
}

/// One checkout to create.
#[derive(Debug, Clone)]
pub struct CheckoutRequest<'a> {
    pub team_id: TeamId,
    pub price_id: &'a str,
    pub purchase: Purchase,
    /// The team's customer from an earlier purchase, reused so its invoices and payment
    /// methods stay together.
    pub customer: Option<&'a str>,
    /// Forwarded as the provider's `Idempotency-Key`, so a retried request returns the
    /// same session.
    pub idempotency_key: Option<String>,
}

/// A created checkout session: where to send the customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

/// The payment provider's checkout port (Stripe's API and price catalog).
#[async_trait]
pub trait Checkout: Send + Sync {
    /// What checking out `price_id` buys, if it is a configured pack or plan.
    fn purchase(&self, price_id: &str) -> Option<Purchase>;
    /// Whether checkouts can be created at all (a secret key is configured).
    fn configured(&self) -> bool;
    /// The grant a paid checkout session's credits arrive as, once the provider confirms
    /// the payment (the id its confirmation's grant is given).
    fn session_grant(&self, session_id: &str) -> GrantId;
    async fn create_session(&self, request: &CheckoutRequest<'_>) -> Result<CheckoutSession, ProviderFailure>;
}

/// The payment provider failed or refused (its own error, for the log).
pub type ProviderFailure = Box<dyn std::error::Error + Send + Sync>;

/// Why a checkout could not start.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("Stripe is not configured on this server (stripe.secret_key)")]
    NotConfigured,
    #[error("price {0} is not a configured credit pack or plan")]
    UnknownPrice(String),
    #[error("the team has a live subscription ({0})")]
    AlreadySubscribed(String),
    #[error("the payment records could not be read")]
    Store(#[from] EventStoreError),
    #[error("the payment provider failed: {0}")]
    Provider(ProviderFailure),
}

/// A checkout session to send the customer to.
#[derive(Debug, Clone)]
pub struct CheckoutStarted {
    pub session_id: String,
    pub url: String,
    pub purchase: Purchase,
}

/// A verified payment event, as the door read it.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedEvent<'a> {
    /// `evt_…`: the idempotency key of everything the event causes.
    pub id: &'a IdempotencyKey,
    pub kind: &'a str,
    pub created: DateTime<Utc>,
    /// The body exactly as signed (kept for events an operator must look at).
    pub body: &'a [u8],
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub status: EventStatus,
    pub team: Option<TeamId>,
    pub detail: Option<String>,
    /// The event was seen before; nothing was done this time.
    pub duplicate: bool,
}

/// Kiln's own failure: the delivery should be tried again.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error(transparent)]
    Command(#[from] CommandError<TeamCreditsError>),
}

#[derive(Clone)]
pub struct PaymentsService {
    records: Arc<dyn PaymentRecords>,
    checkout: Arc<dyn Checkout>,
    credits: CreditsService,
    jobs: JobsService,
    queued: Arc<dyn JobIndex>,
}

impl PaymentsService {
    pub fn new(
        records: Arc<dyn PaymentRecords>,
        checkout: Arc<dyn Checkout>,
        credits: CreditsService,
        jobs: JobsService,
        queued: Arc<dyn JobIndex>,
    ) -> Self {
        Self { records, checkout, credits, jobs, queued }
    }

    /// Creates a checkout session for `price_id` on behalf of `team_id` (the module's rules).
    pub async fn start_checkout(&self, team_id: TeamId, price_id: &str, idempotency_key: Option<&str>) -> Result<CheckoutStarted, CheckoutError> {
        use sha2::{Digest, Sha256};
        if !self.checkout.configured() {
            return Err(CheckoutError::NotConfigured);
        }
        let purchase = self.checkout.purchase(price_id).ok_or_else(|| CheckoutError::UnknownPrice(price_id.to_string()))?;
        if let Purchase::Plan { .. } = purchase {
            if let Some(live) = self.records.live_subscription(team_id, None).await? {
                return Err(CheckoutError::AlreadySubscribed(live));
            }
        }
        let customer = self.records.customer_of_team(team_id).await?;
        // Stripe keys are at most 255 characters; a digest of team and key fits and keeps
        // one team's key from naming another team's session.
        let idempotency_key = idempotency_key.map(|k| format!("kiln-checkout-{}", hex::encode(Sha256::digest(format!("{team_id}:{k}")))));
        let request = CheckoutRequest { team_id, price_id, purchase, customer: customer.as_deref(), idempotency_key };
        let session = self.checkout.create_session(&request).await.map_err(CheckoutError::Provider)?;
        tracing::info!(session_id = %session.id, %price_id, %team_id, "checkout session created");
        Ok(CheckoutStarted { session_id: session.id, url: session.url, purchase })
    }

    /// Whether credits can be bought here at all.
    pub fn configured(&self) -> bool {
        self.checkout.configured()
    }

    /// The grant a paid checkout session's credits arrive as; `None` when payments are
    /// not configured (nothing can arrive). A customer back from paying is told it is
    /// pending until this grant exists, then the grant.
    pub fn session_grant(&self, session_id: &str) -> Option<GrantId> {
        self.checkout.configured().then(|| self.checkout.session_grant(session_id))
    }

    pub fn records(&self) -> &dyn PaymentRecords {
        self.records.as_ref()
    }

    /// Applies a verified event (see the module's rules) and records what became of it.
    pub async fn handle(&self, event: VerifiedEvent<'_>, interpretation: &Interpretation) -> Result<Handled, PaymentsError> {
        let now = self.credits.now();
        if let Some(status) = self.records.status_of(event.id.as_str()).await?.filter(|status| *status != EventStatus::Unresolved) {
            return Ok(Handled { status, team: None, detail: None, duplicate: true });
        }
        let (status, team, detail) = self.apply(event, interpretation, now).await?;
        let payload = status.keeps_payload().then(|| String::from_utf8_lossy(event.body));
        let record = EventRecord {
            event_id: event.id.as_str(),
            event_type: event.kind,
            team_id: team,
            status,
            detail: detail.as_deref(),
            payload: payload.as_deref(),
            created_at: event.created,
            received_at: now,
        };
        self.records.record(&record).await?;
        Ok(Handled { status, team, detail, duplicate: false })
    }

    /// Records a verified event whose text Kiln cannot store (`why`) as rejected: an
    /// error answer would only make Stripe deliver it again for days. `event_type` and
    /// `payload` are the storable forms the door made of them.
    pub async fn reject(&self, event: VerifiedEvent<'_>, event_type: &str, payload: &str, why: &str) -> Result<Handled, PaymentsError> {
        if let Some(status) = self.records.status_of(event.id.as_str()).await? {
            return Ok(Handled { status, team: None, detail: None, duplicate: true });
        }
        let record = EventRecord {
            event_id: event.id.as_str(),
            event_type,
            team_id: None,
            status: EventStatus::Rejected,
            detail: Some(why),
            payload: Some(payload),
            created_at: event.created,
            received_at: self.credits.now(),
        };
        self.records.record(&record).await?;
        Ok(Handled { status: EventStatus::Rejected, team: None, detail: Some(why.to_string()), duplicate: false })
    }

    async fn apply(
        &self,
        event: VerifiedEvent<'_>,
        interpretation: &Interpretation,
        now: DateTime<Utc>,
    ) -> Result<(EventStatus, Option<TeamId>, Option<String>), PaymentsError> {
        let team = self.resolve_team(&interpretation.hint, now).await?;
        let subscription = interpretation.subscription.as_ref();
        if let (Some(team), Some(subscription)) = (team, subscription) {
            self.records.record_subscription(subscription, team, event.created).await?;
        }
        let unresolved_team = || {
            let customer = interpretation.hint.customer.as_deref().unwrap_or("none");
            (EventStatus::Unresolved, None, Some(format!("no team: no team_id in metadata, customer {customer} unknown")))
        };
        let key = event.id.clone();
        let metadata = json!({ "actor": "stripe", "stripe_event_id": event.id.as_str(), "stripe_event_type": event.kind });
        let refused = |team_id: TeamId, rejection: TeamCreditsError| match rejection {
            TeamCreditsError::TeamNotFound => (EventStatus::Unresolved, Some(team_id), Some(format!("team {team_id} does not exist"))),
            rejection => (EventStatus::Rejected, Some(team_id), Some(rejection.to_string())),
        };
        match &interpretation.action {
            Action::Ignore(reason) => Ok((EventStatus::Ignored, team, Some(reason.clone()))),
            Action::Unresolved(reason) => Ok((EventStatus::Unresolved, team, Some(reason.clone()))),
            Action::ExpireSubscription { effective_at } => {
                let Some(team_id) = team else { return Ok(unresolved_team()) };
                // One subscription ending while another still pays (a plan bought anew
                // before the old one was cancelled) leaves the plan to the live one.
                let this = subscription.map(|s| s.subscription_id.as_str());
                if let Some(other) = self.records.live_subscription(team_id, this).await? {
                    return Ok((EventStatus::Ignored, team, Some(format!("subscription {other} of the team is still live"))));
                }
                match self.jobs.expire_subscription(team_id, *effective_at, key, self.queued.as_ref(), &metadata).await {
                    Ok(_) => Ok((EventStatus::Applied, team, None)),
                    Err(JobsError::Credits(CommandError::Rejected(rejection))) => Ok(refused(team_id, rejection)),
                    Err(error) => Err(error.into()),
                }
            }
            action => {
                let Some(team_id) = team else { return Ok(unresolved_team()) };
                let Some(command) = action.command(key, now) else { return Ok(unresolved_team()) };
                match self.credits.execute(team_id, command, &metadata).await {
                    Ok(_) => Ok((EventStatus::Applied, team, None)),
                    Err(CommandError::Rejected(rejection)) => Ok(refused(team_id, rejection)),
                    Err(failure) => Err(failure.into()),
                }
            }
        }
    }

    /// The team named in the event's metadata (and then its customer is remembered for
    /// events without metadata), else the team the customer was first seen paying for.
    async fn resolve_team(&self, hint: &TeamHint, now: DateTime<Utc>) -> Result<Option<TeamId>, EventStoreError> {
        match (hint.team_id, hint.customer.as_deref()) {
            (Some(team), Some(customer)) => {
                self.records.remember_customer(customer, team, now).await?;
                Ok(Some(team))
            }
            (Some(team), None) => Ok(Some(team)),
            (None, Some(customer)) => self.records.team_of_customer(customer).await,
            (None, None) => Ok(None),
        }
    }
}

