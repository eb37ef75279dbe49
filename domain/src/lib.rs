//! Kiln's domain: aggregates, commands, events, pricing and plan rules.
//!
//! Pure by design: no I/O, no clocks, no random ids. Time arrives as command fields
//! (`now`) and ids as arguments, so every decision is a deterministic function of the
//! state and the command, and the whole crate is tested without a runtime or a database.
//!
//! Map:
//! - [`ids`]: uuid newtypes and idempotency keys.
//! - [`amount`]: [`Credits`] and [`SignedCredits`], checked integer amounts.
//! - [`plan`]: [`Plan`] and its concurrency limit.
//! - [`share`]: plan priority in dispatch (weighted fair queuing of teams by plan).
//! - [`operation`]: [`Operation`], what a job does and what it is priced as.
//! - [`price_book`]: the [`price_book::PriceBook`] aggregate (operators' new price versions).
//! - [`pricing`]: [`PricingConfig`] and the three cost formulas (rounding up).
//! - [`credits`]: the [`TeamCredits`] aggregate, its commands, events and errors.
//! - [`jobs`]: the [`jobs::GenerationJob`] aggregate, job input and outputs.
//! - [`models`]: the [`models::CustomModel`] aggregate.
//! - [`keys`]: the [`keys::ApiKey`] aggregate and key [`keys::Role`]s.
//! - [`catalog`]: the [`catalog::CatalogEntry`] aggregate (operators add, edit, retire
//!   reference models) and the rules of a reference model's fields.
//! - [`workers`]: the [`workers::WorkerDrain`] aggregate (an operator drains a worker).
//! - [`dispatch`]: the [`dispatch::Dispatch`] aggregate (pausing every team's dispatch).
//! - [`operators`]: the [`operators::Operator`] aggregate (people who run Kiln), their
//!   [`operators::OperatorRole`]s and what an operator's act records ([`operators::OperatorAct`]).
//! - [`text`]: the text rule (no control characters, bounded lengths) and the value
//!   types of free text ([`text::Prompt`], [`text::ModelName`], …).

pub mod amount;
pub mod catalog;
pub mod credits;
pub mod dispatch;
pub mod ids;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod operation;
pub mod operators;
pub mod plan;
pub mod price_book;
pub mod share;
pub mod pricing;
pub mod text;
pub mod webhooks;
pub mod workers;

pub use amount::{AmountError, Credits, SignedCredits};
pub use credits::{
    Allocation, BlockOrigin, CreditBlock, GrantSource, OperatorAction, Reservation, ReservationState, TeamCredits,
    TeamCreditsCommand, TeamCreditsError, TeamCreditsEvent, TeamProfile,
};
pub use ids::{
    AdjustmentId, ApiKeyId, GrantId, IdParseError, IdempotencyKey, IdempotencyKeyError, JobId,
    ModelId, OperatorId, TeamId, WebhookEndpointId,
};
pub use operation::{Operation, UnknownOperation};
pub use plan::{Plan, UnknownPlan};
pub use pricing::{
    ImageGenerationPricing, ModelCreationPricing, ModelRefinementPricing, PriceRequest,
    PricingConfig, PricingError, Quote, MILLI,
};
