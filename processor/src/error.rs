//! The one error type of the processor crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessorError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migrations: {0}")]
    Migration(#[from] refinery::Error),
    #[error("NATS: {0}")]
    Nats(String),
}

impl ProcessorError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ProcessorError::Nats(e.to_string())
    }
}
