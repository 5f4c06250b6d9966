//! The one error type of the manager crate, typed by cause.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ManagerError {
    /// A setting is wrong (`IMIP_*`, the config file).
    #[error("configuration: {0}")]
    Config(String),
    /// The database is not set up the way the manager reads it.
    #[error("deployment: {0}")]
    Deployment(String),
    #[error("PostgreSQL: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("HTTP listener: {0}")]
    Io(#[from] std::io::Error),
    /// Composing or submitting a reply.
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("template: {0}")]
    Template(#[from] askama::Error),
}

impl ManagerError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ManagerError::Nats(e.to_string())
    }
}

/// tokio-postgres' Display says only "db error"; the server's message is what
/// an operator needs.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
