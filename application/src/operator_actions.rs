//! What an operator may do, one use case per action: to a team (grant, adjust, change
//! plan, revoke an API key, cancel or retry a job, pause its dispatch), and to Kiln
//! (pause all dispatch, add a price version, drain a worker; the catalog's actions are
//! in `crate::catalog`). Each checks the operator's role and reason
//! (`OperatorIdentity::act`) and records the action together with an `OperatorActed`
//! on the team's credit stream, in one append: the team's history, `kiln audit replay`
//! and the export then say who did what and why. The REST door (`/api/admin`) and the
//! console (`/ops`) both call these; neither decides anything itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::dispatch::{Dispatch, DispatchCommand, DispatchError, GLOBAL};
use domain::jobs::GenerationJob;
use domain::price_book::{PriceBook, PriceBookCommand, PriceBookError, PRICE_BOOK};
use domain::PricingConfig;
use domain::keys::{ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyRequest};
use domain::{AdjustmentId, ApiKeyId, Credits, GrantId, GrantSource, IdempotencyKey, JobId, OperatorAction, Plan, SignedCredits, TeamCreditsCommand, TeamId};

use domain::workers::{WorkerDrain, WorkerDrainCommand, WorkerDrainError};

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::catalog::{CatalogActionError, CatalogListing};
use crate::jobs::index::JobIndex;
use crate::storage::ObjectStore;
use crate::api_keys::ApiKeyCommandError;
use crate::credits::{CreditsError, CreditsService, Outcome};
use crate::jobs::submit::{PriceList, Requester, SubmitError, SubmitService, Submitted};
use crate::jobs::{Ending, JobsError, JobsService};
use crate::operators::{ActError, OperatorIdentity};
use crate::provider::Provider;

/// Why an operator's action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A viewer, or a reason the text rule (or the console's requirement) refuses.
    #[error(transparent)]
    Act(#[from] ActError),
    #[error(transparent)]
    Credits(#[from] CreditsError),
    #[error(transparent)]
    Key(#[from] ApiKeyCommandError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    #[error(transparent)]
    Dispatch(#[from] CommandError<DispatchError>),
    #[error(transparent)]
    Prices(#[from] CommandError<PriceBookError>),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Catalog(#[from] CatalogActionError),
    #[error(transparent)]
    Drain(#[from] CommandError<WorkerDrainError>),
}

/// A grant as an operator gives it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub grant_id: GrantId,
    pub amount: Credits,
    pub source: GrantSource,
    pub expires_at: Option<DateTime<Utc>>,
    pub key: IdempotencyKey,
}

/// Whether the door requires a reason (the console's forms) or lets it be omitted (the
/// API's grants, plan changes and revocations, for clients written before reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonRule {
    Required,
    Optional,
}

/// The ports the console's catalog and worker actions need besides the services.
#[derive(Clone)]
pub struct OperatorPorts {
    /// Where reference models' preview images are stored.
    pub objects: Arc<dyn ObjectStore>,
    /// What the catalog lists (a seeded reference model has no events).
    pub catalog: Arc<dyn CatalogListing>,
    /// Which workers have sent a heartbeat.
    pub index: Arc<dyn JobIndex>,
}

#[derive(Clone)]
pub struct OperatorActions {
    pub(crate) credits: CreditsService,
    pub(crate) aggregates: AggregateStore,
    jobs: JobsService,
    /// Told to stop a cancelled job's request.
    provider: Arc<dyn Provider>,
    /// The stored price versions (to number a new one).
    prices: Arc<dyn PriceList>,
    /// Retries are submissions (priced now, checked, reserved).
    submit: SubmitService,
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) catalog: Arc<dyn CatalogListing>,
    index: Arc<dyn JobIndex>,
}

impl OperatorActions {
    pub fn new(credits: CreditsService, aggregates: AggregateStore, jobs: JobsService, provider: Arc<dyn Provider>, prices: Arc<dyn PriceList>, submit: SubmitService, ports: OperatorPorts) -> Self {
        let OperatorPorts { objects, catalog, index } = ports;
        Self { credits, aggregates, jobs, provider, prices, submit, objects, catalog, index }
    }

    /// Drains a worker: it claims no new job and finishes those it holds (it reads the
    /// drain with its next heartbeat). Draining a draining worker records nothing; an
    /// id that never sent a heartbeat is not found.
    pub async fn drain_worker(&self, who: &OperatorIdentity, worker_id: &str, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let seen = self.index.worker_seen(worker_id).await.map_err(CommandError::<WorkerDrainError>::Store)?;
        let command = WorkerDrainCommand::Drain { seen, act, now: self.credits.now() };
        self.aggregates.execute::<WorkerDrain>(worker_id, (worker_id.to_string(), command), &(), &who.metadata()).await?;
        Ok(())
    }

    /// Lets a drained worker claim jobs again.
    pub async fn undrain_worker(&self, who: &OperatorIdentity, worker_id: &str, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let command = WorkerDrainCommand::Undrain { act, now: self.credits.now() };
        self.aggregates.execute::<WorkerDrain>(worker_id, (worker_id.to_string(), command), &(), &who.metadata()).await?;
        Ok(())
    }

    /// Retries an ended (failed or cancelled) image generation of the team as a new job
    /// with its own reservation at the prices in effect now (see
    /// `SubmitService::retry_generation`); the reservation and the act are one append.
    pub async fn retry_job(&self, who: &OperatorIdentity, team: TeamId, job_id: JobId, reason: Option<&str>, rule: ReasonRule) -> Result<Submitted, ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let requester = Requester { team, actor: format!("operator:{}", who.name) };
        Ok(self.submit.retry_generation(&requester, job_id, act).await?)
    }

    /// Adds a price version: `config` (its version set here, the next after the newest
    /// stored) applies to jobs submitted from `effective_at` on (not before now); jobs
    /// already reserved keep their version. Returns the new version's number.
    pub async fn add_price_version(&self, who: &OperatorIdentity, mut config: PricingConfig, effective_at: DateTime<Utc>, reason: Option<&str>, rule: ReasonRule) -> Result<i64, ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let latest = self.prices.latest_version().await.map_err(|e| ActionError::Prices(CommandError::Store(e)))?;
        config.version = latest + 1;
        let version = config.version;
        let command = PriceBookCommand::AddVersion { config, latest, effective_at, act, now: self.credits.now() };
        self.aggregates.execute::<PriceBook>(PRICE_BOOK, command, &(), &who.metadata()).await?;
        Ok(version)
    }

    async fn credit_action(&self, who: &OperatorIdentity, team: TeamId, reason: Option<&str>, rule: ReasonRule, subject: Option<String>, command: TeamCreditsCommand) -> Result<Outcome, ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let command = TeamCreditsCommand::ByOperator { act, subject, command: Box::new(command) };
        Ok(self.credits.execute(team, command, &who.metadata()).await?)
    }

    /// Grants credits (idempotent by `grant.grant_id`: a repeat records nothing).
    pub async fn grant(&self, who: &OperatorIdentity, team: TeamId, grant: Grant, reason: Option<&str>, rule: ReasonRule) -> Result<Outcome, ActionError> {
        let subject = Some(grant.grant_id.to_string());
        let Grant { grant_id, amount, source, expires_at, key } = grant;
        let command = TeamCreditsCommand::GrantCredits { grant_id, amount, source, expires_at, key, now: self.credits.now() };
        self.credit_action(who, team, reason, rule, subject, command).await
    }

    /// Adjusts the balance by a signed amount; the reason is always required.
    pub async fn adjust(&self, who: &OperatorIdentity, team: TeamId, adjustment_id: AdjustmentId, amount: SignedCredits, reason: &str) -> Result<Outcome, ActionError> {
        let command = TeamCreditsCommand::AdjustCredits {
            adjustment_id,
            amount,
            reason: reason.to_string(),
            actor: who.name.clone(),
            now: self.credits.now(),
        };
        self.credit_action(who, team, Some(reason), ReasonRule::Required, Some(adjustment_id.to_string()), command).await
    }

    /// Moves the team to another plan, effective now.
    pub async fn change_plan(&self, who: &OperatorIdentity, team: TeamId, to: Plan, key: IdempotencyKey, reason: Option<&str>, rule: ReasonRule) -> Result<Outcome, ActionError> {
        let now = self.credits.now();
        let command = TeamCreditsCommand::ChangePlan { to, effective_at: now, key, now };
        self.credit_action(who, team, reason, rule, Some(to.as_str().to_string()), command).await
    }

    /// Pauses the team's dispatch: its jobs are accepted and reserved, not handed to
    /// workers, until resumed. Pausing a paused team records nothing.
    pub async fn pause_dispatch(&self, who: &OperatorIdentity, team: TeamId, reason: Option<&str>, rule: ReasonRule) -> Result<Outcome, ActionError> {
        let command = TeamCreditsCommand::PauseDispatch { now: self.credits.now() };
        self.credit_action(who, team, reason, rule, None, command).await
    }

    /// Hands the team's jobs to workers again.
    pub async fn resume_dispatch(&self, who: &OperatorIdentity, team: TeamId, reason: Option<&str>, rule: ReasonRule) -> Result<Outcome, ActionError> {
        let command = TeamCreditsCommand::ResumeDispatch { now: self.credits.now() };
        self.credit_action(who, team, reason, rule, None, command).await
    }

    /// Pauses (`paused`) or resumes dispatch for every team at once; the Dispatch stream
    /// records who and why.
    pub async fn set_dispatch_for_all(&self, who: &OperatorIdentity, paused: bool, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let now = self.credits.now();
        let command = if paused { DispatchCommand::Pause { act, now } } else { DispatchCommand::Resume { act, now } };
        self.aggregates.execute::<Dispatch>(GLOBAL, command, &(), &who.metadata()).await?;
        Ok(())
    }

    /// Revokes one of the team's API keys (a key of another team is "not found"); the
    /// revocation and the act are one append. Revoking a revoked key records nothing.
    pub async fn revoke_key(&self, who: &OperatorIdentity, team: TeamId, key_id: ApiKeyId, reason: Option<&str>, rule: ReasonRule) -> Result<(), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let loaded = self.aggregates.load::<ApiKey>(&key_id.to_string()).await.map_err(CommandError::<ApiKeyError>::Store)?;
        if loaded.aggregate.team_id != Some(team) {
            return Err(CommandError::Rejected(ApiKeyError::NotFound).into());
        }
        let now = self.credits.now();
        let request = ApiKeyRequest { key_id, command: ApiKeyCommand::Revoke { now } };
        let decided = self.aggregates.decide(loaded, request, &(), &who.metadata()).await?;
        if decided.events.is_empty() {
            return Ok(());
        }
        let append = decided.append;
        let command = TeamCreditsCommand::RecordOperatorAct { act, action: OperatorAction::RevokeKey, subject: Some(key_id.to_string()), now };
        let build = move |_: &domain::TeamCredits| Ok((command.clone(), vec![append.clone()]));
        self.credits.execute_with(team, &who.metadata(), Box::new(build)).await?;
        Ok(())
    }

    /// Cancels a job of the team in any state but ended, refunding it; the refund and
    /// the act are one append. Returns the job as it was (its provider request may need
    /// cancelling).
    pub async fn cancel_job(&self, who: &OperatorIdentity, team: TeamId, job_id: JobId, reason: Option<&str>, rule: ReasonRule) -> Result<(GenerationJob, Ending), ActionError> {
        let act = who.act(reason, rule == ReasonRule::Required)?;
        let why = act.reason.clone().unwrap_or_else(|| "cancelled by an operator".to_string());
        let actor = format!("operator:{}", who.name);
        let (before, ending) = self.jobs.cancel_as(team, job_id, &why, &actor, Some(act)).await?;
        if ending == Ending::Recorded {
            crate::jobs::submit::stop_at_provider(self.provider.as_ref(), &before, job_id).await;
        }
        Ok((before, ending))
    }
}
