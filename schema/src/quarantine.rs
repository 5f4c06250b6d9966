//! What ingest publishes instead of a payload when calendar data is malformed or
//! over a limit: the reason, and enough of the message to look at it later.
//!
//! The MTA still delivers the mail itself; quarantine exists so that refusing
//! calendar data never means silently dropping it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const QUARANTINE_VERSION: u32 = 1;

/// Why a message (or one calendar object of it) was not published as a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    /// Larger than `max_message_bytes`.
    MessageTooLarge,
    /// More calendar parts than `max_calendar_parts`.
    TooManyCalendarParts,
    /// More MIME parts (boundary delimiter lines) than ingest parses (10,000).
    TooManyMimeParts,
    /// More components in one calendar object than `max_components`.
    TooManyComponents,
    /// More attendees in one component than `max_attendees`.
    TooManyAttendees,
    /// More RRULE/RDATE/EXDATE values than `max_recurrence_values` in one
    /// component, or than `max_message_recurrence_values` in the whole message.
    TooManyRecurrenceValues,
    /// More RRULE properties in one component than `max_rrules`.
    TooManyRecurrenceRules,
    /// The message's series would make more instances (free/busy records)
    /// than `max_message_instances`, by ingest's estimate.
    TooManyInstances,
    /// A UID or calendar address longer than ingest lets into the store's keys.
    ValueTooLong,
    /// The serialised payload would exceed `max_payload_bytes` (or the server's limit).
    PayloadTooLarge,
    /// The calendar part is not valid iCalendar.
    InvalidCalendar,
    /// A scheduling component without UID.
    MissingUid,
    /// A date or time that cannot be read.
    InvalidDate,
    /// DTEND (or DUE) before DTSTART, or a negative DURATION.
    InvalidTimeRange,
    /// A calendar part whose bytes are not text in its declared charset.
    InvalidEncoding,
    /// The sender or recipient the MTA passed is not an address (or is longer
    /// than an RFC 5321 path allows).
    InvalidAddress,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::MessageTooLarge => "message_too_large",
            QuarantineReason::TooManyCalendarParts => "too_many_calendar_parts",
            QuarantineReason::TooManyMimeParts => "too_many_mime_parts",
            QuarantineReason::TooManyComponents => "too_many_components",
            QuarantineReason::TooManyAttendees => "too_many_attendees",
            QuarantineReason::TooManyRecurrenceValues => "too_many_recurrence_values",
            QuarantineReason::TooManyRecurrenceRules => "too_many_recurrence_rules",
            QuarantineReason::TooManyInstances => "too_many_instances",
            QuarantineReason::ValueTooLong => "value_too_long",
            QuarantineReason::PayloadTooLarge => "payload_too_large",
            QuarantineReason::InvalidCalendar => "invalid_calendar",
            QuarantineReason::MissingUid => "missing_uid",
            QuarantineReason::InvalidDate => "invalid_date",
            QuarantineReason::InvalidTimeRange => "invalid_time_range",
            QuarantineReason::InvalidEncoding => "invalid_encoding",
            QuarantineReason::InvalidAddress => "invalid_address",
        }
    }
}

impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub version: u32,
    pub reason: QuarantineReason,
    /// Human-readable detail: which limit, which value, which line.
    pub detail: String,
    /// The user(s) the message would have applied to.
    pub users: Vec<String>,
    pub direction: crate::Direction,
    pub sender: String,
    pub recipients: Vec<String>,
    pub message_id: Option<String>,
    pub dedupe_id: String,
    /// Which calendar object, when the reason concerns one object only.
    pub object_index: Option<u32>,
    pub ingested_at: DateTime<Utc>,
    /// Size in bytes of what was refused (message or calendar object).
    pub size: u64,
    /// The refused data, cut at `excerpt_limit` bytes (a quarantine record must
    /// itself fit in one NATS message).
    pub excerpt: String,
    pub truncated: bool,
}
