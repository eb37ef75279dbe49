//! Subscription plans and the limits they carry.
//!
//! Owns [`Plan`] and its concurrency limit. The ledger records which plan a team is on; the
//! job engine enforces the limit (a Free team may hold credits but runs nothing).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A team's subscription plan. `Free` is the default because a team without a live
/// subscription (never subscribed, or expired) must not run jobs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// No subscription: submissions are rejected at the API.
    #[default]
    Free,
    /// One job at a time.
    Basic,
    /// Three jobs at a time.
    Pro,
    /// Ten jobs at a time.
    Enterprise,
}

impl Plan {
    /// Every plan, cheapest first.
    pub const ALL: [Plan; 4] = [Plan::Free, Plan::Basic, Plan::Pro, Plan::Enterprise];

    /// How many of the team's jobs may run (dispatched or running) at once.
    pub const fn concurrency_limit(self) -> u32 {
        match self {
            Plan::Free => 0,
            Plan::Basic => 1,
            Plan::Pro => 3,
            Plan::Enterprise => 10,
        }
    }

    /// Whether the plan runs jobs at all (the free plan runs none).
    pub const fn runs_jobs(self) -> bool {
        self.concurrency_limit() > 0
    }

    /// The snake_case name used in JSON, config and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Basic => "basic",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown plan {0:?} (expected free, basic, pro or enterprise)")]
pub struct UnknownPlan(pub String);

impl FromStr for Plan {
    type Err = UnknownPlan;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|plan| plan.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPlan(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_match_the_design() {
        let limits: Vec<u32> = Plan::ALL.iter().map(|p| p.concurrency_limit()).collect();
        assert_eq!(limits, [0, 1, 3, 10]);
    }

    #[test]
    fn names_round_trip() {
        for plan in Plan::ALL {
            assert_eq!(plan.to_string().parse::<Plan>(), Ok(plan));
            let json = serde_json::to_string(&plan).unwrap();
            assert_eq!(json, format!("\"{plan}\""));
        }
        assert_eq!("PRO".parse::<Plan>(), Ok(Plan::Pro));
        assert!("gold".parse::<Plan>().is_err());
    }
}
