//! Operators' acts outside any team's ledger, from events alone: dispatch paused or
//! resumed for everyone (`Dispatch`), price versions (`PriceBook`), catalog changes
//! (`CatalogEntry`), worker drains (`WorkerDrain`). Each event carries its act (who and
//! why); acts on a team are entries of its ledger instead (`replay`, `export`).

use chrono::{DateTime, Utc};
use domain::catalog::CatalogEvent;
use domain::dispatch::DispatchEvent;
use domain::operators::OperatorAct;
use domain::price_book::PriceBookEvent;
use domain::workers::WorkerDrainEvent;
use infrastructure::db::Database;
use serde::Serialize;

use super::read::{Pages, Snapshot};
use super::{decode_payload, AuditError};

/// One act, as `kiln audit acts` and the console's audit page show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GlobalAct {
    pub occurred_at: DateTime<Utc>,
    /// `pause_all_dispatch`, `add_price_version`, `add_reference`, `drain_worker`, …
    pub action: String,
    /// What it acted on: the stream's id (a reference model, a worker, `global`, `prices`).
    pub subject: String,
    pub operator: String,
    pub operator_id: String,
    pub reason: Option<String>,
    pub event_type: String,
    pub aggregate_type: String,
    pub sequence: i64,
}

/// The stream types whose events are operators' acts, and how each names its action.
const ACT_STREAMS: [&str; 4] = ["Dispatch", "PriceBook", "CatalogEntry", "WorkerDrain"];

fn act_of(aggregate_type: &str, payload: &serde_json::Value, event: &super::read::AuditEvent) -> Result<(&'static str, OperatorAct, DateTime<Utc>), String> {
    Ok(match aggregate_type {
        "Dispatch" => match decode_payload::<DispatchEvent>(event, payload)? {
            DispatchEvent::AllDispatchPaused { act, occurred_at } => ("pause_all_dispatch", act, occurred_at),
            DispatchEvent::AllDispatchResumed { act, occurred_at } => ("resume_all_dispatch", act, occurred_at),
        },
        "PriceBook" => {
            let PriceBookEvent::PriceVersionAdded { act, occurred_at, .. } = decode_payload::<PriceBookEvent>(event, payload)?;
            ("add_price_version", act, occurred_at)
        }
        "CatalogEntry" => {
            let decoded = decode_payload::<CatalogEvent>(event, payload)?;
            let occurred_at = match &decoded {
                CatalogEvent::ReferenceModelAdded { occurred_at, .. }
                | CatalogEvent::ReferenceModelEdited { occurred_at, .. }
                | CatalogEvent::ReferenceModelRetired { occurred_at, .. }
                | CatalogEvent::ReferenceModelRestored { occurred_at, .. } => *occurred_at,
            };
            (decoded.action(), decoded.act().clone(), occurred_at)
        }
        _ => {
            let decoded = decode_payload::<WorkerDrainEvent>(event, payload)?;
            let occurred_at = match &decoded {
                WorkerDrainEvent::WorkerDrainOrdered { occurred_at, .. } | WorkerDrainEvent::WorkerDrainCancelled { occurred_at, .. } => *occurred_at,
            };
            (decoded.action(), decoded.act().clone(), occurred_at)
        }
    })
}

/// Every operator act outside the teams' ledgers, oldest first, read in one snapshot.
/// An event that does not decode is an error naming it (the ledger's checks report
/// theirs as violations; these streams hold no money).
pub async fn operator_acts(db: &Database) -> Result<Vec<GlobalAct>, AuditError> {
    let mut snapshot = Snapshot::begin(db).await?;
    let mut acts = Vec::new();
    for (n, aggregate_type) in ACT_STREAMS.into_iter().enumerate() {
        let mut pages = Pages::new(aggregate_type, n);
        while let Some(page) = snapshot.next_page(&mut pages).await? {
            for event in page {
                let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap_or_default();
                let (action, act, occurred_at) = act_of(aggregate_type, &payload, &event)
                    .map_err(|detail| AuditError::Undecodable(format!("{aggregate_type} {} #{}: {detail}", event.aggregate_id, event.sequence)))?;
                acts.push(GlobalAct {
                    occurred_at,
                    action: action.to_string(),
                    subject: event.aggregate_id.clone(),
                    operator: act.operator,
                    operator_id: act.operator_id.to_string(),
                    reason: act.reason,
                    event_type: event.event_type.clone(),
                    aggregate_type: aggregate_type.to_string(),
                    sequence: event.sequence,
                });
            }
        }
    }
    snapshot.end().await?;
    acts.sort_by(|a, b| (a.occurred_at, &a.aggregate_type, &a.subject, a.sequence).cmp(&(b.occurred_at, &b.aggregate_type, &b.subject, b.sequence)));
    Ok(acts)
}
