//! Fixtures: fixed ids, a fixed clock, and builders for the events and commands most tests
//! share, so a change to an event's shape touches one place.

use chrono::{DateTime, TimeDelta, Utc};
use cqrs_es::test::{AggregateTestExecutor, TestFramework};
use cqrs_es::Aggregate;
use domain::{
    AdjustmentId, Allocation, Credits, GrantId, GrantSource, IdempotencyKey, JobId, Operation,
    Plan, SignedCredits, TeamCredits, TeamCreditsCommand as C, TeamCreditsEvent as E, TeamId,
};
use uuid::Uuid;

pub fn given(events: Vec<E>) -> AggregateTestExecutor<TeamCredits> {
    TestFramework::<TeamCredits>::with(()).given(events)
}

/// The state those events produce, for checking queries.
pub fn state(events: &[E]) -> TeamCredits {
    let mut credits = TeamCredits::default();
    for event in events {
        credits.apply(event.clone());
    }
    credits
}

pub fn team() -> TeamId {
    TeamId::new(Uuid::from_u128(0x7ea))
}

pub fn grant_id(n: u128) -> GrantId {
    GrantId::new(Uuid::from_u128(0x6000 + n))
}

pub fn job(n: u128) -> JobId {
    JobId::new(Uuid::from_u128(0x1000 + n))
}

pub fn adjustment_id(n: u128) -> AdjustmentId {
    AdjustmentId::new(Uuid::from_u128(0xad00 + n))
}

/// `minutes` after a fixed instant.
pub fn t(minutes: i64) -> DateTime<Utc> {
    let start = DateTime::from_timestamp(1_764_000_000, 0).expect("valid timestamp");
    start + TimeDelta::minutes(minutes)
}

pub fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).expect("valid key")
}

pub fn credits(amount: i64) -> Credits {
    Credits::parse(amount).expect("positive amount")
}

pub fn signed(amount: i64) -> SignedCredits {
    SignedCredits::parse(amount).expect("non-zero amount")
}

pub fn alloc(grant: u128, amount: i64) -> Allocation {
    Allocation {
        grant_id: grant_id(grant),
        amount: credits(amount),
    }
}

pub fn opened() -> E {
    E::TeamOpened {
        team_id: team(),
        name: "Acme".into(),
        plan: Plan::Pro,
        occurred_at: t(0),
    }
}

/// Grant `n` of `amount`, expiring `expires_in` minutes after t(0), granted at t(1).
pub fn granted(n: u128, amount: i64, expires_at: Option<i64>) -> E {
    E::CreditsGranted {
        grant_id: grant_id(n),
        amount: credits(amount),
        source: GrantSource::Stripe,
        expires_at: expires_at.map(t),
        key: key(&format!("evt_{n}")),
        occurred_at: t(1),
    }
}

pub fn grant(n: u128, amount: i64, expires_at: Option<i64>) -> C {
    C::GrantCredits {
        grant_id: grant_id(n),
        amount: credits(amount),
        source: GrantSource::Stripe,
        expires_at: expires_at.map(t),
        key: key(&format!("evt_{n}")),
        now: t(1),
    }
}

pub fn reserved_at(n: u128, amount: i64, allocations: Vec<Allocation>, at: i64) -> E {
    E::CreditsReserved {
        reservation_id: job(n),
        amount: credits(amount),
        operation: Operation::ImageGeneration,
        price_version: 1,
        allocations,
        occurred_at: t(at),
    }
}

/// Reservation for job `n` at t(2).
pub fn reserved(n: u128, amount: i64, allocations: Vec<Allocation>) -> E {
    reserved_at(n, amount, allocations, 2)
}

pub fn reserve_at(n: u128, amount: i64, at: i64) -> C {
    C::ReserveCredits {
        reservation_id: job(n),
        amount: credits(amount),
        operation: Operation::ImageGeneration,
        price_version: 1,
        now: t(at),
    }
}

pub fn reserve(n: u128, amount: i64) -> C {
    reserve_at(n, amount, 2)
}

pub fn deducted(n: u128, amount: i64, at: i64) -> E {
    E::CreditsDeducted {
        reservation_id: job(n),
        amount: credits(amount),
        occurred_at: t(at),
    }
}

pub fn refunded(n: u128, amount: i64, at: i64) -> E {
    E::CreditsRefunded {
        reservation_id: job(n),
        amount: credits(amount),
        occurred_at: t(at),
    }
}

pub fn expired(n: u128, amount: i64, at: i64) -> E {
    E::CreditsExpired {
        grant_id: grant_id(n),
        amount: credits(amount),
        occurred_at: t(at),
    }
}
