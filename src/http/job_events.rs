//! The job events clients see on a job's event stream (`GET /api/jobs/{job_id}/events`).
//! The types live in `projections::public_events`, since webhook payloads
//! (`projections::webhooks`) carry the same events.

pub use projections::public_events::*;
