//! The message `imip-ingest` publishes: one iTIP calendar object, parsed, for one user.
//!
//! The processor must never need to re-parse MIME, so the payload carries every
//! field the method semantics use, already typed, plus the raw iCalendar text for
//! storage and for anything a later version wants to re-read.

use crate::time::{Time, Zone};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bumped on any incompatible change; the processor refuses versions it does not know.
pub const PAYLOAD_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub version: u32,
    pub method: Method,
    /// Normalised address of the user whose records this message changes.
    pub user: String,
    pub direction: Direction,
    /// Envelope sender and recipients, normalised.
    pub sender: String,
    pub recipients: Vec<String>,
    /// The RFC 5322 Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The `Nats-Msg-Id` this payload was published with.
    pub dedupe_id: String,
    /// Which calendar object of the message this is (0-based), and how many it had.
    pub object_index: u32,
    pub object_count: u32,
    pub ingested_at: DateTime<Utc>,
    /// Scheduling components (VEVENT, VTODO, …), VTIMEZONEs excluded.
    pub components: Vec<Component>,
    /// Every TZID the components use, with what it resolved to; a TZID that
    /// resolved to nothing is absent and its times are floating.
    pub timezones: BTreeMap<String, Zone>,
    /// Things ingest noticed but did not refuse (an unknown TZID, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The iCalendar object as received (after transfer and charset decoding).
    pub raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sent by the user (the user is the envelope sender).
    Outgoing,
    /// Delivered to the user (the user is an envelope recipient).
    Incoming,
}

/// The iTIP method (RFC 5546 §1.4). Unknown methods are kept, not refused:
/// the processor records them as ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Method {
    Publish,
    Request,
    Reply,
    Add,
    Cancel,
    Refresh,
    Counter,
    DeclineCounter,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Publish => "PUBLISH",
            Method::Request => "REQUEST",
            Method::Reply => "REPLY",
            Method::Add => "ADD",
            Method::Cancel => "CANCEL",
            Method::Refresh => "REFRESH",
            Method::Counter => "COUNTER",
            Method::DeclineCounter => "DECLINECOUNTER",
            Method::Other(s) => s,
        }
    }
}

impl From<String> for Method {
    fn from(s: String) -> Self {
        match s.trim().to_ascii_uppercase().as_str() {
            "PUBLISH" => Method::Publish,
            "REQUEST" => Method::Request,
            "REPLY" => Method::Reply,
            "ADD" => Method::Add,
            "CANCEL" => Method::Cancel,
            "REFRESH" => Method::Refresh,
            "COUNTER" => Method::Counter,
            "DECLINECOUNTER" => Method::DeclineCounter,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl From<Method> for String {
    fn from(m: Method) -> Self {
        m.as_str().to_owned()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Generates a string-backed enum with an `Other` fallback, (de)serialised as
/// the iCalendar token.
macro_rules! token_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $token:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($variant,)+
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $token,)+
                    $name::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.trim().to_ascii_uppercase().as_str() {
                    $($token => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

token_enum!(
    /// Component type.
    ComponentKind {
        Event => "VEVENT",
        Todo => "VTODO",
        Journal => "VJOURNAL",
        FreeBusy => "VFREEBUSY",
    }
);

token_enum!(
    /// STATUS.
    Status {
        Tentative => "TENTATIVE",
        Confirmed => "CONFIRMED",
        Cancelled => "CANCELLED",
        NeedsAction => "NEEDS-ACTION",
        Completed => "COMPLETED",
        InProcess => "IN-PROCESS",
        Draft => "DRAFT",
        Final => "FINAL",
    }
);

token_enum!(
    /// PARTSTAT (RFC 5545 §3.2.12).
    PartStat {
        NeedsAction => "NEEDS-ACTION",
        Accepted => "ACCEPTED",
        Declined => "DECLINED",
        Tentative => "TENTATIVE",
        Delegated => "DELEGATED",
        Completed => "COMPLETED",
        InProcess => "IN-PROCESS",
    }
);

/// TRANSP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transparency {
    #[default]
    Opaque,
    Transparent,
}

/// RANGE of a RECURRENCE-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Range {
    ThisAndFuture,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurrenceId {
    pub time: Time,
    pub range: Option<Range>,
}

/// ORGANIZER, or the calendar-user part of an ATTENDEE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Normalised address (no `mailto:`, lower case).
    pub address: String,
    pub cn: Option<String>,
    /// SENT-BY, normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attendee {
    pub address: String,
    pub cn: Option<String>,
    pub partstat: PartStat,
    /// ROLE as written (REQ-PARTICIPANT when absent, per RFC 5545).
    pub role: String,
    pub rsvp: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegated_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegated_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_by: Option<String>,
}

/// One scheduling component of the calendar object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub kind: ComponentKind,
    pub uid: String,
    pub recurrence_id: Option<RecurrenceId>,
    pub sequence: i64,
    pub dtstamp: Option<DateTime<Utc>>,
    pub start: Option<Time>,
    /// DTEND (DUE for VTODO) as written, or computed from DURATION; absent when
    /// neither is given (an instant for date-times, one day for dates, RFC 5545 §3.6.1).
    pub end: Option<Time>,
    /// DURATION in seconds, when the component gave one instead of an end.
    pub duration_seconds: Option<i64>,
    pub all_day: bool,
    pub floating: bool,
    /// RRULE values, normalised to calcard's canonical order (`FREQ=WEEKLY;UNTIL=…;BYDAY=MO`).
    pub rrule: Vec<String>,
    pub rdate: Vec<Time>,
    pub exdate: Vec<Time>,
    pub status: Option<Status>,
    pub transp: Transparency,
    pub summary: Option<String>,
    pub organizer: Option<Party>,
    pub attendees: Vec<Attendee>,
}

impl Payload {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("payload serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_and_keep_unknown_ones() {
        for m in ["REQUEST", "reply", "DeclineCounter", "X-FOO"] {
            let method = Method::from(m.to_owned());
            let json = serde_json::to_string(&method).unwrap();
            let back: Method = serde_json::from_str(&json).unwrap();
            assert_eq!(back, method);
        }
        assert_eq!(Method::from("reply".to_owned()), Method::Reply);
        assert_eq!(
            Method::from("x-foo".to_owned()),
            Method::Other("X-FOO".into())
        );
    }

    #[test]
    fn token_enums_serialise_as_ical_tokens() {
        assert_eq!(
            serde_json::to_string(&PartStat::NeedsAction).unwrap(),
            "\"NEEDS-ACTION\""
        );
        assert_eq!(
            serde_json::to_string(&Transparency::Transparent).unwrap(),
            "\"TRANSPARENT\""
        );
        assert_eq!(
            serde_json::to_string(&Range::ThisAndFuture).unwrap(),
            "\"THISANDFUTURE\""
        );
        assert_eq!(PartStat::from("accepted"), PartStat::Accepted);
    }
}
