//! The one error type of `imip-ingest`, and how each error maps onto the
//! sysexits status the MTA acts on.

use thiserror::Error;

/// sysexits.h codes that Postfix and Exim understand.
pub mod exit {
    pub const OK: u8 = 0;
    /// Bad arguments: a configuration mistake in the MTA, not the message's fault.
    pub const USAGE: u8 = 64;
    /// stdin could not be read.
    pub const IOERR: u8 = 74;
    /// The broker could not take the message now; the MTA keeps it and retries.
    pub const TEMPFAIL: u8 = 75;
}

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("bad arguments: {0}")]
    Usage(String),
    #[error("cannot read the message from stdin: {0}")]
    Stdin(#[from] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream did not acknowledge {subject}: {reason}")]
    Publish { subject: String, reason: String },
    /// Nothing was stored: the MTA keeps the mail. For a message subject the
    /// usual cause is a partition count other than the one `migrate`
    /// recorded (the messages stream takes only the deployment's partitions).
    #[error(
        "no stream takes subject {subject}: is IMIP_PARTITIONS ({partitions}) the deployment's? \
         (the count `imip-processor migrate` recorded; or the streams were never created: run it)"
    )]
    NoStream { subject: String, partitions: u32 },
}

impl IngestError {
    pub fn exit_code(&self) -> u8 {
        match self {
            IngestError::Usage(_) => exit::USAGE,
            IngestError::Stdin(_) => exit::IOERR,
            IngestError::Runtime(_)
            | IngestError::Connect { .. }
            | IngestError::Publish { .. }
            | IngestError::NoStream { .. } => exit::TEMPFAIL,
        }
    }
}
