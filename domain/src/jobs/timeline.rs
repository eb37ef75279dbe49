//! When a job's phases happened, from its events alone: how long it waited in the queue,
//! how long each recorded step took, how long the last request ran, and the time from
//! acceptance to its end. A step runs from the later of its attempt's claim and the end
//! of the step before it, so a retried job's step counts its last attempt only.

use chrono::{DateTime, Duration, Utc};

use super::job::JobEvent;

/// A recorded step of the job and when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTime {
    pub step: String,
    /// `None` for a step recorded before any attempt started (training images sent
    /// with the job are recorded with its acceptance).
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

impl StepTime {
    pub fn duration(&self) -> Option<Duration> {
        self.started_at.map(|start| self.finished_at - start)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub queued_at: Option<DateTime<Utc>>,
    /// The first claim by a worker.
    pub first_dispatched_at: Option<DateTime<Utc>>,
    /// Completed, failed or cancelled.
    pub ended_at: Option<DateTime<Utc>>,
    pub completed: bool,
    /// The steps recorded as done, in order.
    pub steps: Vec<StepTime>,
    /// Since when the work in progress (or the work that ended the job: the last
    /// step, or the whole request of a job without steps) has run: the latest claim or
    /// step end, `None` while no attempt runs.
    pub current_since: Option<DateTime<Utc>>,
}

impl Timeline {
    pub fn of<'a>(events: impl IntoIterator<Item = &'a JobEvent>) -> Timeline {
        let mut timeline = Timeline::default();
        for event in events {
            match event {
                JobEvent::JobQueued { occurred_at, .. } => timeline.queued_at = Some(*occurred_at),
                JobEvent::JobDispatched { occurred_at, .. } => {
                    timeline.first_dispatched_at.get_or_insert(*occurred_at);
                    timeline.current_since = Some(*occurred_at);
                }
                JobEvent::JobStepCompleted { step, occurred_at, .. } => {
                    timeline.steps.push(StepTime { step: step.clone(), started_at: timeline.current_since, finished_at: *occurred_at });
                    // Steps recorded before a claim (the uploads) start nothing.
                    if timeline.current_since.is_some() {
                        timeline.current_since = Some(*occurred_at);
                    }
                }
                JobEvent::JobRetryScheduled { .. } => timeline.current_since = None,
                JobEvent::JobCompleted { occurred_at, .. } => {
                    timeline.ended_at = Some(*occurred_at);
                    timeline.completed = true;
                }
                JobEvent::JobFailed { occurred_at, .. } | JobEvent::JobCancelled { occurred_at, .. } => timeline.ended_at = Some(*occurred_at),
                JobEvent::JobProgressed { .. } | JobEvent::ImagesExpired { .. } => {}
            }
        }
        timeline
    }

    /// From acceptance to the end, or to `now` while the job has not ended.
    pub fn elapsed(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.queued_at.map(|queued| self.ended_at.unwrap_or(now) - queued)
    }

    /// From acceptance to the first claim (to `now` while none came and the job has
    /// not ended; `None` for a job that ended before any claim).
    pub fn waited(&self, now: DateTime<Utc>) -> Option<Duration> {
        let queued = self.queued_at?;
        match (self.first_dispatched_at, self.ended_at) {
            (Some(claimed), _) => Some(claimed - queued),
            (None, None) => Some(now - queued),
            (None, Some(_)) => None,
        }
    }

    /// The recorded step `name`.
    pub fn step(&self, name: &str) -> Option<&StepTime> {
        self.steps.iter().find(|s| s.step == name)
    }

    /// The work not recorded as a step: the last step of a completed job (its result
    /// completed the job) or the one running now (to `now`).
    pub fn current(&self, now: DateTime<Utc>) -> Option<Duration> {
        let since = self.current_since?;
        match self.ended_at {
            Some(end) if self.completed => Some(end - since),
            Some(_) => None,
            None => Some(now - since),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, ModelId, TeamId};
    use crate::jobs::JobInput;
    use crate::Credits;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + seconds, 0).expect("instant")
    }

    fn queued(s: i64) -> JobEvent {
        let input = JobInput::ModelCreation { model_id: ModelId::new(uuid::Uuid::nil()), description: "d".into(), reference_model_id: "r".into() };
        JobEvent::JobQueued { job_id: JobId::new(uuid::Uuid::nil()), team_id: TeamId::new(uuid::Uuid::nil()), input, cost: Credits::parse(5).expect("credits"), price_version: 1, occurred_at: at(s) }
    }

    fn dispatched(s: i64, attempt: u32) -> JobEvent {
        JobEvent::JobDispatched { provider: "local".into(), worker: "w".into(), attempt, share_tag: None, occurred_at: at(s) }
    }

    fn step(name: &str, s: i64) -> JobEvent {
        JobEvent::JobStepCompleted { step: name.into(), outputs: vec![], occurred_at: at(s) }
    }

    #[test]
    fn steps_run_from_the_claim_or_the_step_before_and_a_retry_starts_over() {
        let events = vec![
            queued(0),
            step("uploads", 0),
            dispatched(4, 1),
            step("training-images-1", 10),
            JobEvent::JobRetryScheduled { attempt: 1, reason: "busy".into(), retry_at: at(20), occurred_at: at(11) },
            dispatched(30, 2),
            step("training-set", 33),
            JobEvent::JobCompleted { outputs: vec![], occurred_at: at(50) },
        ];
        let timeline = Timeline::of(&events);
        assert_eq!(timeline.waited(at(99)), Some(Duration::seconds(4)));
        assert_eq!(timeline.step("uploads").and_then(StepTime::duration), None, "recorded with the acceptance");
        assert_eq!(timeline.step("training-images-1").and_then(StepTime::duration), Some(Duration::seconds(6)));
        assert_eq!(timeline.step("training-set").and_then(StepTime::duration), Some(Duration::seconds(3)), "from the second claim");
        assert_eq!(timeline.current(at(99)), Some(Duration::seconds(17)), "the last step ends with the completion");
        assert_eq!(timeline.elapsed(at(99)), Some(Duration::seconds(50)));
    }

    #[test]
    fn a_job_in_progress_counts_to_now_and_a_cancelled_one_to_its_end() {
        let running = Timeline::of(&[queued(0), dispatched(2, 1)]);
        assert_eq!(running.elapsed(at(9)), Some(Duration::seconds(9)));
        assert_eq!(running.current(at(9)), Some(Duration::seconds(7)));
        let waiting = Timeline::of(&[queued(0)]);
        assert_eq!(waiting.waited(at(5)), Some(Duration::seconds(5)));
        let cancelled = Timeline::of(&[queued(0), JobEvent::JobCancelled { reason: "by the team".into(), occurred_at: at(3) }]);
        assert_eq!((cancelled.elapsed(at(60)), cancelled.waited(at(60)), cancelled.current(at(60))), (Some(Duration::seconds(3)), None, None));
    }
}
