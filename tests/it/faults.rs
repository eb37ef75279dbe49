//! The fault scenarios (issue 29), on the real services the scripts start: each stops,
//! stalls or kills one under load and then asserts that every acknowledged effect is
//! present exactly once, nothing stays reserved, the log and its read models agree, and
//! service came back within the bound the scenario states.
//!
//! They run apart from the main suite (`scripts/test` leaves them out, `scripts/test-faults`
//! runs only them, one at a time; `.ci/run` runs both): their loads are heavy and their
//! bounds are about the services, not Kiln's code paths, which the main suite covers.
//! The bodies live beside the code they exercise; this module names the scenarios.

/// Patroni switchover (primary handed over on request) under submits, cancels, grants and
/// webhooks, two `kiln worker` processes and a log reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patroni_switchover_under_load() {
    crate::ha::a_patroni_switchover_under_load_loses_and_doubles_nothing().await;
}

/// `kill -9` of the primary's postmaster under the same load: failover to the synchronous
/// standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_primary_under_load() {
    crate::ha::a_killed_primary_under_load_fails_over_losing_and_doubling_nothing().await;
}

/// Reads from the cluster's replicas keep read-your-writes through the consistency token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_reads_keep_read_your_writes() {
    crate::ha::replica_reads_see_the_clients_own_writes_through_the_consistency_token().await;
}

/// A single PostgreSQL server stopped for five seconds under load, then started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_and_started_under_load() {
    crate::outage::postgres_stopped_for_five_seconds_under_load_loses_and_doubles_nothing().await;
}

/// An S3 server that stalls, then refuses connections, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_stalled_then_refusing() {
    crate::storage::a_stalled_then_refusing_s3_server_delays_jobs_and_loses_nothing().await;
}

/// fal timing out on every try, then answering 5xx, then answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_timing_out_then_5xx() {
    crate::fal::a_provider_timing_out_then_answering_5xx_delays_the_job_and_charges_it_once().await;
}
