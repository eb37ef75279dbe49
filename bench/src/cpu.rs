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
        let bench = process_seconds("self", ticks, false)?;
        let worker_seconds = workers.iter().filter_map(|pid| process_seconds(&pid.to_string(), ticks, false)).sum();
        Some(CpuSample {
            at: Instant::now(),
            bench,
            workers: worker_seconds,
            postgres: postgres_seconds(ticks),
            separate_workers: !workers.is_empty(),
        })
    }

    /// One line: CPU milliseconds per unit of work in each party since `earlier`, and how
    /// busy the machine's cores were with them.
    pub fn report_since(&self, earlier: &CpuSample, units: usize, unit: &str) -> String {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let per = |now: f64, then: f64| (now - then) * 1_000.0 / units.max(1) as f64;
        let (bench, workers, postgres) =
            (per(self.bench, earlier.bench), per(self.workers, earlier.workers), per(self.postgres, earlier.postgres));
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

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// utime + stime of `/proc/{pid}/stat` (+ cutime + cstime, its waited-for children's,
/// when `children`), in seconds.
fn process_seconds(pid: &str, ticks: f64, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 here.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let mut total = field(14)? + field(15)?;
    if children {
        total += field(16)? + field(17)?;
    }
    Some(total / ticks)
}

fn postgres_seconds(ticks: f64) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        if comm.trim() != "postgres" {
            continue;
        }
        // The postmaster (its parent is not postgres) also carries its exited backends.
        let parent_is_postgres = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string)))
            .and_then(|ppid| std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok())
            .is_some_and(|comm| comm.trim() == "postgres");
        total += process_seconds(pid, ticks, !parent_is_postgres).unwrap_or(0.0);
    }
    total
}
