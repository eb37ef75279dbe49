//! ExpireCredits: only the unspent, unreserved part of blocks past expiry goes.

use domain::{TeamCreditsCommand as C, TeamCreditsEvent as E};

use crate::support::*;

fn expire_at(at: i64) -> C {
    C::ExpireCredits { now: t(at) }
}

/// Block 1 never expires, block 2 expires at t(50) with 20 of its 100 reserved by job 1,
/// block 3 expires at t(80).
fn history() -> Vec<E> {
    vec![
        opened(),
        granted(1, 100, None),
        granted(2, 100, Some(50)),
        granted(3, 100, Some(80)),
        reserved(1, 20, vec![alloc(2, 20)]),
    ]
}

#[test]
fn expiry_takes_only_the_unreserved_remainder_of_due_blocks() {
    given(history())
        .when(expire_at(60))
        .then_expect_events(vec![expired(2, 80, 60)]);
    let mut after = history();
    after.push(expired(2, 80, 60));
    let credits = state(&after);
    assert_eq!(
        (
            credits.available(),
            credits.reserved(),
            credits.expired_total()
        ),
        (200, 20, 80)
    );
    assert_eq!(credits.grants()[1].remaining, 0);
}

#[test]
fn expiry_is_due_at_the_exact_expiry_instant() {
    given(history())
        .when(expire_at(80))
        .then_expect_events(vec![expired(2, 80, 80), expired(3, 100, 80)]);
}

#[test]
fn nothing_due_records_nothing() {
    given(history())
        .when(expire_at(49))
        .then_expect_events(vec![]);
}

#[test]
fn repeating_an_expiry_records_nothing() {
    let mut after = history();
    after.push(expired(2, 80, 60));
    given(after).when(expire_at(60)).then_expect_events(vec![]);
}

#[test]
fn used_up_blocks_do_not_expire() {
    let used = vec![
        opened(),
        granted(2, 20, Some(50)),
        reserved(1, 20, vec![alloc(2, 20)]),
        deducted(1, 20, 3),
    ];
    given(used).when(expire_at(60)).then_expect_events(vec![]);
}
