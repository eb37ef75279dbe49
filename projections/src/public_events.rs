//! The job events clients see: the one list of public event types, sent on the job's
//! event stream (`GET /api/jobs/{job_id}/events`). Each is derived from a recorded
//! `GenerationJob` event; internal details (worker names, provider request ids, storage
//! keys) stay inside, and internal events (`ImagesExpired`) are not sent. The SSE `id:`
//! of each is the job stream's sequence number, so `Last-Event-ID` resumes after it. The
//! job notifications of webhooks (`crate::webhooks`) carry the same events.

use application::event_store::StoredEvent;
use chrono::{DateTime, Utc};
use domain::jobs::JobEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every public event type, as sent in SSE `event:` and in the data's `type`.
pub const PUBLIC_JOB_EVENT_TYPES: &[&str] = &["queued", "dispatched", "progress", "step_completed", "retry_scheduled", "completed", "failed", "cancelled"];

/// One event of a job's progress, as the event stream sends it (the SSE `data:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PublicJobEvent {
    /// The job was accepted and its price reserved; it waits for a worker.
    Queued { job_id: String, occurred_at: DateTime<Utc>, cost_credits: i64 },
    /// A worker started an attempt (from 1).
    Dispatched { job_id: String, occurred_at: DateTime<Utc>, attempt: u32 },
    /// News from the provider: waiting in its queue (`queue_position`) or running.
    Progress { job_id: String, occurred_at: DateTime<Utc>, running: bool, queue_position: Option<u32> },
    /// A step of a model job is done (`training-images-1` … `training-set`; the last
    /// step, `training`, ends with `completed`). A retried job resumes after it.
    StepCompleted { job_id: String, occurred_at: DateTime<Utc>, step: String },
    /// The attempt failed transiently; the job waits until `retry_at`, then is queued again.
    RetryScheduled { job_id: String, occurred_at: DateTime<Utc>, attempt: u32, retry_at: DateTime<Utc>, reason: String },
    /// Final: the job's price is deducted; `images` outputs are ready.
    Completed { job_id: String, occurred_at: DateTime<Utc>, images: usize },
    /// Final: the reservation is refunded.
    Failed { job_id: String, occurred_at: DateTime<Utc>, error: String },
    /// Final: the reservation is refunded.
    Cancelled { job_id: String, occurred_at: DateTime<Utc>, reason: String },
}

impl PublicJobEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            PublicJobEvent::Queued { .. } => "queued",
            PublicJobEvent::Dispatched { .. } => "dispatched",
            PublicJobEvent::Progress { .. } => "progress",
            PublicJobEvent::StepCompleted { .. } => "step_completed",
            PublicJobEvent::RetryScheduled { .. } => "retry_scheduled",
            PublicJobEvent::Completed { .. } => "completed",
            PublicJobEvent::Failed { .. } => "failed",
            PublicJobEvent::Cancelled { .. } => "cancelled",
        }
    }

    /// The stream ends after a final event.
    pub fn is_final(&self) -> bool {
        matches!(self, PublicJobEvent::Completed { .. } | PublicJobEvent::Failed { .. } | PublicJobEvent::Cancelled { .. })
    }

    /// The public form of a recorded job event; `None` for internal ones (and for a
    /// payload that does not decode, which the store would have refused to load).
    pub fn of(job_id: &str, stored: &StoredEvent) -> Option<PublicJobEvent> {
        let event: JobEvent = serde_json::from_value(stored.payload.clone()).ok()?;
        let job_id = job_id.to_string();
        Some(match event {
            JobEvent::JobQueued { cost, occurred_at, .. } => PublicJobEvent::Queued { job_id, occurred_at, cost_credits: cost.get() },
            JobEvent::JobDispatched { attempt, occurred_at, .. } => PublicJobEvent::Dispatched { job_id, occurred_at, attempt },
            JobEvent::JobProgressed { running, queue_position, occurred_at, .. } => {
                PublicJobEvent::Progress { job_id, occurred_at, running, queue_position }
            }
            JobEvent::JobRetryScheduled { attempt, reason, retry_at, occurred_at } => {
                PublicJobEvent::RetryScheduled { job_id, occurred_at, attempt, retry_at, reason }
            }
            JobEvent::JobCompleted { outputs, occurred_at } => PublicJobEvent::Completed { job_id, occurred_at, images: outputs.len() },
            JobEvent::JobFailed { reason, occurred_at } => PublicJobEvent::Failed { job_id, occurred_at, error: reason },
            JobEvent::JobCancelled { reason, occurred_at } => PublicJobEvent::Cancelled { job_id, occurred_at, reason },
            JobEvent::JobStepCompleted { step, occurred_at, .. } => PublicJobEvent::StepCompleted { job_id, occurred_at, step },
            JobEvent::ImagesExpired { .. } => return None,
        })
    }
}

/// True for the recorded events that end a job.
pub fn is_final_record(stored: &StoredEvent) -> bool {
    matches!(stored.event_type.as_str(), "JobCompleted" | "JobFailed" | "JobCancelled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_type_is_listed() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let id = || "j".to_string();
        let all = [
            PublicJobEvent::Queued { job_id: id(), occurred_at: at, cost_credits: 1 },
            PublicJobEvent::Dispatched { job_id: id(), occurred_at: at, attempt: 1 },
            PublicJobEvent::Progress { job_id: id(), occurred_at: at, running: true, queue_position: None },
            PublicJobEvent::StepCompleted { job_id: id(), occurred_at: at, step: "training-set".into() },
            PublicJobEvent::RetryScheduled { job_id: id(), occurred_at: at, attempt: 1, retry_at: at, reason: "r".into() },
            PublicJobEvent::Completed { job_id: id(), occurred_at: at, images: 1 },
            PublicJobEvent::Failed { job_id: id(), occurred_at: at, error: "e".into() },
            PublicJobEvent::Cancelled { job_id: id(), occurred_at: at, reason: "c".into() },
        ];
        let types: Vec<&str> = all.iter().map(PublicJobEvent::event_type).collect();
        assert_eq!(types, PUBLIC_JOB_EVENT_TYPES);
        for event in &all {
            let json = serde_json::to_value(event).unwrap();
            assert_eq!(json["type"], event.event_type());
        }
    }
}
