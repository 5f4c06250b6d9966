//! `imip-ctl replay` and `dlq replay`: one stream message applied again the
//! way the lane applies it, serialised with the lane.

use crate::lock_partition;
use imipflow_processor::ProcessorError;
use imipflow_processor::apply::Verdict;
use imipflow_processor::{config::Settings, store};
use imipflow_schema::MessageOutcome;

/// What became of one message in `imip-ctl replay`: how it ended (a
/// duplicate, already in `message_log`, is the normal case), or not
/// replayed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplayOutcome {
    Done(MessageOutcome),
    /// Past the partition's applied position: left to the lane, which applies
    /// it in order (replaying it first could reorder the user's messages).
    Pending,
}

impl ReplayOutcome {
    pub const DUPLICATE: ReplayOutcome = ReplayOutcome::Done(MessageOutcome::Duplicate);

    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Done(o) => o.as_str(),
            ReplayOutcome::Pending => "pending",
        }
    }
}

impl std::str::FromStr for ReplayOutcome {
    type Err = imipflow_schema::outcome::UnknownOutcome;

    /// From [`ReplayOutcome::as_str`].
    fn from_str(s: &str) -> Result<ReplayOutcome, Self::Err> {
        match s {
            "pending" => Ok(ReplayOutcome::Pending),
            s => s.parse().map(ReplayOutcome::Done),
        }
    }
}

/// Re-applies one stream message the way the lane does (a batch of one:
/// `store::load`, `apply`, `store::write`), in its own transaction holding
/// the partition row lock (serialised with the lane), without moving the
/// partition's position. Idempotent: a message already in `message_log`
/// changes nothing; one that is not (dead-lettered before, or its log lost
/// with a restored database) goes through newer-wins again. A message with
/// a pending dead letter resolves it when decided now, and files no second
/// one when it fails again.
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
    // The message's dead letters not resolved yet, before it is tried again.
    let filed: i64 = tx
        .query_one(
            "SELECT count(*) FROM dead_letters
             WHERE partition = $1 AND stream_seq = $2 AND replayed_at IS NULL",
            &[&partition, &seq],
        )
        .await?
        .get(0);
    let outcome = match apply.message(&mut tx, seq, payload).await? {
        Verdict::Done(d) => d.outcome(),
        Verdict::Duplicate => MessageOutcome::Duplicate,
        Verdict::DeadLettered(_) => MessageOutcome::DeadLettered,
    };
    if outcome == MessageOutcome::DeadLettered {
        if filed > 0 {
            // Failing again adds nothing: its pending dead letter stands for
            // it, so replaying a range twice does not file it twice.
            tx.rollback().await?;
            return Ok(ReplayOutcome::Done(outcome));
        }
    } else if filed > 0 {
        // Decided now (applied, or a duplicate of what was applied since):
        // its dead letters are resolved, as `dlq replay` resolves one.
        tx.execute(
            "UPDATE dead_letters SET replayed_at = now()
             WHERE partition = $1 AND stream_seq = $2 AND replayed_at IS NULL",
            &[&partition, &seq],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ReplayOutcome::Done(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_from_its_name() {
        let all = MessageOutcome::ALL
            .into_iter()
            .map(ReplayOutcome::Done)
            .chain([ReplayOutcome::Pending]);
        for o in all {
            assert_eq!(o.as_str().parse::<ReplayOutcome>(), Ok(o));
        }
        assert!("replayed".parse::<ReplayOutcome>().is_err());
        assert_eq!("duplicate".parse(), Ok(ReplayOutcome::DUPLICATE));
    }
}
