//! Where the CPU went during a measured phase (Linux `/proc`): this process, the worker
//! processes it started, and PostgreSQL (every `postgres` process on the machine, plus
//! what the postmaster collected from backends that exited). On a machine shared by all
//! three, "jobs per second" is bounded by the CPU each job costs in each of them; this
//! says which one to make cheaper. Elsewhere than Linux the figures are absent.

use std::time::Instant;

/// CPU seconds used so far, per party.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    bench: f64,
    workers: f64,
    postgres: f64,
    /// Whether worker processes were sampled (none when the workers run in this process).
    separate_workers: bool,
}

impl CpuSample {
    /// `workers`: pids of the worker processes (alive now; none when the workers run in
    /// this process).
    pub fn take(workers: &[u32]) -> Option<CpuSample> {
        let ticks = clock_ticks()?;
        let bench = process_seconds("self", ticks)?;
        let worker_seconds = workers.iter().filter_map(|pid| process_seconds(&pid.to_string(), ticks)).sum();
        Some(CpuSample {
            at: Instant::now(),
            bench,
            workers: worker_seconds,
            postgres: postgres_seconds(ticks),
            separate_workers: !workers.is_empty(),
        })
    }

    /// CPU milliseconds per unit of work in each party since `earlier`.
    pub fn per_unit_since(&self, earlier: &CpuSample, units: usize) -> CpuPerUnit {
        let per = |now: f64, then: f64| (now - then) * 1_000.0 / units.max(1) as f64;
        CpuPerUnit {
            bench: per(self.bench, earlier.bench),
            workers: per(self.workers, earlier.workers),
            postgres: per(self.postgres, earlier.postgres),
        }
    }

    /// One line: CPU milliseconds per unit of work in each party since `earlier`, and how
    /// busy the machine's cores were with them.
    pub fn report_since(&self, earlier: &CpuSample, units: usize, unit: &str) -> String {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let CpuPerUnit { bench, workers, postgres } = self.per_unit_since(earlier, units);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let busy = (bench + workers + postgres) * units as f64 / 1_000.0 / (wall * cores) * 100.0;
        let workers_part = if self.separate_workers { format!("workers {workers:.2} ms, ") } else { String::new() };
        format!(
            "cpu per {unit}: postgres {postgres:.2} ms, {workers_part}bench process {bench:.2} ms \
             (together {:.2} ms; {busy:.0}% of {cores} cores over {wall:.2} s)",
            bench + workers + postgres
        )
    }
}

/// CPU milliseconds per unit of work, per party.
#[derive(Debug, Clone, Copy)]
pub struct CpuPerUnit {
    pub bench: f64,
    pub workers: f64,
    pub postgres: f64,
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// The fields of `/proc/{pid}/stat` after the command name (which is in parentheses and
/// may hold spaces), so field `n` of proc(5) is index `n - 3`.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// utime + stime (fields 14, 15; + cutime + cstime, 16 and 17, its waited-for children's,
/// when `children`) of a process's stat fields, in seconds.
fn cpu_seconds(fields: &[String], ticks: f64, children: bool) -> Option<f64> {
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let mut total = field(14)? + field(15)?;
    if children {
        total += field(16)? + field(17)?;
    }
    Some(total / ticks)
}

fn process_seconds(pid: &str, ticks: f64) -> Option<f64> {
    cpu_seconds(&stat_fields(pid)?, ticks, false)
}

fn postgres_seconds(ticks: f64) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let is_postgres = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres");
    let mut total = 0.0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if !is_postgres(pid) {
            continue;
        }
        let Some(fields) = stat_fields(pid) else { continue };
        // The postmaster (whose parent, field 4, is not postgres) also carries the CPU
        // of its exited backends.
        let postmaster = fields.get(1).is_some_and(|ppid| !is_postgres(ppid));
        total += cpu_seconds(&fields, ticks, postmaster).unwrap_or(0.0);
    }
    total
}
