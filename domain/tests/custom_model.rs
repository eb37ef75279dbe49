//! CustomModel through the crate's public API: given/when/then with cqrs-es's
//! `TestFramework` for every command and every rejection, and state checks (`usable()`,
//! versions, pending job) by replaying events with `apply`.

use chrono::{DateTime, TimeDelta, Utc};
use cqrs_es::test::{AggregateTestExecutor, TestFramework};
use cqrs_es::Aggregate;
use domain::jobs::PROMPT_CHARS_MAX;
use domain::text::TextError;
use domain::models::{
    CustomModel, ModelCommand as C, ModelError, ModelEvent as E, ModelStatus, ModelVersion,
    MODEL_NAME_CHARS_MAX,
};
use domain::{JobId, ModelId, TeamId};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Fixtures: fixed ids, a fixed clock, one builder per command and event.
// ---------------------------------------------------------------------------------------

fn given(events: Vec<E>) -> AggregateTestExecutor<CustomModel> {
    TestFramework::<CustomModel>::with(()).given(events)
}

/// The state those events produce, as the event store would rebuild it.
fn state(events: &[E]) -> CustomModel {
    let mut model = CustomModel::default();
    for event in events {
        model.apply(event.clone());
    }
    model
}

/// `minutes` after a fixed instant.
fn t(minutes: i64) -> DateTime<Utc> {
    let start = DateTime::from_timestamp(1_764_000_000, 0).expect("valid timestamp");
    start + TimeDelta::minutes(minutes)
}

fn model_id() -> ModelId {
    ModelId::new(Uuid::from_u128(0x30de1))
}

fn team() -> TeamId {
    TeamId::new(Uuid::from_u128(0x7ea))
}

/// Job 1 creates the model; jobs 2.. refine it.
fn job(n: u128) -> JobId {
    JobId::new(Uuid::from_u128(0x1000 + n))
}

fn artifact(n: u128) -> String {
    format!("models/team/model/job{n}.safetensors")
}

fn request_creation(name: &str, description: &str) -> C {
    C::RequestCreation {
        model_id: model_id(),
        team_id: team(),
        name: name.into(),
        description: description.into(),
        reference_model_id: "flux-dev".into(),
        complexity_milli: 1_500,
        job_id: job(1),
        now: t(0),
    }
}

fn creation_requested_named(name: &str, description: &str) -> E {
    E::ModelCreationRequested {
        model_id: model_id(),
        team_id: team(),
        name: name.into(),
        description: description.into(),
        reference_model_id: "flux-dev".into(),
        complexity_milli: 1_500,
        job_id: job(1),
        occurred_at: t(0),
    }
}

fn creation_requested() -> E {
    creation_requested_named("Portraits", "Studio portraits, soft light")
}

fn record_version(n: u128, at: i64) -> C {
    C::RecordVersion {
        job_id: job(n),
        artifact_key: artifact(n),
        now: t(at),
    }
}

fn trained(at: i64) -> E {
    E::ModelTrained {
        job_id: job(1),
        version: 1,
        artifact_key: artifact(1),
        occurred_at: t(at),
    }
}

fn record_failure(n: u128, at: i64) -> C {
    C::RecordJobFailure {
        job_id: job(n),
        reason: "provider error".into(),
        now: t(at),
    }
}

fn creation_failed(at: i64) -> E {
    E::ModelCreationFailed {
        job_id: job(1),
        reason: "provider error".into(),
        occurred_at: t(at),
    }
}

fn prompt(n: u128) -> String {
    format!("sharper eyes, pass {n}")
}

fn request_refinement(n: u128, at: i64) -> C {
    C::RequestRefinement {
        job_id: job(n),
        prompt: prompt(n),
        now: t(at),
    }
}

fn refinement_requested(n: u128, iteration: u32, from_version: u32, at: i64) -> E {
    E::ModelRefinementRequested {
        job_id: job(n),
        prompt: prompt(n),
        iteration,
        from_version,
        occurred_at: t(at),
    }
}

/// Refinement job `n` produced version `version` (its artifact is named after the job).
fn refined(n: u128, version: u32, at: i64) -> E {
    E::ModelRefined {
        job_id: job(n),
        version,
        artifact_key: artifact(n),
        occurred_at: t(at),
    }
}

fn refinement_failed(n: u128, at: i64) -> E {
    E::ModelRefinementFailed {
        job_id: job(n),
        reason: "provider error".into(),
        occurred_at: t(at),
    }
}

fn update(name: Option<&str>, description: Option<&str>, at: i64) -> C {
    C::UpdateDetails {
        name: name.map(String::from),
        description: description.map(String::from),
        now: t(at),
    }
}

fn details_updated(name: &str, description: &str, at: i64) -> E {
    E::ModelDetailsUpdated {
        name: name.into(),
        description: description.into(),
        occurred_at: t(at),
    }
}

fn archive(at: i64) -> C {
    C::Archive { now: t(at) }
}

fn archived(at: i64) -> E {
    E::ModelArchived { occurred_at: t(at) }
}

// Histories.

fn training() -> Vec<E> {
    vec![creation_requested()]
}

fn ready() -> Vec<E> {
    vec![creation_requested(), trained(10)]
}

/// Ready at v1, refinement job 2 pending.
fn refining() -> Vec<E> {
    vec![
        creation_requested(),
        trained(10),
        refinement_requested(2, 1, 1, 20),
    ]
}

fn with(mut history: Vec<E>, events: impl IntoIterator<Item = E>) -> Vec<E> {
    history.extend(events);
    history
}

#[track_caller]
fn check_error(history: Vec<E>, command: C, expected: ModelError) {
    given(history).when(command).then_expect_error(expected);
}

#[track_caller]
fn check_no_events(history: Vec<E>, command: C) {
    given(history).when(command).then_expect_events(vec![]);
}

fn name_error(reason: TextError) -> ModelError {
    ModelError::InvalidText { field: "name", reason }
}

fn description_error(reason: TextError) -> ModelError {
    ModelError::InvalidText { field: "description", reason }
}

fn empty(chars_max: usize) -> TextError {
    TextError::Empty { chars_max }
}

fn too_long(chars_max: usize) -> TextError {
    TextError::TooLong { chars: chars_max + 1, chars_max }
}

// ---------------------------------------------------------------------------------------
// RequestCreation
// ---------------------------------------------------------------------------------------

#[test]
fn request_creation_trims_name_and_description() {
    given(vec![])
        .when(request_creation(
            "  Portraits \n",
            "\tStudio portraits, soft light  ",
        ))
        .then_expect_events(vec![creation_requested()]);
    let model = state(&training());
    assert_eq!(model.status, Some(ModelStatus::Training));
    assert_eq!(model.pending_job, Some((job(1), None)));
    assert!(model.versions.is_empty());
}

#[test]
fn request_creation_accepts_text_at_the_limit_counted_in_characters() {
    let name = "é".repeat(MODEL_NAME_CHARS_MAX);
    let description = "d".repeat(PROMPT_CHARS_MAX);
    given(vec![])
        .when(request_creation(&format!(" {name} "), &description))
        .then_expect_events(vec![creation_requested_named(&name, &description)]);
}

#[test]
fn request_creation_with_invalid_text_is_refused() {
    let long_name = "n".repeat(MODEL_NAME_CHARS_MAX + 1);
    let long_description = "d".repeat(PROMPT_CHARS_MAX + 1);
    let cases = [
        ("", "fine", name_error(empty(MODEL_NAME_CHARS_MAX))),
        ("   ", "fine", name_error(empty(MODEL_NAME_CHARS_MAX))),
        (long_name.as_str(), "fine", name_error(too_long(MODEL_NAME_CHARS_MAX))),
        ("A\u{0}B", "fine", name_error(TextError::Control('\u{0}'))),
        ("Fine", "", description_error(empty(PROMPT_CHARS_MAX))),
        ("Fine", " \n\t", description_error(empty(PROMPT_CHARS_MAX))),
        ("Fine", long_description.as_str(), description_error(too_long(PROMPT_CHARS_MAX))),
        ("Fine", "soft\u{7} light", description_error(TextError::Control('\u{7}'))),
    ];
    for (name, description, error) in cases {
        check_error(vec![], request_creation(name, description), error);
    }
}

#[test]
fn request_creation_twice_is_refused() {
    check_error(
        training(),
        request_creation("Portraits", "Again"),
        ModelError::AlreadyExists,
    );
    check_error(
        ready(),
        request_creation("Portraits", "Again"),
        ModelError::AlreadyExists,
    );
}

// ---------------------------------------------------------------------------------------
// RecordVersion and RecordJobFailure for the creation job
// ---------------------------------------------------------------------------------------

#[test]
fn recording_the_creation_jobs_version_trains_v1() {
    given(training())
        .when(record_version(1, 10))
        .then_expect_events(vec![trained(10)]);
    let model = state(&ready());
    assert_eq!(model.status, Some(ModelStatus::Ready));
    assert_eq!(model.pending_job, None);
    let v1 = ModelVersion {
        version: 1,
        artifact_key: artifact(1),
        job_id: job(1),
        prompt: None,
        created_at: t(10),
    };
    assert_eq!(model.versions, vec![v1.clone()]);
    assert_eq!(model.usable(), Ok(&v1));
}

#[test]
fn recording_a_version_for_an_unknown_job_is_refused() {
    check_error(
        training(),
        record_version(9, 10),
        ModelError::UnknownJob(job(9)),
    );
    // Ready with nothing pending: no refinement job 2 was requested.
    check_error(
        ready(),
        record_version(2, 20),
        ModelError::UnknownJob(job(2)),
    );
    // A late result for a refinement that already failed.
    let gave_up = with(refining(), [refinement_failed(2, 30)]);
    check_error(
        gave_up,
        record_version(2, 31),
        ModelError::UnknownJob(job(2)),
    );
}

#[test]
fn recording_the_same_jobs_version_twice_records_nothing() {
    check_no_events(ready(), record_version(1, 11));
    let history = with(refining(), [refined(2, 2, 30)]);
    check_no_events(history, record_version(2, 31));
}

#[test]
fn creation_failure_fails_the_model_for_good() {
    given(training())
        .when(record_failure(1, 10))
        .then_expect_events(vec![creation_failed(10)]);
    let history = with(training(), [creation_failed(10)]);
    let model = state(&history);
    assert_eq!(model.status, Some(ModelStatus::Failed));
    assert_eq!(model.pending_job, None);
    assert_eq!(model.usable(), Err(ModelError::NotReady("failed")));
    check_error(
        history.clone(),
        request_refinement(2, 20),
        ModelError::NotReady("failed"),
    );
    check_error(
        history,
        record_version(1, 20),
        ModelError::UnknownJob(job(1)),
    );
}

#[test]
fn a_failure_report_for_a_job_that_is_not_pending_records_nothing() {
    check_no_events(training(), record_failure(9, 10));
    check_no_events(ready(), record_failure(1, 11));
    check_no_events(
        with(training(), [creation_failed(10)]),
        record_failure(1, 11),
    );
    check_no_events(refining(), record_failure(9, 21));
    check_no_events(
        with(refining(), [refinement_failed(2, 30)]),
        record_failure(2, 31),
    );
}

// ---------------------------------------------------------------------------------------
// Refinement
// ---------------------------------------------------------------------------------------

#[test]
fn request_refinement_when_ready_starts_iteration_one_from_v1() {
    given(ready())
        .when(request_refinement(2, 20))
        .then_expect_events(vec![refinement_requested(2, 1, 1, 20)]);
    let model = state(&refining());
    assert_eq!(model.pending_job, Some((job(2), Some(prompt(2)))));
    assert_eq!(model.refinements_requested, 1);
    assert_eq!(
        model.status,
        Some(ModelStatus::Ready),
        "still usable at v1 while refining"
    );
}

#[test]
fn request_refinement_trims_and_validates_the_prompt() {
    let padded = C::RequestRefinement {
        job_id: job(2),
        prompt: format!("  {}\n", prompt(2)),
        now: t(20),
    };
    given(ready())
        .when(padded)
        .then_expect_events(vec![refinement_requested(2, 1, 1, 20)]);
    let prompt_error = |reason| ModelError::InvalidText { field: "prompt", reason };
    let cases = [
        (String::new(), empty(PROMPT_CHARS_MAX)),
        ("  ".into(), empty(PROMPT_CHARS_MAX)),
        ("p".repeat(PROMPT_CHARS_MAX + 1), too_long(PROMPT_CHARS_MAX)),
        ("a\u{0}b".into(), TextError::Control('\u{0}')),
    ];
    for (text, reason) in cases {
        let command = C::RequestRefinement {
            job_id: job(2),
            prompt: text,
            now: t(20),
        };
        check_error(ready(), command, prompt_error(reason));
    }
}

#[test]
fn a_refinement_s_own_fault_comes_before_the_model_s_state() {
    // Still training, and the prompt is empty: the prompt is what the caller can fix.
    let command = C::RequestRefinement { job_id: job(2), prompt: " ".into(), now: t(20) };
    check_error(training(), command, ModelError::InvalidText { field: "prompt", reason: empty(PROMPT_CHARS_MAX) });
    check_error(training(), request_refinement(2, 20), ModelError::NotReady("training"));
}

#[test]
fn a_second_refinement_while_one_is_pending_is_refused() {
    check_error(
        refining(),
        request_refinement(3, 21),
        ModelError::RefinementInProgress,
    );
}

#[test]
fn refinement_before_the_model_is_ready_is_refused() {
    check_error(
        training(),
        request_refinement(2, 5),
        ModelError::NotReady("training"),
    );
}

#[test]
fn refined_records_v2_with_its_prompt() {
    given(refining())
        .when(record_version(2, 30))
        .then_expect_events(vec![refined(2, 2, 30)]);
    let model = state(&with(refining(), [refined(2, 2, 30)]));
    let v2 = ModelVersion {
        version: 2,
        artifact_key: artifact(2),
        job_id: job(2),
        prompt: Some(prompt(2)),
        created_at: t(30),
    };
    assert_eq!(model.status, Some(ModelStatus::Ready));
    assert_eq!(model.pending_job, None);
    assert_eq!(model.versions.len(), 2);
    assert_eq!(model.versions[0].prompt, None);
    assert_eq!(model.current_version(), Some(&v2));
    assert_eq!(model.usable(), Ok(&v2));
}

#[test]
fn the_next_refinement_starts_from_the_latest_version() {
    let history = with(refining(), [refined(2, 2, 30)]);
    given(history)
        .when(request_refinement(3, 40))
        .then_expect_events(vec![refinement_requested(3, 2, 2, 40)]);
}

#[test]
fn refinement_failure_keeps_the_model_ready_at_v1() {
    given(refining())
        .when(record_failure(2, 30))
        .then_expect_events(vec![refinement_failed(2, 30)]);
    let history = with(refining(), [refinement_failed(2, 30)]);
    let model = state(&history);
    assert_eq!(model.status, Some(ModelStatus::Ready));
    assert_eq!(model.pending_job, None);
    assert_eq!(model.versions.len(), 1);
    assert_eq!(model.usable().map(|v| v.version), Ok(1));
    // The failed attempt still counts as a refinement requested.
    given(history)
        .when(request_refinement(3, 40))
        .then_expect_events(vec![refinement_requested(3, 2, 1, 40)]);
}

// ---------------------------------------------------------------------------------------
// UpdateDetails
// ---------------------------------------------------------------------------------------

#[test]
fn update_details_changes_what_is_given_and_keeps_the_rest() {
    let old_description = "Studio portraits, soft light";
    given(ready())
        .when(update(Some(" Headshots "), None, 30))
        .then_expect_events(vec![details_updated("Headshots", old_description, 30)]);
    given(ready())
        .when(update(None, Some("Outdoor portraits"), 30))
        .then_expect_events(vec![details_updated("Portraits", "Outdoor portraits", 30)]);
    given(ready())
        .when(update(Some("Headshots"), Some("Outdoor portraits"), 30))
        .then_expect_events(vec![details_updated("Headshots", "Outdoor portraits", 30)]);
    let model = state(&with(
        ready(),
        [details_updated("Headshots", "Outdoor portraits", 30)],
    ));
    assert_eq!(
        (model.name.as_str(), model.description.as_str()),
        ("Headshots", "Outdoor portraits")
    );
}

#[test]
fn update_details_without_a_change_records_nothing() {
    check_no_events(ready(), update(None, None, 30));
    check_no_events(ready(), update(Some("Portraits"), None, 30));
    check_no_events(
        ready(),
        update(
            Some(" Portraits "),
            Some("Studio portraits, soft light\n"),
            30,
        ),
    );
}

#[test]
fn update_details_with_invalid_text_is_refused() {
    check_error(ready(), update(Some("  "), None, 30), name_error(empty(MODEL_NAME_CHARS_MAX)));
    check_error(ready(), update(Some("x\u{1b}[31m"), None, 30), name_error(TextError::Control('\u{1b}')));
    let long_description = "d".repeat(PROMPT_CHARS_MAX + 1);
    check_error(
        ready(),
        update(None, Some(&long_description), 30),
        description_error(too_long(PROMPT_CHARS_MAX)),
    );
}

#[test]
fn update_details_on_an_archived_model_is_refused() {
    check_error(
        with(ready(), [archived(30)]),
        update(Some("Headshots"), None, 31),
        ModelError::Archived,
    );
}

// ---------------------------------------------------------------------------------------
// Archive and usable()
// ---------------------------------------------------------------------------------------

#[test]
fn archive_records_once() {
    given(ready())
        .when(archive(30))
        .then_expect_events(vec![archived(30)]);
    check_no_events(with(ready(), [archived(30)]), archive(31));
    assert!(state(&with(ready(), [archived(30)])).archived);
}

#[test]
fn an_archived_model_cannot_be_refined_or_used() {
    let history = with(ready(), [archived(30)]);
    check_error(
        history.clone(),
        request_refinement(2, 31),
        ModelError::Archived,
    );
    assert_eq!(state(&history).usable(), Err(ModelError::Archived));
}

#[test]
fn a_training_model_is_not_usable() {
    assert_eq!(
        state(&training()).usable(),
        Err(ModelError::NotReady("training"))
    );
}

#[test]
fn commands_on_an_unknown_model_are_refused() {
    check_error(
        vec![],
        update(Some("Headshots"), None, 1),
        ModelError::NotFound,
    );
    check_error(vec![], archive(1), ModelError::NotFound);
    check_error(vec![], request_refinement(2, 1), ModelError::NotFound);
    assert_eq!(CustomModel::default().usable(), Err(ModelError::NotFound));
}
