//! `imip-ctl replay` and `dlq replay`: one stream message applied again the
//! way the lane applies it, serialised with the lane.

use crate::lock_partition;
use imipflow_processor::ProcessorError;
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

/// Re-applies one stream message the way the lane does, in its own
/// transaction holding the partition row lock (serialised with the lane),
/// without moving the partition's position. Idempotent: a message already in
/// `message_log` changes nothing; one that is not (dead-lettered before, or
/// its log lost with a restored database) goes through newer-wins again.
pub async fn replay_one(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    partition: i32,
    seq: i64,
    payload: &[u8],
) -> Result<ReplayOutcome, ProcessorError> {
    let ns = settings.namespace()?;
    let ids = serde_json::from_slice::<serde_json::Value>(payload).ok();
    let user = ids
        .as_ref()
        .and_then(|v| v["user"].as_str().map(str::to_owned));
    let dedupe = ids
        .as_ref()
        .and_then(|v| v["dedupe_id"].as_str().map(str::to_owned));
    let mut tx = db.transaction().await?;
    let applied_up_to = lock_partition(&tx, partition).await?;
    if seq > applied_up_to {
        tx.rollback().await?;
        return Ok(ReplayOutcome::Pending);
    }
    let cache = store::StatementCache::default();
    if let (Some(u), Some(d)) = (&user, &dedupe)
        && store::already_applied(&tx, &cache, u, d).await?
    {
        tx.rollback().await?;
        return Ok(ReplayOutcome::Duplicate);
    }
    let apply = imipflow_processor::worker::Apply {
        cache: &cache,
        settings,
        ns: &ns,
        partition,
        max_payload: imipflow_processor::events::DEFAULT_MAX_PAYLOAD,
    };
    apply.message(&mut tx, seq, payload).await?;
    let logged = match (&user, &dedupe) {
        (Some(u), Some(d)) => tx
            .query_opt(
                "SELECT outcome FROM message_log WHERE user_addr = $1 AND dedupe_id = $2",
                &[u, d],
            )
            .await?
            .map(|r| r.get::<_, String>(0)),
        _ => None,
    };
    tx.commit().await?;
    Ok(match logged.as_deref() {
        Some("applied") => ReplayOutcome::Applied,
        Some("stale") => ReplayOutcome::Stale,
        Some("ignored") => ReplayOutcome::Ignored,
        Some("refused") => ReplayOutcome::Refused,
        _ => ReplayOutcome::DeadLettered,
    })
}
