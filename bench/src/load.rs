//! The closed-loop load generator shared by every scenario, so both designs are driven
//! and timed by exactly the same code.
//!
//! `clients` tasks each run one operation at a time, back to back, until the deadline.
//! Operations that *start* in the warm-up are done but not recorded; operations that start
//! in the measured window are recorded, and the window is closed when the last of them has
//! finished, so no in-flight operation is cut off or counted without its time.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;

/// Distinct error messages kept per scenario; the rest are only counted.
const ERROR_SAMPLES_MAX: usize = 8;
/// Latencies above this are clamped (an operation that slow is a failure in itself).
const LATENCY_US_MAX: u64 = 60_000_000;

/// Which team each operation goes to.
#[derive(Debug, Clone, Copy)]
pub enum Teams {
    /// Uniformly at random over `0..count`.
    Spread { count: usize },
    /// Always team 0: every client contends for one team.
    Hot,
}

impl Teams {
    fn pick(self) -> usize {
        match self {
            Teams::Spread { count } => rand::thread_rng().gen_range(0..count),
            Teams::Hot => 0,
        }
    }
}

/// What one scenario measured.
pub struct Measured {
    /// Per-operation latency in microseconds, successful operations in the window only.
    pub latency_us: Histogram<u64>,
    /// Failed operations in the window.
    pub errors: u64,
    /// From the end of the warm-up until the last measured operation finished.
    pub elapsed: Duration,
    /// Successful operations including the warm-up: what the ledger must show afterwards.
    pub succeeded_total: u64,
    /// A few error messages with how often each was seen (warm-up included).
    pub error_samples: BTreeMap<String, u64>,
}

impl Measured {
    pub fn ops(&self) -> u64 {
        self.latency_us.len()
    }
}

struct ClientResult {
    latency_us: Histogram<u64>,
    errors: u64,
    succeeded_total: u64,
    error_samples: BTreeMap<String, u64>,
}

/// Runs `op(team)` from `clients` tasks for `warmup + duration`.
pub async fn run<Op, Fut>(clients: usize, warmup: Duration, duration: Duration, teams: Teams, op: Op) -> anyhow::Result<Measured>
where
    Op: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let measure_from = Instant::now() + warmup;
    let stop_at = measure_from + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(measure_from, stop_at, teams, op.clone())))
        .collect();
    let mut merged = Measured {
        latency_us: new_histogram(),
        errors: 0,
        elapsed: Duration::ZERO,
        succeeded_total: 0,
        error_samples: BTreeMap::new(),
    };
    for task in tasks {
        let result = task.await?;
        merged.latency_us.add(&result.latency_us)?;
        merged.errors += result.errors;
        merged.succeeded_total += result.succeeded_total;
        for (message, count) in result.error_samples {
            note_error(&mut merged.error_samples, message, count);
        }
    }
    merged.elapsed = Instant::now().saturating_duration_since(measure_from);
    Ok(merged)
}

async fn client<Op, Fut>(measure_from: Instant, stop_at: Instant, teams: Teams, op: Op) -> ClientResult
where
    Op: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut result = ClientResult {
        latency_us: new_histogram(),
        errors: 0,
        succeeded_total: 0,
        error_samples: BTreeMap::new(),
    };
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return result;
        }
        let outcome = op(teams.pick()).await;
        let measured = started >= measure_from;
        match outcome {
            Ok(()) => {
                result.succeeded_total += 1;
                if measured {
                    let latency_us = started.elapsed().as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
                    result.latency_us.saturating_record(latency_us.max(1));
                }
            }
            Err(error) => {
                if measured {
                    result.errors += 1;
                }
                note_error(&mut result.error_samples, format!("{error:#}"), 1);
            }
        }
    }
}

fn note_error(samples: &mut BTreeMap<String, u64>, message: String, count: u64) {
    if let Some(seen) = samples.get_mut(&message) {
        *seen += count;
    } else if samples.len() < ERROR_SAMPLES_MAX {
        samples.insert(message, count);
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits: p99 is exact to 0.1 %. The bounds are constants that
    // hdrhistogram accepts (low ≥ 1, high ≥ 2 × low), so this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}
