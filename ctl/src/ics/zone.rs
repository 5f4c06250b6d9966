//! VTIMEZONEs made from what a TZID resolved to, for `imip-ctl object --ics`
//! when no stored raw text carries one for that TZID (a sender that relied on
//! an IANA name alone, or rows stored before the raw text was kept).
//!
//! An IANA zone becomes calcard's own VTIMEZONE for the span the object needs
//! (its observances with yearly rules), a fixed offset one STANDARD
//! observance, and a VTIMEZONE's rules the observances they were read from.

use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarEntry, ICalendarProperty,
    ICalendarValue,
};
use chrono::{DateTime, NaiveDateTime};
use imipflow_schema::Zone;
use imipflow_schema::time::{Observance, YearlyRule, ZoneRules};

/// Writes the VTIMEZONE of `tzid`, resolved to `zone`, into `out` for the
/// instants [from, to]; returns its id, `None` when calcard knows no such zone.
pub fn write(out: &mut ICalendar, tzid: &str, zone: &Zone, from: i64, to: i64) -> Option<u32> {
    match zone {
        Zone::Iana { name } => {
            let id = out.add_timezone(name, from, to)?;
            // The TZID the times use, which may be a Windows name for `name`.
            let c = &mut out.components[id as usize];
            c.entries.retain(|e| e.name != ICalendarProperty::Tzid);
            c.entries.insert(0, tzid_entry(tzid));
            Some(id)
        }
        Zone::Fixed { offset_seconds } => {
            let epoch = DateTime::UNIX_EPOCH.naive_utc();
            let std = observance(false, epoch, *offset_seconds, *offset_seconds);
            Some(zone_with(out, tzid, vec![std]))
        }
        Zone::Rules(rules) => Some(zone_with(out, tzid, rule_observances(rules))),
    }
}

fn tzid_entry(tzid: &str) -> ICalendarEntry {
    ICalendarEntry::new(ICalendarProperty::Tzid).with_value(tzid.to_owned())
}

fn zone_with(out: &mut ICalendar, tzid: &str, observances: Vec<ICalendarComponent>) -> u32 {
    let mut ids = Vec::with_capacity(observances.len());
    for o in observances {
        out.components.push(o);
        ids.push((out.components.len() - 1) as u32);
    }
    let mut vtz = ICalendarComponent::new(ICalendarComponentType::VTimezone);
    vtz.entries.push(tzid_entry(tzid));
    vtz.component_ids = ids;
    out.components.push(vtz);
    (out.components.len() - 1) as u32
}

fn offset(seconds: i32) -> PartialDateTime {
    let s = seconds.unsigned_abs();
    PartialDateTime {
        tz_hour: u8::try_from(s / 3600).ok(),
        tz_minute: u8::try_from(s % 3600 / 60).ok(),
        tz_minus: seconds < 0,
        ..Default::default()
    }
}

fn observance(daylight: bool, start: NaiveDateTime, from: i32, to: i32) -> ICalendarComponent {
    let kind = if daylight {
        ICalendarComponentType::Daylight
    } else {
        ICalendarComponentType::Standard
    };
    let mut c = ICalendarComponent::new(kind);
    c.entries = vec![
        ICalendarEntry::new(ICalendarProperty::Dtstart).with_value(
            PartialDateTime::from_naive_timestamp(start.and_utc().timestamp()),
        ),
        ICalendarEntry::new(ICalendarProperty::Tzoffsetfrom).with_value(offset(from)),
        ICalendarEntry::new(ICalendarProperty::Tzoffsetto).with_value(offset(to)),
    ];
    c
}

/// The observances of a VTIMEZONE as ingest read them (ZoneRules), written back.
fn rule_observances(rules: &ZoneRules) -> Vec<ICalendarComponent> {
    rules
        .observances
        .iter()
        .map(|o: &Observance| {
            let mut c = observance(o.daylight, o.start, o.offset_from, o.offset_to);
            if let Some(rule) = &o.rule {
                c.entries.push(
                    ICalendarEntry::new(ICalendarProperty::Rrule).with_value(rule_text(rule)),
                );
            }
            if !o.rdates.is_empty() {
                let values: Vec<ICalendarValue> = o
                    .rdates
                    .iter()
                    .map(|r| PartialDateTime::from_naive_timestamp(r.and_utc().timestamp()).into())
                    .collect();
                c.entries
                    .push(ICalendarEntry::new(ICalendarProperty::Rdate).with_values(values));
            }
            c
        })
        .collect()
}

/// `FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU` (or `BYMONTHDAY`), `UNTIL` in UTC.
fn rule_text(r: &YearlyRule) -> String {
    const DAYS: [&str; 7] = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
    let mut s = format!("FREQ=YEARLY;BYMONTH={}", r.month);
    if let Some((n, wd)) = r.nth_weekday {
        let day = DAYS.get(usize::from(wd)).copied().unwrap_or("SU");
        s.push_str(&format!(";BYDAY={n}{day}"));
    } else if let Some(d) = r.month_day {
        s.push_str(&format!(";BYMONTHDAY={d}"));
    }
    if let Some(u) = r.until {
        s.push_str(&format!(";UNTIL={}", u.format("%Y%m%dT%H%M%SZ")));
    }
    if let Some(c) = r.count {
        s.push_str(&format!(";COUNT={c}"));
    }
    s
}
