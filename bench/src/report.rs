//! Results: the table for people, JSON for tools, and the verdict on each target.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::Measured;
use crate::CreditsArgs;

/// Kiln's per-operation p99 must stay under this (DESIGN.md, "Targets").
const KILN_P99_MS_MAX: f64 = 10.0;
/// Kiln's throughput over the baseline's, spread over many teams, at least.
const SPREAD_RATIO_MIN: f64 = 1.0;
/// Kiln's throughput over the baseline's on one hot team, at least.
const HOT_RATIO_MIN: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    Baseline = 0,
    Kiln = 1,
}

#[derive(Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub design: Design,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub measured_secs: f64,
    /// Distinct error messages (warm-up included) and their counts.
    pub error_samples: BTreeMap<String, u64>,
    /// Kiln only: events per committed transaction (warm-up included).
    pub events_per_commit: Option<f64>,
}

impl Scenario {
    pub fn new(name: &'static str, design: Design, measured: Measured) -> Self {
        let ms = |quantile: f64| measured.latency_us.value_at_quantile(quantile) as f64 / 1_000.0;
        let measured_secs = measured.elapsed.as_secs_f64();
        Self {
            name,
            design,
            ops: measured.ops(),
            ops_per_sec: measured.ops() as f64 / measured_secs.max(f64::EPSILON),
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: measured.latency_us.max() as f64 / 1_000.0,
            errors: measured.errors,
            measured_secs,
            error_samples: measured.error_samples,
            events_per_commit: None,
        }
    }
}

/// Credits deducted in each ledger against what the successful operations should have
/// deducted: a benchmark of a ledger that loses money proves nothing.
#[derive(Serialize)]
pub struct Consistency {
    pub baseline_expected_credits: i64,
    pub baseline_deducted_credits: i64,
    pub kiln_expected_credits: i64,
    pub kiln_deducted_credits: i64,
}

impl Consistency {
    fn ok(&self) -> bool {
        self.baseline_expected_credits == self.baseline_deducted_credits
            && self.kiln_expected_credits == self.kiln_deducted_credits
    }
}

#[derive(Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    pub met: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub clients: usize,
    pub teams: usize,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    pub pool_connections: u32,
    pub snapshot_every: i64,
    pub commits_in_flight: usize,
    pub cpus: usize,
    pub postgres_version: String,
    pub scenarios: Vec<Scenario>,
    pub targets: Vec<Target>,
    pub consistency: Consistency,
    pub consistent: bool,
}

impl Report {
    pub fn new(args: &CreditsArgs, postgres_version: String, scenarios: Vec<Scenario>, consistency: Consistency) -> Self {
        let targets = targets(&scenarios);
        Self {
            clients: args.clients,
            teams: args.teams,
            warmup_secs: args.warmup_secs,
            duration_secs: args.duration_secs,
            pool_connections: args.connections,
            snapshot_every: args.snapshot_every,
            commits_in_flight: args.commits_in_flight,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            postgres_version,
            scenarios,
            targets,
            consistent: consistency.ok(),
            consistency,
        }
    }

    /// The table goes to stdout, or to stderr when stdout carries the JSON.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let table = self.table();
        if json {
            eprint!("{table}");
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{table}");
        }
        anyhow::ensure!(self.consistent, "ledger check failed: {:?}", serde_json::to_string(&self.consistency)?);
        Ok(())
    }

    fn table(&self) -> String {
        let mut out = format!(
            "{} clients, {} teams, {}s warm-up + {}s per scenario, pool {} connections, Kiln snapshot every {} events, \
             {} joint commits in flight, {} CPUs, PostgreSQL {}\n\n",
            self.clients,
            self.teams,
            self.warmup_secs,
            self.duration_secs,
            self.pool_connections,
            self.snapshot_every,
            self.commits_in_flight,
            self.cpus,
            self.postgres_version
        );
        out += &format!(
            "{:<16} {:>9} {:>10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>11}\n",
            "scenario", "ops", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "events/commit"
        );
        for s in &self.scenarios {
            out += &format!(
                "{:<16} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>7} {:>11}\n",
                s.name,
                s.ops,
                s.ops_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                s.errors,
                s.events_per_commit.map_or("-".to_string(), |n| format!("{n:.1}"))
            );
        }
        out += "\n";
        for t in &self.targets {
            out += &format!("{:<44} {:>9.2}  {}\n", t.name, t.value, if t.met { "met" } else { "MISSED" });
        }
        for s in self.scenarios.iter().filter(|s| !s.error_samples.is_empty()) {
            out += &format!("\nerrors in {}:\n", s.name);
            for (message, count) in &s.error_samples {
                out += &format!("  {count:>7} × {message}\n");
            }
        }
        out += &format!("\nledger check: {}\n", if self.consistent { "ok" } else { "FAILED" });
        out
    }
}

fn targets(scenarios: &[Scenario]) -> Vec<Target> {
    let find = |name: &str| scenarios.iter().find(|s| s.name == name);
    let mut targets = Vec::new();
    for name in ["kiln-spread", "kiln-hot"] {
        if let Some(s) = find(name) {
            let name = format!("{name} p99 ms < {KILN_P99_MS_MAX}");
            targets.push(Target { name, value: s.p99_ms, met: s.p99_ms < KILN_P99_MS_MAX });
        }
    }
    for (kiln, baseline, ratio_min) in [
        ("kiln-spread", "baseline-spread", SPREAD_RATIO_MIN),
        ("kiln-hot", "baseline-hot", HOT_RATIO_MIN),
    ] {
        if let (Some(k), Some(b)) = (find(kiln), find(baseline)) {
            let ratio = k.ops_per_sec / b.ops_per_sec.max(f64::EPSILON);
            let name = format!("{kiln} / {baseline} ops/s >= {ratio_min}x");
            targets.push(Target { name, value: ratio, met: ratio >= ratio_min });
        }
    }
    targets
}
