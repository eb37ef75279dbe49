//! GenerationJob through the crate's public API: given/when/then with cqrs-es's
//! `TestFramework` for every command and every rejection, state checks by replaying events
//! with `apply`, and a property test over random command sequences.

use chrono::{DateTime, TimeDelta, Utc};
use cqrs_es::test::{AggregateTestExecutor, TestFramework};
use cqrs_es::Aggregate;
use domain::jobs::{
    GenerationJob, JobCommand as C, JobError, JobEvent as E, JobInput, JobOutput, JobStatus,
};
use domain::{Credits, JobId, ModelId, TeamId};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Fixtures: fixed ids, a fixed clock, one builder per command and event.
// ---------------------------------------------------------------------------------------

fn given(events: Vec<E>) -> AggregateTestExecutor<GenerationJob> {
    TestFramework::<GenerationJob>::with(()).given(events)
}

/// The state those events produce, as the event store would rebuild it.
fn state(events: &[E]) -> GenerationJob {
    let mut job = GenerationJob::default();
    for event in events {
        job.apply(event.clone());
    }
    job
}

/// `minutes` after a fixed instant.
fn t(minutes: i64) -> DateTime<Utc> {
    let start = DateTime::from_timestamp(1_764_000_000, 0).expect("valid timestamp");
    start + TimeDelta::minutes(minutes)
}

fn job_id() -> JobId {
    JobId::new(Uuid::from_u128(0x1001))
}

fn team() -> TeamId {
    TeamId::new(Uuid::from_u128(0x7ea))
}

fn input() -> JobInput {
    JobInput::ImageGeneration {
        model_id: ModelId::new(Uuid::from_u128(0x30de1)),
        model_version: 1,
        prompt: "a red kiln at dusk".into(),
        resolution: "1024x1024".into(),
        quality: "standard".into(),
        count: 2,
    }
}

fn queue() -> C {
    C::Queue {
        job_id: job_id(),
        team_id: team(),
        input: input(),
        cost: Credits::parse(40).expect("positive amount"),
        price_version: 3,
        uploads: Vec::new(),
        now: t(0),
    }
}

fn queued() -> E {
    E::JobQueued {
        job_id: job_id(),
        team_id: team(),
        input: input(),
        cost: Credits::parse(40).expect("positive amount"),
        price_version: 3,
        occurred_at: t(0),
    }
}

fn dispatch(at: i64) -> C {
    C::Dispatch {
        provider: "fal".into(),
        worker: "worker-1".into(),
        share_tag: None,
        now: t(at),
    }
}

fn dispatched(attempt: u32, at: i64) -> E {
    E::JobDispatched {
        provider: "fal".into(),
        worker: "worker-1".into(),
        attempt,
        share_tag: None,
        occurred_at: t(at),
    }
}

fn progress(request_id: Option<&str>, running: bool, at: i64) -> C {
    C::Progress {
        provider_request_id: request_id.map(String::from),
        queue_position: Some(3),
        logs: vec!["step 1/20".into()],
        running,
        attempt: None,
        now: t(at),
    }
}

fn progressed(request_id: Option<&str>, running: bool, at: i64) -> E {
    E::JobProgressed {
        provider_request_id: request_id.map(String::from),
        queue_position: Some(3),
        logs: vec!["step 1/20".into()],
        running,
        occurred_at: t(at),
    }
}

fn output(key: &str, content_type: &str) -> JobOutput {
    JobOutput {
        key: key.into(),
        content_type: content_type.into(),
        bytes: 1_024,
        sha256: "ab".repeat(32),
    }
}

/// Two images and a sidecar that is not an image: only the images may expire.
fn images() -> Vec<JobOutput> {
    vec![
        output("generated-images/team/job/0.png", "image/png"),
        output("generated-images/team/job/1.png", "image/png"),
        output("job-logs/team/job.txt", "text/plain"),
    ]
}

fn image_keys() -> Vec<String> {
    vec![
        "generated-images/team/job/0.png".into(),
        "generated-images/team/job/1.png".into(),
    ]
}

fn model_artifact() -> Vec<JobOutput> {
    vec![output(
        "models/team/model/v1.safetensors",
        "application/octet-stream",
    )]
}

fn complete(outputs: Vec<JobOutput>, at: i64) -> C {
    C::Complete {
        outputs,
        attempt: None,
        now: t(at),
    }
}

fn completed(outputs: Vec<JobOutput>, at: i64) -> E {
    E::JobCompleted {
        outputs,
        occurred_at: t(at),
    }
}

fn fail(at: i64) -> C {
    C::Fail {
        reason: "provider error".into(),
        attempt: None,
        now: t(at),
    }
}

fn failed(at: i64) -> E {
    E::JobFailed {
        reason: "provider error".into(),
        occurred_at: t(at),
    }
}

fn cancel(at: i64) -> C {
    C::Cancel {
        reason: "cancelled by user".into(),
        now: t(at),
    }
}

fn cancelled(at: i64) -> E {
    E::JobCancelled {
        reason: "cancelled by user".into(),
        occurred_at: t(at),
    }
}

fn schedule_retry(at: i64) -> C {
    C::ScheduleRetry {
        reason: "provider timed out".into(),
        retry_at: t(at + 5),
        attempt: None,
        now: t(at),
    }
}

fn retry_scheduled(attempt: u32, at: i64) -> E {
    E::JobRetryScheduled {
        attempt,
        reason: "provider timed out".into(),
        retry_at: t(at + 5),
        occurred_at: t(at),
    }
}

fn expire_images(at: i64) -> C {
    C::ExpireImages { now: t(at) }
}

fn images_expired(at: i64) -> E {
    E::ImagesExpired {
        keys: image_keys(),
        occurred_at: t(at),
    }
}

// Histories, one per status; each later one extends an earlier one.

fn at_queued() -> Vec<E> {
    vec![queued()]
}

fn at_dispatched() -> Vec<E> {
    vec![queued(), dispatched(1, 1)]
}

fn at_running() -> Vec<E> {
    vec![
        queued(),
        dispatched(1, 1),
        progressed(Some("req-1"), true, 2),
    ]
}

fn at_completed() -> Vec<E> {
    let mut history = at_running();
    history.push(completed(images(), 3));
    history
}

fn at_failed() -> Vec<E> {
    let mut history = at_running();
    history.push(failed(3));
    history
}

fn at_cancelled() -> Vec<E> {
    let mut history = at_running();
    history.push(cancelled(3));
    history
}

fn with(mut history: Vec<E>, event: E) -> Vec<E> {
    history.push(event);
    history
}

#[track_caller]
fn check_error(history: Vec<E>, command: C, expected: JobError) {
    given(history).when(command).then_expect_error(expected);
}

#[track_caller]
fn check_no_events(history: Vec<E>, command: C) {
    given(history).when(command).then_expect_events(vec![]);
}

// ---------------------------------------------------------------------------------------
// Steps of a multi-step job
// ---------------------------------------------------------------------------------------

fn complete_step(step: &str, at: i64) -> C {
    C::CompleteStep { step: step.into(), outputs: vec![output(&format!("model-assets/t/m/v1/training/{step}.png"), "image/png")], attempt: 1, now: t(at) }
}

fn step_completed(step: &str, at: i64) -> E {
    E::JobStepCompleted { step: step.into(), outputs: vec![output(&format!("model-assets/t/m/v1/training/{step}.png"), "image/png")], occurred_at: t(at) }
}

#[test]
fn a_step_is_recorded_once_while_the_job_runs_and_clears_its_request() {
    given(at_running()).when(complete_step("training-images-1", 3)).then_expect_events(vec![step_completed("training-images-1", 3)]);
    check_no_events(with(at_running(), step_completed("training-images-1", 3)), complete_step("training-images-1", 4));
    let job = state(&with(at_running(), step_completed("training-images-1", 3)));
    assert!(job.step_done("training-images-1") && !job.step_done("training-set"));
    assert_eq!(job.provider_request_id, None, "the step's request is over");
    assert_eq!(job.status, Some(JobStatus::Running), "a step does not end the job");
    assert_eq!(job.step_output_keys(), ["model-assets/t/m/v1/training/training-images-1.png"]);
}

#[test]
fn a_step_after_the_job_ended_or_before_it_started_is_refused() {
    check_error(at_cancelled(), complete_step("training-set", 9), JobError::AlreadyFinished("cancelled"));
    check_error(at_failed(), complete_step("training-set", 9), JobError::AlreadyFinished("failed"));
    check_error(at_queued(), complete_step("training-set", 9), JobError::NotInProgress("queued"));
}

#[test]
fn uploaded_training_images_are_the_first_step_of_the_accepted_job() {
    let uploads = vec![output("model-assets/t/m/v1/training/upload-0.png", "image/png")];
    let C::Queue { job_id, team_id, input, cost, price_version, now, .. } = queue() else { unreachable!() };
    let command = C::Queue { job_id, team_id, input, cost, price_version, uploads: uploads.clone(), now };
    given(vec![]).when(command).then_expect_events(vec![queued(), E::JobStepCompleted { step: "uploads".into(), outputs: uploads, occurred_at: t(0) }]);
}

#[test]
fn a_step_of_a_superseded_attempt_is_refused() {
    let retried = vec![queued(), dispatched(1, 1), retry_scheduled(1, 2), dispatched(2, 3)];
    check_error(retried, complete_step("training-images-1", 4), JobError::StaleAttempt { attempt: 1, current: 2 });
}

#[test]
fn recorded_steps_survive_a_retry() {
    let history = vec![queued(), dispatched(1, 1), step_completed("training-images-1", 2), retry_scheduled(1, 3), dispatched(2, 4)];
    let job = state(&history);
    assert!(job.step_done("training-images-1"), "the next attempt resumes after it");
    assert_eq!(job.attempt, 2);
}

// ---------------------------------------------------------------------------------------
// Fencing: a worker's commands name the attempt it works for
// ---------------------------------------------------------------------------------------

/// `command` as made by the worker of `attempt`.
fn by_attempt(command: C, attempt: u32) -> C {
    match command {
        C::Progress { provider_request_id, queue_position, logs, running, now, .. } => {
            C::Progress { provider_request_id, queue_position, logs, running, attempt: Some(attempt), now }
        }
        C::Complete { outputs, now, .. } => C::Complete { outputs, attempt: Some(attempt), now },
        C::Fail { reason, now, .. } => C::Fail { reason, attempt: Some(attempt), now },
        C::ScheduleRetry { reason, retry_at, now, .. } => C::ScheduleRetry { reason, retry_at, attempt: Some(attempt), now },
        other => other,
    }
}

#[test]
fn the_current_attempt_records_as_before() {
    given(at_dispatched()).when(by_attempt(complete(images(), 3), 1)).then_expect_events(vec![completed(images(), 3)]);
    given(at_dispatched()).when(by_attempt(fail(3), 1)).then_expect_events(vec![failed(3)]);
    given(at_dispatched()).when(by_attempt(schedule_retry(3), 1)).then_expect_events(vec![retry_scheduled(1, 3)]);
    given(at_dispatched()).when(by_attempt(progress(Some("req-1"), true, 3), 1)).then_expect_events(vec![progressed(Some("req-1"), true, 3)]);
    // The same attempt repeating its ending (a commit whose outcome it did not learn).
    check_no_events(at_completed(), by_attempt(complete(images(), 4), 1));
}

#[test]
fn an_attempt_whose_claim_was_taken_back_records_nothing() {
    let taken_back = vec![queued(), dispatched(1, 1), retry_scheduled(1, 2)];
    let claimed_again = with(taken_back.clone(), dispatched(2, 3));
    let stale = JobError::StaleAttempt { attempt: 1, current: 2 };
    for command in [complete(images(), 4), fail(4), schedule_retry(4), progress(Some("req-1"), true, 4)] {
        check_error(taken_back.clone(), by_attempt(command.clone(), 1), JobError::NotInProgress("queued"));
        check_error(claimed_again.clone(), by_attempt(command, 1), stale.clone());
    }
    // A cancel is the team's: it ends whatever attempt runs.
    given(claimed_again).when(cancel(4)).then_expect_events(vec![cancelled(4)]);
}

#[test]
fn an_unfenced_command_acts_on_the_current_attempt() {
    let claimed_again = vec![queued(), dispatched(1, 1), retry_scheduled(1, 2), dispatched(2, 3)];
    given(claimed_again.clone()).when(complete(images(), 4)).then_expect_events(vec![completed(images(), 4)]);
    given(vec![queued()]).when(fail(1)).then_expect_events(vec![failed(1)]);
}

// ---------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------

#[test]
fn queue_records_the_job() {
    given(vec![])
        .when(queue())
        .then_expect_events(vec![queued()]);
    let job = state(&at_queued());
    assert_eq!(job.status(), Some(JobStatus::Queued));
    assert_eq!(
        (job.job_id, job.team_id, job.cost, job.price_version),
        (Some(job_id()), Some(team()), 40, 3)
    );
    assert_eq!(job.attempt, 0);
    assert_eq!(job.queued_at, Some(t(0)));
}

#[test]
fn queue_twice_is_refused() {
    check_error(at_queued(), queue(), JobError::AlreadyExists);
    check_error(at_completed(), queue(), JobError::AlreadyExists);
}

// ---------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------

#[test]
fn dispatch_from_queued_starts_attempt_one() {
    given(at_queued())
        .when(dispatch(1))
        .then_expect_events(vec![dispatched(1, 1)]);
    let job = state(&at_dispatched());
    assert_eq!(job.status(), Some(JobStatus::Dispatched));
    assert_eq!(job.attempt, 1);
    assert_eq!(job.provider.as_deref(), Some("fal"));
}

#[test]
fn dispatch_after_a_retry_starts_attempt_two_with_a_fresh_request_id() {
    let history = with(at_running(), retry_scheduled(1, 3));
    given(history.clone())
        .when(dispatch(9))
        .then_expect_events(vec![dispatched(2, 9)]);
    let job = state(&with(history, dispatched(2, 9)));
    assert_eq!(job.attempt, 2);
    assert_eq!(job.status(), Some(JobStatus::Dispatched));
    assert_eq!(
        job.provider_request_id, None,
        "the first attempt's request id is gone"
    );
}

#[test]
fn dispatch_when_not_queued_is_refused() {
    check_error(
        at_dispatched(),
        dispatch(5),
        JobError::NotQueued("dispatched"),
    );
    check_error(at_running(), dispatch(5), JobError::NotQueued("running"));
    check_error(
        at_completed(),
        dispatch(5),
        JobError::NotQueued("completed"),
    );
    check_error(at_failed(), dispatch(5), JobError::NotQueued("failed"));
    check_error(
        at_cancelled(),
        dispatch(5),
        JobError::NotQueued("cancelled"),
    );
}

// ---------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------

#[test]
fn progress_while_dispatched_keeps_the_request_id_and_stays_dispatched() {
    given(at_dispatched())
        .when(progress(Some("req-1"), false, 2))
        .then_expect_events(vec![progressed(Some("req-1"), false, 2)]);
    let job = state(&with(at_dispatched(), progressed(Some("req-1"), false, 2)));
    assert_eq!(job.status(), Some(JobStatus::Dispatched));
    assert_eq!(job.provider_request_id.as_deref(), Some("req-1"));
}

#[test]
fn progress_marked_running_moves_to_running() {
    given(at_dispatched())
        .when(progress(Some("req-1"), true, 2))
        .then_expect_events(vec![progressed(Some("req-1"), true, 2)]);
    let job = state(&at_running());
    assert_eq!(job.status(), Some(JobStatus::Running));
    assert_eq!(job.provider_request_id.as_deref(), Some("req-1"));
}

#[test]
fn progress_while_running_without_a_request_id_keeps_the_earlier_one() {
    given(at_running())
        .when(progress(None, false, 3))
        .then_expect_events(vec![progressed(None, false, 3)]);
    let job = state(&with(at_running(), progressed(None, false, 3)));
    assert_eq!(
        job.status(),
        Some(JobStatus::Running),
        "a later non-running report does not go back"
    );
    assert_eq!(job.provider_request_id.as_deref(), Some("req-1"));
}

#[test]
fn progress_when_not_in_progress_is_refused() {
    check_error(
        at_queued(),
        progress(None, true, 5),
        JobError::NotInProgress("queued"),
    );
    check_error(
        at_completed(),
        progress(None, true, 5),
        JobError::NotInProgress("completed"),
    );
    check_error(
        at_failed(),
        progress(None, true, 5),
        JobError::NotInProgress("failed"),
    );
    check_error(
        at_cancelled(),
        progress(None, true, 5),
        JobError::NotInProgress("cancelled"),
    );
}

// ---------------------------------------------------------------------------------------
// Complete
// ---------------------------------------------------------------------------------------

#[test]
fn complete_from_dispatched_or_running() {
    given(at_dispatched())
        .when(complete(images(), 3))
        .then_expect_events(vec![completed(images(), 3)]);
    given(at_running())
        .when(complete(images(), 3))
        .then_expect_events(vec![completed(images(), 3)]);
    let job = state(&at_completed());
    assert_eq!(job.status(), Some(JobStatus::Completed));
    assert_eq!(job.outputs, images());
}

#[test]
fn complete_twice_records_nothing() {
    check_no_events(at_completed(), complete(images(), 4));
    check_no_events(at_completed(), complete(model_artifact(), 4));
}

#[test]
fn complete_after_another_ending_is_refused() {
    check_error(
        at_cancelled(),
        complete(images(), 4),
        JobError::AlreadyFinished("cancelled"),
    );
    check_error(
        at_failed(),
        complete(images(), 4),
        JobError::AlreadyFinished("failed"),
    );
}

#[test]
fn complete_while_queued_is_refused() {
    check_error(
        at_queued(),
        complete(images(), 1),
        JobError::NotInProgress("queued"),
    );
    let retried = with(at_running(), retry_scheduled(1, 3));
    check_error(
        retried,
        complete(images(), 4),
        JobError::NotInProgress("queued"),
    );
}

// ---------------------------------------------------------------------------------------
// Fail
// ---------------------------------------------------------------------------------------

#[test]
fn fail_from_queued_dispatched_or_running() {
    for history in [at_queued(), at_dispatched(), at_running()] {
        given(history.clone())
            .when(fail(3))
            .then_expect_events(vec![failed(3)]);
        let job = state(&with(history, failed(3)));
        assert_eq!(job.status(), Some(JobStatus::Failed));
        assert_eq!(job.error.as_deref(), Some("provider error"));
    }
}

#[test]
fn fail_twice_records_nothing() {
    check_no_events(at_failed(), fail(4));
}

#[test]
fn fail_after_another_ending_is_refused() {
    check_error(
        at_completed(),
        fail(4),
        JobError::AlreadyFinished("completed"),
    );
    check_error(
        at_cancelled(),
        fail(4),
        JobError::AlreadyFinished("cancelled"),
    );
}

// ---------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------

#[test]
fn cancel_from_queued_dispatched_or_running() {
    for history in [at_queued(), at_dispatched(), at_running()] {
        given(history.clone())
            .when(cancel(3))
            .then_expect_events(vec![cancelled(3)]);
        let job = state(&with(history, cancelled(3)));
        assert_eq!(job.status(), Some(JobStatus::Cancelled));
        assert_eq!(job.error.as_deref(), Some("cancelled by user"));
    }
}

#[test]
fn cancel_twice_records_nothing() {
    check_no_events(at_cancelled(), cancel(4));
}

#[test]
fn cancel_after_another_ending_is_refused() {
    check_error(
        at_completed(),
        cancel(4),
        JobError::AlreadyFinished("completed"),
    );
    check_error(at_failed(), cancel(4), JobError::AlreadyFinished("failed"));
}

// ---------------------------------------------------------------------------------------
// ScheduleRetry
// ---------------------------------------------------------------------------------------

#[test]
fn schedule_retry_from_dispatched_or_running_goes_back_to_queued() {
    for history in [at_dispatched(), at_running()] {
        given(history.clone())
            .when(schedule_retry(3))
            .then_expect_events(vec![retry_scheduled(1, 3)]);
        let job = state(&with(history, retry_scheduled(1, 3)));
        assert_eq!(job.status(), Some(JobStatus::Queued));
        assert_eq!(job.attempt, 1, "the attempt count only grows on dispatch");
        assert_eq!(job.error.as_deref(), Some("provider timed out"));
    }
}

#[test]
fn schedule_retry_on_the_second_attempt_names_it() {
    let history = vec![
        queued(),
        dispatched(1, 1),
        retry_scheduled(1, 2),
        dispatched(2, 8),
    ];
    given(history)
        .when(schedule_retry(9))
        .then_expect_events(vec![retry_scheduled(2, 9)]);
}

#[test]
fn schedule_retry_when_not_in_progress_is_refused() {
    check_error(
        at_queued(),
        schedule_retry(3),
        JobError::NotInProgress("queued"),
    );
    check_error(
        at_completed(),
        schedule_retry(4),
        JobError::NotInProgress("completed"),
    );
    check_error(
        at_failed(),
        schedule_retry(4),
        JobError::NotInProgress("failed"),
    );
    check_error(
        at_cancelled(),
        schedule_retry(4),
        JobError::NotInProgress("cancelled"),
    );
}

// ---------------------------------------------------------------------------------------
// ExpireImages
// ---------------------------------------------------------------------------------------

#[test]
fn expire_images_after_completion_names_only_generated_images() {
    given(at_completed())
        .when(expire_images(60))
        .then_expect_events(vec![images_expired(60)]);
    let job = state(&with(at_completed(), images_expired(60)));
    assert!(job.images_expired);
    assert_eq!(
        job.status(),
        Some(JobStatus::Completed),
        "expiry does not change the status"
    );
}

#[test]
fn expire_images_twice_records_nothing() {
    check_no_events(with(at_completed(), images_expired(60)), expire_images(61));
}

#[test]
fn expire_images_without_generated_images_records_nothing() {
    let model_job = with(at_running(), completed(model_artifact(), 3));
    check_no_events(model_job, expire_images(60));
    check_no_events(with(at_running(), completed(vec![], 3)), expire_images(60));
}

#[test]
fn expire_images_before_completion_records_nothing() {
    for history in [
        at_queued(),
        at_dispatched(),
        at_running(),
        at_failed(),
        at_cancelled(),
    ] {
        check_no_events(history, expire_images(60));
    }
}

// ---------------------------------------------------------------------------------------
// Unknown job
// ---------------------------------------------------------------------------------------

#[test]
fn any_command_but_queue_on_an_unknown_job_is_not_found() {
    let commands = [
        dispatch(1),
        progress(Some("req-1"), true, 1),
        complete(images(), 1),
        fail(1),
        cancel(1),
        schedule_retry(1),
    ];
    for command in commands {
        check_error(vec![], command, JobError::NotFound);
    }
}

#[test]
fn expire_images_on_an_unknown_job_is_not_found() {
    check_error(vec![], expire_images(1), JobError::NotFound);
}

// ---------------------------------------------------------------------------------------
// Property: any command sequence keeps the lifecycle sound.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Queue,
    Dispatch,
    Progress {
        request_id: Option<u8>,
        running: bool,
    },
    Complete {
        with_images: bool,
    },
    Fail,
    Cancel,
    ScheduleRetry,
    ExpireImages,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Queue),
        4 => Just(Step::Dispatch),
        3 => (proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(request_id, running)| Step::Progress { request_id, running }),
        2 => any::<bool>().prop_map(|with_images| Step::Complete { with_images }),
        2 => Just(Step::Fail),
        2 => Just(Step::Cancel),
        3 => Just(Step::ScheduleRetry),
        2 => Just(Step::ExpireImages),
    ]
}

fn command(step: &Step, at: i64) -> C {
    match *step {
        Step::Queue => queue(),
        Step::Dispatch => dispatch(at),
        Step::Progress {
            request_id,
            running,
        } => {
            let request_id = request_id.map(|n| format!("req-{n}"));
            progress(request_id.as_deref(), running, at)
        }
        Step::Complete { with_images } => complete(
            if with_images {
                images()
            } else {
                model_artifact()
            },
            at,
        ),
        Step::Fail => fail(at),
        Step::Cancel => cancel(at),
        Step::ScheduleRetry => schedule_retry(at),
        Step::ExpireImages => expire_images(at),
    }
}

fn is_ending(event: &E) -> bool {
    matches!(
        event,
        E::JobCompleted { .. } | E::JobFailed { .. } | E::JobCancelled { .. }
    )
}

fn check_step(
    before: &GenerationJob,
    after: &GenerationJob,
    log: &[E],
) -> Result<(), TestCaseError> {
    let (Some(status_before), Some(status)) = (before.status(), after.status()) else {
        return Err(TestCaseError::fail("a queued job lost its status"));
    };
    if status_before.is_final() {
        prop_assert_eq!(status, status_before, "a final status changed");
    }
    prop_assert!(
        after.attempt >= before.attempt,
        "attempt went {} → {}",
        before.attempt,
        after.attempt
    );
    let endings = log.iter().filter(|event| is_ending(event)).count();
    prop_assert_eq!(
        endings,
        usize::from(status.is_final()),
        "ending events: {:?}",
        log
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_command_sequence_keeps_the_lifecycle_sound(steps in proptest::collection::vec(step(), 1..60)) {
        let mut log = at_queued();
        let mut job = state(&log);
        for (i, step) in steps.iter().enumerate() {
            let at = i64::try_from(i).expect("few steps") + 1;
            let before = job.clone();
            if let Ok(events) = job.decide(command(step, at)) {
                for event in events {
                    if let E::JobDispatched { attempt, .. } = &event {
                        prop_assert_eq!(*attempt, job.attempt + 1, "attempts are numbered in order");
                    }
                    job.apply(event.clone());
                    log.push(event);
                }
            }
            check_step(&before, &job, &log)?;
        }
        prop_assert_eq!(&state(&log), &job, "replaying the log gives the same state");
    }
}
