//! Date, date-time and duration values: from calcard's values to the
//! payload's [`Time`], and the end a DURATION implies.

use super::{Refusal, refuse};
use crate::tz::{ZoneResolver, naive};
use calcard::icalendar::{ICalendarEntry, ICalendarPeriod, ICalendarValue};
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use imipflow_schema::{QuarantineReason, Time, TimeKind};

/// Converts one date/date-time value. `what` names the property for errors.
pub(super) fn time_value(
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
            ICalendarPeriod::Range { start, .. } | ICalendarPeriod::Duration { start, .. } => start,
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

pub(super) fn entry_time(
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

pub(super) fn duration_of(e: &ICalendarEntry) -> Result<(i64, i64), Refusal> {
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
pub(super) fn end_from_duration(
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

pub(super) fn ends_before(end: &Time, start: &Time) -> bool {
    match (end.utc, start.utc) {
        (Some(e), Some(s)) => e < s,
        _ => match (end.naive_local(), start.naive_local()) {
            (Some(e), Some(s)) => e < s,
            _ => false,
        },
    }
}

pub(super) fn utc_of(v: Option<&ICalendarValue>) -> Option<DateTime<Utc>> {
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
