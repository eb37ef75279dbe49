//! Operator and auditor commands: `kiln projections list | status | rebuild` and
//! `kiln audit replay | verify | export`. The work is in `projections::{catalog, rebuild,
//! audit}`; this module parses, connects, prints and picks the exit code.
//!
//! Exit codes: 0 success; 1 error (database unreachable, unknown team or projection, …);
//! 2 usage error (clap); 3 the check ran and found something (`rebuild --verify`
//! differences, `audit verify` violations); 4 the store does not exist or is not
//! migrated: these commands never create or migrate a database
//! (`Database::open_existing`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use infrastructure::config::Settings;
use infrastructure::db::Database;
use infrastructure::event_store::SqlEventStore;
use projections::audit::{self, ledger::LedgerEntry};
use projections::catalog::{self, ProjectionInfo};
use projections::rebuild::{self, Progress, RebuildOptions, RebuildReport};
use tracing::Instrument;
use tracing_indicatif::span_ext::IndicatifSpanExt;

/// The exit code of a check that found differences or violations.
pub const EXIT_FOUND: i32 = 3;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// List the projections, their kind (inline | async) and tables.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Where each projection stands in the log, and its lag in events.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild projections from the whole log into shadow tables and swap them in
    /// atomically (all projections when no NAME is given). Safe while `kiln serve` runs.
    Rebuild {
        /// Projection names (see `kiln projections list`).
        names: Vec<String>,
        /// Rebuild and diff against the live tables instead of swapping; exits 3 on a difference.
        #[arg(long)]
        verify: bool,
        /// Print a machine-readable summary (and no progress bar).
        #[arg(long)]
        json: bool,
        /// Events read and applied per transaction.
        #[arg(long, default_value_t = rebuild::BATCH_SIZE_DEFAULT)]
        batch_size: i64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// A team's balance, open reservations, grants and ledger entries as of an instant,
    /// from its events alone.
    Replay {
        #[arg(long)]
        team: String,
        /// RFC 3339 instant; events that occurred later are not folded (default: now).
        #[arg(long)]
        as_of: Option<DateTime<Utc>>,
        #[arg(long)]
        json: bool,
    },
    /// Check every ledger invariant and every team's hash chain over the whole store (or
    /// one team); exits 3 naming each violation.
    Verify {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a team's ledger entries (with their chain hashes) as JSON lines or CSV.
    Export {
        #[arg(long)]
        team: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Entries that occurred at or after this instant.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Entries that occurred before this instant.
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write the operators' acts outside any team's ledger (dispatch for everyone, price
    /// versions, catalog changes, worker drains), each with who and why, from events alone.
    Acts {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

async fn connect(settings: &Settings) -> anyhow::Result<Database> {
    Ok(Database::open_existing(&settings.database.url, 4).await?)
}

pub async fn projections(settings: Settings, command: ProjectionsCommand) -> anyhow::Result<()> {
    if let ProjectionsCommand::List { json } = command {
        // The catalog is compiled in: no database needed.
        return list_projections(json);
    }
    let db = connect(&settings).await?;
    let store = SqlEventStore::new(db.clone());
    let outcome = run_projections(&store, command).await;
    db.close().await;
    exit_if_found(outcome)
}

pub async fn audit(settings: Settings, command: AuditCommand) -> anyhow::Result<()> {
    let db = connect(&settings).await?;
    let outcome = run_audit(&db, command).await;
    db.close().await;
    exit_if_found(outcome)
}

/// `Ok(true)`: the check found something.
fn exit_if_found(outcome: anyhow::Result<bool>) -> anyhow::Result<()> {
    if outcome? {
        let _ = std::io::stdout().flush();
        std::process::exit(EXIT_FOUND);
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run_projections(store: &SqlEventStore, command: ProjectionsCommand) -> anyhow::Result<bool> {
    match command {
        ProjectionsCommand::List { json } => list_projections(json).map(|()| false),
        ProjectionsCommand::Status { json } => {
            let statuses = catalog::status(store).await?;
            if json {
                print_json(&statuses)?;
            } else {
                let mut table = table(["projection", "kind", "at", "lag (events)"]);
                for s in &statuses {
                    let at = format!("{}/{}", s.position.commit_order, s.position.position);
                    table.add_row([s.name.to_string(), kind_name(s.kind), at, s.lag_events.to_string()]);
                }
                println!("{table}");
            }
            Ok(false)
        }
        ProjectionsCommand::Rebuild { names, verify, json, batch_size } => {
            let selected = select(&names)?;
            let options = RebuildOptions { verify, batch_size: batch_size.clamp(1, 10_000), ..RebuildOptions::default() };
            let show_bar = !json && std::io::stderr().is_terminal();
            let mut reports = Vec::new();
            for info in &selected {
                let bar = Bar::new(show_bar);
                let report = rebuild::rebuild(store, info, &options, &bar)
                    .instrument(bar.span())
                    .await
                    .with_context(|| format!("rebuilding {}", info.name))?;
                drop(bar);
                if !json {
                    print_rebuild(&report);
                }
                reports.push(report);
            }
            if json {
                print_json(&reports)?;
            }
            Ok(reports.iter().any(|r| !r.matches()))
        }
    }
}

fn list_projections(json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = catalog::catalog()
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "kind": p.kind, "tables": p.tables}))
            .collect();
        return print_json(&list);
    }
    let mut table = table(["projection", "kind", "tables"]);
    for p in catalog::catalog() {
        table.add_row([p.name.to_string(), kind_name(p.kind), p.tables.join(", ")]);
    }
    println!("{table}");
    Ok(())
}

fn kind_name(kind: impl std::fmt::Debug) -> String {
    format!("{kind:?}").to_lowercase()
}

/// A borderless table for people (`--json` is the form for machines).
fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header);
    table
}

fn select(names: &[String]) -> anyhow::Result<Vec<ProjectionInfo>> {
    if names.is_empty() {
        return Ok(catalog::catalog());
    }
    names
        .iter()
        .map(|name| {
            catalog::find(name).ok_or_else(|| {
                let known: Vec<&str> = catalog::catalog().iter().map(|p| p.name).collect();
                anyhow::anyhow!("no projection named {name} (known: {})", known.join(", "))
            })
        })
        .collect()
}

fn print_rebuild(report: &RebuildReport) {
    let end = format!("{}/{}", report.end.commit_order, report.end.position);
    let speed = format!("{} events in {} ms ({} events/s)", report.events, report.elapsed_ms, report.events_per_sec);
    if !report.verified {
        println!("{}: rebuilt {speed}; swapped in at {end}", report.projection);
    } else if report.matches() {
        println!("{}: rebuilt {speed}; matches the live tables at {end}", report.projection);
    } else {
        println!("{}: rebuilt {speed}; DIFFERS from the live tables at {end}", report.projection);
        for diff in &report.differences {
            println!("  {}: {} rows only in the rebuild, {} only live; first:", diff.table, diff.only_in_rebuild, diff.only_in_live);
            for row in &diff.first {
                println!("    {row}");
            }
        }
    }
}

/// A progress bar (events done, events/s, ETA) drawn by tracing-indicatif, so log lines
/// printed meanwhile go above it instead of tearing it; or nothing when hidden.
struct Bar {
    span: Option<tracing::Span>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Bar {
    fn new(visible: bool) -> Self {
        let span = visible.then(|| {
            let span = tracing::info_span!("rebuild", "indicatif.pb_show" = tracing::field::Empty);
            let style = indicatif::ProgressStyle::with_template(
                "{msg:16} [{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            span.pb_set_style(&style);
            span
        });
        Bar { span, done: AtomicU64::new(0), total: AtomicU64::new(0) }
    }

    /// The span the rebuild runs in (its bar is shown while it is entered).
    fn span(&self) -> tracing::Span {
        self.span.clone().unwrap_or_else(tracing::Span::none)
    }
}

impl Progress for Bar {
    fn begin(&self, projection: &str, events_total: u64) {
        self.total.store(events_total, Ordering::Relaxed);
        if let Some(span) = &self.span {
            span.pb_set_message(projection);
            span.pb_set_length(events_total);
            span.pb_start();
        }
    }

    fn advance(&self, events: u64) {
        let done = self.done.fetch_add(events, Ordering::Relaxed) + events;
        if let Some(span) = &self.span {
            span.pb_inc(events);
            // The tail (events appended meanwhile) can pass the initial count.
            if done > self.total.fetch_max(done, Ordering::Relaxed) {
                span.pb_set_length(done);
            }
        }
    }

    fn end(&self) {}
}

/// How often the audit's bar follows the check's progress.
const VERIFY_BAR_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// `audit verify` of the whole log with a progress bar (events checked of those in the
/// snapshot, events/s, ETA), following the check's own counters.
async fn verify_with_bar(db: &Database) -> anyhow::Result<audit::VerifyReport> {
    let bar = Bar::new(true);
    let progress = Arc::new(audit::Progress::default());
    let mut verify = std::pin::pin!(audit::verify_observed(db, None, Some(progress.clone())).instrument(bar.span()));
    let mut tick = tokio::time::interval(VERIFY_BAR_TICK);
    let (mut begun, mut shown) = (false, 0u64);
    let mut follow = || {
        let total = progress.events_total();
        if !begun && total > 0 {
            bar.begin("audit verify", total);
            begun = true;
        }
        let checked = progress.events_checked();
        if begun && checked > shown {
            bar.advance(checked - shown);
            shown = checked;
        }
    };
    let report = loop {
        tokio::select! {
            report = &mut verify => break report?,
            _ = tick.tick() => follow(),
        }
    };
    // The bar ends where the check did.
    follow();
    bar.end();
    Ok(report)
}

async fn run_audit(db: &Database, command: AuditCommand) -> anyhow::Result<bool> {
    match command {
        AuditCommand::Replay { team, as_of, json } => {
            let report = audit::replay(db, &team, as_of).await?;
            if json {
                print_json(&report)?;
            } else {
                print_replay(&report);
            }
            Ok(!report.violations.is_empty())
        }
        AuditCommand::Verify { team, json } => {
            // The whole log takes a while: a bar shows how far the check has come.
            let report = if team.is_none() && !json && std::io::stderr().is_terminal() {
                verify_with_bar(db).await?
            } else {
                audit::verify(db, team.as_deref()).await?
            };
            if json {
                print_json(&report)?;
            } else {
                for violation in &report.violations {
                    println!("{violation}");
                }
                let verdict = if report.ok() { "OK".to_string() } else { format!("{} VIOLATIONS", report.violations.len()) };
                println!(
                    "verified {} teams ({} events) and {} jobs ({} events) in {} ms: {verdict}",
                    report.teams, report.team_events, report.jobs, report.job_events, report.elapsed_ms
                );
            }
            Ok(!report.ok())
        }
        AuditCommand::Export { team, format, from, to, output } => {
            let report = audit::replay(db, &team, None).await?;
            let entries: Vec<&LedgerEntry> = report
                .entries
                .iter()
                .filter(|e| from.is_none_or(|from| e.occurred_at >= from) && to.is_none_or(|to| e.occurred_at < to))
                .collect();
            let mut out = output_to(output.as_ref())?;
            match format {
                ExportFormat::Jsonl => {
                    for entry in entries {
                        let mut line = serde_json::to_value(entry)?;
                        line["team_id"] = serde_json::Value::String(team.clone());
                        writeln!(out, "{line}")?;
                    }
                }
                ExportFormat::Csv => write_csv(&mut out, &team, &entries)?,
            }
            out.flush()?;
            Ok(false)
        }
        AuditCommand::Acts { format, output } => {
            let acts = audit::operator_acts(db).await?;
            let mut out = output_to(output.as_ref())?;
            match format {
                ExportFormat::Jsonl => {
                    for act in &acts {
                        writeln!(out, "{}", serde_json::to_string(act)?)?;
                    }
                }
                ExportFormat::Csv => {
                    let mut csv = csv::Writer::from_writer(&mut out);
                    for act in &acts {
                        csv.serialize(act)?;
                    }
                    csv.flush()?;
                }
            }
            out.flush()?;
            Ok(false)
        }
    }
}

/// The file at `output`, or stdout.
fn output_to(output: Option<&PathBuf>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match output {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    })
}

const CSV_HEADER: [&str; 12] = [
    "team_id",
    "entry_no",
    "sequence",
    "entry_type",
    "amount",
    "available_after",
    "reserved_after",
    "reference",
    "operation",
    "detail",
    "occurred_at",
    "hash",
];

fn write_csv(out: &mut dyn Write, team: &str, entries: &[&LedgerEntry]) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(CSV_HEADER)?;
    for e in entries {
        csv.write_record([
            team.to_string(),
            e.entry_no.to_string(),
            e.sequence.to_string(),
            e.entry_type.clone(),
            e.amount.to_string(),
            e.available_after.to_string(),
            e.reserved_after.to_string(),
            e.reference.clone().unwrap_or_default(),
            e.operation.clone().unwrap_or_default(),
            e.detail.clone().unwrap_or_default(),
            e.occurred_at.to_rfc3339(),
            e.hash.clone().unwrap_or_default(),
        ])?;
    }
    csv.flush()?;
    Ok(())
}

fn print_replay(r: &audit::ReplayReport) {
    let as_of = r.as_of.map_or("now".to_string(), |t| t.to_rfc3339());
    println!(
        "team {} ({}, {}) as of {as_of}: {} events folded (through #{})",
        r.team_id,
        r.name.as_deref().unwrap_or("?"),
        r.plan.as_deref().unwrap_or("?"),
        r.events,
        r.last_sequence
    );
    println!(
        "available {}  reserved {}  granted {}  deducted {}  expired {}  adjusted {}",
        r.available, r.reserved, r.totals.granted, r.totals.deducted, r.totals.expired, r.totals.adjusted
    );
    println!("grants ({}):", r.grants.len());
    for g in &r.grants {
        let expires = g.expires_at.map_or("never".to_string(), |t| t.to_rfc3339());
        println!("  {} {:<10} amount {} remaining {} reserved {} expires {expires}", g.grant_id, g.origin, g.amount, g.money.remaining, g.money.reserved);
    }
    println!("open reservations ({}):", r.open_reservations.len());
    for o in &r.open_reservations {
        println!("  {} {} {} since {}", o.reservation_id, o.amount, o.operation, o.reserved_at.to_rfc3339());
    }
    println!("ledger entries ({}):", r.entries.len());
    for e in &r.entries {
        println!(
            "  {:>5} #{:<5} {:<9} {:>8}  available {:>8}  reserved {:>8}  {}  {}  {}",
            e.entry_no,
            e.sequence,
            e.entry_type,
            e.amount,
            e.available_after,
            e.reserved_after,
            e.reference.as_deref().unwrap_or("-"),
            e.occurred_at.to_rfc3339(),
            e.detail.as_deref().unwrap_or("")
        );
    }
    for v in &r.violations {
        println!("VIOLATION {v}");
    }
}

