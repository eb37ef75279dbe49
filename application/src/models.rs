//! Editing a team's custom model outside a job: rename or re-describe it, archive it.
//! Behind both `PATCH`/`DELETE /api/models/{id}` and the model page's forms. The model
//! must be the caller's team's (another team's model is "not found"); what may change
//! when (not once archived; text by the text rule) is the aggregate's to decide.

use domain::models::{CustomModel, ModelCommand, ModelError};
use domain::{ModelId, TeamId};
use serde_json::{json, Value};

use crate::aggregate_store::{AggregateStore, CommandError};
use crate::clock::Clock;

pub type ModelCommandError = CommandError<ModelError>;

/// A change to a model's details: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DetailsChange {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// The model `model_id` of `team`, or `NotFound`.
async fn check_owner(aggregates: &AggregateStore, team: TeamId, model_id: ModelId) -> Result<(), ModelCommandError> {
    let loaded = aggregates.load::<CustomModel>(&model_id.to_string()).await?;
    // A model's team never changes, so checking it before the command is enough.
    if loaded.aggregate.team_id != Some(team) {
        return Err(CommandError::Rejected(ModelError::NotFound));
    }
    Ok(())
}

fn actor_metadata(actor: &str) -> Value {
    json!({ "actor": actor })
}

/// Renames and/or re-describes a model of `team`.
pub async fn update_details(
    aggregates: &AggregateStore,
    clock: &dyn Clock,
    team: TeamId,
    model_id: ModelId,
    change: DetailsChange,
    actor: &str,
) -> Result<(), ModelCommandError> {
    check_owner(aggregates, team, model_id).await?;
    let command = ModelCommand::UpdateDetails { name: change.name, description: change.description, now: clock.now() };
    aggregates.execute::<CustomModel>(&model_id.to_string(), command, &(), &actor_metadata(actor)).await?;
    Ok(())
}

/// Archives a model of `team`: it keeps its history and can no longer be refined or used.
pub async fn archive(aggregates: &AggregateStore, clock: &dyn Clock, team: TeamId, model_id: ModelId, actor: &str) -> Result<(), ModelCommandError> {
    check_owner(aggregates, team, model_id).await?;
    aggregates.execute::<CustomModel>(&model_id.to_string(), ModelCommand::Archive { now: clock.now() }, &(), &actor_metadata(actor)).await?;
    Ok(())
}
