//! What the binaries of imipflow share about configuration: secrets that do
//! not print ([`secret`]), NATS authentication and TLS ([`nats`]), PostgreSQL
//! passwords and TLS ([`postgres`], feature `postgres`), and the layering of a
//! TOML config file under environment variables and flags ([`layered`],
//! feature `file`). `imip-ingest` uses only the first two, to stay small.

pub mod error;
#[cfg(feature = "file")]
pub mod layered;
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod secret;

pub use error::ConfigError;
pub use nats::NatsAuth;
#[cfg(feature = "postgres")]
pub use postgres::{Database, PgAuth, SslMode};
pub use secret::{Secret, SecretUrl, redact_url};
