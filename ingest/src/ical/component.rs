//! One scheduling component (VEVENT, VTODO, VJOURNAL, VFREEBUSY) of a parsed
//! calendar, read into the payload's [`Component`] and its [`Series`].
//!
//! The steps run in a fixed order, and the order is part of the behaviour:
//! the first refusal met is the one quarantined, and warnings are listed in
//! the order they were found.

use super::parties::{self, Parties};
use super::series::{Rule, Series, rule_shape};
use super::time::{duration_of, end_from_duration, ends_before, entry_time, time_value, utc_of};
use super::{Refusal, refuse, shown};
use crate::config::Limits;
use crate::tz::ZoneResolver;
use calcard::icalendar::{
    ICalendarComponent, ICalendarParameterName, ICalendarParameterValue, ICalendarProperty,
    ICalendarValue,
};
use imipflow_schema::{
    Component, ComponentKind, QuarantineReason, Range, RecurrenceId, Status, Time, TimeKind,
    Transparency,
};

/// Reads one scheduling component; `warnings` collects what was dropped or
/// guessed, for the whole object.
pub(super) fn component(
    c: &ICalendarComponent,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
    limits: &Limits,
) -> Result<(Component, Series), Refusal> {
    let kind = ComponentKind::from(c.component_type.as_str());
    let uid = uid_of(c, &kind, limits)?;
    let recurrence_values = check_counts(c, &uid, limits)?;
    let recurrence_id = recurrence_id(c, zones, warnings)?;
    let Timing {
        start,
        end,
        duration_seconds,
    } = timing(c, &kind, &uid, zones, warnings)?;
    let Recurrence {
        rrule,
        rules,
        rdate,
        exdate,
    } = recurrence(c, zones, warnings)?;

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
    let Parties {
        organizer,
        attendees,
    } = parties::parties(c, &uid, warnings)?;

    warn_series_disagreement(&rules, start.as_ref(), zones, warnings);
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

pub(super) fn first_text(c: &ICalendarComponent, p: ICalendarProperty) -> Option<&str> {
    c.property(&p)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_text())
}

/// The component's UID, trimmed. Published free/busy often has no UID (and
/// is never stored as U's own records); every other component is
/// unidentifiable without one.
fn uid_of(
    c: &ICalendarComponent,
    kind: &ComponentKind,
    limits: &Limits,
) -> Result<String, Refusal> {
    let uid = first_text(c, ICalendarProperty::Uid)
        .map(str::trim)
        .filter(|u| !u.is_empty());
    match (uid, kind) {
        (Some(u), _) if u.len() > limits.max_uid_bytes => Err(refuse(
            QuarantineReason::ValueTooLong,
            format!(
                "UID of {} bytes, limit {}: {}",
                u.len(),
                limits.max_uid_bytes,
                shown(u)
            ),
        )),
        (Some(u), _) => Ok(u.to_owned()),
        (None, ComponentKind::FreeBusy) => Ok(String::new()),
        (None, _) => Err(refuse(
            QuarantineReason::MissingUid,
            format!("{kind} without UID"),
        )),
    }
}

/// The per-component limits that only count properties (attendees, RRULE
/// lines, recurrence values), checked before any value is read. Returns the
/// number of RRULE + RDATE + EXDATE values.
fn check_counts(c: &ICalendarComponent, uid: &str, limits: &Limits) -> Result<usize, Refusal> {
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
                shown(uid),
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
    Ok(recurrence_values)
}

fn recurrence_id(
    c: &ICalendarComponent,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<RecurrenceId>, Refusal> {
    let Some(e) = c.property(&ICalendarProperty::RecurrenceId) else {
        return Ok(None);
    };
    let time = entry_time(e, zones, warnings, "RECURRENCE-ID")?;
    // RFC 5546's own example writes `RECURRENCE-ID;THISANDFUTURE`, without `RANGE=`.
    // calcard reads `RANGE=THISANDFUTURE` as a boolean RANGE parameter.
    let this_and_future = e.params.iter().any(|p| match (&p.name, &p.value) {
        (ICalendarParameterName::Range, ICalendarParameterValue::Bool(b)) => *b,
        (ICalendarParameterName::Other(n), _) => n.eq_ignore_ascii_case("THISANDFUTURE"),
        (_, ICalendarParameterValue::Text(t)) => t.eq_ignore_ascii_case("THISANDFUTURE"),
        _ => false,
    });
    Ok(Some(RecurrenceId {
        time,
        range: this_and_future.then_some(Range::ThisAndFuture),
    }))
}

/// When the component happens: DTSTART, and DTEND (DUE for a VTODO) or the
/// end its DURATION implies.
struct Timing {
    start: Option<Time>,
    end: Option<Time>,
    /// Set when the component gave a DURATION instead of an end; with both,
    /// DTEND wins and the DURATION is not passed on.
    duration_seconds: Option<i64>,
}

fn timing(
    c: &ICalendarComponent,
    kind: &ComponentKind,
    uid: &str,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
) -> Result<Timing, Refusal> {
    let start = c
        .property(&ICalendarProperty::Dtstart)
        .map(|e| entry_time(e, zones, warnings, "DTSTART"))
        .transpose()?;
    let end_prop = if *kind == ComponentKind::Todo {
        ICalendarProperty::Due
    } else {
        ICalendarProperty::Dtend
    };
    let mut end = c
        .property(&end_prop)
        .map(|e| entry_time(e, zones, warnings, end_prop.as_str()))
        .transpose()?;
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
    Ok(Timing {
        start,
        end,
        duration_seconds,
    })
}

/// The recurrence as the payload carries it (RRULE text, RDATE and EXDATE
/// times) and the rules' shapes for the [`Series`] estimate.
struct Recurrence {
    rrule: Vec<String>,
    rules: Vec<Rule>,
    rdate: Vec<Time>,
    exdate: Vec<Time>,
}

fn recurrence(
    c: &ICalendarComponent,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
) -> Result<Recurrence, Refusal> {
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
    Ok(Recurrence {
        rrule,
        rules,
        rdate,
        exdate,
    })
}

/// A series' instances are times the message gives too: a VTIMEZONE that
/// disagrees with its name within the first year says so.
fn warn_series_disagreement(
    rules: &[Rule],
    start: Option<&Time>,
    zones: &mut ZoneResolver<'_>,
    warnings: &mut Vec<String>,
) {
    if !rules.is_empty()
        && let Some(s) = start
        && s.kind == TimeKind::Zoned
        && let (Some(tzid), Some(local)) = (s.tzid.as_deref(), s.naive_local())
        && let Some(w) = zones.series_disagreement(tzid, local)
    {
        warnings.push(w);
    }
}
