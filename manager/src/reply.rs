//! The iMIP REPLY (RFC 6047, RFC 5546 §3.2.3) a user's answer becomes: one
//! VEVENT with UID, RECURRENCE-ID, SEQUENCE, ORGANIZER, a fresh DTSTAMP, the
//! times as proposed, and the user's own ATTENDEE line with their PARTSTAT.

use crate::store::PendingRow;
use chrono::{DateTime, Utc};
use imipflow_schema::{PartStat, Time, TimeKind};

pub const PRODID: &str = "-//imipflow//imip-manager//EN";

/// An answer a user may give from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Tentative,
    Declined,
}

impl Answer {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACCEPTED" => Some(Answer::Accepted),
            "TENTATIVE" => Some(Answer::Tentative),
            "DECLINED" => Some(Answer::Declined),
            _ => None,
        }
    }

    pub fn partstat(self) -> PartStat {
        match self {
            Answer::Accepted => PartStat::Accepted,
            Answer::Tentative => PartStat::Tentative,
            Answer::Declined => PartStat::Declined,
        }
    }

    /// The verb of the mail's subject.
    pub fn verb(self) -> &'static str {
        match self {
            Answer::Accepted => "Accepted",
            Answer::Tentative => "Tentatively accepted",
            Answer::Declined => "Declined",
        }
    }
}

fn utc_stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// A DTSTART/DTEND line from a stored time: dates as dates, zoned and
/// floating times by their instant (the REPLY needs no VTIMEZONE then).
fn time_line(name: &str, t: &Time) -> Option<String> {
    match (&t.kind, t.utc) {
        (TimeKind::Date, _) => Some(format!("{name};VALUE=DATE:{}", t.local.replace('-', ""))),
        (_, Some(utc)) => Some(format!("{name}:{}", utc_stamp(utc))),
        (_, None) => Some(format!("{name}:{}", t.local.replace(['-', ':'], ""))),
    }
}

/// A parameter value, quoted when it holds what would end it (RFC 5545 §3.2).
fn param(v: &str) -> String {
    let v: String = v.chars().filter(|c| *c != '"' && !c.is_control()).collect();
    if v.contains([':', ';', ',']) {
        format!("\"{v}\"")
    } else {
        v
    }
}

/// A TEXT value (RFC 5545 §3.3.11): `\\`, `;`, `,` and newlines escaped, so
/// that a value the organizer chose (a UID holding `\n`, `;` or `,` once its
/// escapes were read) comes back as itself and cannot start a line of its
/// own. Other control characters have no escape in TEXT and are left out.
fn text(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Folds a content line at 75 octets, never inside a UTF-8 sequence.
fn fold(line: &str, out: &mut String) {
    let mut width = 0;
    for ch in line.chars() {
        let n = ch.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(ch);
        width += n;
    }
    out.push_str("\r\n");
}

/// The REPLY of `user` to `entry`, stamped `now`.
pub fn compose(entry: &PendingRow, user: &str, answer: Answer, now: DateTime<Utc>) -> String {
    let main = entry.main();
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_owned(),
        format!("PRODID:{PRODID}"),
        "VERSION:2.0".to_owned(),
        "METHOD:REPLY".to_owned(),
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}", text(&entry.uid)),
    ];
    if let Some(rid) = entry.recurrence_id {
        lines.push(format!("RECURRENCE-ID:{}", utc_stamp(rid)));
    }
    lines.push(format!("SEQUENCE:{}", entry.sequence));
    lines.push(format!("DTSTAMP:{}", utc_stamp(now)));
    if let Some(c) = main {
        lines.extend(c.start.as_ref().and_then(|t| time_line("DTSTART", t)));
        lines.extend(c.end.as_ref().and_then(|t| time_line("DTEND", t)));
    }
    let organizer = main.and_then(|c| c.organizer.as_ref());
    match (organizer, &entry.organizer) {
        (Some(o), _) => lines.push(match &o.cn {
            Some(cn) => format!("ORGANIZER;CN={}:mailto:{}", param(cn), o.address),
            None => format!("ORGANIZER:mailto:{}", o.address),
        }),
        (None, Some(o)) => lines.push(format!("ORGANIZER:mailto:{o}")),
        (None, None) => {}
    }
    let cn = main
        .and_then(|c| c.attendees.iter().find(|a| a.address == user))
        .and_then(|a| a.cn.as_ref());
    lines.push(match cn {
        Some(cn) => format!(
            "ATTENDEE;PARTSTAT={};CN={}:mailto:{user}",
            answer.partstat(),
            param(cn)
        ),
        None => format!("ATTENDEE;PARTSTAT={}:mailto:{user}", answer.partstat()),
    });
    lines.push("END:VEVENT".to_owned());
    lines.push("END:VCALENDAR".to_owned());
    let mut out = String::new();
    for l in &lines {
        fold(l, &mut out);
    }
    out
}

/// The organizer's address a reply goes to.
pub fn organizer(entry: &PendingRow) -> Option<String> {
    entry
        .main()
        .and_then(|c| c.organizer.as_ref().map(|o| o.address.clone()))
        .or_else(|| entry.organizer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imipflow_schema::{Attendee, Component, ComponentKind, Party, RecurrenceId, Transparency};

    fn entry() -> PendingRow {
        let rid: DateTime<Utc> = "2027-03-16T09:00:00Z".parse().unwrap();
        PendingRow {
            uid: "u1@example.com".into(),
            recurrence_id: Some(rid),
            organizer: Some("alice@example.com".into()),
            summary: Some("Planning".into()),
            sequence: 3,
            components: vec![Component {
                kind: ComponentKind::Event,
                uid: "u1@example.com".into(),
                recurrence_id: Some(RecurrenceId {
                    time: Time::utc(rid),
                    range: None,
                }),
                sequence: 3,
                dtstamp: None,
                start: Some(Time::utc("2027-03-16T10:00:00Z".parse().unwrap())),
                end: Some(Time::utc("2027-03-16T11:00:00Z".parse().unwrap())),
                duration_seconds: None,
                all_day: false,
                floating: false,
                rrule: vec![],
                rdate: vec![],
                exdate: vec![],
                status: None,
                transp: Transparency::Opaque,
                summary: Some("Planning".into()),
                organizer: Some(Party {
                    address: "alice@example.com".into(),
                    cn: Some("Alice, A.".into()),
                    sent_by: None,
                }),
                attendees: vec![Attendee {
                    address: "bob@example.org".into(),
                    cn: Some("Bob".into()),
                    partstat: PartStat::NeedsAction,
                    role: "REQ-PARTICIPANT".into(),
                    rsvp: true,
                    delegated_to: vec![],
                    delegated_from: vec![],
                    sent_by: None,
                }],
            }],
            stored: None,
        }
    }

    #[test]
    fn a_reply_holds_the_users_single_attendee_line() {
        let now = "2027-03-01T12:00:00Z".parse().unwrap();
        let ics = compose(&entry(), "bob@example.org", Answer::Tentative, now);
        assert_eq!(
            ics,
            "BEGIN:VCALENDAR\r\nPRODID:-//imipflow//imip-manager//EN\r\nVERSION:2.0\r\n\
             METHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:u1@example.com\r\n\
             RECURRENCE-ID:20270316T090000Z\r\nSEQUENCE:3\r\nDTSTAMP:20270301T120000Z\r\n\
             DTSTART:20270316T100000Z\r\nDTEND:20270316T110000Z\r\n\
             ORGANIZER;CN=\"Alice, A.\":mailto:alice@example.com\r\n\
             ATTENDEE;PARTSTAT=TENTATIVE;CN=Bob:mailto:bob@example.org\r\n\
             END:VEVENT\r\nEND:VCALENDAR\r\n"
        );
    }

    #[test]
    fn a_hostile_uid_stays_on_its_line() {
        let mut e = entry();
        e.uid = "inj\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:carol@example.net, \\x".into();
        let ics = compose(
            &e,
            "bob@example.org",
            Answer::Accepted,
            "2027-03-01T12:00:00Z".parse().unwrap(),
        );
        assert!(
            ics.replace("\r\n ", "").contains(
                "\r\nUID:inj\\nATTENDEE\\;PARTSTAT=ACCEPTED:mailto:carol@example.net\\, \\\\x\r\n"
            ),
            "{ics}"
        );
        assert_eq!(ics.matches("\r\nATTENDEE").count(), 1, "{ics}");
    }

    #[test]
    fn long_lines_fold_at_75_octets() {
        let mut out = String::new();
        fold(&format!("SUMMARY:{}", "é".repeat(60)), &mut out);
        for l in out.split("\r\n") {
            assert!(l.len() <= 75, "{l:?}");
        }
        assert_eq!(
            out.replace("\r\n ", ""),
            format!("SUMMARY:{}\r\n", "é".repeat(60))
        );
    }
}
