//! `imip-ctl replay` and `dlq replay`: one stream message applied again the
//! way the lane applies it, serialised with the lane.

use crate::lock_partition;
use imipflow_processor::ProcessorError;
use imipflow_processor::apply::Verdict;
use imipflow_processor::model::Disposition;
use imipflow_processor::{config::Settings, store};

/// What became of one message in `imip-ctl replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// In `message_log` already: nothing done (the normal case).
    Duplicate,
    Applied,
    Stale,
    Ignored,
    Refused,
    /// Failed again; a new dead letter records it.
    DeadLettered,
    /// Past the partition's applied position: left to the lane, which applies
    /// it in order (replaying it first could reorder the user's messages).
    Pending,
}

impl ReplayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Duplicate => "duplicate",
            ReplayOutcome::Applied => "applied",
            ReplayOutcome::Stale => "stale",
            ReplayOutcome::Ignored => "ignored",
            ReplayOutcome::Refused => "refused",
            ReplayOutcome::DeadLettered => "dead_lettered",
            ReplayOutcome::Pending => "pending",
        }
    }
}

/// Re-applies one stream message the way the lane does (a batch of one:
/// `store::load`, `apply`, `store::write`), in its own transaction holding
/// the partition row lock (serialised with the lane), without moving the
/// partition's position. Idempotent: a message already in `message_log`
/// changes nothing; one that is not (dead-lettered before, or its log lost
/// with a restored database) goes through newer-wins again.
pub async fn replay_one(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    partition: i32,
    seq: i64,
    payload: &[u8],
) -> Result<ReplayOutcome, ProcessorError> {
    let ns = settings.namespace()?;
    let mut tx = db.transaction().await?;
    let applied_up_to = lock_partition(&tx, partition).await?;
    if seq > applied_up_to {
        tx.rollback().await?;
        return Ok(ReplayOutcome::Pending);
    }
    let cache = store::StatementCache::default();
    let apply = imipflow_processor::lane::Apply {
        cache: &cache,
        settings,
        ns: &ns,
        partition,
        max_payload: imipflow_processor::events::DEFAULT_MAX_PAYLOAD,
    };
    let outcome = match apply.message(&mut tx, seq, payload).await? {
        Verdict::Duplicate => ReplayOutcome::Duplicate,
        Verdict::DeadLettered(_) => ReplayOutcome::DeadLettered,
        Verdict::Done(Disposition::Applied) => ReplayOutcome::Applied,
        Verdict::Done(Disposition::Stale(_)) => ReplayOutcome::Stale,
        Verdict::Done(Disposition::Ignored(_)) => ReplayOutcome::Ignored,
        Verdict::Done(Disposition::Refused(_)) => ReplayOutcome::Refused,
    };
    tx.commit().await?;
    Ok(outcome)
}
