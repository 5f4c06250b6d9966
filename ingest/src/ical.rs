//! From one iCalendar object (text) to the typed components of a payload.
//!
//! calcard parses; this module decides what the fields mean for scheduling:
//! which times are instants, which are floating or whole days, what an absent
//! DTEND means, and which objects are too broken or too big to pass on.

use crate::config::Limits;
use crate::tz::{ZoneResolver, naive};
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarEntry, ICalendarFrequency,
    ICalendarParameterName, ICalendarParameterValue, ICalendarProperty, ICalendarRecurrenceRule,
    ICalendarValue,
};
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use imipflow_schema::{
    Attendee, Component, ComponentKind, MAX_ADDRESS_BYTES, Method, PartStat, Party,
    QuarantineReason, Range, RecurrenceId, Status, Time, TimeKind, Transparency, Zone,
    normalize_address,
};
use std::collections::BTreeMap;

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

/// How many instances a series can make, per day of the processor's horizon:
/// the processor materialises every instance from DTSTART to a year ahead,
/// at most 5,000 per UID (processor/src/config.rs, `IMIP_HORIZON_DAYS`).
/// Ingest does not know the processor's settings; these are its defaults.
pub const ASSUMED_HORIZON_DAYS: i64 = 366;
pub const ASSUMED_MAX_INSTANCES: u64 = 5000;

/// One component's recurrence, in the terms of [`Series::instances`].
#[derive(Debug, Clone)]
pub struct Series {
    /// DTSTART (UTC, or the local time of a floating or all-day start).
    start: Option<NaiveDateTime>,
    rules: Vec<Rule>,
    rdates: u64,
    /// RRULE + RDATE + EXDATE values.
    pub values: usize,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Seconds from one period of FREQ × INTERVAL to the next (months and
    /// years at their average length).
    step: i64,
    /// Instances one period can hold, from the BYxxx parts that expand it.
    per_step: u64,
    until: Option<NaiveDateTime>,
    count: Option<u32>,
}

impl Series {
    /// An estimate of the instances (free/busy records) the processor would
    /// make of this component, meant to refuse early what no invitation does
    /// (the processor bounds the exact count): for each rule, its periods from
    /// DTSTART to its end or a year after `now`, times what each period holds,
    /// capped by COUNT; plus RDATEs; at most [`ASSUMED_MAX_INSTANCES`]. A
    /// component without rules is one instance. The BYxxx parts that only
    /// limit a rule are taken as not limiting (an over-estimate), and so is a
    /// BYDAY without an ordinal (5 a month, 53 a year).
    pub fn instances(&self, now: DateTime<Utc>) -> u64 {
        if self.rules.is_empty() {
            return (1 + self.rdates).min(ASSUMED_MAX_INSTANCES);
        }
        let horizon = now.naive_utc() + Duration::days(ASSUMED_HORIZON_DAYS);
        let start = self.start.unwrap_or(now.naive_utc());
        let mut total = self.rdates;
        for r in &self.rules {
            let end = r.until.map_or(horizon, |u| u.min(horizon));
            let span = (end - start).num_seconds().max(0);
            let periods = (span / r.step.max(1)) as u64 + 1;
            let mut n = periods.saturating_mul(r.per_step);
            if let Some(c) = r.count {
                n = n.min(u64::from(c));
            }
            total = total.saturating_add(n);
        }
        total.min(ASSUMED_MAX_INSTANCES)
    }
}

fn rule_shape(r: &ICalendarRecurrenceRule) -> Rule {
    use ICalendarFrequency::*;
    const DAY: i64 = 86_400;
    let base = match r.freq {
        Secondly => 1,
        Minutely => 60,
        Hourly => 3600,
        Daily => DAY,
        Weekly => 7 * DAY,
        Monthly => 2_629_746,
        Yearly => 31_556_952,
    };
    let n = |len: usize| len.max(1) as u64;
    // RFC 5545 §3.3.10: a BYxxx part finer than FREQ expands each period.
    let mut per = 1u64;
    if r.freq < Secondly {
        per = per.saturating_mul(n(r.bysecond.len()));
    }
    if r.freq < Minutely {
        per = per.saturating_mul(n(r.byminute.len()));
    }
    if r.freq < Hourly {
        per = per.saturating_mul(n(r.byhour.len()));
    }
    let days = |weeks: u64| -> u64 {
        r.byday
            .iter()
            .map(|d| if d.ordwk.is_some() { 1 } else { weeks })
            .sum::<u64>()
            .max(1)
    };
    let months = n(r.bymonth.len());
    per = per.saturating_mul(match r.freq {
        Weekly => n(r.byday.len()),
        Monthly if !r.bymonthday.is_empty() => n(r.bymonthday.len()),
        Monthly => days(5),
        Yearly if !r.byyearday.is_empty() => n(r.byyearday.len()),
        Yearly if !r.byweekno.is_empty() => n(r.byweekno.len()) * days(1).max(7),
        Yearly if !r.bymonthday.is_empty() => {
            n(r.bymonthday.len()) * if r.bymonth.is_empty() { 12 } else { months }
        }
        Yearly if !r.byday.is_empty() && r.bymonth.is_empty() => days(53),
        Yearly if !r.byday.is_empty() => days(5) * months,
        Yearly => months,
        _ => 1,
    });
    if !r.bysetpos.is_empty() {
        per = per.min(r.bysetpos.len() as u64);
    }
    Rule {
        step: base * i64::from(r.interval.unwrap_or(1).max(1)),
        per_step: per,
        until: r.until.as_ref().and_then(naive),
        count: r.count,
    }
}

/// Whether a normalised ORGANIZER/ATTENDEE value is a mail address at all:
/// one `@` between a non-empty local part and a dotless-or-dotted domain, no
/// white space, no URI scheme left over (`mailto` alone, `invalid:nomail`,
/// `bob smith@example.org` are not).
fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains(['@', ':'])
        && !local.contains(':')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// The date and date-time properties of a scheduling component whose values
/// ingest turns into instants.
const DATE_PROPERTIES: [&str; 6] = [
    "DTSTART",
    "DTEND",
    "DUE",
    "RECURRENCE-ID",
    "RDATE",
    "EXDATE",
];

/// Checks the text of every date or date-time value of a scheduling
/// component against RFC 5545 §3.3.4/§3.3.5 (`YYYYMMDD`, `YYYYMMDDTHHMMSS`,
/// optionally `Z`; RDATE periods `start/end` or `start/duration`). calcard
/// reads leniently: `19970701T13000Z` (five time digits, in libical's test
/// data) came out as a floating 13:00, a guessed time with its `Z` lost. A
/// value that does not match is unreadable, and the object is quarantined.
fn check_date_syntax(text: &str) -> Result<(), Refusal> {
    let mut depth_in_scheduling: Option<usize> = None;
    let mut depth = 0usize;
    // The unfolded line of a date property being read; other lines are
    // only looked at, never copied (this runs on every object).
    let mut logical = String::new();
    let mut collecting = false;
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.starts_with([' ', '\t']) {
            if collecting {
                logical.push_str(&raw[1..]);
            }
            continue;
        }
        if collecting {
            check_date_line(&logical)?;
            collecting = false;
        }
        if depth_in_scheduling.is_some() && is_date_property(raw) {
            logical.clear();
            logical.push_str(raw);
            collecting = true;
            continue;
        }
        let t = raw.trim();
        if t.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("BEGIN:")) {
            depth += 1;
            // Lines of a VALARM inside the component are checked too: a
            // VALARM has no such properties, and a nested VEVENT's are read.
            if depth_in_scheduling.is_none()
                && !matches!(ComponentKind::from(t[6..].trim()), ComponentKind::Other(_))
            {
                depth_in_scheduling = Some(depth);
            }
        } else if t.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("END:")) {
            if depth_in_scheduling == Some(depth) {
                depth_in_scheduling = None;
            }
            depth = depth.saturating_sub(1);
        }
    }
    if collecting {
        check_date_line(&logical)?;
    }
    Ok(())
}

/// Whether a content line is one of [`DATE_PROPERTIES`], by its name alone.
fn is_date_property(line: &str) -> bool {
    let name = line.split([';', ':']).next().unwrap_or("").trim_end();
    DATE_PROPERTIES.iter().any(|p| p.eq_ignore_ascii_case(name))
}

fn check_date_line(line: &str) -> Result<(), Refusal> {
    let Some((name_params, value)) = split_property(line) else {
        return Ok(());
    };
    let name = name_params.split(';').next().unwrap_or("").trim();
    for token in value.split(',') {
        let token = token.trim();
        let start = token.split('/').next().unwrap_or("");
        let end = token.split_once('/').map(|(_, e)| e);
        let ok = is_date_or_date_time(start)
            && end.is_none_or(|e| is_date_or_date_time(e) || e.starts_with(['P', 'p', '+', '-']));
        if !ok {
            return Err(refuse(
                QuarantineReason::InvalidDate,
                format!(
                    "{}: unreadable value {:?}",
                    name.to_ascii_uppercase(),
                    shown(token)
                ),
            ));
        }
    }
    Ok(())
}

/// `NAME;PARAMS` and the value of one unfolded content line: the first colon
/// outside a quoted parameter value (`TZID="(UTC+02:00) Athens, Bucharest"`).
fn split_property(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, b) in line.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b':' if !quoted => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

fn is_date_or_date_time(v: &str) -> bool {
    let b = v.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match b.len() {
        8 => digits(b),
        15 => digits(&b[..8]) && b[8].eq_ignore_ascii_case(&b'T') && digits(&b[9..]),
        16 => {
            digits(&b[..8])
                && b[8].eq_ignore_ascii_case(&b'T')
                && digits(&b[9..15])
                && b[15].eq_ignore_ascii_case(&b'Z')
        }
        _ => false,
    }
}

/// An address from the message longer than an RFC 5321 path allows: it
/// cannot be anyone's, and the store keys attendees by it.
fn check_address(what: &str, address: &str, uid: &str) -> Result<(), Refusal> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(refuse(
            QuarantineReason::ValueTooLong,
            format!(
                "{what} address of {} bytes in {}, limit {MAX_ADDRESS_BYTES}",
                address.len(),
                shown(uid)
            ),
        ));
    }
    Ok(())
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
    let Some(root) = ical.components.first() else {
        return Err(refuse(QuarantineReason::InvalidCalendar, "empty calendar"));
    };
    if root.component_type != ICalendarComponentType::VCalendar {
        return Err(refuse(
            QuarantineReason::InvalidCalendar,
            format!("top-level component is {}", root.component_type.as_str()),
        ));
    }
    let Some(method) = method_of(&ical, method_param) else {
        return Ok(None);
    };

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

fn first_text(c: &ICalendarComponent, p: ICalendarProperty) -> Option<&str> {
    c.property(&p)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
}

fn param_text(e: &ICalendarEntry, name: ICalendarParameterName) -> Option<&str> {
    e.parameter(&name).and_then(|v| v.as_text())
}

fn param_addresses(e: &ICalendarEntry, name: ICalendarParameterName) -> Vec<String> {
    e.parameters(&name)
        .filter_map(|v| v.as_text())
        .flat_map(|s| s.split(','))
        .filter_map(|s| normalize_address(s.trim_matches('"')))
        .collect()
}

/// Converts one date/date-time value. `what` names the property for errors.
fn time_value(
    v: &ICalendarValue,
    tzid: Option<&str>,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
    what: &str,
) -> Result<Time, Refusal> {
    let bad = || {
        refuse(
            QuarantineReason::InvalidDate,
            format!("{what}: unreadable value"),
        )
    };
    let p = match v {
        ICalendarValue::PartialDateTime(p) => p,
        ICalendarValue::Period(period) => match period {
            calcard::icalendar::ICalendarPeriod::Range { start, .. }
            | calcard::icalendar::ICalendarPeriod::Duration { start, .. } => start,
        },
        ICalendarValue::Text(t) => {
            return Err(refuse(
                QuarantineReason::InvalidDate,
                format!("{what}: unreadable value {t:?}"),
            ));
        }
        _ => return Err(bad()),
    };
    let local = naive(p).ok_or_else(bad)?;
    if !p.has_time() {
        return Ok(Time::date(local.date()));
    }
    if p.tz_hour.is_some() {
        // An explicit offset: `Z` (or, leniently, ±hh:mm).
        let secs =
            i64::from(p.tz_hour.unwrap_or(0)) * 3600 + i64::from(p.tz_minute.unwrap_or(0)) * 60;
        let secs = if p.tz_minus { -secs } else { secs };
        return Ok(Time::utc(
            Utc.from_utc_datetime(&(local - Duration::seconds(secs))),
        ));
    }
    match tzid {
        None => Ok(Time::floating(local, None)),
        Some(id) => match zones.resolve(id) {
            Some(zone) => {
                let utc = zone.to_utc(local).ok_or_else(bad)?;
                // An EXDATE or RECURRENCE-ID only names an instance, which
                // it still matches in the zone used; checking it says nothing.
                if !matches!(what, "EXDATE" | "RECURRENCE-ID")
                    && let Some(w) = zones.disagreement(id, local, utc)
                {
                    warnings.push(w);
                }
                Ok(Time::zoned(local, id, utc))
            }
            None => {
                let w = format!("unknown TZID {id:?}: {what} treated as floating");
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
                Ok(Time::floating(local, Some(id)))
            }
        },
    }
}

fn entry_time(
    e: &ICalendarEntry,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
    what: &str,
) -> Result<Time, Refusal> {
    let v = e
        .values
        .first()
        .ok_or_else(|| refuse(QuarantineReason::InvalidDate, format!("{what}: empty")))?;
    time_value(v, e.tz_id(), zones, warnings, what)
}

fn duration_of(e: &ICalendarEntry) -> Result<(i64, i64), Refusal> {
    match e.values.first() {
        Some(ICalendarValue::Duration(d)) => {
            // Days and weeks are nominal (they follow the wall clock across DST).
            let days = i64::from(d.weeks) * 7 + i64::from(d.days);
            let exact =
                i64::from(d.hours) * 3600 + i64::from(d.minutes) * 60 + i64::from(d.seconds);
            if d.neg && (days != 0 || exact != 0) {
                Err(refuse(
                    QuarantineReason::InvalidTimeRange,
                    "negative DURATION",
                ))
            } else {
                Ok((days, exact))
            }
        }
        _ => Err(refuse(
            QuarantineReason::InvalidDate,
            "DURATION: unreadable value",
        )),
    }
}

/// End of a component that gives a DURATION: nominal days on the wall clock,
/// then exact seconds. `None` when the end is past what a date can hold
/// (`DURATION:P4294967295W`; checked arithmetic, since `+` panics there).
fn end_from_duration(
    start: &Time,
    days: i64,
    exact: i64,
    zones: &mut ZoneResolver<'_>,
) -> Option<Time> {
    let (days, exact) = (Duration::try_days(days)?, Duration::try_seconds(exact)?);
    let local = start.naive_local()?.checked_add_signed(days)?;
    Some(match start.kind {
        TimeKind::Date if exact.is_zero() => Time::date(local.date()),
        TimeKind::Date | TimeKind::Floating => {
            Time::floating(local.checked_add_signed(exact)?, start.tzid.as_deref())
        }
        TimeKind::Utc => Time::utc(
            start
                .utc?
                .checked_add_signed(days)?
                .checked_add_signed(exact)?,
        ),
        TimeKind::Zoned => {
            let tzid = start.tzid.as_deref()?;
            let utc = zones
                .resolve(tzid)?
                .to_utc(local)?
                .checked_add_signed(exact)?;
            let end_local = local.checked_add_signed(exact)?;
            Time::zoned(end_local, tzid, utc)
        }
    })
}

fn ends_before(end: &Time, start: &Time) -> bool {
    match (end.utc, start.utc) {
        (Some(e), Some(s)) => e < s,
        _ => match (end.naive_local(), start.naive_local()) {
            (Some(e), Some(s)) => e < s,
            _ => false,
        },
    }
}

fn utc_of(v: Option<&ICalendarValue>) -> Option<DateTime<Utc>> {
    match v? {
        ICalendarValue::PartialDateTime(p) => {
            let local: NaiveDateTime = naive(p)?;
            let secs =
                i64::from(p.tz_hour.unwrap_or(0)) * 3600 + i64::from(p.tz_minute.unwrap_or(0)) * 60;
            let secs = if p.tz_minus { -secs } else { secs };
            Some(Utc.from_utc_datetime(&(local - Duration::seconds(secs))))
        }
        _ => None,
    }
}

fn component(
    c: &ICalendarComponent,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
    limits: &Limits,
) -> Result<(Component, Series), Refusal> {
    let kind = ComponentKind::from(c.component_type.as_str());
    let uid = first_text(c, ICalendarProperty::Uid)
        .map(str::trim)
        .filter(|u| !u.is_empty());
    // Published free/busy often has no UID (and is never stored as U's own
    // records); every other component is unidentifiable without one.
    let uid = match (uid, &kind) {
        (Some(u), _) if u.len() > limits.max_uid_bytes => {
            return Err(refuse(
                QuarantineReason::ValueTooLong,
                format!(
                    "UID of {} bytes, limit {}: {}",
                    u.len(),
                    limits.max_uid_bytes,
                    shown(u)
                ),
            ));
        }
        (Some(u), _) => u.to_owned(),
        (None, ComponentKind::FreeBusy) => String::new(),
        (None, _) => {
            return Err(refuse(
                QuarantineReason::MissingUid,
                format!("{kind} without UID"),
            ));
        }
    };

    let attendee_count = c.properties(&ICalendarProperty::Attendee).count();
    if attendee_count > limits.max_attendees {
        return Err(refuse(
            QuarantineReason::TooManyAttendees,
            format!(
                "{attendee_count} attendees in {uid}, limit {}",
                limits.max_attendees
            ),
        ));
    }
    let rrule_lines = c.properties(&ICalendarProperty::Rrule).count();
    if rrule_lines > limits.max_rrules {
        return Err(refuse(
            QuarantineReason::TooManyRecurrenceRules,
            format!(
                "{rrule_lines} RRULE properties in {}, limit {}",
                shown(&uid),
                limits.max_rrules
            ),
        ));
    }
    let recurrence_values: usize = [
        ICalendarProperty::Rrule,
        ICalendarProperty::Rdate,
        ICalendarProperty::Exdate,
    ]
    .iter()
    .map(|p| c.properties(p).map(|e| e.values.len()).sum::<usize>())
    .sum();
    if recurrence_values > limits.max_recurrence_values {
        return Err(refuse(
            QuarantineReason::TooManyRecurrenceValues,
            format!(
                "{recurrence_values} RRULE/RDATE/EXDATE values in {uid}, limit {}",
                limits.max_recurrence_values
            ),
        ));
    }

    let recurrence_id = match c.property(&ICalendarProperty::RecurrenceId) {
        None => None,
        Some(e) => {
            let time = entry_time(e, zones, warnings, "RECURRENCE-ID")?;
            // RFC 5546's own example writes `RECURRENCE-ID;THISANDFUTURE`, without `RANGE=`.
            // calcard reads `RANGE=THISANDFUTURE` as a boolean RANGE parameter.
            let this_and_future = e.params.iter().any(|p| match (&p.name, &p.value) {
                (ICalendarParameterName::Range, ICalendarParameterValue::Bool(b)) => *b,
                (ICalendarParameterName::Other(n), _) => n.eq_ignore_ascii_case("THISANDFUTURE"),
                (_, ICalendarParameterValue::Text(t)) => t.eq_ignore_ascii_case("THISANDFUTURE"),
                _ => false,
            });
            Some(RecurrenceId {
                time,
                range: this_and_future.then_some(Range::ThisAndFuture),
            })
        }
    };

    let start = c
        .property(&ICalendarProperty::Dtstart)
        .map(|e| entry_time(e, zones, warnings, "DTSTART"))
        .transpose()?;
    let end_prop = if kind == ComponentKind::Todo {
        ICalendarProperty::Due
    } else {
        ICalendarProperty::Dtend
    };
    let mut end = c
        .property(&end_prop)
        .map(|e| entry_time(e, zones, warnings, end_prop.as_str()))
        .transpose()?;
    // `duration_seconds` says the component gave a DURATION instead of an end;
    // with both, DTEND wins and the DURATION is not passed on.
    let mut duration_seconds = None;
    if let Some(e) = c.property(&ICalendarProperty::Duration) {
        let (days, exact) = duration_of(e)?;
        if end.is_none() {
            duration_seconds = Some(days * 86_400 + exact);
            end = start
                .as_ref()
                .and_then(|s| end_from_duration(s, days, exact, zones));
        }
    }
    if let (Some(s), Some(e)) = (&start, &end)
        && ends_before(e, s)
    {
        return Err(refuse(
            QuarantineReason::InvalidTimeRange,
            format!(
                "{} {} is before DTSTART {} in {uid}",
                end_prop.as_str(),
                e.local,
                s.local
            ),
        ));
    }

    let mut rrule = Vec::new();
    let mut rules = Vec::new();
    for e in c.properties(&ICalendarProperty::Rrule) {
        for v in &e.values {
            match v {
                ICalendarValue::RecurrenceRule(r) => {
                    rules.push(rule_shape(r));
                    rrule.push(r.to_string());
                }
                ICalendarValue::Text(t) => rrule.push(t.clone()),
                _ => {}
            }
        }
    }
    let mut times = |p: ICalendarProperty, what: &str| -> Result<Vec<Time>, Refusal> {
        let mut out = Vec::new();
        for e in c.properties(&p) {
            for v in &e.values {
                out.push(time_value(v, e.tz_id(), zones, warnings, what)?);
            }
        }
        Ok(out)
    };
    let rdate = times(ICalendarProperty::Rdate, "RDATE")?;
    let exdate = times(ICalendarProperty::Exdate, "EXDATE")?;

    let sequence = c
        .property(&ICalendarProperty::Sequence)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_integer())
        .unwrap_or(0);
    let dtstamp = utc_of(
        c.property(&ICalendarProperty::Dtstamp)
            .and_then(|e| e.values.first()),
    );
    let status = first_text(c, ICalendarProperty::Status).map(Status::from);
    let transp = match first_text(c, ICalendarProperty::Transp) {
        Some(t) if t.eq_ignore_ascii_case("TRANSPARENT") => Transparency::Transparent,
        _ => Transparency::Opaque,
    };
    let summary = first_text(c, ICalendarProperty::Summary).map(str::to_owned);

    let mut address_of = |what: &str, e: &ICalendarEntry| -> Option<String> {
        let raw = e.values.first().and_then(|v| v.as_text()).unwrap_or("");
        let address = e.calendar_address().and_then(normalize_address);
        match address {
            Some(a) if is_address(&a) => Some(a),
            _ => {
                warnings.push(format!(
                    "{what} {:?} in {} is not an address: dropped",
                    shown(raw),
                    shown(&uid)
                ));
                None
            }
        }
    };
    let organizer = c.property(&ICalendarProperty::Organizer).and_then(|e| {
        Some(Party {
            address: address_of("ORGANIZER", e)?,
            cn: param_text(e, ICalendarParameterName::Cn).map(str::to_owned),
            sent_by: param_text(e, ICalendarParameterName::SentBy).and_then(normalize_address),
        })
    });
    let attendees: Vec<Attendee> = c
        .properties(&ICalendarProperty::Attendee)
        .filter_map(|e| {
            Some(Attendee {
                address: address_of("ATTENDEE", e)?,
                cn: param_text(e, ICalendarParameterName::Cn).map(str::to_owned),
                partstat: param_text(e, ICalendarParameterName::Partstat)
                    .map(PartStat::from)
                    .unwrap_or(PartStat::NeedsAction),
                role: param_text(e, ICalendarParameterName::Role)
                    .unwrap_or("REQ-PARTICIPANT")
                    .to_ascii_uppercase(),
                rsvp: param_text(e, ICalendarParameterName::Rsvp)
                    .is_some_and(|r| r.eq_ignore_ascii_case("TRUE")),
                delegated_to: param_addresses(e, ICalendarParameterName::DelegatedTo),
                delegated_from: param_addresses(e, ICalendarParameterName::DelegatedFrom),
                sent_by: param_text(e, ICalendarParameterName::SentBy).and_then(normalize_address),
            })
        })
        .collect();

    if let Some(o) = &organizer {
        check_address("ORGANIZER", &o.address, &uid)?;
        if let Some(s) = &o.sent_by {
            check_address("ORGANIZER SENT-BY", s, &uid)?;
        }
    }
    for a in &attendees {
        check_address("ATTENDEE", &a.address, &uid)?;
        for d in a.delegated_to.iter().chain(&a.delegated_from) {
            check_address("ATTENDEE DELEGATED-TO/FROM", d, &uid)?;
        }
        if let Some(s) = &a.sent_by {
            check_address("ATTENDEE SENT-BY", s, &uid)?;
        }
    }
    // A series' instances are times the message gives too: a VTIMEZONE
    // that disagrees with its name within the first year says so.
    if !rules.is_empty()
        && let Some(s) = &start
        && s.kind == TimeKind::Zoned
        && let (Some(tzid), Some(local)) = (s.tzid.as_deref(), s.naive_local())
        && let Some(w) = zones.series_disagreement(tzid, local)
    {
        warnings.push(w);
    }
    let series = Series {
        start: start
            .as_ref()
            .and_then(|s| s.utc.map(|u| u.naive_utc()).or_else(|| s.naive_local())),
        rules,
        rdates: rdate.len() as u64,
        values: recurrence_values,
    };

    let all_day = start.as_ref().is_some_and(|s| s.kind == TimeKind::Date);
    let floating = start.as_ref().is_some_and(|s| s.kind == TimeKind::Floating);
    let component = Component {
        kind,
        uid,
        recurrence_id,
        sequence,
        dtstamp,
        start,
        end,
        duration_seconds,
        all_day,
        floating,
        rrule,
        rdate,
        exdate,
        status,
        transp,
        summary,
        organizer,
        attendees,
    };
    Ok((component, series))
}

#[cfg(test)]
mod tests {
    use super::*;

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
