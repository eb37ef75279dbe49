-- The operator console's overview (issue 28) reads the last hour across every team:
-- jobs by when they ended, ledger entries by when they occurred.
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX credit_ledger_occurred_idx ON credit_ledger (occurred_at);
