//! AdjustCredits: signed corrections with reason and actor, idempotent by adjustment id.

use domain::{
    AmountError, BlockOrigin, GrantId, TeamCreditsCommand as C, TeamCreditsError,
    TeamCreditsEvent as E,
};

use crate::support::*;

fn adjust(n: u128, amount: i64) -> C {
    C::AdjustCredits {
        adjustment_id: adjustment_id(n),
        amount: signed(amount),
        reason: "support ticket 42".into(),
        actor: "ops@kiln".into(),
        now: t(5),
    }
}

fn adjusted(n: u128, amount: i64, allocations: Vec<domain::Allocation>) -> E {
    E::CreditsAdjusted {
        adjustment_id: adjustment_id(n),
        amount: signed(amount),
        reason: "support ticket 42".into(),
        actor: "ops@kiln".into(),
        allocations,
        occurred_at: t(5),
    }
}

fn own_block(n: u128, amount: i64) -> domain::Allocation {
    domain::Allocation {
        grant_id: GrantId::from(adjustment_id(n)),
        amount: credits(amount),
    }
}

#[test]
fn a_positive_adjustment_opens_its_own_non_expiring_block() {
    given(vec![opened()])
        .when(adjust(1, 25))
        .then_expect_events(vec![adjusted(1, 25, vec![own_block(1, 25)])]);
    let credits = state(&[opened(), adjusted(1, 25, vec![own_block(1, 25)])]);
    assert_eq!(
        (
            credits.available(),
            credits.adjusted_total(),
            credits.granted_total()
        ),
        (25, 25, 0)
    );
    assert_eq!(credits.grants()[0].origin, BlockOrigin::Adjustment);
    assert_eq!(credits.grants()[0].expires_at, None);
}

#[test]
fn a_negative_adjustment_draws_in_burn_down_order() {
    let history = vec![opened(), granted(1, 100, None), granted(2, 10, Some(50))];
    given(history.clone())
        .when(adjust(1, -30))
        .then_expect_events(vec![adjusted(1, -30, vec![alloc(2, 10), alloc(1, 20)])]);
    let mut after = history;
    after.push(adjusted(1, -30, vec![alloc(2, 10), alloc(1, 20)]));
    let credits = state(&after);
    assert_eq!((credits.available(), credits.adjusted_total()), (80, -30));
    assert_eq!(credits.grants()[0].adjusted_out, 20);
}

#[test]
fn a_negative_adjustment_may_not_take_available_below_zero() {
    let history = vec![
        opened(),
        granted(1, 100, None),
        reserved(1, 80, vec![alloc(1, 80)]),
    ];
    given(history)
        .when(adjust(1, -21))
        .then_expect_error(TeamCreditsError::InsufficientCredits {
            available: 20,
            requested: 21,
        });
}

#[test]
fn repeating_an_adjustment_records_nothing() {
    given(vec![opened(), adjusted(1, 25, vec![own_block(1, 25)])])
        .when(adjust(1, 25))
        .then_expect_events(vec![]);
}

#[test]
fn reusing_an_adjustment_id_for_another_amount_is_a_conflict() {
    given(vec![opened(), adjusted(1, 25, vec![own_block(1, 25)])])
        .when(adjust(1, 26))
        .then_expect_error(TeamCreditsError::IdempotencyConflict {
            key: adjustment_id(1).to_string(),
        });
}

#[test]
fn an_adjustment_id_that_collides_with_a_grant_is_a_conflict() {
    let colliding_grant = E::CreditsGranted {
        grant_id: GrantId::from(adjustment_id(1)),
        amount: credits(10),
        source: domain::GrantSource::Admin,
        expires_at: None,
        key: key("evt_x"),
        occurred_at: t(1),
    };
    given(vec![opened(), colliding_grant])
        .when(adjust(1, 5))
        .then_expect_error(TeamCreditsError::IdempotencyConflict {
            key: adjustment_id(1).to_string(),
        });
}

#[test]
fn reason_and_actor_are_required() {
    let blank_reason = C::AdjustCredits {
        adjustment_id: adjustment_id(1),
        amount: signed(5),
        reason: " ".into(),
        actor: "ops@kiln".into(),
        now: t(5),
    };
    given(vec![opened()])
        .when(blank_reason)
        .then_expect_error(TeamCreditsError::InvalidText {
            field: "reason",
            reason: domain::text::TextError::Empty { chars_max: 1_000 },
        });
    let blank_actor = C::AdjustCredits {
        adjustment_id: adjustment_id(1),
        amount: signed(5),
        reason: "why".into(),
        actor: String::new(),
        now: t(5),
    };
    given(vec![opened()])
        .when(blank_actor)
        .then_expect_error(TeamCreditsError::InvalidText {
            field: "actor",
            reason: domain::text::TextError::Empty { chars_max: 200 },
        });
    let bell_reason = C::AdjustCredits {
        adjustment_id: adjustment_id(1),
        amount: signed(5),
        reason: "goodwill\u{7}".into(),
        actor: "ops@kiln".into(),
        now: t(5),
    };
    given(vec![opened()])
        .when(bell_reason)
        .then_expect_error(TeamCreditsError::InvalidText {
            field: "reason",
            reason: domain::text::TextError::Control('\u{7}'),
        });
}

#[test]
fn a_positive_adjustment_that_would_overflow_is_refused() {
    given(vec![opened(), granted(1, i64::MAX, None)])
        .when(adjust(1, 1))
        .then_expect_error(TeamCreditsError::Amount(AmountError::Overflow));
}

#[test]
fn zero_and_min_adjustments_cannot_be_built() {
    assert_eq!(domain::SignedCredits::parse(0), Err(AmountError::Zero));
    assert_eq!(
        domain::SignedCredits::parse(i64::MIN),
        Err(AmountError::OutOfRange(i64::MIN))
    );
}
