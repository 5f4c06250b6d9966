//! The one error type of the processor crate, typed by cause, and how a
//! lane reads each error: the message's fault, an outage, strain that may be
//! either, or the lane's own trouble (a lost lease, a failed task, a wrong
//! setup).

use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessorError {
    /// A setting is wrong (`IMIP_*`, the config file): found at start-up by
    /// `config_check`, never caused by a message.
    #[error("configuration: {0}")]
    Config(String),
    /// The database is not set up the way this deployment needs (not
    /// migrated, no partition count).
    #[error("deployment: {0}")]
    Deployment(String),
    /// The lane's lease is no longer its own: another instance took the
    /// partition over (its epoch or owner changed), so this one must stop
    /// before it writes anything more.
    #[error("lease lost {when} (fenced): partition {partition} belongs to another instance now")]
    LeaseLost { partition: i32, when: LeaseCheck },
    /// A task the lane spawned (the relay's flush, a blocking publish)
    /// panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
    #[error("PostgreSQL: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("migrations: {0}")]
    Migration(#[from] refinery::Error),
    #[error("{0}")]
    Payload(String),
    #[error("{0}")]
    Semantics(#[from] imipflow_semantics::SemanticsError),
    #[error("NATS: {0}")]
    Nats(String),
    /// Applying one message took longer than its budget (`IMIP_MESSAGE_BUDGET_MS`):
    /// the lane rolls the batch back and tries that message alone; over the
    /// budget alone too, it is dead-lettered with this text.
    #[error("took {:.1} s, over the {} budget per message", .took.as_secs_f64(), seconds(*.budget))]
    OverBudget {
        seq: i64,
        took: Duration,
        budget: Duration,
    },
}

/// Where a lane found its lease gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Renewing it while waiting for messages.
    Renewal,
    /// Fencing a batch's transaction before applying it.
    BatchStart,
    /// Extending it in the middle of a long batch (`lane::Pace`).
    DuringBatch,
}

impl std::fmt::Display for LeaseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseCheck::Renewal => "while renewing it",
            LeaseCheck::BatchStart => "before commit",
            LeaseCheck::DuringBatch => "during a batch",
        })
    }
}

/// Whose fault a failure is, as far as the lane can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The message's own (bad payload, a constraint its data violates, a bug):
    /// it goes to the dead-letter table and the lane moves on.
    Message,
    /// The infrastructure's, whatever the message: connection lost or refused,
    /// server shutting down, disk full, broker unreachable. Retried after a
    /// backoff for as long as it lasts; never dead-letters anything.
    Outage,
    /// Transient by its kind, but one message can cause it every time: a
    /// statement timeout or cancel, an idle-in-transaction timeout, running
    /// out of memory, a serialization failure, deadlock or lock timeout.
    /// Retried like an outage, and blamed on the message when it repeats on
    /// the same one (`lane::Blame`).
    Strain,
    /// Neither the message's nor the infrastructure's: the lane cannot go on
    /// as it is. Its lease was lost (another instance fenced it), a task it
    /// spawned failed, or the deployment is set up wrong. Like an outage the
    /// lane stops, rolls back, and is started again after a backoff (it takes
    /// the lease again only once it is free); nothing is dead-lettered.
    Lane,
}

impl ProcessorError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ProcessorError::Nats(e.to_string())
    }

    /// Not (yet) the message's fault: the batch is rolled back and retried
    /// after a backoff; a message is never dead-lettered for one of these on
    /// its first occurrence (docs/reliability.md).
    pub fn is_transient(&self) -> bool {
        self.fault() != Fault::Message
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProcessorError::Nats(_) => Fault::Outage,
            ProcessorError::Db(e) => match e.as_db_error() {
                // No server error at all: I/O, closed connection, timeout. A
                // connection the server closed for idling shows up so too, but
                // a lane's transaction idles that long only inside a message
                // over its budget, which the lane measures itself.
                None => Fault::Outage,
                Some(db) => {
                    let code = db.code().code();
                    // 57014 canceled (statement_timeout), 25P03 idle-in-transaction
                    // timeout, 53200 out of memory, 40001 serialization failure,
                    // 40P01 deadlock, 55P03 lock timeout.
                    if matches!(
                        code,
                        "57014" | "25P03" | "53200" | "40001" | "40P01" | "55P03"
                    ) {
                        Fault::Strain
                    // 08 connection exception, 53 insufficient resources (disk
                    // full, too many connections), 57P0x shutdown / cannot connect now.
                    } else if code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P0")
                    {
                        Fault::Outage
                    } else {
                        Fault::Message
                    }
                }
            },
            // The lane decides what an over-budget message becomes (`lane::Blame`).
            ProcessorError::OverBudget { .. } => Fault::Strain,
            ProcessorError::LeaseLost { .. }
            | ProcessorError::Task(_)
            | ProcessorError::Config(_)
            | ProcessorError::Deployment(_)
            | ProcessorError::Migration(_) => Fault::Lane,
            ProcessorError::Payload(_) | ProcessorError::Semantics(_) => Fault::Message,
        }
    }
}

/// tokio-postgres' Display says only "db error"; the server's message is what
/// an operator needs (it ends up in logs and in the dead-letter table).
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// "5 s", "1.5 s", "250 ms": a budget as an operator set it.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_or_a_failed_task_is_not_the_message_s_fault() {
        for e in [
            ProcessorError::LeaseLost {
                partition: 3,
                when: LeaseCheck::DuringBatch,
            },
            ProcessorError::Task("relay flush panicked".into()),
            ProcessorError::Config("IMIP_DEFAULT_TIMEZONE: unknown zone".into()),
            ProcessorError::Deployment("no partition count".into()),
        ] {
            assert_eq!(e.fault(), Fault::Lane, "{e}");
            assert!(e.is_transient(), "{e}");
        }
        let e = ProcessorError::Payload("unreadable payload".into());
        assert_eq!(e.fault(), Fault::Message);
        assert!(!e.is_transient());
    }

    #[test]
    fn a_lost_lease_says_which_partition_and_where() {
        let e = ProcessorError::LeaseLost {
            partition: 3,
            when: LeaseCheck::BatchStart,
        };
        assert_eq!(
            e.to_string(),
            "lease lost before commit (fenced): partition 3 belongs to another instance now"
        );
    }

    #[test]
    fn over_budget_says_how_long_and_the_budget() {
        let e = ProcessorError::OverBudget {
            seq: 7,
            took: Duration::from_millis(12_345),
            budget: Duration::from_secs(5),
        };
        assert_eq!(
            e.to_string(),
            "took 12.3 s, over the 5 s budget per message"
        );
        let e = ProcessorError::OverBudget {
            seq: 7,
            took: Duration::from_millis(400),
            budget: Duration::from_millis(250),
        };
        assert_eq!(
            e.to_string(),
            "took 0.4 s, over the 250 ms budget per message"
        );
    }
}
