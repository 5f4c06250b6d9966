//! A batch's clock: keeps the lane's transaction (and lease) alive while it
//! applies messages in memory, and measures each message and the batch
//! against their budgets.

use crate::config::Settings;
use crate::error::ProcessorError;
use std::time::{Duration, Instant};
use tokio_postgres::Transaction;

/// A batch's clock. The lane sends nothing while it applies messages in
/// memory, and PostgreSQL ends a transaction idle for a lease (the guard
/// against paused workers, see `Lane::run`); so before each message, once a
/// third of the lease passed since the lane's last statement, it re-asserts
/// its lease in the transaction (one UPDATE of its own, already locked,
/// partition row). With a message at most half a lease
/// (`Settings::message_budget`), the transaction never idles a whole lease.
/// Normal batches take well under a third of a lease and never send it.
///
/// Chosen over applying on a blocking thread with a keep-alive beside it:
/// that would move the batch's whole in-memory state between threads for
/// every batch, while a message too costly is caught by its budget anyway.
pub struct Pace {
    partition: i32,
    owner: String,
    epoch: i64,
    ttl: f64,
    every: Duration,
    /// When the lane last sent a statement in this transaction (as far as
    /// the pace knows: the fence, or its own keep-alive).
    last: Instant,
    started: Instant,
    message_budget: Duration,
    batch_budget: Duration,
}

impl Pace {
    /// Starts the clock right after the batch's fencing statement.
    pub fn new(settings: &Settings, partition: i32, owner: &str, epoch: i64) -> Self {
        let now = Instant::now();
        Pace {
            partition,
            owner: owner.to_owned(),
            epoch,
            ttl: settings.lease_ms as f64 / 1000.0,
            every: Duration::from_millis(settings.lease_ms / 3),
            last: now,
            started: now,
            message_budget: settings.message_budget(),
            batch_budget: settings.batch_budget(),
        }
    }

    /// Before a message: keeps the transaction alive if a third of the lease
    /// passed since the last statement.
    pub async fn keep_alive(&mut self, tx: &Transaction<'_>) -> Result<(), ProcessorError> {
        if self.last.elapsed() < self.every {
            return Ok(());
        }
        let n = tx
            .execute(
                "UPDATE partitions SET lease_until = clock_timestamp() + make_interval(secs => $4)
                 WHERE partition = $1 AND owner = $2 AND epoch = $3",
                &[&self.partition, &self.owner, &self.epoch, &self.ttl],
            )
            .await?;
        if n != 1 {
            return Err(ProcessorError::LeaseLost {
                partition: self.partition,
                when: crate::error::LeaseCheck::DuringBatch,
            });
        }
        self.last = Instant::now();
        Ok(())
    }

    /// After message `seq`, begun at `began`: an error when it took longer
    /// than its budget (the caller rolls the batch back).
    pub fn message_done(&self, seq: i64, began: Instant) -> Result<(), ProcessorError> {
        let took = began.elapsed();
        if took > self.message_budget {
            return Err(ProcessorError::OverBudget {
                seq,
                took,
                budget: self.message_budget,
            });
        }
        Ok(())
    }

    /// Whether the batch spent its budget: it takes no further message and
    /// commits what it applied.
    pub fn batch_spent(&self) -> bool {
        self.started.elapsed() > self.batch_budget
    }
}
