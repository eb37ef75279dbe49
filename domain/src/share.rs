//! Plan priority in dispatch: weighted fair queuing of teams by plan.
//!
//! When the workers' slots, not the plans' limits, are what is scarce, each team with a
//! ready job gets a share of the free slots proportional to its plan's weight. The rule,
//! self-clocked fair queuing over teams:
//!
//! - every plan has a weight `w` (configuration; by default its concurrency limit) and so
//!   a **stride** `SHARE_UNIT / w`: what one job of the team costs in virtual time;
//! - every team has a **share tag**: the virtual time after its latest claimed job (the
//!   highest tag of its `JobDispatched` events);
//! - the **front** is the highest share tag of all teams;
//! - a team's next jobs start from `start = max(tag, front − stride)` — a team back from
//!   idling (or held at its plan's limit) keeps at most one job's worth of credit, so
//!   nobody banks service — and its `n`-th next job has tag `start + n × stride`;
//! - a dispatch turn takes the jobs with the lowest tags (ties: the team with the lower
//!   share tag, then the one served least recently), each team's own jobs in their order, never more per team than its free
//!   slots.
//!
//! Backlogged teams' tags advance together, so over time each gets jobs in proportion to
//! its weight. **Bound** ([`PlanWeights::wait_bound`]): when team `t` becomes ready with
//! the front at `F`, its next tag is fixed at no more than `F + stride_t` (until the front
//! passes it, when it is at the floor and goes first); every other team's tags from then
//! on are at least `F` and grow by at least its stride, so at most
//! `Σ_{u ≠ t} (⌊stride_t / stride_u⌋ + 1) = Σ_{u ≠ t} (⌊w_u / w_t⌋ + 1)` jobs of other
//! teams are claimed before it (counted over claims, whatever their size): with four
//! Enterprise and four Basic teams, a Basic team waits for at most 50 claims, an
//! Enterprise team for at most 10. With equal weights it is the round robin of before:
//! every team's oldest job before anyone's second.
//!
//! The database applies the rule in one query (`infrastructure::job_index`); [`Share`] is
//! the same rule in memory, the reference the tests hold that query to.

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Virtual time of one job of weight 1. Large, so strides of weights up to
/// [`WEIGHT_MAX`] stay exact enough (a stride is rounded down to an integer).
pub const SHARE_UNIT: i64 = 1_000_000_000;
/// The highest weight a plan may be given.
pub const WEIGHT_MAX: u32 = 1_000;

/// Each plan's dispatch weight. Free runs no jobs; it has none. Deserializing checks
/// each weight ([`PlanWeights::checked`]), so a configuration cannot name a bad one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawWeights")]
pub struct PlanWeights {
    pub basic: u32,
    pub pro: u32,
    pub enterprise: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    basic: u32,
    pro: u32,
    enterprise: u32,
}

impl TryFrom<RawWeights> for PlanWeights {
    type Error = InvalidWeight;

    fn try_from(raw: RawWeights) -> Result<Self, InvalidWeight> {
        PlanWeights { basic: raw.basic, pro: raw.pro, enterprise: raw.enterprise }.checked()
    }
}

/// A weight outside `1..=WEIGHT_MAX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {plan} plan's dispatch weight must be 1–{WEIGHT_MAX}, not {weight}")]
pub struct InvalidWeight {
    pub plan: Plan,
    pub weight: u32,
}

impl Default for PlanWeights {
    /// Proportional to each plan's concurrency limit.
    fn default() -> Self {
        Self { basic: Plan::Basic.concurrency_limit(), pro: Plan::Pro.concurrency_limit(), enterprise: Plan::Enterprise.concurrency_limit() }
    }
}

impl PlanWeights {
    /// The weights, each checked to be `1..=WEIGHT_MAX`.
    pub fn checked(self) -> Result<Self, InvalidWeight> {
        for plan in [Plan::Basic, Plan::Pro, Plan::Enterprise] {
            let weight = self.weight(plan);
            if !(1..=WEIGHT_MAX).contains(&weight) {
                return Err(InvalidWeight { plan, weight });
            }
        }
        Ok(self)
    }

    pub fn weight(&self, plan: Plan) -> u32 {
        match plan {
            Plan::Free => 1,
            Plan::Basic => self.basic,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        }
    }

    /// What one job of a team on `plan` costs in virtual time.
    pub fn stride(&self, plan: Plan) -> i64 {
        SHARE_UNIT / i64::from(self.weight(plan).max(1))
    }

    /// The most jobs of other teams claimed before a ready team on `plan` gets its next
    /// one, when the other ready teams are on `others` (the module's bound).
    pub fn wait_bound(&self, plan: Plan, others: impl IntoIterator<Item = Plan>) -> u64 {
        let own = u64::from(self.weight(plan));
        others.into_iter().map(|other| u64::from(self.weight(other)) / own + 1).sum()
    }

    /// The share of the slots each plan is entitled to when `teams` teams of each plan
    /// (in `Plan::ALL` order) have ready jobs: weight × teams, normalized.
    pub fn entitled(&self, teams: [u64; 4]) -> [f64; 4] {
        let weighted: Vec<f64> = Plan::ALL.iter().zip(teams).map(|(plan, n)| if *plan == Plan::Free { 0.0 } else { f64::from(self.weight(*plan)) * n as f64 }).collect();
        let total: f64 = weighted.iter().sum();
        let mut out = [0.0; 4];
        for (slot, value) in out.iter_mut().zip(weighted) {
            *slot = if total > 0.0 { value / total } else { 0.0 };
        }
        out
    }
}

/// One team as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareTeam {
    pub stride: i64,
    pub tag: i64,
    /// Jobs it may start now: ready jobs, at most its free slots.
    pub ready: usize,
    /// Its rank among teams by how long ago it was served (0: longest ago or never).
    pub served_rank: usize,
}

/// The rule in memory: which teams' jobs a turn of `limit` takes, in order, with the tag
/// of each (the team's index, the job's tag).
pub fn pick(teams: &[ShareTeam], limit: usize) -> Vec<(usize, i64)> {
    let front = teams.iter().map(|t| t.tag).max().unwrap_or(0);
    let mut candidates: Vec<(i64, i64, usize, usize)> = Vec::new();
    for (index, team) in teams.iter().enumerate() {
        let start = team.tag.max(front - team.stride);
        for n in 1..=team.ready.min(limit) {
            candidates.push((start + n as i64 * team.stride, team.tag, team.served_rank, index));
        }
    }
    candidates.sort_unstable();
    candidates.into_iter().take(limit).map(|(tag, _, _, index)| (index, tag)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `turns` turns of one job each over always-backlogged teams of `plans`;
    /// returns the jobs each team got and the longest any team waited (in jobs of
    /// others) between two of its jobs.
    fn simulate(plans: &[Plan], weights: PlanWeights, turns: usize, per_turn: usize) -> (Vec<usize>, Vec<usize>) {
        let mut teams: Vec<ShareTeam> =
            plans.iter().enumerate().map(|(i, p)| ShareTeam { stride: weights.stride(*p), tag: 0, ready: 100, served_rank: i }).collect();
        let mut got = vec![0; plans.len()];
        let mut waited = vec![0; plans.len()];
        let mut since = vec![0; plans.len()];
        let mut order: Vec<usize> = (0..plans.len()).collect();
        for _ in 0..turns {
            for (index, tag) in pick(&teams, per_turn) {
                got[index] += 1;
                teams[index].tag = teams[index].tag.max(tag);
                for (other, s) in since.iter_mut().enumerate() {
                    if other == index {
                        waited[other] = waited[other].max(*s);
                        *s = 0;
                    } else {
                        *s += 1;
                    }
                }
                order.retain(|&t| t != index);
                order.push(index);
            }
            for (rank, &team) in order.iter().enumerate() {
                teams[team].served_rank = rank;
            }
        }
        (got, waited)
    }

    #[test]
    fn backlogged_teams_get_jobs_in_proportion_to_their_weights_with_a_bounded_wait() {
        let plans = [Plan::Enterprise, Plan::Enterprise, Plan::Enterprise, Plan::Enterprise, Plan::Basic, Plan::Basic, Plan::Basic, Plan::Basic];
        for per_turn in [1, 3, 16] {
            let (got, waited) = simulate(&plans, PlanWeights::default(), 440 / per_turn, per_turn);
            let total: usize = got.iter().sum();
            let enterprise: usize = got[..4].iter().sum();
            let share = enterprise as f64 / total as f64;
            assert!((share - 40.0 / 44.0).abs() < 0.02, "{per_turn} per turn: {got:?}");
            // The stated bound: Σ_u (⌊w_u / w_t⌋ + 1) over the others.
            let bound = |t: usize| PlanWeights::default().wait_bound(plans[t], (0..plans.len()).filter(|&u| u != t).map(|u| plans[u]));
            assert_eq!((bound(0), bound(4)), (10, 50));
            assert!(waited.iter().enumerate().all(|(t, &w)| w as u64 <= bound(t)), "{waited:?}");
        }
    }

    #[test]
    fn equal_weights_serve_every_team_once_before_anyone_twice() {
        let (got, waited) = simulate(&[Plan::Pro; 5], PlanWeights::default(), 50, 1);
        assert_eq!(got, vec![10; 5]);
        assert!(waited.iter().all(|&w| w <= 4), "{waited:?}");
    }

    #[test]
    fn a_team_back_from_idling_keeps_one_job_of_credit_at_most() {
        let w = PlanWeights::default();
        let busy = ShareTeam { stride: w.stride(Plan::Basic), tag: 50 * SHARE_UNIT, ready: 5, served_rank: 1 };
        let back = ShareTeam { stride: w.stride(Plan::Basic), tag: 0, ready: 5, served_rank: 0 };
        // Without the floor it would take all four (50 jobs of credit); with it, one job
        // beyond an equal split (and the tie, as the team served longer ago).
        let picked = pick(&[busy, back], 4);
        assert_eq!(picked.iter().filter(|(team, _)| *team == 1).count(), 3, "{picked:?}");
    }

    #[test]
    fn weights_are_checked() {
        assert!(PlanWeights { basic: 0, pro: 3, enterprise: 10 }.checked().is_err());
        let error = serde_json::from_str::<PlanWeights>(r#"{"basic": 1, "pro": 0, "enterprise": 10}"#).expect_err("refused");
        assert!(error.to_string().contains("pro plan's dispatch weight"), "{error}");
        assert!(PlanWeights { basic: 1, pro: 3, enterprise: WEIGHT_MAX + 1 }.checked().is_err());
        assert_eq!(PlanWeights::default(), PlanWeights { basic: 1, pro: 3, enterprise: 10 });
        let entitled = PlanWeights::default().entitled([0, 4, 0, 4]);
        assert!((entitled[3] - 40.0 / 44.0).abs() < 1e-9 && (entitled[1] - 4.0 / 44.0).abs() < 1e-9);
    }
}
