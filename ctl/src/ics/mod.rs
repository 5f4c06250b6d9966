//! `imip-ctl object --ics`: a stored object as the user's calendar holds it.
//!
//! What is printed is the *stored* state, not the last mail: the master with
//! the EXDATEs cancellations added, every stored override with its
//! RECURRENCE-ID, the answers merged from replies, and no iTIP METHOD (a
//! calendar's copy is not a scheduling message: RFC 4791 §4.1 forbids METHOD
//! in a stored calendar object). It is built in two layers:
//!
//! * what the semantics model (UID, RECURRENCE-ID, SEQUENCE, DTSTAMP, times,
//!   RRULE/RDATE/EXDATE, STATUS, TRANSP, SUMMARY, ORGANIZER, ATTENDEE) is
//!   written from the stored [`Component`], because that is what changed since
//!   the mail (a CANCEL's EXDATE, a REPLY's PARTSTAT, an uninvited attendee);
//! * everything else (DESCRIPTION, LOCATION, X- properties, VALARMs, the
//!   attendees' other parameters) is copied from the stored raw text of the
//!   message that last replaced the object: that component in it (same UID and
//!   RECURRENCE-ID), or, for an override made from the master (a REPLY or an
//!   uninvitation for one instance), the master's.
//!
//! VTIMEZONEs are copied from the raw texts when they carry one for a TZID
//! (Outlook's Windows-named zones keep their own rules); otherwise one is made
//! from the zone the TZID resolved to. calcard writes it all, so the output
//! re-parses with the parser ingest uses.

use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarEntry, ICalendarParameter,
    ICalendarParameterName, ICalendarParameterValue, ICalendarProperty, ICalendarValue,
    ICalendarValueType, Uri,
};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use imipflow_processor::model::{Raw, StoredObject};
use imipflow_schema::{
    Attendee, Component, ComponentKind, Party, Range, Time, TimeKind, Transparency, Zone,
};
use std::collections::BTreeSet;

#[cfg(test)]
mod tests;
mod zone;

/// PRODID of everything imip-ctl writes.
pub const PRODID: &str = "-//imipflow//imip-ctl//EN";

/// `objects` (one UID's, master first) as one VCALENDAR: VTIMEZONEs, then
/// one component per stored object in the order given.
pub fn calendar(objects: &[&StoredObject]) -> String {
    let sources = Sources::parse(objects);
    let mut out = ICalendar {
        components: vec![root()],
    };
    // The zones first: a time keeps its TZID only if its VTIMEZONE was written.
    let (zones, mut ids) = Zones::of(objects, &sources).write(&mut out, objects);
    for o in objects {
        ids.push(component(&mut out, o, sources.component_of(o), &zones));
    }
    out.components[0].component_ids = ids;
    out.to_string()
}

fn root() -> ICalendarComponent {
    let mut c = ICalendarComponent::new(ICalendarComponentType::VCalendar);
    c.add_property(ICalendarProperty::Prodid, PRODID.to_owned());
    c.add_property(ICalendarProperty::Version, "2.0".to_owned());
    c
}

/// The raw texts of the objects, each parsed once (the objects one message
/// stored share one text).
struct Sources {
    parsed: Vec<(Raw, ICalendar)>,
}

impl Sources {
    fn parse(objects: &[&StoredObject]) -> Sources {
        let mut parsed: Vec<(Raw, ICalendar)> = Vec::new();
        for o in objects {
            if o.raw.is_empty() || parsed.iter().any(|(r, _)| *r == o.raw) {
                continue;
            }
            // A text that no longer parses (it did when ingest took it) only
            // loses the properties the semantics do not model.
            if let Ok(cal) = ICalendar::parse(o.raw.as_str()) {
                parsed.push((o.raw.clone(), cal));
            }
        }
        Sources { parsed }
    }

    fn all(&self) -> impl Iterator<Item = &ICalendar> {
        self.parsed.iter().map(|(_, c)| c)
    }

    /// The component of `o`'s raw text that `o` was stored from, else (for an
    /// override made from the master's instance) the master's.
    fn component_of(&self, o: &StoredObject) -> Option<(&ICalendar, &ICalendarComponent)> {
        let (_, cal) = self.parsed.iter().find(|(r, _)| *r == o.raw)?;
        let c = &o.component;
        let kind = kind_type(&c.kind);
        // Ingest stored the UID trimmed (Outlook pads some).
        let same_uid = |x: &&ICalendarComponent| {
            x.component_type == kind && x.uid().map(str::trim) == Some(c.uid.as_str())
        };
        let candidates: Vec<&ICalendarComponent> =
            children(cal, &cal.components[0]).filter(same_uid).collect();
        let wanted = c.recurrence_id.as_ref().map(|r| r.time.local.as_str());
        let keyed = |want: Option<&str>| {
            let mut hits = candidates
                .iter()
                .copied()
                .filter(|x| recurrence_local(x).as_deref() == want);
            let first = hits.clone().next();
            // Duplicates of one key: the copy that was stored (same SEQUENCE).
            hits.find(|x| sequence_of(x) == c.sequence).or(first)
        };
        keyed(wanted)
            .or_else(|| wanted.and_then(|_| keyed(None)))
            .map(|x| (cal, x))
    }
}

fn children<'a>(
    cal: &'a ICalendar,
    parent: &'a ICalendarComponent,
) -> impl Iterator<Item = &'a ICalendarComponent> + Clone {
    parent
        .component_ids
        .iter()
        .filter_map(|id| cal.components.get(*id as usize))
}

fn kind_type(kind: &ComponentKind) -> ICalendarComponentType {
    match kind {
        ComponentKind::Event => ICalendarComponentType::VEvent,
        ComponentKind::Todo => ICalendarComponentType::VTodo,
        ComponentKind::Journal => ICalendarComponentType::VJournal,
        ComponentKind::FreeBusy => ICalendarComponentType::VFreebusy,
        ComponentKind::Other(s) => ICalendarComponentType::Other(s.clone()),
    }
}

/// A raw component's RECURRENCE-ID as [`Time::local`] writes it.
fn recurrence_local(c: &ICalendarComponent) -> Option<String> {
    let e = c.property(&ICalendarProperty::RecurrenceId)?;
    let p = e.values.first()?.as_partial_date_time()?;
    let date = format!(
        "{:04}-{:02}-{:02}",
        p.year?,
        p.month.unwrap_or(1),
        p.day.unwrap_or(1)
    );
    Some(match p.hour {
        None => date,
        Some(h) => format!(
            "{date}T{h:02}:{:02}:{:02}",
            p.minute.unwrap_or(0),
            p.second.unwrap_or(0)
        ),
    })
}

fn sequence_of(c: &ICalendarComponent) -> i64 {
    c.property(&ICalendarProperty::Sequence)
        .and_then(|e| e.values.first())
        .and_then(|v| v.as_integer())
        .unwrap_or(0)
}

/// Properties written from the stored component; the raw text's are dropped.
/// EXRULE is among them: the semantics do not apply it (RFC 5545 removed it),
/// so printing it would describe other instances than the stored ones.
fn modelled(p: &ICalendarProperty) -> bool {
    use ICalendarProperty as P;
    matches!(
        p,
        P::Uid
            | P::RecurrenceId
            | P::Sequence
            | P::Dtstamp
            | P::Dtstart
            | P::Dtend
            | P::Due
            | P::Duration
            | P::Rrule
            | P::Exrule
            | P::Rdate
            | P::Exdate
            | P::Status
            | P::Transp
            | P::Summary
            | P::Organizer
            | P::Attendee
    )
}

/// Parameters of ORGANIZER and ATTENDEE written from the stored party.
fn modelled_param(p: &ICalendarParameterName) -> bool {
    use ICalendarParameterName as N;
    matches!(
        p,
        N::Cn | N::Partstat | N::Role | N::Rsvp | N::DelegatedTo | N::DelegatedFrom | N::SentBy
    )
}

/// Writes the component of `o` (and its sub-components, VALARMs) into `out`;
/// returns its id.
fn component(
    out: &mut ICalendar,
    o: &StoredObject,
    source: Option<(&ICalendar, &ICalendarComponent)>,
    zones: &Written,
) -> u32 {
    let c = &o.component;
    let raw_parties: Vec<&ICalendarEntry> = source
        .iter()
        .flat_map(|(_, s)| s.entries.iter())
        .filter(|e| {
            matches!(
                e.name,
                ICalendarProperty::Attendee | ICalendarProperty::Organizer
            )
        })
        .collect();
    let mut comp = ICalendarComponent::new(kind_type(&c.kind));
    comp.entries = modelled_entries(c, &raw_parties, zones);
    let mut subs = Vec::new();
    if let Some((cal, s)) = source {
        comp.entries
            .extend(s.entries.iter().filter(|e| !modelled(&e.name)).cloned());
        for child in &s.component_ids {
            subs.push(copy_tree(out, cal, *child));
        }
    }
    comp.component_ids = subs;
    push(out, comp)
}

fn push(out: &mut ICalendar, c: ICalendarComponent) -> u32 {
    out.components.push(c);
    (out.components.len() - 1) as u32
}

/// Copies component `id` of `src` with everything under it; returns its id in `out`.
fn copy_tree(out: &mut ICalendar, src: &ICalendar, id: u32) -> u32 {
    let Some(c) = src.components.get(id as usize) else {
        return push(
            out,
            ICalendarComponent::new(ICalendarComponentType::Other("X-EMPTY".into())),
        );
    };
    let kids: Vec<u32> = c
        .component_ids
        .iter()
        .map(|k| copy_tree(out, src, *k))
        .collect();
    push(
        out,
        ICalendarComponent {
            component_type: c.component_type.clone(),
            entries: c.entries.clone(),
            component_ids: kids,
        },
    )
}

fn entry(name: ICalendarProperty, value: impl Into<ICalendarValue>) -> ICalendarEntry {
    ICalendarEntry::new(name).with_value(value)
}

fn text_param(name: ICalendarParameterName, v: &str) -> ICalendarParameter {
    ICalendarParameter::new(name, ICalendarParameterValue::Text(v.to_owned()))
}

/// The properties the semantics model, in the order clients write them.
fn modelled_entries(
    c: &Component,
    raw: &[&ICalendarEntry],
    zones: &Written,
) -> Vec<ICalendarEntry> {
    use ICalendarProperty as P;
    let mut v = vec![entry(P::Uid, c.uid.clone())];
    if let Some(r) = &c.recurrence_id
        && let Some(mut e) = time_entry(P::RecurrenceId, &r.time, zones)
    {
        if r.range == Some(Range::ThisAndFuture) {
            e.add_param(ICalendarParameter::new(
                ICalendarParameterName::Range,
                ICalendarParameterValue::Bool(true),
            ));
        }
        v.push(e);
    }
    v.push(entry(P::Sequence, c.sequence));
    if let Some(stamp) = c.dtstamp {
        v.push(entry(P::Dtstamp, utc(stamp)));
    }
    v.extend(
        c.start
            .iter()
            .filter_map(|t| time_entry(P::Dtstart, t, zones)),
    );
    match (c.duration_seconds, &c.end) {
        // DURATION only when the component gave one instead of an end.
        (Some(s), end) => {
            // Ingest kept the DURATION as seconds (a day as 86,400) and the end
            // it implies, where a day is nominal (RFC 5545 §3.3.6: 23 or 25
            // hours across a DST change). Days are written when that is what
            // gives the stored end, and always for an all-day start (§3.8.2.5).
            let start = c.start.as_ref();
            let all_day = start.is_some_and(|t| t.kind == TimeKind::Date);
            let exact = match (start.and_then(|t| t.utc), end.as_ref().and_then(|t| t.utc)) {
                (Some(a), Some(b)) => (b - a).num_seconds() == s,
                _ => true,
            };
            v.push(entry(P::Duration, duration_text(s, all_day || !exact)));
        }
        (None, Some(end)) => {
            let name = if c.kind == ComponentKind::Todo {
                P::Due
            } else {
                P::Dtend
            };
            v.extend(time_entry(name, end, zones));
        }
        (None, None) => {}
    }
    // RRULE as stored (calcard's canonical text): a RECUR value is not escaped.
    v.extend(c.rrule.iter().map(|r| entry(P::Rrule, r.clone())));
    v.extend(time_lists(P::Rdate, &c.rdate, zones));
    v.extend(time_lists(P::Exdate, &c.exdate, zones));
    if let Some(s) = &c.status {
        v.push(entry(P::Status, s.as_str().to_owned()));
    }
    let transp = match c.transp {
        Transparency::Opaque => "OPAQUE",
        Transparency::Transparent => "TRANSPARENT",
    };
    v.push(entry(P::Transp, transp.to_owned()));
    if let Some(s) = &c.summary {
        v.push(entry(P::Summary, s.clone()));
    }
    v.extend(c.organizer.as_ref().map(|p| organizer(p, raw)));
    v.extend(c.attendees.iter().map(|a| attendee(a, raw)));
    v
}

/// The raw line of `address` (ORGANIZER or ATTENDEE), for its parameters the
/// semantics do not model (CUTYPE, EMAIL, X-NUM-GUESTS, SCHEDULE-STATUS, …).
fn raw_extras(
    name: &ICalendarProperty,
    address: &str,
    raw: &[&ICalendarEntry],
) -> Vec<ICalendarParameter> {
    raw.iter()
        .find(|e| {
            e.name == *name
                && e.values
                    .first()
                    .and_then(|v| v.as_text())
                    .is_some_and(|v| same_address(v, address))
        })
        .map(|e| {
            e.params
                .iter()
                .filter(|p| !modelled_param(&p.name))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn same_address(value: &str, address: &str) -> bool {
    let v = value.trim();
    let v = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("mailto:"))
        .map_or(v, |_| &v[7..]);
    v.eq_ignore_ascii_case(address)
}

fn mailto(address: &str) -> String {
    format!("mailto:{address}")
}

fn party_entry(
    name: ICalendarProperty,
    address: &str,
    mut params: Vec<ICalendarParameter>,
    raw: &[&ICalendarEntry],
) -> ICalendarEntry {
    params.extend(raw_extras(&name, address, raw));
    ICalendarEntry::new(name)
        .with_params(params)
        .with_value(Uri::Location(mailto(address)))
}

fn organizer(p: &Party, raw: &[&ICalendarEntry]) -> ICalendarEntry {
    use ICalendarParameterName as N;
    let mut params = Vec::new();
    params.extend(p.cn.as_deref().map(|cn| text_param(N::Cn, cn)));
    params.extend(
        p.sent_by
            .as_deref()
            .map(|s| text_param(N::SentBy, &mailto(s))),
    );
    party_entry(ICalendarProperty::Organizer, &p.address, params, raw)
}

fn attendee(a: &Attendee, raw: &[&ICalendarEntry]) -> ICalendarEntry {
    use ICalendarParameterName as N;
    let mut params = Vec::new();
    params.extend(a.cn.as_deref().map(|cn| text_param(N::Cn, cn)));
    params.push(text_param(N::Role, &a.role));
    params.push(text_param(N::Partstat, a.partstat.as_str()));
    if a.rsvp {
        params.push(text_param(N::Rsvp, "TRUE"));
    }
    params.extend(
        a.delegated_to
            .iter()
            .map(|d| text_param(N::DelegatedTo, &mailto(d))),
    );
    params.extend(
        a.delegated_from
            .iter()
            .map(|d| text_param(N::DelegatedFrom, &mailto(d))),
    );
    params.extend(
        a.sent_by
            .as_deref()
            .map(|s| text_param(N::SentBy, &mailto(s))),
    );
    party_entry(ICalendarProperty::Attendee, &a.address, params, raw)
}

fn utc(at: DateTime<Utc>) -> PartialDateTime {
    PartialDateTime::from_utc_timestamp(at.timestamp())
}

fn local(at: NaiveDateTime) -> PartialDateTime {
    PartialDateTime::from_naive_timestamp(at.and_utc().timestamp())
}

/// The stored DURATION (seconds) as `P1DT2H` with `nominal_days` (each
/// 86,400 s a day), else as `PT26H`: exact hours, minutes and seconds.
fn duration_text(seconds: i64, nominal_days: bool) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let mut s = seconds.unsigned_abs();
    let mut out = format!("{sign}P");
    if nominal_days && s >= 86_400 {
        out.push_str(&format!("{}D", s / 86_400));
        s %= 86_400;
        if s == 0 {
            return out;
        }
    }
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    out.push('T');
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if sec > 0 || (h == 0 && m == 0) {
        out.push_str(&format!("{sec}S"));
    }
    out
}

/// How a stored time is written: its parameters and value. A zoned time whose
/// TZID has no VTIMEZONE to print is written as its UTC instant; a floating
/// one (also one with a TZID nobody could resolve) without TZID, which is what
/// it means.
fn time_parts(t: &Time, zones: &Written) -> Option<(Vec<ICalendarParameter>, PartialDateTime)> {
    Some(match t.kind {
        TimeKind::Utc => (vec![], utc(t.utc?)),
        TimeKind::Zoned => match t.tzid.as_deref().filter(|id| zones.has(id)) {
            Some(id) => (
                vec![text_param(ICalendarParameterName::Tzid, id)],
                local(t.naive_local()?),
            ),
            None => (vec![], utc(t.utc?)),
        },
        TimeKind::Floating => (vec![], local(t.naive_local()?)),
        TimeKind::Date => (
            vec![ICalendarParameter::new(
                ICalendarParameterName::Value,
                ICalendarValueType::Date,
            )],
            PartialDateTime {
                hour: None,
                minute: None,
                second: None,
                ..local(t.naive_local()?)
            },
        ),
    })
}

fn time_entry(name: ICalendarProperty, t: &Time, zones: &Written) -> Option<ICalendarEntry> {
    let (params, value) = time_parts(t, zones)?;
    Some(
        ICalendarEntry::new(name)
            .with_params(params)
            .with_value(value),
    )
}

/// RDATE/EXDATE values, one line per run of values written alike.
fn time_lists(name: ICalendarProperty, times: &[Time], zones: &Written) -> Vec<ICalendarEntry> {
    let mut out: Vec<ICalendarEntry> = Vec::new();
    for t in times {
        let Some((params, value)) = time_parts(t, zones) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.params == params => last.values.push(value.into()),
            _ => out.push(
                ICalendarEntry::new(name.clone())
                    .with_params(params)
                    .with_value(value),
            ),
        }
    }
    out
}

/// The VTIMEZONE of each TZID the printed times use: the one a raw text
/// carried, else one made from what the TZID resolved to.
struct Zones<'a> {
    found: Vec<(String, ZoneSource<'a>)>,
}

enum ZoneSource<'a> {
    Received(&'a ICalendar, u32),
    Resolved(&'a Zone),
}

impl<'a> Zones<'a> {
    fn of(objects: &[&'a StoredObject], sources: &'a Sources) -> Zones<'a> {
        let mut tzids = BTreeSet::new();
        for o in objects {
            tzids.extend(zoned_tzids(&o.component));
        }
        // TZIDs of copied properties (an X- property with a TZID) too.
        for o in objects {
            if let Some((_, s)) = sources.component_of(o) {
                tzids.extend(
                    s.entries
                        .iter()
                        .filter(|e| !modelled(&e.name))
                        .filter_map(|e| e.tz_id().map(str::to_owned)),
                );
            }
        }
        let found = tzids
            .into_iter()
            .filter_map(|id| {
                let received = sources
                    .all()
                    .find_map(|cal| vtimezone(cal, &id).map(|i| (cal, i)));
                let src = match received {
                    Some((cal, i)) => ZoneSource::Received(cal, i),
                    None => {
                        ZoneSource::Resolved(objects.iter().find_map(|o| o.timezones.get(&id))?)
                    }
                };
                Some((id, src))
            })
            .collect();
        Zones { found }
    }

    /// Writes the VTIMEZONEs into `out`; returns the TZIDs written and the
    /// VTIMEZONEs' ids. A zone calcard cannot write (an IANA name it does not
    /// know) is left out, and the times in it are printed in UTC.
    fn write(self, out: &mut ICalendar, objects: &[&StoredObject]) -> (Written, Vec<u32>) {
        let (from, to) = span(objects);
        let mut written = Written::default();
        let mut ids = Vec::new();
        for (tzid, src) in self.found {
            let id = match src {
                ZoneSource::Received(cal, i) => Some(copy_tree(out, cal, i)),
                ZoneSource::Resolved(zone) => zone::write(out, &tzid, zone, from, to),
            };
            if let Some(id) = id {
                ids.push(id);
                written.tzids.insert(tzid);
            }
        }
        (written, ids)
    }
}

/// The TZIDs whose VTIMEZONE is in the print.
#[derive(Default)]
struct Written {
    tzids: BTreeSet<String>,
}

impl Written {
    fn has(&self, tzid: &str) -> bool {
        self.tzids.contains(tzid)
    }
}

/// TZIDs of the component's times that [`time_parts`] writes with a TZID.
fn zoned_tzids(c: &Component) -> impl Iterator<Item = String> + '_ {
    c.start
        .iter()
        .chain(c.end.iter())
        .chain(c.recurrence_id.iter().map(|r| &r.time))
        .chain(c.rdate.iter())
        .chain(c.exdate.iter())
        .filter(|t| t.kind == TimeKind::Zoned)
        .filter_map(|t| t.tzid.clone())
}

/// The VTIMEZONE of `tzid` among `cal`'s components.
fn vtimezone(cal: &ICalendar, tzid: &str) -> Option<u32> {
    cal.components[0].component_ids.iter().copied().find(|id| {
        cal.components.get(*id as usize).is_some_and(|c| {
            c.component_type == ICalendarComponentType::VTimezone
                && c.property(&ICalendarProperty::Tzid)
                    .and_then(|e| e.values.first())
                    .and_then(|v| v.as_text())
                    == Some(tzid)
        })
    })
}

/// The instants the objects' times span, widened by a day, and for a series
/// with a rule to at least ten years ahead: what a made VTIMEZONE must cover.
fn span(objects: &[&StoredObject]) -> (i64, i64) {
    let times = objects.iter().flat_map(|o| {
        let c = &o.component;
        c.start
            .iter()
            .chain(c.end.iter())
            .chain(c.rdate.iter())
            .filter_map(|t| t.utc)
    });
    let (mut lo, mut hi) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for t in times {
        lo = Some(lo.map_or(t, |l| l.min(t)));
        hi = Some(hi.map_or(t, |h| h.max(t)));
    }
    let now = Utc::now();
    let lo = lo.unwrap_or(now) - Duration::days(1);
    let mut hi = hi.unwrap_or(now) + Duration::days(1);
    if objects.iter().any(|o| !o.component.rrule.is_empty()) {
        hi = hi.max(now + Duration::days(3653));
    }
    (lo.timestamp(), hi.timestamp())
}
