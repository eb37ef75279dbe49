//! `kiln team create | grant`: the operator's way to open a team and hand out credits
//! from the machine running Kiln, without the admin HTTP API or its operator key. It
//! prints the new team's API key, which is how a person signs in to the dashboard.
//! Same use cases as `/api/admin/*`: `CreditsService` commands and `api_keys::issue`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use domain::keys::Role;
use domain::{Credits, GrantId, GrantSource, Plan, TeamCreditsCommand, TeamId};
use infrastructure::config::Settings;
use infrastructure::db::Database;
use serde_json::json;
use uuid::Uuid;

use crate::state::AppState;

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Open a team with a plan and credits, and print an API key for it (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// free | basic | pro | enterprise
        #[arg(long, default_value = "pro")]
        plan: String,
        /// Credits granted at once (0: none).
        #[arg(long, default_value_t = 5_000)]
        credits: i64,
        /// member | auditor | admin
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Grant credits to a team.
    Grant {
        #[arg(long)]
        team: String,
        #[arg(long)]
        credits: i64,
        /// When the unspent part expires (RFC 3339); never if absent.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
}

pub async fn run(settings: Settings, command: TeamCommand) -> anyhow::Result<()> {
    let db = Database::connect_and_migrate(&settings.database.url, 2).await?;
    let state = AppState::new(db.clone(), &settings, std::sync::Arc::new(application::clock::SystemClock))?;
    let result = match command {
        TeamCommand::Create { name, plan, credits, role } => create(&state, name, &plan, credits, &role, &settings.public_base_url()).await,
        TeamCommand::Grant { team, credits, expires_at } => {
            let team: TeamId = team.parse().map_err(|_| anyhow::anyhow!("--team is not a team id"))?;
            grant(&state, team, credits, expires_at).await?;
            println!("granted {credits} credits to team {team}");
            Ok(())
        }
    };
    db.close().await;
    result
}

/// Opens the team and prints its key and where to sign in (`sign_in_base`: this Kiln's
/// public URL, see `Settings::public_base_url`).
async fn create(state: &AppState, name: String, plan: &str, credits: i64, role: &str, sign_in_base: &str) -> anyhow::Result<()> {
    let plan: Plan = plan.parse().map_err(|_| anyhow::anyhow!("--plan must be free, basic, pro or enterprise"))?;
    let role = Role::parse(role).ok_or_else(|| anyhow::anyhow!("--role must be member, auditor or admin"))?;
    let team_id = TeamId::new(Uuid::now_v7());
    let command = TeamCreditsCommand::OpenTeam { team_id, name: name.clone(), plan, now: state.credits.now() };
    state.credits.execute(team_id, command, &json!({ "actor": "cli" })).await.context("cannot open the team")?;
    if credits > 0 {
        grant(state, team_id, credits, None).await?;
    }
    let metadata = json!({ "actor": "cli" });
    let issued = application::api_keys::issue(&state.aggregates, state.credits.clock().as_ref(), team_id, role, "dashboard".into(), &metadata)
        .await
        .context("cannot issue the API key")?;
    println!("team     {team_id}  ({name}, {plan} plan, {credits} credits)");
    println!("api key  {}", issued.secret);
    println!("The key is shown this once (Kiln keeps only its hash). Sign in with it at {sign_in_base}/,");
    println!("or send it as `Authorization: Bearer <key>` to the API.");
    Ok(())
}

async fn grant(state: &AppState, team_id: TeamId, credits: i64, expires_at: Option<DateTime<Utc>>) -> anyhow::Result<()> {
    let amount = Credits::parse(credits).map_err(|e| anyhow::anyhow!("--credits: {e}"))?;
    let key = domain::IdempotencyKey::parse(format!("cli-grant-{}", Uuid::now_v7())).context("idempotency key")?;
    let command = TeamCreditsCommand::GrantCredits {
        grant_id: GrantId::new(Uuid::now_v7()),
        amount,
        source: GrantSource::Admin,
        expires_at,
        key,
        now: state.credits.now(),
    };
    state.credits.execute(team_id, command, &json!({ "actor": "cli" })).await.context("cannot grant the credits")?;
    Ok(())
}
