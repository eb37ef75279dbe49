//! ReserveCredits, DeductCredits and RefundCredits: burn-down order, two-phase settlement
//! that ends exactly once, refunds into expired blocks, and the rejections.

use domain::{
    Operation, ReservationState, TeamCreditsCommand as C, TeamCreditsError, TeamCreditsEvent as E,
};

use crate::support::*;

fn deduct(n: u128, at: i64) -> C {
    C::DeductCredits {
        reservation_id: job(n),
        now: t(at),
    }
}

fn refund(n: u128, at: i64) -> C {
    C::RefundCredits {
        reservation_id: job(n),
        now: t(at),
    }
}

/// Three blocks: 1 never expires, 2 expires at t(100), 3 expires at t(50).
fn three_blocks() -> Vec<E> {
    vec![
        opened(),
        granted(1, 100, None),
        granted(2, 100, Some(100)),
        granted(3, 100, Some(50)),
    ]
}

#[test]
fn reserve_draws_from_the_block_expiring_soonest_and_non_expiring_last() {
    given(three_blocks())
        .when(reserve(1, 250))
        .then_expect_events(vec![reserved(
            1,
            250,
            vec![alloc(3, 100), alloc(2, 100), alloc(1, 50)],
        )]);
}

#[test]
fn burn_down_ties_go_in_grant_order() {
    let history = vec![
        opened(),
        granted(1, 10, Some(50)),
        granted(2, 10, Some(50)),
        granted(3, 10, None),
    ];
    given(history)
        .when(reserve(1, 15))
        .then_expect_events(vec![reserved(1, 15, vec![alloc(1, 10), alloc(2, 5)])]);
}

#[test]
fn reserve_skips_blocks_past_expiry_that_are_not_swept_yet() {
    given(three_blocks())
        .when(reserve_at(1, 150, 60))
        .then_expect_events(vec![reserved_at(
            1,
            150,
            vec![alloc(2, 100), alloc(1, 50)],
            60,
        )]);
}

#[test]
fn reserving_more_than_spendable_is_refused() {
    given(three_blocks())
        .when(reserve(1, 301))
        .then_expect_error(TeamCreditsError::InsufficientCredits {
            available: 300,
            requested: 301,
        });
    // At t(60) block 3 has lapsed, so only 200 are spendable although 300 are available.
    given(three_blocks())
        .when(reserve_at(1, 201, 60))
        .then_expect_error(TeamCreditsError::InsufficientCredits {
            available: 200,
            requested: 201,
        });
}

#[test]
fn reserve_moves_credits_from_available_to_reserved() {
    let credits = state(&[
        opened(),
        granted(1, 100, None),
        reserved(1, 30, vec![alloc(1, 30)]),
    ]);
    assert_eq!((credits.available(), credits.reserved()), (70, 30));
    assert_eq!(
        credits.reservation_outcome(job(1)),
        Some(ReservationState::Pending)
    );
    assert_eq!(credits.reservation_outcome(job(2)), None);
    assert_eq!(credits.grants()[0].reserved, 30);
    assert_eq!(credits.pending_reservations().count(), 1);
}

#[test]
fn repeating_a_reservation_records_nothing_even_after_it_ended() {
    let history = vec![
        opened(),
        granted(1, 100, None),
        reserved(1, 30, vec![alloc(1, 30)]),
    ];
    given(history.clone())
        .when(reserve(1, 30))
        .then_expect_events(vec![]);
    let mut ended = history;
    ended.push(deducted(1, 30, 3));
    given(ended).when(reserve(1, 30)).then_expect_events(vec![]);
}

#[test]
fn reusing_a_reservation_id_for_another_amount_or_operation_is_a_conflict() {
    let history = vec![
        opened(),
        granted(1, 100, None),
        reserved(1, 30, vec![alloc(1, 30)]),
    ];
    let conflict = TeamCreditsError::IdempotencyConflict {
        key: job(1).to_string(),
    };
    given(history.clone())
        .when(reserve(1, 31))
        .then_expect_error(conflict.clone());
    let other_operation = C::ReserveCredits {
        reservation_id: job(1),
        amount: credits(30),
        operation: Operation::ModelCreation,
        price_version: 1,
        now: t(2),
    };
    given(history)
        .when(other_operation)
        .then_expect_error(conflict);
}

fn one_pending() -> Vec<E> {
    vec![
        opened(),
        granted(1, 100, None),
        reserved(1, 30, vec![alloc(1, 30)]),
    ]
}

#[test]
fn deduct_spends_the_whole_reservation() {
    given(one_pending())
        .when(deduct(1, 3))
        .then_expect_events(vec![deducted(1, 30, 3)]);
    let mut history = one_pending();
    history.push(deducted(1, 30, 3));
    let credits = state(&history);
    assert_eq!(
        (
            credits.available(),
            credits.reserved(),
            credits.deducted_total()
        ),
        (70, 0, 30)
    );
    assert_eq!(
        credits.reservation_outcome(job(1)),
        Some(ReservationState::Deducted)
    );
}

#[test]
fn refund_returns_the_reservation_to_its_blocks() {
    given(one_pending())
        .when(refund(1, 3))
        .then_expect_events(vec![refunded(1, 30, 3)]);
    let mut history = one_pending();
    history.push(refunded(1, 30, 3));
    let credits = state(&history);
    assert_eq!(
        (
            credits.available(),
            credits.reserved(),
            credits.deducted_total()
        ),
        (100, 0, 0)
    );
    assert_eq!(credits.grants()[0].remaining, 100);
    assert_eq!(
        credits.reservation_outcome(job(1)),
        Some(ReservationState::Refunded)
    );
}

#[test]
fn a_reservation_ends_exactly_once() {
    let mut after_deduct = one_pending();
    after_deduct.push(deducted(1, 30, 3));
    given(after_deduct.clone())
        .when(deduct(1, 4))
        .then_expect_events(vec![]);
    given(after_deduct)
        .when(refund(1, 4))
        .then_expect_events(vec![]);

    let mut after_refund = one_pending();
    after_refund.push(refunded(1, 30, 3));
    given(after_refund.clone())
        .when(refund(1, 4))
        .then_expect_events(vec![]);
    given(after_refund)
        .when(deduct(1, 4))
        .then_expect_events(vec![]);
}

#[test]
fn settling_an_unknown_reservation_is_refused() {
    let history = vec![opened(), granted(1, 100, None)];
    let not_found = TeamCreditsError::ReservationNotFound(job(9));
    given(history.clone())
        .when(deduct(9, 3))
        .then_expect_error(not_found.clone());
    given(history)
        .when(refund(9, 3))
        .then_expect_error(not_found);
}

/// Job 1 holds 30 from block 3 (expires t(50)) and 20 from block 1 (never expires).
fn pending_across_an_expiring_block() -> Vec<E> {
    vec![
        opened(),
        granted(1, 100, None),
        granted(3, 30, Some(50)),
        reserved(1, 50, vec![alloc(3, 30), alloc(1, 20)]),
    ]
}

#[test]
fn a_refund_into_an_expired_block_expires_that_part_at_once() {
    given(pending_across_an_expiring_block())
        .when(refund(1, 60))
        .then_expect_events(vec![refunded(1, 50, 60), expired(3, 30, 60)]);
    let mut history = pending_across_an_expiring_block();
    history.extend([refunded(1, 50, 60), expired(3, 30, 60)]);
    let credits = state(&history);
    assert_eq!((credits.available(), credits.expired_total()), (100, 30));
}

#[test]
fn a_refund_before_expiry_returns_everything() {
    given(pending_across_an_expiring_block())
        .when(refund(1, 40))
        .then_expect_events(vec![refunded(1, 50, 40)]);
}

#[test]
fn reserved_credits_can_be_deducted_after_their_block_expired() {
    given(pending_across_an_expiring_block())
        .when(deduct(1, 60))
        .then_expect_events(vec![deducted(1, 50, 60)]);
}
