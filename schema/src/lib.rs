//! The imipflow contract, shared by every part and free of I/O.
//!
//! `imip-ingest` produces [`Payload`]s (or [`QuarantineRecord`]s), publishes them on
//! subjects named by [`Namespace`] and partitioned by [`partition`]; `imip-processor`
//! consumes them. Anything both sides must agree on lives here, versioned, so that a
//! change to the wire format is a change to this crate and nowhere else. The
//! processor's output is part of it too: the change events ([`events`]) the
//! publisher and every subscriber read, and the outcome of a message
//! ([`outcome`]) as the message log, the metrics and `imip-ctl` name it.

pub mod events;
pub mod freebusy;
pub mod naming;
pub mod outcome;
pub mod partition;
pub mod payload;
pub mod quarantine;
pub mod time;

pub use events::{Change, CloudEvent, EventKind, Period, QueueChange, event_id};
pub use freebusy::{BusyPeriod, FbType, VFreeBusy};
pub use naming::{MAX_ADDRESS_BYTES, Namespace, NamespaceError, normalize_address, user_key};
pub use outcome::{Disposition, MessageOutcome};
pub use partition::{DEFAULT_PARTITIONS, partition};
pub use payload::{
    Attendee, Component, ComponentKind, Direction, Method, PAYLOAD_VERSION, PartStat, Party,
    Payload, Range, RecurrenceId, Status, Transparency,
};
pub use quarantine::{QUARANTINE_VERSION, QuarantineReason, QuarantineRecord};
pub use time::{Observance, Time, TimeKind, YearlyRule, Zone, ZoneRules};

/// Directory of the SQL migrations, relative to this crate. The processor embeds
/// them at build time; keeping them here makes the database layout part of the contract.
pub const MIGRATIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
