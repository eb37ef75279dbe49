//! Opening a team, plan changes and subscription expiry, and TeamNotFound for everything
//! else on an unopened team.

use domain::text::TextError;
use domain::{Plan, TeamCreditsCommand as C, TeamCreditsError, TeamCreditsEvent as E};

use crate::support::*;

fn open(name: &str) -> C {
    C::OpenTeam {
        team_id: team(),
        name: name.into(),
        plan: Plan::Pro,
        now: t(0),
    }
}

fn change_plan(to: Plan, effective_at: i64) -> C {
    C::ChangePlan {
        to,
        effective_at: t(effective_at),
        key: key("evt_plan"),
        now: t(30),
    }
}

fn plan_changed(from: Plan, to: Plan, effective_at: i64) -> E {
    E::PlanChanged {
        from,
        to,
        effective_at: t(effective_at),
        key: key("evt_plan"),
        occurred_at: t(30),
    }
}

fn expire_subscription(effective_at: i64) -> C {
    C::ExpireSubscription {
        effective_at: t(effective_at),
        key: key("evt_sub"),
        now: t(30),
    }
}

#[test]
fn open_team_records_the_team() {
    given(vec![])
        .when(open("Acme"))
        .then_expect_events(vec![opened()]);
}

#[test]
fn open_team_trims_the_name() {
    given(vec![])
        .when(open("  Acme "))
        .then_expect_events(vec![opened()]);
}

#[test]
fn repeating_open_team_records_nothing() {
    given(vec![opened()])
        .when(open("Acme"))
        .then_expect_events(vec![]);
}

#[test]
fn opening_again_with_other_details_is_refused() {
    given(vec![opened()])
        .when(open("Other"))
        .then_expect_error(TeamCreditsError::TeamAlreadyOpened);
}

#[test]
fn blank_or_overlong_team_names_are_refused() {
    let invalid = |reason| TeamCreditsError::InvalidText { field: "name", reason };
    given(vec![])
        .when(open("   "))
        .then_expect_error(invalid(TextError::Empty { chars_max: 200 }));
    given(vec![])
        .when(open(&"x".repeat(201)))
        .then_expect_error(invalid(TextError::TooLong { chars: 201, chars_max: 200 }));
    given(vec![])
        .when(open("Acme\u{0}"))
        .then_expect_error(invalid(TextError::Control('\u{0}')));
}

#[test]
fn change_plan_records_from_and_to() {
    given(vec![opened()])
        .when(change_plan(Plan::Enterprise, 10))
        .then_expect_events(vec![plan_changed(Plan::Pro, Plan::Enterprise, 10)]);
    let credits = state(&[opened(), plan_changed(Plan::Pro, Plan::Enterprise, 10)]);
    assert_eq!(credits.plan(), Plan::Enterprise);
    assert_eq!(credits.profile().map(|p| p.plan_effective_at), Some(t(10)));
}

#[test]
fn stale_or_repeated_plan_changes_record_nothing() {
    let history = vec![opened(), plan_changed(Plan::Pro, Plan::Enterprise, 10)];
    given(history.clone())
        .when(change_plan(Plan::Basic, 5))
        .then_expect_events(vec![]);
    given(history)
        .when(change_plan(Plan::Enterprise, 10))
        .then_expect_events(vec![]);
}

#[test]
fn expire_subscription_moves_the_team_to_free() {
    let expired_event = E::SubscriptionExpired {
        from: Plan::Pro,
        effective_at: t(20),
        key: key("evt_sub"),
        occurred_at: t(30),
    };
    given(vec![opened()])
        .when(expire_subscription(20))
        .then_expect_events(vec![expired_event.clone()]);
    let history = [opened(), expired_event];
    assert_eq!(state(&history).plan(), Plan::Free);
    // An older plan change arriving late cannot resurrect the subscription.
    given(history.to_vec())
        .when(change_plan(Plan::Pro, 15))
        .then_expect_events(vec![]);
    given(history.to_vec())
        .when(expire_subscription(20))
        .then_expect_events(vec![]);
}

#[test]
fn stale_subscription_expiry_records_nothing() {
    given(vec![opened(), plan_changed(Plan::Pro, Plan::Basic, 40)])
        .when(expire_subscription(20))
        .then_expect_events(vec![]);
}

#[test]
fn everything_but_open_team_needs_an_open_team() {
    let commands = vec![
        change_plan(Plan::Basic, 1),
        expire_subscription(1),
        grant(1, 10, None),
        reserve(1, 10),
        C::DeductCredits {
            reservation_id: job(1),
            now: t(3),
        },
        C::RefundCredits {
            reservation_id: job(1),
            now: t(3),
        },
        C::AdjustCredits {
            adjustment_id: adjustment_id(1),
            amount: signed(5),
            reason: "goodwill".into(),
            actor: "ops@kiln".into(),
            now: t(3),
        },
        C::ExpireCredits { now: t(3) },
    ];
    for command in commands {
        given(vec![])
            .when(command)
            .then_expect_error(TeamCreditsError::TeamNotFound);
    }
}

#[test]
fn an_unopened_team_is_free_and_empty() {
    let credits = state(&[]);
    assert!(!credits.is_open());
    assert_eq!(credits.plan(), Plan::Free);
    assert_eq!((credits.available(), credits.reserved()), (0, 0));
}
