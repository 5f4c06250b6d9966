//! The one error type of the processor crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessorError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("PostgreSQL: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("migrations: {0}")]
    Migration(#[from] refinery::Error),
    #[error("{0}")]
    Payload(String),
    #[error("NATS: {0}")]
    Nats(String),
}

impl ProcessorError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ProcessorError::Nats(e.to_string())
    }

    /// A fault of the infrastructure, not of the message: a lost or refused
    /// connection, a server shutting down or out of resources, a
    /// serialization conflict, a broker that did not answer. The batch is
    /// rolled back and retried after a backoff; a message is never
    /// dead-lettered for one of these (docs/reliability.md).
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessorError::Nats(_) => true,
            ProcessorError::Db(e) => match e.as_db_error() {
                // No server error at all: I/O, closed connection, timeout.
                None => true,
                Some(db) => {
                    let code = db.code().code();
                    // 08 connection exception, 53 insufficient resources,
                    // 57P0x shutdown / cannot connect now, 57014 canceled,
                    // 40001 serialization failure, 40P01 deadlock, 55P03 lock timeout,
                    // 25P03 idle-in-transaction timeout.
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P0")
                        || matches!(code, "57014" | "40001" | "40P01" | "55P03" | "25P03")
                }
            },
            ProcessorError::Config(_)
            | ProcessorError::Migration(_)
            | ProcessorError::Payload(_) => false,
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
