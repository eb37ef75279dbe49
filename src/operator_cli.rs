//! `kiln operator create | revoke | list`: the people who run Kiln, from the machine
//! running it. `create` prints the new operator's key once (Kiln keeps its SHA-256);
//! the configured `auth.operator_key` stays the bootstrap admin. Same use cases as
//! everything else: `application::operators`.

use anyhow::Context;
use clap::Subcommand;
use comfy_table::Table;
use domain::operators::OperatorRole;
use domain::OperatorId;
use infrastructure::config::Settings;
use infrastructure::db::Database;
use serde_json::json;

use crate::state::AppState;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Create an operator and print their key (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// viewer (sees everything, changes nothing) | admin
        #[arg(long)]
        role: String,
    },
    /// Revoke an operator: their key and console sessions stop working at once.
    Revoke {
        /// The operator's id (from `kiln operator list`).
        #[arg(long)]
        id: String,
    },
    /// List operators (revoked ones too).
    List,
}

pub async fn run(settings: Settings, command: OperatorCommand) -> anyhow::Result<()> {
    let db = Database::connect_and_migrate(&settings.database.url, 2).await?;
    let state = AppState::new(db.clone(), &settings, std::sync::Arc::new(application::clock::SystemClock))?;
    let result = execute(&state, command).await;
    db.close().await;
    result
}

async fn execute(state: &AppState, command: OperatorCommand) -> anyhow::Result<()> {
    let clock = state.credits.clock().clone();
    let metadata = json!({ "actor": "cli" });
    match command {
        OperatorCommand::Create { name, role } => {
            let role = OperatorRole::parse(&role).ok_or_else(|| anyhow::anyhow!("--role must be viewer or admin"))?;
            let created = application::operators::create(&state.aggregates, clock.as_ref(), &name, role, &metadata)
                .await
                .context("cannot create the operator")?;
            println!("operator      {}  ({}, {})", created.operator_id, created.name, created.role.as_str());
            println!("operator key  {}", created.secret);
            println!("The key is shown this once (Kiln keeps only its hash). Sign in with it at /ops/sign-in,");
            println!("or send it as `Authorization: Bearer <key>` to /api/admin.");
        }
        OperatorCommand::Revoke { id } => {
            let id: OperatorId = id.parse().map_err(|_| anyhow::anyhow!("--id is not an operator id"))?;
            application::operators::revoke(&state.aggregates, clock.as_ref(), id, &metadata).await.context("cannot revoke the operator")?;
            println!("operator {id} revoked");
        }
        OperatorCommand::List => {
            let mut table = Table::new();
            table.set_header(["id", "name", "role", "created", "revoked"]);
            for row in crate::queries::operators::list(&state.db).await? {
                let revoked = row.revoked_at.map(|at| at.to_rfc3339()).unwrap_or_default();
                table.add_row([row.operator_id, row.name, row.role, row.created_at.to_rfc3339(), revoked]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
