//! Property test: any sequence of ledger commands (grants with and without expiry, reserves,
//! deducts, refunds, adjustments, expiries, plan changes, advancing time, keys reused at
//! random) keeps the ledger sound after every step, and repeating any command verbatim
//! changes nothing.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use domain::{
    GrantSource, JobId, Operation, Plan, ReservationState, TeamCredits, TeamCreditsCommand as C,
    TeamCreditsError, TeamCreditsEvent as E,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::support::*;

const GRANTS: u8 = 4;
const JOBS: u8 = 6;
const ADJUSTMENTS: u8 = 3;

#[derive(Debug, Clone)]
enum Step {
    Grant {
        grant: u8,
        amount: i64,
        expires_in_minutes: Option<i64>,
    },
    Reserve {
        job: u8,
        amount: i64,
    },
    Deduct {
        job: u8,
    },
    Refund {
        job: u8,
    },
    Adjust {
        adjustment: u8,
        amount: i64,
    },
    Expire,
    ChangePlan {
        to: Plan,
        effective_offset_minutes: i64,
    },
    ExpireSubscription {
        effective_offset_minutes: i64,
    },
    Advance {
        minutes: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    // A fixed amount makes some reused keys true repeats rather than conflicts.
    let amount = prop_oneof![Just(40i64), 1i64..=100];
    let expiry = proptest::option::of(0i64..=30);
    let signed = prop_oneof![-60i64..=-1, 1i64..=60];
    let plan = proptest::sample::select(Plan::ALL.to_vec());
    prop_oneof![
        3 => (0..GRANTS, amount, expiry).prop_map(|(grant, amount, expires_in_minutes)| {
            Step::Grant { grant, amount, expires_in_minutes }
        }),
        4 => (0..JOBS, 1i64..=80).prop_map(|(job, amount)| Step::Reserve { job, amount }),
        2 => (0..JOBS).prop_map(|job| Step::Deduct { job }),
        2 => (0..JOBS).prop_map(|job| Step::Refund { job }),
        1 => (0..ADJUSTMENTS, signed).prop_map(|(adjustment, amount)| Step::Adjust { adjustment, amount }),
        1 => Just(Step::Expire),
        1 => (plan, -5i64..=5).prop_map(|(to, effective_offset_minutes)| {
            Step::ChangePlan { to, effective_offset_minutes }
        }),
        1 => (-5i64..=5).prop_map(|effective_offset_minutes| {
            Step::ExpireSubscription { effective_offset_minutes }
        }),
        2 => (0i64..=15).prop_map(|minutes| Step::Advance { minutes }),
    ]
}

/// The aggregate as the event store would rebuild it, plus what the test has seen.
struct Run {
    credits: TeamCredits,
    log: Vec<E>,
    now_minutes: i64,
    outcomes: BTreeMap<JobId, ReservationState>,
}

impl Run {
    fn opened() -> Self {
        let mut run = Run {
            credits: TeamCredits::default(),
            log: vec![],
            now_minutes: 1,
            outcomes: BTreeMap::new(),
        };
        run.record(vec![opened()]);
        run
    }

    fn record(&mut self, events: Vec<E>) {
        for event in events {
            self.credits.apply(event.clone());
            self.log.push(event);
        }
    }

    fn execute(&mut self, command: C) -> Result<Vec<E>, TeamCreditsError> {
        let result = self.credits.decide(command);
        if let Ok(events) = &result {
            self.record(events.clone());
        }
        result
    }

    fn command(&mut self, step: &Step) -> Option<C> {
        let now = t(self.now_minutes);
        let minutes = |offset: i64| t(self.now_minutes + offset);
        Some(match *step {
            Step::Advance { minutes } => {
                self.now_minutes += minutes;
                return None;
            }
            Step::Grant {
                grant,
                amount,
                expires_in_minutes,
            } => C::GrantCredits {
                grant_id: grant_id(u128::from(grant)),
                amount: credits(amount),
                source: GrantSource::Stripe,
                expires_at: expires_in_minutes.map(minutes),
                key: key(&format!("evt_{grant}")),
                now,
            },
            Step::Reserve { job: n, amount } => C::ReserveCredits {
                reservation_id: job(u128::from(n)),
                amount: credits(amount),
                operation: Operation::ImageGeneration,
                price_version: 1,
                now,
            },
            Step::Deduct { job: n } => C::DeductCredits {
                reservation_id: job(u128::from(n)),
                now,
            },
            Step::Refund { job: n } => C::RefundCredits {
                reservation_id: job(u128::from(n)),
                now,
            },
            Step::Adjust { adjustment, amount } => C::AdjustCredits {
                adjustment_id: adjustment_id(u128::from(adjustment)),
                amount: signed(amount),
                reason: "property test".into(),
                actor: "proptest".into(),
                now,
            },
            Step::Expire => C::ExpireCredits { now },
            Step::ChangePlan {
                to,
                effective_offset_minutes,
            } => C::ChangePlan {
                to,
                effective_at: minutes(effective_offset_minutes),
                key: key("evt_plan"),
                now,
            },
            Step::ExpireSubscription {
                effective_offset_minutes,
            } => C::ExpireSubscription {
                effective_at: minutes(effective_offset_minutes),
                key: key("evt_sub"),
                now,
            },
        })
    }
}

fn check_ledger(credits: &TeamCredits, now_minutes: i64) -> Result<(), TestCaseError> {
    prop_assert!(credits.available() >= 0);
    prop_assert!(credits.reserved() >= 0);
    prop_assert_eq!(
        credits.granted_total() + credits.adjusted_total(),
        credits.available()
            + credits.reserved()
            + credits.deducted_total()
            + credits.expired_total(),
        "credits are conserved"
    );
    let blocks = credits.grants();
    prop_assert_eq!(
        blocks.iter().map(|b| b.remaining).sum::<i64>(),
        credits.available()
    );
    prop_assert_eq!(
        blocks.iter().map(|b| b.reserved).sum::<i64>(),
        credits.reserved()
    );
    for block in blocks {
        let parts = [
            block.remaining,
            block.reserved,
            block.deducted,
            block.adjusted_out,
            block.expired,
        ];
        prop_assert!(
            parts.iter().all(|part| *part >= 0),
            "block parts: {:?}",
            block
        );
        prop_assert_eq!(
            parts.iter().sum::<i64>(),
            block.amount.get(),
            "block balance: {:?}",
            block
        );
    }
    let pending: i64 = credits
        .pending_reservations()
        .map(|(_, r)| r.amount.get())
        .sum();
    prop_assert_eq!(
        pending,
        credits.reserved(),
        "pending reservations hold what is reserved"
    );
    prop_assert!(credits.spendable_at(t(now_minutes)) <= credits.available());
    Ok(())
}

/// A reservation ends at most once: outcomes only move Pending → Deducted | Refunded, the
/// log settles each reservation at most once, and deductions add up.
fn check_reservations(run: &mut Run) -> Result<(), TestCaseError> {
    let mut deducted = 0;
    for n in 0..JOBS {
        let id = job(u128::from(n));
        let Some(now) = run.credits.reservation_outcome(id) else {
            continue;
        };
        if let Some(before) = run.outcomes.insert(id, now) {
            prop_assert!(
                before == ReservationState::Pending || before == now,
                "{:?} → {:?}",
                before,
                now
            );
        }
        if now == ReservationState::Deducted {
            deducted += run.credits.reservation(id).map_or(0, |r| r.amount.get());
        }
        let settlements = run.log.iter().filter(|event| match event {
            E::CreditsDeducted { reservation_id, .. }
            | E::CreditsRefunded { reservation_id, .. } => *reservation_id == id,
            _ => false,
        });
        prop_assert!(settlements.count() <= 1, "reservation {} settled twice", id);
    }
    prop_assert_eq!(deducted, run.credits.deducted_total());
    Ok(())
}

/// Spends follow burn-down order and are fully allocated; errors tell the truth.
fn check_outcome(
    run: &Run,
    step: &Step,
    result: &Result<Vec<E>, TeamCreditsError>,
) -> Result<(), TestCaseError> {
    let now = t(run.now_minutes);
    if let Err(TeamCreditsError::InsufficientCredits {
        available,
        requested,
    }) = result
    {
        prop_assert!(requested > available);
        prop_assert_eq!(*available, run.credits.spendable_at(now));
    }
    for event in result.iter().flatten() {
        if let E::CreditsReserved {
            amount,
            allocations,
            ..
        } = event
        {
            prop_assert_eq!(
                allocations.iter().map(|a| a.amount.get()).sum::<i64>(),
                amount.get()
            );
            let keys: Vec<_> = allocations
                .iter()
                .filter_map(|a| run.credits.grant(a.grant_id))
                .map(|b| (b.expires_at.is_none(), b.expires_at))
                .collect();
            prop_assert!(
                keys.windows(2).all(|w| w[0] <= w[1]),
                "burn-down order: {:?}",
                keys
            );
        }
    }
    if matches!(step, Step::Expire) {
        let lapsed = run
            .credits
            .grants()
            .iter()
            .filter(|b| b.is_expired_at(now) && b.remaining > 0);
        prop_assert_eq!(
            lapsed.count(),
            0,
            "expiry left unreserved credits in lapsed blocks"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_command_sequence_keeps_the_ledger_sound(steps in proptest::collection::vec(step(), 1..80)) {
        let mut run = Run::opened();
        for step in &steps {
            let Some(command) = run.command(step) else { continue };
            let first = run.execute(command.clone());
            check_outcome(&run, step, &first)?;
            let before_repeat = run.credits.clone();
            let repeat = run.execute(command);
            match &first {
                Ok(_) => prop_assert_eq!(repeat, Ok(vec![]), "a repeat must record nothing"),
                Err(error) => prop_assert_eq!(repeat, Err(error.clone()), "a repeat must fail alike"),
            }
            prop_assert_eq!(&run.credits, &before_repeat);
            check_ledger(&run.credits, run.now_minutes)?;
            check_reservations(&mut run)?;
        }
        // Event sourcing: replaying the log, or restoring a snapshot, gives the same state.
        prop_assert_eq!(&state(&run.log), &run.credits);
        let snapshot = serde_json::to_string(&run.credits).unwrap();
        prop_assert_eq!(&serde_json::from_str::<TeamCredits>(&snapshot).unwrap(), &run.credits);
    }
}
