//! `imip-processor`: the long-running side of imipflow (the operator CLI,
//! `imip-ctl`, is the crate imipflow-ctl).
//!
//! [`config`] gathers settings; [`migrate`] creates the database, applies the
//! migrations that live in `schema/`, and creates the JetStream streams.

pub mod cli;
pub mod config;
pub mod connect;
pub mod error;
pub mod health;
pub mod lane;
pub mod metrics;
pub mod migrate;
pub mod relay;
pub mod status;
pub mod store;
pub mod streams;
pub mod worker;

// The pure parts live in imipflow-semantics; re-exported under the names
// the processor's modules have always used.
pub use imipflow_semantics::method as semantics;
pub use imipflow_semantics::{apply, events, limits, model};

pub use config::Settings;
pub use error::ProcessorError;
