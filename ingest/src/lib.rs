//! `imip-ingest`: the part of imipflow that runs inside the mail path.
//!
//! The MTA pipes one message into the binary; [`plan::plan`] turns it into
//! payloads and quarantine records without any I/O, and [`publish`] hands them
//! to JetStream and waits for the acknowledgements. Everything here is built to
//! be small and quick to start: the mail server runs it once per message.

pub mod config;
pub mod error;
pub mod ical;
pub mod mime;
pub mod plan;
pub mod publish;
pub mod tz;

pub use config::{Args, Limits};
pub use error::IngestError;
pub use plan::{Envelope, Output, Plan, plan};
