//! Command line and environment of `imip-ingest` (SPEC §1.1).
//!
//! Ingest reads flags and `IMIP_*` environment variables only, no config file:
//! it starts once per mail and must not touch the disk more than it has to.
//! NATS authentication and TLS are the same settings as the other binaries'
//! (`imipflow_config::NatsAuth`); nothing TLS-related is loaded unless set.

use crate::error::IngestError;
use clap::{Parser, ValueEnum};
use imipflow_config::NatsAuth;
use imipflow_schema::Direction;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Outgoing,
    Incoming,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::Outgoing => Direction::Outgoing,
            DirectionArg::Incoming => Direction::Incoming,
        }
    }
}

/// Reads one RFC 5322 message on stdin and publishes its iMIP calendar objects.
#[derive(Debug, Parser)]
#[command(name = "imip-ingest", version, about, long_about = None)]
pub struct Args {
    /// Whose records change: the sender (outgoing) or each recipient (incoming).
    #[arg(long, value_enum, default_value = "outgoing")]
    pub direction: DirectionArg,

    /// Envelope sender (Postfix: ${sender}).
    #[arg(long)]
    pub sender: String,

    /// Envelope recipient (Postfix: ${recipient}); repeat for several.
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,

    /// Print the payloads and quarantine records as JSON lines instead of publishing.
    #[arg(long)]
    pub print: bool,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every stream and subject.
    #[arg(long, env = "IMIP_NAMESPACE", default_value = "imip")]
    pub namespace: String,

    /// Number of partitions (must match the processors').
    #[arg(long, env = "IMIP_PARTITIONS", default_value_t = imipflow_schema::DEFAULT_PARTITIONS)]
    pub partitions: u32,

    /// How long to wait for the connection and for each acknowledgement, in milliseconds.
    #[arg(long, env = "IMIP_NATS_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    #[command(flatten)]
    pub nats_auth: NatsAuth,

    #[command(flatten)]
    pub limits: Limits,
}

/// Connect options for one publish, and the URL to connect to (credentials
/// written in the URL move into the options, so async-nats never sees or logs
/// them): credentials and TLS from the settings, a deadline on everything, no
/// reconnects (a failure is the MTA's retry, exit 75). A missing credentials
/// file or a refused login is also exit 75: the message waits in the MTA's
/// queue until the administrator fixes it.
pub fn connect_options(
    url: &str,
    auth: &NatsAuth,
    timeout: Duration,
) -> Result<(async_nats::ConnectOptions, String), IngestError> {
    let (options, clean) = auth.connect_target(url).map_err(|e| IngestError::Connect {
        url: imipflow_config::redact_url(url),
        reason: e.to_string(),
    })?;
    let options = options
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .max_reconnects(Some(0))
        .name("imip-ingest");
    Ok((options, clean))
}

/// Bounds on what one message may make ingest do. Exceeding one quarantines.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest message read, in bytes.
    #[arg(long, env = "IMIP_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Most calendar objects in one message.
    #[arg(long, env = "IMIP_MAX_CALENDAR_PARTS", default_value_t = 32)]
    pub max_calendar_parts: usize,
    /// Most scheduling components in one calendar object.
    #[arg(long, env = "IMIP_MAX_COMPONENTS", default_value_t = 1000)]
    pub max_components: usize,
    /// Most attendees in one component.
    #[arg(long, env = "IMIP_MAX_ATTENDEES", default_value_t = 2000)]
    pub max_attendees: usize,
    /// Most RRULE + RDATE + EXDATE values in one component.
    #[arg(long, env = "IMIP_MAX_RECURRENCE_VALUES", default_value_t = 5000)]
    pub max_recurrence_values: usize,
    /// Largest serialised payload, in bytes (keep below the server's max_payload).
    #[arg(long, env = "IMIP_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024 - 16 * 1024)]
    pub max_payload_bytes: usize,
    /// How much of refused data a quarantine record keeps, in bytes.
    #[arg(long, env = "IMIP_QUARANTINE_EXCERPT_BYTES", default_value_t = 256 * 1024)]
    pub excerpt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_calendar_parts: 32,
            max_components: 1000,
            max_attendees: 2000,
            max_recurrence_values: 5000,
            max_payload_bytes: 1024 * 1024 - 16 * 1024,
            excerpt_bytes: 256 * 1024,
        }
    }
}
