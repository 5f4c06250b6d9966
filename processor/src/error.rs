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
}

/// tokio-postgres' Display says only "db error"; the server's message is what
/// an operator needs (it ends up in logs and in the dead-letter table).
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
