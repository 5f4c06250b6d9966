//! From one iCalendar object (text) to the typed components of a payload.
//!
//! calcard parses; this module decides what the fields mean for scheduling:
//! which times are instants, which are floating or whole days, what an absent
//! DTEND means, and which objects are too broken or too big to pass on.
//! [`parse_object`] is the entry; the steps live beside it: [`syntax`] reads
//! date text strictly before calcard does, [`component`] reads one scheduling
//! component, with [`time`] for its times and [`parties`] for its organizer
//! and attendees, and [`series`] estimates what its recurrence costs.

mod component;
mod parties;
mod series;
mod syntax;
mod time;

pub use series::{ASSUMED_HORIZON_DAYS, ASSUMED_MAX_INSTANCES, Series};

use crate::config::Limits;
use crate::tz::ZoneResolver;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarProperty,
};
use component::component;
use imipflow_schema::{Component, ComponentKind, Method, QuarantineReason, Zone};
use std::collections::BTreeMap;
use syntax::check_date_syntax;

/// A calendar object ready to become payloads.
#[derive(Debug)]
pub struct Parsed {
    pub method: Method,
    pub components: Vec<Component>,
    pub timezones: BTreeMap<String, Zone>,
    pub warnings: Vec<String>,
    /// What each component's recurrence may cost, for the limits per message.
    pub series: Vec<Series>,
}

/// `text` as a quarantine detail shows it: at most 100 bytes of it (the
/// record's excerpt has the rest).
pub fn shown(text: &str) -> String {
    if text.len() <= 100 {
        return text.to_owned();
    }
    let mut end = 100;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Why an object was refused, for the quarantine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: QuarantineReason,
    pub detail: String,
}

fn refuse(reason: QuarantineReason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// Splits a calendar part into its VCALENDAR blocks (a part may hold several,
/// RFC 5545 §3.4). Text outside any block is ignored; an unterminated block runs
/// to the end of the part and is left to the parser to judge.
pub fn split_vcalendars(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line
            .trim_end_matches(['\r', '\n'])
            .trim_start_matches('\u{feff}');
        if start.is_none() && t.eq_ignore_ascii_case("BEGIN:VCALENDAR") {
            start = Some(pos);
        } else if t.eq_ignore_ascii_case("END:VCALENDAR")
            && let Some(s) = start.take()
        {
            blocks.push(&text[s..pos + line.len()]);
        }
        pos += line.len();
    }
    if let Some(s) = start {
        blocks.push(&text[s..]);
    }
    blocks
}

/// The METHOD of a parsed calendar, or the Content-Type's `method=` when the
/// object itself has none (RFC 6047 requires both; some clients drop one).
pub fn method_of(ical: &ICalendar, method_param: Option<&str>) -> Option<Method> {
    let root = ical.components.first()?;
    root.property(&ICalendarProperty::Method)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
        .map(|s| Method::from(s.to_owned()))
        .or_else(|| method_param.map(|m| Method::from(m.to_owned())))
}

/// Whether some line of `text` is a METHOD property (without parsing it all).
fn has_method_line(text: &str) -> bool {
    text.lines().any(|l| {
        l.trim_start()
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("METHOD:") || p.eq_ignore_ascii_case("METHOD;"))
    })
}

/// Parses one VCALENDAR block. `Ok(None)`: valid but not iMIP (no METHOD).
pub fn parse_object(
    text: &str,
    method_param: Option<&str>,
    limits: &Limits,
) -> Result<Option<Parsed>, Refusal> {
    // The payload carries the raw text, so an object larger than the payload
    // limit can never become one: refuse it before parsing, which would cost
    // many times its size in memory (500,000 nested VEVENTs in 16 MiB: 377 MiB).
    if text.len() > limits.max_payload_bytes {
        if method_param.is_none() && !has_method_line(text) {
            return Ok(None);
        }
        return Err(refuse(
            QuarantineReason::PayloadTooLarge,
            format!(
                "calendar object of {} bytes, payload limit {}",
                text.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    check_date_syntax(text)?;
    let ical = ICalendar::parse(text).map_err(|e| {
        refuse(
            QuarantineReason::InvalidCalendar,
            format!("not iCalendar: {e:?}"),
        )
    })?;
    let root = vcalendar_root(&ical)?;
    let Some(method) = method_of(&ical, method_param) else {
        return Ok(None);
    };
    let scheduling = scheduling_components(&ical, root, limits)?;

    let mut zones = ZoneResolver::new(&ical);
    let mut warnings = Vec::new();
    let mut components = Vec::with_capacity(scheduling.len());
    let mut series = Vec::with_capacity(scheduling.len());
    for c in scheduling {
        let (component, s) = component(c, &mut zones, &mut warnings, limits)?;
        components.push(component);
        series.push(s);
    }
    Ok(Some(Parsed {
        method,
        components,
        timezones: zones.used(),
        warnings,
        series,
    }))
}

/// The calendar's first component, which must be a VCALENDAR.
fn vcalendar_root(ical: &ICalendar) -> Result<&ICalendarComponent, Refusal> {
    let Some(root) = ical.components.first() else {
        return Err(refuse(QuarantineReason::InvalidCalendar, "empty calendar"));
    };
    if root.component_type != ICalendarComponentType::VCalendar {
        return Err(refuse(
            QuarantineReason::InvalidCalendar,
            format!("top-level component is {}", root.component_type.as_str()),
        ));
    }
    Ok(root)
}

/// The components of `root` that scheduling knows, at least one and at most
/// the limit.
fn scheduling_components<'i>(
    ical: &'i ICalendar,
    root: &ICalendarComponent,
    limits: &Limits,
) -> Result<Vec<&'i ICalendarComponent>, Refusal> {
    let scheduling: Vec<&ICalendarComponent> = root
        .component_ids
        .iter()
        .filter_map(|id| ical.components.get(*id as usize))
        // RFC 5545 §3.6: components an application does not know (`X-…`,
        // VAVAILABILITY, …) are ignored, so they cannot quarantine the
        // VEVENTs beside them (Zimbra writes empty X- components).
        .filter(|c| {
            !matches!(
                ComponentKind::from(c.component_type.as_str()),
                ComponentKind::Other(_)
            )
        })
        .collect();
    if scheduling.is_empty() {
        return Err(refuse(
            QuarantineReason::InvalidCalendar,
            "no scheduling component (VEVENT, VTODO, VJOURNAL, VFREEBUSY)",
        ));
    }
    if scheduling.len() > limits.max_components {
        return Err(refuse(
            QuarantineReason::TooManyComponents,
            format!(
                "{} components, limit {}",
                scheduling.len(),
                limits.max_components
            ),
        ));
    }
    Ok(scheduling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use imipflow_schema::{PartStat, TimeKind};

    const REQ: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\nUID:u1\r\nSEQUENCE:2\r\nDTSTAMP:20270301T120000Z\r\nDTSTART;TZID=W. Europe Standard Time:20270315T090000\r\nDTEND;TZID=W. Europe Standard Time:20270315T100000\r\nRRULE:FREQ=WEEKLY;COUNT=5\r\nORGANIZER;CN=Alice:mailto:Alice@Example.com\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org\r\nATTENDEE:mailto:carol@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn windows_zone_names_resolve_to_iana() {
        let p = parse_object(REQ, None, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(p.method, Method::Request);
        let c = &p.components[0];
        assert_eq!(c.uid, "u1");
        assert_eq!(c.sequence, 2);
        let s = c.start.as_ref().unwrap();
        assert_eq!(s.utc.unwrap().to_rfc3339(), "2027-03-15T08:00:00+00:00");
        assert_eq!(s.tzid.as_deref(), Some("W. Europe Standard Time"));
        assert_eq!(s.kind, TimeKind::Zoned);
        assert_eq!(
            p.timezones["W. Europe Standard Time"],
            Zone::Iana {
                name: "Europe/Berlin".into()
            }
        );
        assert_eq!(c.organizer.as_ref().unwrap().address, "alice@example.com");
        assert_eq!(c.attendees[0].partstat, PartStat::Accepted);
        assert_eq!(c.attendees[1].partstat, PartStat::NeedsAction);
        assert_eq!(c.rrule, vec!["FREQ=WEEKLY;COUNT=5".to_owned()]);
    }

    #[test]
    fn without_method_is_not_imip() {
        let t = REQ.replace("METHOD:REQUEST\r\n", "");
        assert!(
            parse_object(&t, None, &Limits::default())
                .unwrap()
                .is_none()
        );
        let p = parse_object(&t, Some("REQUEST"), &Limits::default()).unwrap();
        assert_eq!(p.unwrap().method, Method::Request);
    }

    #[test]
    fn refusals() {
        let no_uid = REQ.replace("UID:u1\r\n", "");
        assert_eq!(
            parse_object(&no_uid, None, &Limits::default())
                .unwrap_err()
                .reason,
            QuarantineReason::MissingUid
        );
        let backwards = REQ.replace("20270315T100000", "20270315T080000");
        assert_eq!(
            parse_object(&backwards, None, &Limits::default())
                .unwrap_err()
                .reason,
            QuarantineReason::InvalidTimeRange
        );
        let limits = Limits {
            max_attendees: 1,
            ..Limits::default()
        };
        assert_eq!(
            parse_object(REQ, None, &limits).unwrap_err().reason,
            QuarantineReason::TooManyAttendees
        );
    }

    #[test]
    fn series_estimates_what_the_processor_would_materialise() {
        let now = Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap();
        let estimate = |rule: &str| {
            let t = REQ.replace("RRULE:FREQ=WEEKLY;COUNT=5", rule);
            let p = parse_object(&t, None, &Limits::default()).unwrap().unwrap();
            p.series[0].instances(now)
        };
        assert_eq!(estimate("RRULE:FREQ=WEEKLY;COUNT=5"), 5);
        assert_eq!(estimate("RRULE:FREQ=HOURLY"), ASSUMED_MAX_INSTANCES);
        // 2027-03-15 to 2028-03-01: 353 days.
        assert_eq!(estimate("RRULE:FREQ=DAILY"), 352);
        assert_eq!(estimate("RRULE:FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"), 51 * 5);
        assert_eq!(estimate("RRULE:FREQ=YEARLY;UNTIL=20291231T000000Z"), 1);
        assert_eq!(
            estimate("RRULE:FREQ=DAILY;COUNT=30;BYHOUR=9,10,11,12;BYMINUTE=0,30"),
            30
        );
        assert_eq!(
            estimate("RRULE:FREQ=DAILY;UNTIL=20270321T000000Z;BYHOUR=9,10,11,12;BYMINUTE=0,30"),
            6 * 8
        );
        assert_eq!(
            estimate("RRULE:FREQ=MONTHLY;BYDAY=1MO,-1FR;COUNT=100"),
            12 * 2
        );
        let plain = REQ.replace("RRULE:FREQ=WEEKLY;COUNT=5\r\n", "");
        let p = parse_object(&plain, None, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(p.series[0].instances(now), 1);
    }

    #[test]
    fn long_uids_and_addresses_are_refused() {
        let long_uid = REQ.replace("UID:u1", &format!("UID:{}", "u".repeat(1001)));
        assert_eq!(
            parse_object(&long_uid, None, &Limits::default())
                .unwrap_err()
                .reason,
            QuarantineReason::ValueTooLong
        );
        let long_attendee = REQ.replace(
            "mailto:carol@example.org",
            &format!("mailto:{}@example.org", "c".repeat(243)),
        );
        assert_eq!(
            parse_object(&long_attendee, None, &Limits::default())
                .unwrap_err()
                .reason,
            QuarantineReason::ValueTooLong
        );
    }

    #[test]
    fn date_values_are_read_strictly() {
        for bad in [
            "19970701T13000Z",
            "19970701T1300Z",
            "19970701T1100000Z",
            "1997070",
            "19970701T",
        ] {
            let t = REQ.replace(
                "DTSTART;TZID=W. Europe Standard Time:20270315T090000",
                &format!("DTSTART:{bad}"),
            );
            let r = parse_object(&t, None, &Limits::default()).unwrap_err();
            assert_eq!(r.reason, QuarantineReason::InvalidDate, "{bad}");
        }
        for good in ["20270315T090000Z", "20270315", "20270315t090000z"] {
            let t = REQ.replace(
                "DTSTART;TZID=W. Europe Standard Time:20270315T090000",
                &format!("DTSTART:{good}"),
            );
            let t = t.replace("DTEND;TZID=W. Europe Standard Time:20270315T100000\r\n", "");
            assert!(parse_object(&t, None, &Limits::default()).is_ok(), "{good}");
        }
        // A quoted TZID holds a colon; a period's end may be a duration.
        let t = REQ.replace(
            "RRULE:FREQ=WEEKLY;COUNT=5",
            "RDATE;VALUE=PERIOD:20270401T090000Z/PT1H,20270402T090000Z/20270402T100000Z\r\nEXDATE;TZID=\"(UTC+01:00) X\":20270322T090000",
        );
        assert!(parse_object(&t, None, &Limits::default()).is_ok());
    }

    #[test]
    fn standard_names() {
        use crate::tz::standard_zone;
        let name = |t: &str| standard_zone(t).map(|z| z.name().to_owned());
        assert_eq!(name("Europe/Athens").as_deref(), Some("Europe/Athens"));
        assert_eq!(
            name("GTB Standard Time").as_deref(),
            Some("Europe/Bucharest")
        );
        assert_eq!(
            name("/freeassociation.sourceforge.net/Tzfile/Europe/Athens").as_deref(),
            Some("Europe/Athens")
        );
        assert_eq!(
            name("/softwarestudio.org/Olson_20011030_5/America/Chicago").as_deref(),
            Some("America/Chicago")
        );
        for guess in [
            "(UTC+02:00) Athens, Bucharest",
            "FLE",
            "Athens, Istanbul, Minsk",
            "Customized Time Zone",
        ] {
            assert_eq!(name(guess), None, "{guess}");
        }
    }

    #[test]
    fn splits_several_calendars() {
        let two = format!("junk\r\n{REQ}{REQ}");
        assert_eq!(split_vcalendars(&two).len(), 2);
        assert_eq!(split_vcalendars("BEGIN:VCALENDAR\nX:1\n").len(), 1);
        assert!(split_vcalendars("<html>").is_empty());
    }
}
