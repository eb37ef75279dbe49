//! GrantCredits: new blocks, idempotency by grant id, and the rejections.

use domain::{AmountError, BlockOrigin, GrantSource, TeamCreditsCommand as C, TeamCreditsError};

use crate::support::*;

#[test]
fn grant_records_a_block() {
    given(vec![opened()])
        .when(grant(1, 500, Some(60)))
        .then_expect_events(vec![granted(1, 500, Some(60))]);
    let credits = state(&[opened(), granted(1, 500, Some(60))]);
    assert_eq!(credits.available(), 500);
    assert_eq!(credits.granted_total(), 500);
    let block = &credits.grants()[0];
    assert_eq!(
        (block.grant_id, block.origin, block.remaining),
        (grant_id(1), BlockOrigin::Stripe, 500)
    );
    assert_eq!(block.expires_at, Some(t(60)));
}

#[test]
fn repeating_a_grant_records_nothing() {
    given(vec![opened(), granted(1, 500, None)])
        .when(grant(1, 500, None))
        .then_expect_events(vec![]);
}

#[test]
fn reusing_a_grant_id_for_another_grant_is_a_conflict() {
    let conflict = TeamCreditsError::IdempotencyConflict {
        key: grant_id(1).to_string(),
    };
    let history = vec![opened(), granted(1, 500, None)];
    given(history.clone())
        .when(grant(1, 600, None))
        .then_expect_error(conflict.clone());
    given(history.clone())
        .when(grant(1, 500, Some(90)))
        .then_expect_error(conflict.clone());
    let from_admin = C::GrantCredits {
        grant_id: grant_id(1),
        amount: credits(500),
        source: GrantSource::Admin,
        expires_at: None,
        key: key("evt_1"),
        now: t(1),
    };
    given(history).when(from_admin).then_expect_error(conflict);
}

#[test]
fn a_grant_born_expired_is_refused() {
    given(vec![opened()])
        .when(grant(1, 500, Some(1)))
        .then_expect_error(TeamCreditsError::ExpiryNotInFuture);
    given(vec![opened()])
        .when(grant(1, 500, Some(0)))
        .then_expect_error(TeamCreditsError::ExpiryNotInFuture);
}

#[test]
fn grants_that_would_overflow_the_ledger_are_refused() {
    given(vec![opened(), granted(1, i64::MAX, None)])
        .when(grant(2, 1, None))
        .then_expect_error(TeamCreditsError::Amount(AmountError::Overflow));
}

#[test]
fn zero_or_negative_amounts_cannot_reach_the_ledger() {
    // Amounts are `Credits`, which cannot be zero or negative, even when decoded from JSON.
    let json = |amount: i64| {
        format!(
            r#"{{"type":"GrantCredits","grant_id":"{}","amount":{amount},"source":"stripe",
                "expires_at":null,"key":"evt_1","now":"2025-11-24T16:00:00Z"}}"#,
            grant_id(1)
        )
    };
    assert!(serde_json::from_str::<C>(&json(0)).is_err());
    assert!(serde_json::from_str::<C>(&json(-5)).is_err());
    assert!(serde_json::from_str::<C>(&json(5)).is_ok());
    assert_eq!(domain::Credits::parse(0), Err(AmountError::NotPositive(0)));
}
