//! `imip-processor` and `imip-ctl`: the long-running side of imipflow.
//!
//! [`config`] gathers settings; [`migrate`] creates the database, applies the
//! migrations that live in `schema/`, and creates the JetStream streams.

pub mod batch;
pub mod config;
pub mod connect;
pub mod ctl;
pub mod error;
pub mod events;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod quarantine;
pub mod relay;
pub mod semantics;
pub mod store;
pub mod streams;
pub mod worker;

pub use config::Settings;
pub use error::ProcessorError;
