// graphile-worker sides of `kiln-bench dispatch`, run by kiln-bench against its scratch
// database; install with ./setup first. Prints one JSON line with the timings.
//
// - raw: enqueue N no-op jobs (`--enqueue bulk|single`), then drain them with runners whose
//   task `noop` does nothing.
// - the seed's design: `--migrate-only` installs graphile-worker's schema; kiln-bench then
//   enqueues N `charge` jobs itself (credit reservation + job in one transaction, see
//   bench/src/seed_design.rs); `--enqueue none --task charge` drains them with runners whose
//   task deducts the reservation in one transaction.
//
// usage: node dispatch.mjs --database-url URL --jobs N --runners R --concurrency C
//          [--enqueue bulk|single|none] [--task noop|charge] [--submitters S]
//          [--local-queue Q] [--complete-batch-delay MS] [--timeout-secs T]
//        node dispatch.mjs --database-url URL --migrate-only

import { createRequire } from "node:module";
import { parseArgs } from "node:util";
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";

const require = createRequire(import.meta.url);
const VERSION = require("graphile-worker/package.json").version;
const ADD_JOBS_BATCH_MAX = 1000;
const POLL_MS = 10;

const { values } = parseArgs({
  options: {
    "database-url": { type: "string" },
    jobs: { type: "string", default: "10000" },
    runners: { type: "string", default: "1" },
    concurrency: { type: "string", default: "64" },
    enqueue: { type: "string", default: "bulk" },
    submitters: { type: "string", default: "64" },
    "local-queue": { type: "string", default: "500" },
    "complete-batch-delay": { type: "string", default: "0" },
    "timeout-secs": { type: "string", default: "600" },
    task: { type: "string", default: "noop" },
    "migrate-only": { type: "boolean", default: false },
  },
});

function bounded(name, min, max) {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`--${name} must be an integer in ${min}..=${max}`);
  }
  return value;
}

const connectionString = values["database-url"];
if (!connectionString) throw new Error("--database-url is required");
if (!["bulk", "single", "none"].includes(values.enqueue)) throw new Error("--enqueue must be bulk, single or none");
if (!["noop", "charge"].includes(values.task)) throw new Error("--task must be noop or charge");
if ((values.enqueue === "none") !== (values.task === "charge")) {
  throw new Error("--task charge drains jobs kiln-bench enqueued (--enqueue none); noop jobs are enqueued here");
}
const jobs = bounded("jobs", 1, 10_000_000);
const runners = bounded("runners", 1, 16);
const concurrency = bounded("concurrency", 1, 1024);
const submitters = bounded("submitters", 1, 1024);
const localQueueSize = bounded("local-queue", -1, 100_000);
const completeJobBatchDelay = bounded("complete-batch-delay", -1, 10_000);
const timeoutMs = bounded("timeout-secs", 1, 3600) * 1000;

// Warnings and errors only: info lines per runner start would land in the bench output.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
});

const settings = {
  runners,
  concurrency,
  // The docs' advice: at least concurrency + 2 connections per runner.
  maxPoolSize: Math.max(10, concurrency + 2),
  localQueueSize,
  completeJobBatchDelay,
  pollInterval: 2000,
};

async function enqueue(utils) {
  const started = performance.now();
  if (values.enqueue === "bulk") {
    for (let from = 0; from < jobs; from += ADD_JOBS_BATCH_MAX) {
      const specs = [];
      for (let n = from; n < Math.min(jobs, from + ADD_JOBS_BATCH_MAX); n++) {
        specs.push({ identifier: "noop", payload: { n } });
      }
      await utils.addJobs(specs);
    }
  } else {
    let next = 0;
    const submitter = async () => {
      while (next < jobs) {
        const n = next++;
        await utils.addJob("noop", { n });
      }
    };
    await Promise.all(Array.from({ length: submitters }, submitter));
  }
  return (performance.now() - started) / 1000;
}

async function remaining(utils) {
  const { rows } = await utils.withPgClient((client) => client.query("SELECT COUNT(*)::int AS n FROM graphile_worker._private_jobs"));
  return rows[0].n;
}

// The seed design's deduct, one transaction per job: the statements of
// bench/src/baseline.rs `deduct` (lock the balance row, check the reservation, move
// reserved -> deducted, a ledger row), then the job row marked completed. Named
// statements, so each is parsed once per connection (as sqlx does on Kiln's side).
async function charge(payload, helpers) {
  const { team, job, amount } = payload;
  await helpers.withPgClient(async (client) => {
    await client.query("BEGIN");
    try {
      const { rows } = await client.query({
        name: "charge_lock",
        text: "SELECT reserved FROM credit_balances WHERE team_id = $1 FOR UPDATE",
        values: [team],
      });
      if (rows.length !== 1 || Number(rows[0].reserved) < amount) throw new Error(`job ${job}: reservation missing`);
      await client.query({
        name: "charge_deduct",
        text: "UPDATE credit_balances SET reserved = reserved - $2, deducted = deducted + $2, updated_at = now() WHERE team_id = $1",
        values: [team, amount],
      });
      await client.query({
        name: "charge_record",
        text: "INSERT INTO credit_transactions (team_id, job_id, kind, amount) VALUES ($1, $2, 'deduct', $3)",
        values: [team, job, amount],
      });
      const done = await client.query({
        name: "charge_complete",
        text: "UPDATE generation_jobs SET status = 'completed', updated_at = now() WHERE id = $1 AND status = 'queued'",
        values: [job],
      });
      if (done.rowCount !== 1) throw new Error(`job ${job}: not queued`);
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK");
      throw error;
    }
  });
}

async function main() {
  await runMigrations({ connectionString, logger });
  if (values["migrate-only"]) return;
  const utils = await makeWorkerUtils({ connectionString, logger, maxPoolSize: Math.max(10, submitters + 2) });
  try {
    const enqueueSecs = values.enqueue === "none" ? null : await enqueue(utils);
    const queued = await remaining(utils);
    if (queued !== jobs) throw new Error(`${queued} jobs queued, expected ${jobs}`);

    let executed = 0;
    const taskList = {
      noop: async () => {
        executed++;
      },
      charge: async (payload, helpers) => {
        await charge(payload, helpers);
        executed++;
      },
    };
    const started = performance.now();
    const running = [];
    for (let r = 0; r < runners; r++) {
      running.push(
        await run({
          connectionString,
          logger,
          concurrency,
          maxPoolSize: settings.maxPoolSize,
          pollInterval: settings.pollInterval,
          noHandleSignals: true,
          taskList,
          crontab: "",
          preset: { worker: { localQueue: { size: localQueueSize }, completeJobBatchDelay } },
        }),
      );
    }
    // Done when every job row is gone: graphile-worker deletes a job when it completes
    // (after the completion batch commits), so this counts committed completions.
    let left = jobs;
    while (left > 0) {
      if (performance.now() - started > timeoutMs) throw new Error(`${left} jobs left after the timeout`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      left = await remaining(utils);
    }
    const drainSecs = (performance.now() - started) / 1000;
    await Promise.all(running.map((runner) => runner.stop()));
    if (executed !== jobs) throw new Error(`the task ran ${executed} times for ${jobs} jobs`);
    console.log(
      JSON.stringify({
        graphile_worker_version: VERSION,
        node_version: process.version,
        enqueue: values.enqueue,
        task: values.task,
        submitters: values.enqueue === "single" ? submitters : null,
        jobs,
        executed,
        enqueue_secs: enqueueSecs,
        drain_secs: drainSecs,
        settings,
      }),
    );
  } finally {
    await utils.release();
  }
}

main().catch((error) => {
  console.error(error?.stack ?? String(error));
  process.exit(1);
});
