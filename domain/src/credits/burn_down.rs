//! Burn-down: which credit blocks a spend draws from.
//!
//! Owns the allocation rule shared by reservations and negative adjustments: draw from the
//! block that expires soonest (so credits are used before they are lost), non-expiring
//! blocks last, ties in grant order. Blocks already past expiry are skipped: their credits
//! are only waiting for the sweeper and must not be spent.

use chrono::{DateTime, Utc};

use crate::amount::Credits;

use super::error::TeamCreditsError;
use super::events::Allocation;
use super::state::CreditBlock;

/// Credits a spend at `now` may draw from. The sum cannot overflow: it is at most
/// `available`, which the ledger keeps within `i64`.
pub(super) fn spendable(blocks: &[CreditBlock], now: DateTime<Utc>) -> i64 {
    blocks.iter().map(|block| block.spendable_at(now)).sum()
}

/// Splits `amount` over the blocks in burn-down order, or says how much was spendable.
pub(super) fn allocate(
    blocks: &[CreditBlock],
    amount: Credits,
    now: DateTime<Utc>,
) -> Result<Vec<Allocation>, TeamCreditsError> {
    let available = spendable(blocks, now);
    if amount.get() > available {
        return Err(TeamCreditsError::InsufficientCredits {
            available,
            requested: amount.get(),
        });
    }
    let mut order: Vec<&CreditBlock> = blocks
        .iter()
        .filter(|block| block.spendable_at(now) > 0)
        .collect();
    // A stable sort, and `blocks` is in grant order, so equal keys stay in grant order.
    order.sort_by_key(|block| (block.expires_at.is_none(), block.expires_at));
    let mut left = amount.get();
    let mut allocations = Vec::new();
    for block in order {
        let take = left.min(block.remaining);
        // `take > 0` while `left > 0`, since every block in `order` has `remaining > 0`.
        let Ok(part) = Credits::parse(take) else {
            break;
        };
        allocations.push(Allocation {
            grant_id: block.grant_id,
            amount: part,
        });
        left -= take;
    }
    debug_assert_eq!(
        left, 0,
        "spendable covered the amount, so allocation must fill it"
    );
    Ok(allocations)
}
