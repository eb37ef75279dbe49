//! The checks of a `kiln-bench dispatch` run, from the event log: a fast dispatcher that
//! loses or doubles money, claims a job twice, or serves some teams ahead of others
//! proves nothing.

use std::collections::HashMap;

/// How far behind the dispatch policy a team may fall, in jobs (see [`fairness`]): the
/// Enterprise plan's running limit, the teams' plan in this benchmark. A team held by
/// one picker is passed over by the others until that claim commits, so it falls
/// behind by the picks they complete meanwhile (6 seen in a debug build on a loaded
/// machine); a starved team falls behind without bound.
const FAIRNESS_SLACK_JOBS: i64 = 10;

/// Every job completed once, every reservation (the set-up's model jobs too) deducted
/// once, one claim per job, and the dispatch order fair; with how many transactions the
/// claims and the completions took.
/// `mixed`: the teams are on plans of different weights; then the weighted shortfall is
/// reported, not held to the slack (a team held at its plan's limit comes back with no
/// credit for the time it was held, by the rule, so its count since the start lags).
pub async fn check(counter: &sqlx::PgPool, jobs: i64, teams: i64, weights: domain::share::PlanWeights, mixed: bool) -> anyhow::Result<String> {
    let (completed,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE kind = 'image_generation' AND status = 'completed'").fetch_one(counter).await?;
    let count = |event: &'static str| async move {
        let (total, distinct, transactions): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT CASE WHEN aggregate_type = 'GenerationJob' THEN aggregate_id ELSE payload->>'reservation_id' END), \
             COUNT(DISTINCT transaction_id) FROM events WHERE event_type = $1",
        )
        .bind(event)
        .fetch_one(counter)
        .await?;
        anyhow::Ok((total, distinct, transactions))
    };
    let (reserved, _, _) = count("CreditsReserved").await?;
    let (deducted, deducted_distinct, _) = count("CreditsDeducted").await?;
    let (dispatched, dispatched_distinct, claim_transactions) = count("JobDispatched").await?;
    let (_, _, completion_transactions) = count("JobCompleted").await?;
    let (refunded, _, _) = count("CreditsRefunded").await?;
    let all = jobs + teams;
    anyhow::ensure!(completed == jobs, "{completed} of {jobs} jobs completed");
    anyhow::ensure!(reserved == all && deducted == all && deducted_distinct == all && refunded == 0, "credits: {reserved} reserved, {deducted} deducted ({deducted_distinct} distinct), {refunded} refunded; expected {all} each, no refunds");
    anyhow::ensure!(dispatched == all && dispatched_distinct == all, "{dispatched} claims for {all} jobs ({dispatched_distinct} distinct)");
    let behind = fairness(counter, weights).await?;
    anyhow::ensure!(
        mixed || behind <= FAIRNESS_SLACK_JOBS,
        "unfair dispatch: a team with a ready job and a free slot fell {behind} jobs behind another team's service (at most {FAIRNESS_SLACK_JOBS})"
    );
    Ok(format!(
        "check: {completed} completed, {deducted} reservations deducted once each (incl. {teams} set-up model jobs), one claim per job, \
         {}; claims in {claim_transactions} transactions, completions in {completion_transactions} (set-up included)",
        if mixed {
            format!("weighted shortfall at most {behind} jobs (reported, not checked)")
        } else {
            format!("fair (no ready team more than {behind} jobs behind; at most {FAIRNESS_SLACK_JOBS})")
        }
    ))
}

/// The dispatch policy gives teams with a free slot jobs in proportion to their plans'
/// weights (`domain::share`; with equal weights: every team's oldest ready job before
/// any team's second). Replaying the measured jobs' claims and completions in log order
/// (transaction, then position): when team `t` is dispatched its k-th job, every other
/// team `u` that still has jobs queued and a free slot should have been dispatched at
/// least (k − 1) · w_u / w_t, rounded down. Returns the largest shortfall seen, in jobs.
/// Some is expected and allowed
/// ([`FAIRNESS_SLACK_JOBS`]): pickers claim in parallel on disjoint teams (a held team
/// is passed over), and transaction ids order claims by start, not by commit.
async fn fairness(counter: &sqlx::PgPool, weights: domain::share::PlanWeights) -> anyhow::Result<i64> {
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT j.team_id, e.event_type, d.running_limit::bigint, d.plan FROM events e \
         JOIN jobs j ON j.job_id = e.aggregate_id JOIN team_dispatch d ON d.team_id = j.team_id \
         WHERE e.aggregate_type = 'GenerationJob' AND e.event_type IN ('JobQueued', 'JobDispatched', 'JobCompleted') \
         AND j.kind = 'image_generation' ORDER BY e.transaction_id, e.position",
    )
    .fetch_all(counter)
    .await?;
    // Per team: (queued, running, dispatched so far, limit, weight).
    let mut teams: HashMap<&str, (i64, i64, i64, i64, i64)> = HashMap::new();
    let mut behind_max = 0;
    for (team, event, limit, plan) in &rows {
        let weight = i64::from(weights.weight(plan.parse().unwrap_or(domain::Plan::Free)));
        let entry = teams.entry(team.as_str()).or_insert((0, 0, 0, *limit, weight));
        match event.as_str() {
            "JobQueued" => entry.0 += 1,
            "JobCompleted" => entry.1 -= 1,
            _ => {
                entry.0 -= 1;
                entry.1 += 1;
                entry.2 += 1;
                let (kth, own) = (entry.2, entry.4);
                let behind = teams
                    .iter()
                    .filter(|(other, (queued, running, _, limit, _))| *other != team && *queued > 0 && running < limit)
                    .map(|(_, (_, _, served, _, weight))| (kth - 1) * weight / own - served)
                    .max()
                    .unwrap_or(0);
                behind_max = behind_max.max(behind);
            }
        }
    }
    Ok(behind_max)
}
