//! `imip-processor` and `imip-ctl`: the long-running side of imipflow.
//!
//! [`config`] gathers settings; [`migrate`] creates the database, applies the
//! migrations that live in `schema/`, and creates the JetStream streams.

pub mod config;
pub mod error;
pub mod migrate;
pub mod streams;

pub use config::Settings;
pub use error::ProcessorError;
