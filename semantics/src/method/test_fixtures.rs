//! Builders shared by the semantics' unit tests (`tests`, `trust_tests`,
//! `bounds_tests`, `uninvite_tests`, `queue_tests`, and the batch step's `apply::tests`): instants, a context, attendees and a payload, so that
//! each test file only spells out what its cases are about.

use crate::model::Ctx;
use chrono::{DateTime, Duration, Utc};
use imipflow_schema::{
    Attendee, Component, ComponentKind, Direction, Method, PartStat, Party, Payload, Time,
    Transparency,
};

/// An RFC 3339 instant.
pub(crate) fn z(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Floating times in UTC, reference instant 2027-03-01, a 366-day horizon.
pub(crate) fn ctx_with(max_instances: usize, managers: &[&str]) -> Ctx {
    Ctx {
        default_tz: chrono_tz::UTC,
        now: z("2027-03-01T00:00:00Z"),
        horizon: Duration::days(366),
        max_instances,
        managers: managers.iter().map(|m| m.to_string()).collect(),
    }
}

/// A required participant with `partstat` and nothing else.
pub(crate) fn att(address: &str, partstat: PartStat) -> Attendee {
    Attendee {
        address: address.into(),
        cn: None,
        partstat,
        role: "REQ-PARTICIPANT".into(),
        rsvp: false,
        delegated_to: vec![],
        delegated_from: vec![],
        sent_by: None,
    }
}

/// `user`'s own outgoing message with `components`, ingested at the
/// context's reference instant; tests change the other fields with `..`.
pub(crate) fn payload_of(user: &str, method: Method, components: Vec<Component>) -> Payload {
    Payload {
        version: imipflow_schema::PAYLOAD_VERSION,
        method,
        user: user.into(),
        direction: Direction::Outgoing,
        sender: user.into(),
        recipients: vec![],
        message_id: None,
        dedupe_id: "d".into(),
        object_index: 0,
        object_count: 1,
        ingested_at: z("2027-03-01T00:00:00Z"),
        components,
        timezones: Default::default(),
        warnings: vec![],
        raw: "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n".into(),
    }
}

/// An ORGANIZER with an address only.
pub(crate) fn party(address: &str) -> Party {
    Party {
        address: address.into(),
        cn: None,
        sent_by: None,
    }
}

/// A one-hour weekly series of `count` instances from `start` (UTC),
/// organised by `organizer`, SEQUENCE 0, with `attendees`.
pub(crate) fn weekly_meeting(
    uid: &str,
    start: &str,
    count: u32,
    organizer: &str,
    attendees: Vec<Attendee>,
) -> Component {
    let start = z(start);
    Component {
        kind: ComponentKind::Event,
        uid: uid.into(),
        recurrence_id: None,
        sequence: 0,
        dtstamp: Some(z("2027-01-01T00:00:00Z")),
        start: Some(Time::utc(start)),
        end: Some(Time::utc(start + Duration::hours(1))),
        duration_seconds: None,
        all_day: false,
        floating: false,
        rrule: vec![format!("FREQ=WEEKLY;COUNT={count}")],
        rdate: vec![],
        exdate: vec![],
        status: None,
        transp: Transparency::Opaque,
        summary: Some("Weekly".into()),
        organizer: Some(party(organizer)),
        attendees,
    }
}
