//! The processor's Prometheus metrics: names, labels, and the one-line hooks
//! the lanes call (`worker.rs`), so that the names live in one place and
//! `docs/operations.md` can list them.
//!
//! Counters and histograms are recorded as things happen in this process;
//! the deployment-wide gauges (lag, dead letters, quarantine) are read from
//! PostgreSQL and NATS when `/metrics` is scraped (`health.rs`), so every
//! instance reports the same values for them.
//!
//! Without an installed recorder (imip-ctl, tests) every hook is a no-op.

use crate::model::Disposition;
use std::time::Duration;

/// Messages by `method` and `outcome` (counter).
pub const MESSAGES: &str = "imipflow_messages_total";
/// Time to apply one message inside its batch's transaction (histogram, seconds).
pub const MESSAGE_SECONDS: &str = "imipflow_message_apply_seconds";
/// Time of one batch transaction, fence to commit (histogram, seconds).
pub const BATCH_SECONDS: &str = "imipflow_batch_apply_seconds";
/// Batches by `result` (`committed`, `failed`) (counter).
pub const BATCHES: &str = "imipflow_batches_total";
/// Lanes this instance took over, by `partition` (counter).
pub const LEASE_ACQUIRED: &str = "imipflow_lease_acquisitions_total";
/// Lanes this instance lost or gave up, by `partition` and `reason` (counter).
pub const LEASE_RELEASED: &str = "imipflow_lease_releases_total";
/// Partitions this instance owns right now (gauge).
pub const OWNED_PARTITIONS: &str = "imipflow_owned_partitions";
/// Messages waiting to be applied, by `partition` (gauge, scraped).
pub const LAG: &str = "imipflow_partition_lag";
/// Stream position applied, by `partition` (gauge, scraped).
pub const APPLIED_SEQUENCE: &str = "imipflow_partition_applied_sequence";
/// 1 when some live instance holds the partition's lease, by `partition` (gauge, scraped).
pub const PARTITION_OWNED: &str = "imipflow_partition_owned";
/// 1 while the partition is stalled: messages waiting and its applied position
/// unmoved for `IMIP_STALL_AFTER_SECS`, by `partition` (gauge, scraped).
pub const PARTITION_STALLED: &str = "imipflow_partition_stalled";
/// How long the partition has had messages waiting without advancing, by
/// `partition` (gauge, seconds, scraped; 0 when nothing waits).
pub const PARTITION_STALLED_SECONDS: &str = "imipflow_partition_stalled_seconds";
/// Dead letters not replayed yet (gauge, scraped).
pub const DEAD_LETTERS: &str = "imipflow_dead_letters";
/// Records in the quarantine stream (gauge, scraped).
pub const QUARANTINED: &str = "imipflow_quarantined";
/// Change events committed but not yet published to the events stream (gauge, scraped).
pub const UNPUBLISHED_EVENTS: &str = "imipflow_outbox_unpublished";
/// Messages in the messages stream on a partition no lane reads (gauge,
/// scraped; docs/operations.md, "Partition count"). Counted only when some can
/// exist (`status::unread_messages`), so the scrape stays cheap.
pub const UNREAD: &str = "imipflow_unread_messages";
/// Scrapes whose store readings failed (counter); the gauges keep their last values.
pub const SCRAPE_ERRORS: &str = "imipflow_scrape_errors_total";
/// Messages a lane read that belong to another partition (published by an
/// `imip-ingest` with a smaller `IMIP_PARTITIONS`) and forwarded to their
/// user's, by the `partition` that read them (counter; `lane::route`).
pub const FORWARDED: &str = "imipflow_messages_forwarded_total";
/// Outbox rows too large for the server's max_payload, skipped by the relay (docs/subscribers.md).
pub const EVENTS_SKIPPED: &str = "imipflow_events_oversized_skipped_total";

/// What became of one message: the `outcome` label, the contract's
/// `message_log.outcome` (`imipflow_schema::outcome`).
pub use imipflow_schema::MessageOutcome;

/// Registers descriptions, and zeroes the gauges this instance reports, so
/// that a fresh process exposes every series from its first scrape.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        MESSAGES,
        "Messages applied, by method and outcome (applied, stale, ignored, refused, dead_lettered, duplicate)"
    );
    describe_histogram!(
        MESSAGE_SECONDS,
        Unit::Seconds,
        "Time to apply one message within its batch transaction"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time of one batch transaction, fence to commit"
    );
    describe_counter!(BATCHES, "Batch transactions, by result");
    describe_counter!(LEASE_ACQUIRED, "Partition leases this instance acquired");
    describe_counter!(
        LEASE_RELEASED,
        "Partition leases this instance released (shutdown) or lost (error, fenced)"
    );
    describe_gauge!(OWNED_PARTITIONS, "Partitions this instance owns");
    describe_gauge!(
        LAG,
        "Messages of the partition waiting to be applied (not a difference of stream positions, which other partitions interleave)"
    );
    describe_gauge!(
        APPLIED_SEQUENCE,
        "Stream position the partition has applied"
    );
    describe_gauge!(
        PARTITION_OWNED,
        "1 when a live instance holds the partition's lease, else 0"
    );
    describe_gauge!(
        PARTITION_STALLED,
        "1 while the partition has messages waiting and has not advanced for IMIP_STALL_AFTER_SECS"
    );
    describe_gauge!(
        PARTITION_STALLED_SECONDS,
        Unit::Seconds,
        "How long the partition has had messages waiting without advancing"
    );
    describe_gauge!(DEAD_LETTERS, "Dead letters not replayed yet");
    describe_gauge!(QUARANTINED, "Records in the quarantine stream");
    describe_gauge!(
        UNPUBLISHED_EVENTS,
        "Change events committed but not yet published to the events stream"
    );
    describe_gauge!(
        UNREAD,
        "Messages in the messages stream on a partition no lane reads (published with another IMIP_PARTITIONS before migrate narrowed the stream's subjects)"
    );
    describe_counter!(
        FORWARDED,
        "Messages read on a partition not their user's (an imip-ingest with another IMIP_PARTITIONS) and forwarded to the user's partition"
    );
    describe_counter!(SCRAPE_ERRORS, "Scrapes whose store readings failed");
    describe_counter!(
        EVENTS_SKIPPED,
        "Outbox rows larger than the server's max_payload, marked published and skipped (by kind)"
    );
    metrics::gauge!(OWNED_PARTITIONS).set(0.0);
}

/// One message's outcome (and how long applying it took, when it was applied).
pub fn message(method: &str, outcome: MessageOutcome, took: Option<Duration>) {
    metrics::counter!(MESSAGES, "method" => method.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
    if let Some(t) = took {
        metrics::histogram!(MESSAGE_SECONDS).record(t.as_secs_f64());
    }
}

/// A message lane `partition` forwarded to its user's partition.
pub fn message_forwarded(partition: i32) {
    metrics::counter!(FORWARDED, "partition" => partition.to_string()).increment(1);
}

/// A message that went to the dead-letter table; its method is read from the
/// payload when it is readable at all.
pub fn dead_lettered(payload: &[u8]) {
    let method = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    message(&method, MessageOutcome::DeadLettered, None);
}

/// One batch transaction.
pub fn batch(took: Duration, committed: bool) {
    metrics::histogram!(BATCH_SECONDS).record(took.as_secs_f64());
    let result = if committed { "committed" } else { "failed" };
    metrics::counter!(BATCHES, "result" => result).increment(1);
}

/// This instance took a lane over.
pub fn lease_acquired(partition: i32) {
    metrics::counter!(LEASE_ACQUIRED, "partition" => partition.to_string()).increment(1);
    metrics::gauge!(OWNED_PARTITIONS).increment(1.0);
}

/// This instance stopped owning a lane: `lost` when it ended by an error
/// (lease lost, fenced, broker or database trouble) rather than at shutdown.
pub fn lease_released(partition: i32, lost: bool) {
    let reason = if lost { "lost" } else { "shutdown" };
    metrics::counter!(LEASE_RELEASED, "partition" => partition.to_string(), "reason" => reason)
        .increment(1);
    metrics::gauge!(OWNED_PARTITIONS).decrement(1.0);
}

/// Deployment-wide readings of one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReadings {
    pub partitions: Vec<PartitionReading>,
    pub dead_letters: u64,
    pub quarantined: u64,
    pub unpublished_events: u64,
    pub unread: u64,
}

/// One partition's readings (`status::PartitionStatus`, less what no gauge shows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReading {
    pub partition: u32,
    pub applied: u64,
    pub newest: u64,
    /// Messages of the partition waiting after `applied` (counted by
    /// JetStream: other partitions' messages interleave the positions).
    pub lag: u64,
    /// Held by a live lease.
    pub owned: bool,
    pub stalled_for_secs: u64,
    pub stalled: bool,
}

pub fn set_readings(r: &StoreReadings) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    for q in &r.partitions {
        let p = q.partition.to_string();
        metrics::gauge!(LAG, "partition" => p.clone()).set(q.lag as f64);
        metrics::gauge!(APPLIED_SEQUENCE, "partition" => p.clone()).set(q.applied as f64);
        metrics::gauge!(PARTITION_OWNED, "partition" => p.clone()).set(flag(q.owned));
        metrics::gauge!(PARTITION_STALLED, "partition" => p.clone()).set(flag(q.stalled));
        metrics::gauge!(PARTITION_STALLED_SECONDS, "partition" => p).set(q.stalled_for_secs as f64);
    }
    metrics::gauge!(DEAD_LETTERS).set(r.dead_letters as f64);
    metrics::gauge!(QUARANTINED).set(r.quarantined as f64);
    metrics::gauge!(UNPUBLISHED_EVENTS).set(r.unpublished_events as f64);
    metrics::gauge!(UNREAD).set(r.unread as f64);
}

pub fn scrape_failed() {
    metrics::counter!(SCRAPE_ERRORS).increment(1);
}

/// The lane's record of one message it decided on: the counter, the latency,
/// and a log line carrying partition, stream sequence, user, UIDs, method and
/// outcome (`debug`, or `info` for a refusal, which is worth an operator's eye).
pub fn message_done(
    partition: i32,
    seq: i64,
    payload: &imipflow_schema::Payload,
    disposition: &Disposition,
    started: std::time::Instant,
) {
    let outcome = disposition.outcome();
    let method = payload.method.as_str();
    message(method, outcome, Some(started.elapsed()));
    let mut uids: Vec<&str> = payload.components.iter().map(|c| c.uid.as_str()).collect();
    uids.dedup();
    let uid = uids.join(",");
    let reason = disposition.reason().unwrap_or_default();
    if outcome == MessageOutcome::Refused {
        tracing::info!(partition, seq, user = %payload.user, uid, method, outcome = outcome.as_str(), reason, "message refused");
    } else {
        tracing::debug!(partition, seq, user = %payload.user, uid, method, outcome = outcome.as_str(), reason, "message handled");
    }
}

/// A message already in `message_log` (applied before): counted, not re-applied.
pub fn message_duplicate(partition: i32, seq: i64, payload: &imipflow_schema::Payload) {
    let method = payload.method.as_str();
    message(method, MessageOutcome::Duplicate, None);
    tracing::debug!(partition, seq, user = %payload.user, method, outcome = MessageOutcome::Duplicate.as_str(), "message already applied");
}
