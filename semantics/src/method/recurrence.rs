//! Recurrence expansion: turns a stored UID (master plus specific recurrences)
//! into instances with UTC start and end, in the event's own zone.
//!
//! Expansion happens on *local wall-clock* values: a rule is handed to the
//! `rrule` crate as if its local DTSTART were UTC, and every generated local
//! value is converted with the event's [`Zone`] afterwards. This is DST-correct
//! for IANA zones, fixed offsets and VTIMEZONE rules alike, and it keeps the
//! crate away from zone validation (UNTIL is applied here, not by the crate).
//!
//! Everything is bounded: a rule whose periods would each yield an absurd
//! number of values is refused, each expansion consumes at most
//! [`SCAN_BUDGET`] generated values, and windows far from DTSTART are reached
//! by re-anchoring the rule (moving DTSTART forward by whole periods) instead of
//! iterating from the first instance.

use crate::model::{Ctx, StoredObject, UidState};
use chrono::{
    DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike,
    Utc,
};
use imipflow_schema::time::local_to_utc_iana;
use imipflow_schema::{Component, Range, Time, TimeKind, Zone};
use rrule::{Frequency, NWeekday, RRule, RRuleSet, Unvalidated};
use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

/// Most generated values one rule expansion may look at. A rule that has not
/// reached the requested window by then is reported as having more instances.
pub(crate) const SCAN_BUDGET: usize = 200_000;

/// Most instances a window query returns (a hostile FREQ=SECONDLY series over a
/// year would otherwise yield tens of millions).
pub(crate) const WINDOW_CAP: usize = 100_000;

/// Most RRULEs of one series that are expanded; later ones are ignored. Each
/// rule is expanded up to the instance limit before the rules are merged, so
/// the cost grows with their number: a payload with 5,000 RRULE lines (which
/// ingest quarantines, but a payload may be published by other means) took
/// 110 s to apply. Real clients write one (RFC 5545 deprecates more).
pub(crate) const MAX_RULES: usize = 8;

/// A rule whose single period (one year of a YEARLY rule, one day of a DAILY
/// rule, …) could hold more values than this is refused: the crate builds a
/// whole period in memory before yielding any of it.
const MAX_PER_PERIOD: u64 = 100_000;

/// Largest move of a `RANGE=THISANDFUTURE` override that shifts the later
/// instances with it; a larger one counts for its own instance only. Real
/// clients move a series by hours or days; without a bound, a move by
/// thousands of years (found by the hostile-input suite) put the materialised
/// horizon before year -4713, out of PostgreSQL's range.
const MAX_SHIFT: Duration = Duration::days(10 * 366);

/// Every UTC offset in use lies within ±26 h; local and UTC bounds are widened
/// by this much so that no instance is missed at a window's edge.
const ZONE_SLACK: Duration = Duration::hours(27);

/// Local wall-clock order and UTC order only disagree inside a DST overlap.
const DST_SLACK: Duration = Duration::hours(3);

/// Time arithmetic that saturates instead of panicking: a hostile message with
/// times near the ends of chrono's range must not crash a worker.
pub(crate) trait Saturating: Sized {
    fn plus(self, d: Duration) -> Self;
    fn minus(self, d: Duration) -> Self {
        self.plus(-d)
    }
}

impl Saturating for DateTime<Utc> {
    fn plus(self, d: Duration) -> Self {
        self.checked_add_signed(d)
            .unwrap_or(if d < Duration::zero() {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            })
    }
}

impl Saturating for NaiveDateTime {
    fn plus(self, d: Duration) -> Self {
        self.checked_add_signed(d)
            .unwrap_or(if d < Duration::zero() {
                NaiveDateTime::MIN
            } else {
                NaiveDateTime::MAX
            })
    }
}

/// Where local times of an object become instants.
#[derive(Debug, Clone)]
pub(crate) enum ZoneRef {
    Zone(Zone),
    Tz(chrono_tz::Tz),
}

impl ZoneRef {
    pub(crate) fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            ZoneRef::Zone(z) => z.to_utc(local),
            ZoneRef::Tz(tz) => local_to_utc_iana(local, *tz),
        }
    }
}

/// The instant of a time value: UTC as written; zoned through the object's own
/// zone (so that it agrees with expanded instances); floating times and dates
/// in the user's zone.
pub(crate) fn resolve(
    t: &Time,
    zones: &BTreeMap<String, Zone>,
    default_tz: chrono_tz::Tz,
) -> Option<DateTime<Utc>> {
    match t.kind {
        TimeKind::Utc => t.utc.or_else(|| t.naive_local().map(|n| n.and_utc())),
        TimeKind::Zoned => {
            let via_zone = t
                .tzid
                .as_deref()
                .and_then(|id| zones.get(id))
                .zip(t.naive_local())
                .and_then(|(z, n)| z.to_utc(n));
            via_zone
                .or(t.utc)
                .or_else(|| local_to_utc_iana(t.naive_local()?, default_tz))
        }
        TimeKind::Floating | TimeKind::Date => local_to_utc_iana(t.naive_local()?, default_tz),
    }
}

/// The zone an object's DTSTART is written in: where its recurrence is expanded.
fn zone_of(t: &Time, zones: &BTreeMap<String, Zone>, default_tz: chrono_tz::Tz) -> ZoneRef {
    match t.kind {
        TimeKind::Utc => ZoneRef::Zone(Zone::Fixed { offset_seconds: 0 }),
        TimeKind::Zoned => {
            if let Some(z) = t.tzid.as_deref().and_then(|id| zones.get(id)) {
                return ZoneRef::Zone(z.clone());
            }
            // The zone is gone but ingest resolved the instant: keep its offset.
            match (t.utc, t.naive_local()) {
                (Some(u), Some(n)) => ZoneRef::Zone(Zone::Fixed {
                    offset_seconds: (n - u.naive_utc()).num_seconds() as i32,
                }),
                _ => ZoneRef::Tz(default_tz),
            }
        }
        TimeKind::Floating | TimeKind::Date => ZoneRef::Tz(default_tz),
    }
}

/// How long each instance of an object lasts.
#[derive(Debug, Clone, Copy)]
enum Span {
    /// DTEND/DURATION of a date-time event: the same exact duration for every
    /// instance (RFC 5545 §3.8.5.3).
    Exact(Duration),
    /// All-day events: whole days on the wall clock of the user's zone.
    Local(Duration),
}

/// Start, zone and length of one stored object.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub start_local: NaiveDateTime,
    pub start: DateTime<Utc>,
    pub zone: ZoneRef,
    pub all_day: bool,
    span: Span,
}

impl Timing {
    pub(crate) fn of(
        c: &Component,
        zones: &BTreeMap<String, Zone>,
        default_tz: chrono_tz::Tz,
    ) -> Option<Timing> {
        let st = c.start.as_ref()?;
        let start_local = st.naive_local()?;
        let start = resolve(st, zones, default_tz)?;
        let zone = zone_of(st, zones, default_tz);
        let all_day = st.kind == TimeKind::Date;
        let span = if all_day {
            let by_end = c
                .end
                .as_ref()
                .and_then(|e| e.naive_local())
                .map(|e| e - start_local);
            let by_duration = c.duration_seconds.map(Duration::seconds);
            let d = by_end.or(by_duration).unwrap_or(Duration::days(1));
            // A date DTEND not after DTSTART is malformed; RFC 5545's default (one day) is the kindest reading.
            Span::Local(if d <= Duration::zero() {
                Duration::days(1)
            } else {
                d
            })
        } else {
            let by_end = c
                .end
                .as_ref()
                .and_then(|e| resolve(e, zones, default_tz))
                .map(|e| e - start);
            let by_duration = c.duration_seconds.map(Duration::seconds);
            let d = by_end.or(by_duration).unwrap_or(Duration::zero());
            Span::Exact(d.max(Duration::zero()))
        };
        Some(Timing {
            start_local,
            start,
            zone,
            all_day,
            span,
        })
    }

    /// End of the instance that starts at `start` (local value `local` when known).
    pub(crate) fn end_for(
        &self,
        local: Option<NaiveDateTime>,
        start: DateTime<Utc>,
    ) -> DateTime<Utc> {
        match self.span {
            Span::Exact(d) => start.plus(d),
            Span::Local(d) => local
                .and_then(|l| self.zone.to_utc(l.plus(d)))
                .unwrap_or(start.plus(d)),
        }
    }

    /// An upper bound of any instance's length (wall-clock days stretch over DST).
    fn max_len(&self) -> Duration {
        match self.span {
            Span::Exact(d) => d,
            Span::Local(d) => d + DST_SLACK,
        }
    }
}

/// One generated instance of a master: its original start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Occurrence {
    pub local: Option<NaiveDateTime>,
    pub start: DateTime<Utc>,
}

/// Why an expansion stopped short of everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum More {
    /// Nothing exists beyond what was returned.
    No,
    /// Instances exist at or after the upper bound.
    PastBound,
    /// The instance limit or the scan budget stopped it.
    Limited,
}

#[derive(Debug, Clone, Copy)]
enum Until {
    Utc(DateTime<Utc>),
    Local(NaiveDateTime),
}

/// One RRULE, parsed and made safe to expand.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    rrule: RRule<Unvalidated>,
    freq: Frequency,
    interval: u16,
    count: Option<u32>,
    until: Option<Until>,
}

fn parse_until(v: &str) -> Option<Until> {
    let v = v.trim();
    if let Some(s) = v.strip_suffix(['Z', 'z']) {
        let n = NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S").ok()?;
        Some(Until::Utc(n.and_utc()))
    } else if v.len() == 8 {
        // A date UNTIL includes that whole day.
        let d = NaiveDate::parse_from_str(v, "%Y%m%d").ok()?;
        Some(Until::Local(d.and_hms_opt(23, 59, 59)?))
    } else {
        Some(Until::Local(
            NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S").ok()?,
        ))
    }
}

fn utc_start(n: NaiveDateTime) -> DateTime<rrule::Tz> {
    rrule::Tz::UTC.from_utc_datetime(&n)
}

impl Rule {
    /// `None` when the rule cannot be used (unparseable, invalid, or hostile):
    /// the event is then treated as if it had no such rule.
    pub(crate) fn parse(text: &str, dtstart: NaiveDateTime) -> Option<Rule> {
        let mut until = None;
        let mut rest = Vec::new();
        for part in text.trim().trim_start_matches("RRULE:").split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("UNTIL") => {
                    until = Some(parse_until(v)?)
                }
                _ => rest.push(part),
            }
        }
        let rest = rest.join(";");
        // A rule is ASCII (RFC 5545 §3.3.10); the crate's BYDAY parser slices
        // by byte and panics inside a multi-byte character (found by fuzzing).
        if !rest.is_ascii() {
            return None;
        }
        let mut r = RRule::<Unvalidated>::from_str(&rest).ok()?;
        let freq = r.get_freq();
        // Make the values the crate would take from DTSTART explicit, so that the
        // rule still means the same once DTSTART is moved forward (re-anchoring).
        let no_day_rule = r.get_by_week_no().is_empty()
            && r.get_by_year_day().is_empty()
            && r.get_by_month_day().is_empty()
            && r.get_by_weekday().is_empty();
        if no_day_rule {
            match freq {
                Frequency::Yearly => {
                    if r.get_by_month().is_empty() {
                        let m = chrono::Month::try_from(dtstart.month() as u8).ok()?;
                        r = r.by_month(&[m]);
                    }
                    r = r.by_month_day(vec![dtstart.day() as i8]);
                }
                Frequency::Monthly => r = r.by_month_day(vec![dtstart.day() as i8]),
                Frequency::Weekly => r = r.by_weekday(vec![NWeekday::Every(dtstart.weekday())]),
                _ => {}
            }
        }
        if r.get_by_hour().is_empty() && freq < Frequency::Hourly {
            r = r.by_hour(vec![dtstart.hour() as u8]);
        }
        if r.get_by_minute().is_empty() && freq < Frequency::Minutely {
            r = r.by_minute(vec![dtstart.minute() as u8]);
        }
        if r.get_by_second().is_empty() && freq < Frequency::Secondly {
            r = r.by_second(vec![dtstart.second() as u8]);
        }
        let n = |len: usize| len.max(1) as u64;
        let times = match freq {
            Frequency::Secondly => 1,
            Frequency::Minutely => n(r.get_by_second().len()),
            Frequency::Hourly => n(r.get_by_minute().len()) * n(r.get_by_second().len()),
            _ => n(r.get_by_hour().len()) * n(r.get_by_minute().len()) * n(r.get_by_second().len()),
        };
        let days = match freq {
            Frequency::Yearly => 366,
            Frequency::Monthly => 31,
            Frequency::Weekly => 7,
            _ => 1,
        };
        if times * days > MAX_PER_PERIOD {
            return None;
        }
        let interval = r.get_interval();
        let count = r.get_count();
        if interval == 0 || count == Some(0) {
            return None;
        }
        // Validate once now so that an invalid rule is known before it is relied on.
        r.clone().validate(utc_start(dtstart)).ok()?;
        Some(Rule {
            rrule: r,
            freq,
            interval,
            count,
            until,
        })
    }

    /// A DTSTART at least one whole period before `target` that generates the
    /// same instances from there on. Rules with COUNT cannot be re-anchored
    /// (COUNT counts from the real DTSTART).
    fn anchor(&self, dtstart: NaiveDateTime, target: NaiveDateTime) -> NaiveDateTime {
        if self.count.is_some() || target <= dtstart {
            return dtstart;
        }
        let iv = i64::from(self.interval);
        let unit = match self.freq {
            Frequency::Secondly => Some(1),
            Frequency::Minutely => Some(60),
            Frequency::Hourly => Some(3600),
            Frequency::Daily => Some(86_400),
            Frequency::Weekly => Some(7 * 86_400),
            Frequency::Monthly | Frequency::Yearly => None,
        };
        if let Some(unit) = unit {
            let step = unit * iv;
            let k = (target - dtstart).num_seconds() / step - 1;
            return if k <= 0 {
                dtstart
            } else {
                dtstart + Duration::seconds(k * step)
            };
        }
        let month_index = |d: NaiveDateTime| i64::from(d.year()) * 12 + i64::from(d.month0());
        let step_months = if self.freq == Frequency::Yearly {
            12 * iv
        } else {
            iv
        };
        let k = (month_index(target) - month_index(dtstart)) / step_months - 1;
        if k <= 0 {
            return dtstart;
        }
        let first = NaiveDate::from_ymd_opt(dtstart.year(), dtstart.month(), 1)
            .and_then(|d| d.checked_add_months(Months::new(u32::try_from(k * step_months).ok()?)));
        match first {
            // The start of a period: nothing of that period is lost to the crate's
            // "not before DTSTART" filter.
            Some(d) => d.and_time(NaiveTime::MIN),
            None => dtstart,
        }
    }

    /// Instances of this rule alone with `lo <= start < hi` (UTC), in order, at
    /// most `limit`, skipping those `excluded` says are gone.
    fn expand(
        &self,
        dtstart: NaiveDateTime,
        zone: &ZoneRef,
        lo: Option<DateTime<Utc>>,
        hi: Option<DateTime<Utc>>,
        limit: usize,
        excluded: &dyn Fn(NaiveDateTime, DateTime<Utc>) -> bool,
    ) -> (Vec<Occurrence>, More) {
        let lo_local = lo.map(|l| lower_local(zone, l));
        let anchor = lo_local.map_or(dtstart, |t| self.anchor(dtstart, t));
        let start = utc_start(anchor);
        let Ok(valid) = self.rrule.clone().validate(start) else {
            return (Vec::new(), More::No);
        };
        let set = RRuleSet::new(start).rrule(valid).limit();
        let mut out = Vec::new();
        let mut more = More::No;
        let mut stop_at = None;
        for (n, dt) in (&set).into_iter().enumerate() {
            if n >= SCAN_BUDGET {
                more = More::Limited;
                break;
            }
            let local = dt.naive_utc();
            if stop_at.is_some_and(|s| local >= s) {
                break;
            }
            if let Some(Until::Local(u)) = self.until
                && local > u
            {
                break;
            }
            if lo_local.is_some_and(|l| local < l) {
                continue;
            }
            let Some(utc) = zone.to_utc(local) else {
                continue;
            };
            if let Some(Until::Utc(u)) = self.until
                && utc > u
            {
                break;
            }
            if lo.is_some_and(|l| utc < l) || excluded(local, utc) {
                continue;
            }
            if let Some(h) = hi
                && utc >= h
            {
                more = more.max(More::PastBound);
                // Only a DST gap just ahead can map a later local value to an
                // earlier instant; look that far, and no further.
                if steady(zone, local) {
                    break;
                }
                stop_at.get_or_insert(local.plus(DST_SLACK));
                continue;
            }
            if out.len() >= limit {
                more = More::Limited;
                break;
            }
            out.push(Occurrence {
                local: Some(local),
                start: utc,
            });
        }
        (out, more)
    }

    /// How many values this rule generates before `before` (EXDATE ignored, as
    /// COUNT ignores it), and whether the count is exact.
    fn count_before(
        &self,
        dtstart: NaiveDateTime,
        zone: &ZoneRef,
        before: DateTime<Utc>,
    ) -> (usize, bool) {
        let (v, more) = self.expand(dtstart, zone, None, Some(before), SCAN_BUDGET, &|_, _| {
            false
        });
        (v.len(), more != More::Limited)
    }
}

/// A master expanded: DTSTART, RRULEs, RDATEs, minus EXDATEs.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub timing: Timing,
    rules: Vec<Rule>,
    rdates: Vec<Occurrence>,
    ex_utc: HashSet<DateTime<Utc>>,
    /// EXDATE;VALUE=DATE on a date-time series: every instance on that day.
    ex_days: HashSet<NaiveDate>,
}

impl Series {
    pub(crate) fn of(obj: &StoredObject, default_tz: chrono_tz::Tz) -> Option<Series> {
        let c = &obj.component;
        let timing = Timing::of(c, &obj.timezones, default_tz)?;
        let rules = c
            .rrule
            .iter()
            .filter_map(|r| Rule::parse(r, timing.start_local))
            .take(MAX_RULES)
            .collect();
        let same_frame = |t: &Time| {
            let st = c.start.as_ref();
            st.is_some_and(|s| s.kind == t.kind && s.tzid == t.tzid)
        };
        let rdates = c
            .rdate
            .iter()
            .filter_map(|t| {
                let start = resolve(t, &obj.timezones, default_tz)?;
                let local = if same_frame(t) { t.naive_local() } else { None };
                Some(Occurrence { local, start })
            })
            .collect();
        let mut ex_utc = HashSet::new();
        let mut ex_days = HashSet::new();
        for t in &c.exdate {
            if t.kind == TimeKind::Date && !timing.all_day {
                if let Some(n) = t.naive_local() {
                    ex_days.insert(n.date());
                }
            } else if let Some(u) = resolve(t, &obj.timezones, default_tz) {
                ex_utc.insert(u);
            }
        }
        Some(Series {
            timing,
            rules,
            rdates,
            ex_utc,
            ex_days,
        })
    }

    /// Whether the object has instances besides DTSTART (then each instance has a RECURRENCE-ID).
    pub(crate) fn is_recurring(&self) -> bool {
        !self.rules.is_empty() || !self.rdates.is_empty()
    }

    pub(crate) fn has_rule(&self) -> bool {
        !self.rules.is_empty()
    }

    fn excluded(&self, local: NaiveDateTime, utc: DateTime<Utc>) -> bool {
        self.ex_utc.contains(&utc) || self.ex_days.contains(&local.date())
    }

    /// Original instance starts with `lo <= start < hi`, in order, at most `limit`.
    pub(crate) fn occurrences(
        &self,
        lo: Option<DateTime<Utc>>,
        hi: Option<DateTime<Utc>>,
        limit: usize,
    ) -> (Vec<Occurrence>, More) {
        let mut more = More::No;
        let mut all = Vec::new();
        let dtstart = Occurrence {
            local: Some(self.timing.start_local),
            start: self.timing.start,
        };
        let fixed = std::iter::once(dtstart).chain(self.rdates.iter().copied());
        for o in fixed {
            let local = o.local.unwrap_or(o.start.naive_utc());
            if self.excluded(local, o.start) || lo.is_some_and(|l| o.start < l) {
                continue;
            }
            if hi.is_some_and(|h| o.start >= h) {
                more = more.max(More::PastBound);
                continue;
            }
            all.push(o);
        }
        let ex = |l: NaiveDateTime, u: DateTime<Utc>| self.excluded(l, u);
        for r in &self.rules {
            let (v, m) = r.expand(
                self.timing.start_local,
                &self.timing.zone,
                lo,
                hi,
                limit,
                &ex,
            );
            more = more.max(m);
            all.extend(v);
        }
        all.sort_by_key(|o| (o.start, o.local.is_none()));
        all.dedup_by_key(|o| o.start);
        if all.len() > limit {
            all.truncate(limit);
            more = More::Limited;
        }
        (all, more)
    }

    /// The generated instance whose original start is `at`, if any.
    pub(crate) fn occurrence_at(&self, at: DateTime<Utc>) -> Option<Occurrence> {
        let (v, _) = self.occurrences(Some(at), Some(at.plus(Duration::seconds(1))), 1);
        v.into_iter().find(|o| o.start == at)
    }

    /// The RRULE texts with every instance from `from` on removed (a CANCEL
    /// with THISANDFUTURE): open rules get an UNTIL just before it, rules with
    /// COUNT get the count of what remains. Rules left empty are dropped.
    pub(crate) fn rules_truncated(&self, texts: &[String], from: DateTime<Utc>) -> Vec<String> {
        let mut out = Vec::new();
        for text in texts {
            let Some(rule) = Rule::parse(text, self.timing.start_local) else {
                // Unusable rules generate nothing already; keep them as the sender wrote them.
                out.push(text.clone());
                continue;
            };
            let mut parts: Vec<String> = text
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let k = p.split('=').next().unwrap_or("").trim();
                    !(k.eq_ignore_ascii_case("UNTIL") || k.eq_ignore_ascii_case("COUNT"))
                })
                .map(str::to_owned)
                .collect();
            if rule.count.is_some() {
                let (n, exact) =
                    rule.count_before(self.timing.start_local, &self.timing.zone, from);
                if exact && n == 0 {
                    continue;
                }
                parts.push(format!("COUNT={}", n.max(1)));
                if let Some(u) = until_text(&rule.until) {
                    parts.push(u);
                }
            } else {
                if rule.until.is_some_and(|u| match u {
                    Until::Utc(u) => u < from,
                    Until::Local(l) => self.timing.zone.to_utc(l).is_some_and(|u| u < from),
                }) {
                    out.push(text.clone());
                    continue;
                }
                if self.timing.all_day {
                    // All-day rules take a DATE UNTIL: the last day kept.
                    let day = local_date_of(&self.timing.zone, from);
                    let last_day = day.pred_opt().unwrap_or(day);
                    parts.push(format!("UNTIL={}", last_day.format("%Y%m%d")));
                } else {
                    let u = from.minus(Duration::seconds(1));
                    parts.push(format!("UNTIL={}", u.format("%Y%m%dT%H%M%SZ")));
                }
            }
            out.push(parts.join(";"));
        }
        out
    }
}

fn until_text(u: &Option<Until>) -> Option<String> {
    match u {
        Some(Until::Utc(u)) => Some(format!("UNTIL={}", u.format("%Y%m%dT%H%M%SZ"))),
        Some(Until::Local(l)) => Some(format!("UNTIL={}", l.format("%Y%m%dT%H%M%S"))),
        None => None,
    }
}

/// Whether the zone's offset is the same over `[local, local + DST_SLACK]`.
fn steady(zone: &ZoneRef, local: NaiveDateTime) -> bool {
    match (zone.to_utc(local), zone.to_utc(local.plus(DST_SLACK))) {
        (Some(a), Some(b)) => b - a == DST_SLACK,
        _ => false,
    }
}

/// A local wall-clock value no later than that of any instant from `at` on.
fn lower_local(zone: &ZoneRef, at: DateTime<Utc>) -> NaiveDateTime {
    match local_of(zone, at) {
        Some(l) if steady(zone, l.minus(DST_SLACK)) => l,
        Some(l) => l.minus(DST_SLACK),
        None => at.naive_utc().minus(ZONE_SLACK),
    }
}

/// The local calendar date of an instant in a zone (found by probing offsets,
/// since [`Zone`] only converts local → UTC).
pub(crate) fn local_date_of(zone: &ZoneRef, at: DateTime<Utc>) -> NaiveDate {
    local_of(zone, at).unwrap_or(at.naive_utc()).date()
}

/// The local wall-clock value of an instant in a zone.
pub(crate) fn local_of(zone: &ZoneRef, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    match zone {
        ZoneRef::Tz(tz) => Some(at.with_timezone(tz).naive_local()),
        ZoneRef::Zone(Zone::Iana { name }) => {
            let tz: chrono_tz::Tz = name.parse().ok()?;
            Some(at.with_timezone(&tz).naive_local())
        }
        ZoneRef::Zone(z) => {
            // Offsets are whole quarter hours in practice; try each within ±26 h.
            let base = at.naive_utc();
            (-26 * 4..=26 * 4)
                .map(|q| base.plus(Duration::minutes(15 * q)))
                .find(|l| z.to_utc(*l) == Some(at))
        }
    }
}

/// One instance of a UID: a generated one (possibly shifted by a THISANDFUTURE
/// override) or a stored specific recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instance {
    /// The original start (RECURRENCE-ID); `None` for a non-recurring event.
    pub rid: Option<DateTime<Utc>>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Index into `UidState::objects` of the object whose properties decide busy time.
    pub source: usize,
}

/// A THISANDFUTURE override as it acts on later instances.
#[derive(Debug, Clone, Copy)]
struct Shift {
    rid: DateTime<Utc>,
    offset: Duration,
    length: Duration,
    source: usize,
}

/// A UID's objects prepared for expansion.
struct Plan {
    master: Option<(usize, Series)>,
    overrides: Vec<Instance>,
    override_rids: HashSet<DateTime<Utc>>,
    /// Sorted by RECURRENCE-ID.
    shifts: Vec<Shift>,
}

impl Plan {
    fn of(state: &UidState, ctx: &Ctx) -> Plan {
        let master = state
            .objects
            .iter()
            .position(|o| o.recurrence_id.is_none())
            .and_then(|i| Some((i, Series::of(&state.objects[i], ctx.default_tz)?)));
        let mut overrides = Vec::new();
        let mut shifts = Vec::new();
        for (i, o) in state.objects.iter().enumerate() {
            let Some(rid) = o.recurrence_id else { continue };
            let timing = Timing::of(&o.component, &o.timezones, ctx.default_tz);
            let start = timing.as_ref().map_or(rid, |t| t.start);
            let end = match (&timing, &master) {
                (Some(t), _)
                    if o.component.end.is_some()
                        || o.component.duration_seconds.is_some()
                        || t.all_day =>
                {
                    t.end_for(Some(t.start_local), start)
                }
                // No end of its own: the instance keeps the series' length.
                (_, Some((_, m))) => {
                    let local = master_local_at(m, rid);
                    let d = m.timing.end_for(local, rid) - rid;
                    start.plus(d)
                }
                (Some(t), None) => t.end_for(Some(t.start_local), start),
                (None, None) => start,
            };
            overrides.push(Instance {
                rid: Some(rid),
                start,
                end,
                source: i,
            });
            let this_and_future = o
                .component
                .recurrence_id
                .as_ref()
                .is_some_and(|r| r.range == Some(Range::ThisAndFuture));
            // A hostile THISANDFUTURE that moves the rest of a series by
            // millennia would make every bound reach back (or ahead) that far:
            // beyond MAX_SHIFT it applies to its own instance only.
            if this_and_future && (start - rid).abs() <= MAX_SHIFT {
                shifts.push(Shift {
                    rid,
                    offset: start - rid,
                    length: end - start,
                    source: i,
                });
            }
        }
        shifts.sort_by_key(|s| s.rid);
        let override_rids = overrides.iter().filter_map(|i| i.rid).collect();
        Plan {
            master,
            overrides,
            override_rids,
            shifts,
        }
    }

    fn min_shift(&self) -> Duration {
        self.shifts
            .iter()
            .map(|s| s.offset)
            .min()
            .unwrap_or_default()
            .min(Duration::zero())
    }

    fn max_shift(&self) -> Duration {
        self.shifts
            .iter()
            .map(|s| s.offset)
            .max()
            .unwrap_or_default()
            .max(Duration::zero())
    }

    fn max_len(&self) -> Duration {
        let m = self
            .master
            .as_ref()
            .map_or(Duration::zero(), |(_, s)| s.timing.max_len());
        self.shifts.iter().map(|s| s.length).fold(m, Duration::max)
    }

    /// Generated occurrences become instances: overridden ones are dropped
    /// (their override stands in), later ones follow the last THISANDFUTURE.
    fn instances_of(&self, occs: &[Occurrence]) -> Vec<Instance> {
        let Some((mi, series)) = &self.master else {
            return Vec::new();
        };
        let recurring = series.is_recurring();
        occs.iter()
            .filter(|o| !self.override_rids.contains(&o.start))
            .map(
                |o| match self.shifts.iter().rev().find(|s| s.rid < o.start) {
                    Some(s) => {
                        let start = o.start.plus(s.offset);
                        Instance {
                            rid: Some(o.start),
                            start,
                            end: start.plus(s.length),
                            source: s.source,
                        }
                    }
                    None => Instance {
                        rid: recurring.then_some(o.start),
                        start: o.start,
                        end: series.timing.end_for(o.local, o.start),
                        source: *mi,
                    },
                },
            )
            .collect()
    }
}

fn master_local_at(series: &Series, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    if at == series.timing.start {
        return Some(series.timing.start_local);
    }
    local_of(&series.timing.zone, at)
}

/// The bounded set of instances stored as free/busy records.
#[derive(Debug, Clone)]
pub(crate) struct Materialised {
    pub instances: Vec<Instance>,
    /// Instances exist that are not in `instances`.
    pub open_ended: bool,
    /// When open-ended: `instances` holds exactly the instances starting before this.
    pub complete_until: Option<DateTime<Utc>>,
}

/// Instances from the first one up to `ctx.now + ctx.horizon` (only for
/// series with an RRULE; finite events are materialised whole), at most
/// `ctx.max_instances`.
pub(crate) fn materialise(state: &UidState, ctx: &Ctx) -> Materialised {
    let plan = Plan::of(state, ctx);
    let horizon_end = ctx.now.plus(ctx.horizon);
    let has_rule = plan.master.as_ref().is_some_and(|(_, s)| s.has_rule());
    let mut bound = has_rule.then_some(horizon_end);
    let mut open_ended = false;
    let mut instances = plan.overrides.clone();
    if let Some((_, series)) = &plan.master {
        // Shifted instances whose original start lies past the horizon can start before it.
        let hi = bound.map(|b| b.minus(plan.min_shift()));
        let limit = ctx.max_instances + plan.overrides.len() + 1;
        let (occs, more) = series.occurrences(None, hi, limit);
        match more {
            More::No => {}
            More::PastBound => open_ended = true,
            More::Limited => {
                open_ended = true;
                // Instances not generated start after the last generated one
                // (whole seconds apart), possibly moved earlier by a shift.
                let safe = occs.last().map_or(DateTime::<Utc>::MIN_UTC, |o| {
                    o.start.plus(Duration::seconds(1)).plus(plan.min_shift())
                });
                bound = Some(bound.map_or(safe, |b| b.min(safe)));
            }
        }
        instances.extend(plan.instances_of(&occs));
    }
    instances.sort_by_key(|i| (i.start, i.rid, i.source));
    if let Some(b) = bound {
        let before = instances.len();
        instances.retain(|i| i.start < b);
        open_ended |= instances.len() < before;
    }
    if instances.len() > ctx.max_instances {
        let cut = instances[ctx.max_instances].start;
        instances.retain(|i| i.start < cut);
        bound = Some(bound.map_or(cut, |b| b.min(cut)));
        open_ended = true;
    }
    Materialised {
        instances,
        open_ended,
        complete_until: if open_ended { bound } else { None },
    }
}

/// Instances whose `[start, end)` intersects `[from, to)`, at any distance
/// from DTSTART, at most [`WINDOW_CAP`].
pub(crate) fn window(
    state: &UidState,
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Instance> {
    window_capped(state, ctx, from, to, WINDOW_CAP).0
}

/// [`window`] with at most `cap` instances (and never more than
/// [`WINDOW_CAP`]): the first ones by start, and whether instances were left
/// out (the cap, or the scan budget, stopped it).
pub(crate) fn window_capped(
    state: &UidState,
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: usize,
) -> (Vec<Instance>, bool) {
    let cap = cap.min(WINDOW_CAP);
    if to <= from {
        return (Vec::new(), false);
    }
    let plan = Plan::of(state, ctx);
    let keep = |i: &Instance| i.start < to && i.end > from;
    let mut instances: Vec<Instance> = plan.overrides.iter().copied().filter(keep).collect();
    let mut cut = false;
    if let Some((_, series)) = &plan.master {
        let lo = from
            .minus(plan.max_len())
            .minus(plan.max_shift())
            .minus(Duration::seconds(1));
        let hi = to.minus(plan.min_shift());
        // Generation starts before the window (an instance may reach into
        // it), and those that end before it are dropped: when that leaves
        // the answer short of the cap, generate further (a few times at most).
        let mut limit = cap + plan.overrides.len();
        let mut generated = Vec::new();
        for round in 0..4 {
            let (occs, more) = series.occurrences(Some(lo), Some(hi), limit);
            cut = more == More::Limited;
            generated = plan.instances_of(&occs);
            generated.retain(keep);
            if !cut || generated.len() + instances.len() >= cap || round == 3 {
                break;
            }
            limit = limit.saturating_mul(2);
        }
        instances.extend(generated);
    }
    instances.sort_by_key(|i| (i.start, i.rid, i.source));
    cut |= instances.len() > cap;
    instances.truncate(cap);
    (instances, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn n(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    fn z(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn berlin() -> ZoneRef {
        ZoneRef::Zone(Zone::Iana {
            name: "Europe/Berlin".into(),
        })
    }

    fn expand_all(
        rule: &str,
        start: &str,
        zone: &ZoneRef,
        lo: Option<&str>,
        hi: &str,
    ) -> Vec<DateTime<Utc>> {
        let r = Rule::parse(rule, n(start)).expect("rule parses");
        let (v, _) = r.expand(n(start), zone, lo.map(z), Some(z(hi)), 10_000, &|_, _| {
            false
        });
        v.into_iter().map(|o| o.start).collect()
    }

    #[test]
    fn weekly_rule_keeps_wall_clock_across_dst_in_berlin() {
        let v = expand_all(
            "FREQ=WEEKLY;BYDAY=TU",
            "2027-03-16T10:00:00",
            &berlin(),
            None,
            "2027-04-07T00:00:00Z",
        );
        assert_eq!(
            v,
            vec![
                z("2027-03-16T09:00:00Z"),
                z("2027-03-23T09:00:00Z"),
                z("2027-03-30T08:00:00Z"),
                z("2027-04-06T08:00:00Z"),
            ]
        );
    }

    #[test]
    fn utc_until_is_inclusive_and_local_until_too() {
        let v = expand_all(
            "FREQ=DAILY;UNTIL=20270103T090000Z",
            "2027-01-01T10:00:00",
            &berlin(),
            None,
            "2028-01-01T00:00:00Z",
        );
        assert_eq!(v.len(), 3);
        let v = expand_all(
            "FREQ=DAILY;UNTIL=20270102",
            "2027-01-01T10:00:00",
            &berlin(),
            None,
            "2028-01-01T00:00:00Z",
        );
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn re_anchoring_gives_the_same_instances_as_iterating_from_the_start() {
        let utc = ZoneRef::Zone(Zone::Fixed { offset_seconds: 0 });
        let cases = [
            ("FREQ=DAILY;INTERVAL=3", "2020-01-31T10:00:00"),
            ("FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR", "2020-01-31T10:00:00"),
            ("FREQ=WEEKLY;INTERVAL=3", "2020-01-29T10:00:00"),
            ("FREQ=MONTHLY", "2020-01-31T10:00:00"),
            ("FREQ=MONTHLY;INTERVAL=5;BYDAY=-1FR", "2020-01-31T10:00:00"),
            (
                "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
                "2020-01-31T18:00:00",
            ),
            ("FREQ=YEARLY", "2020-02-29T10:00:00"),
            (
                "FREQ=YEARLY;INTERVAL=2;BYMONTH=3;BYDAY=-1SU",
                "2020-03-29T01:00:00",
            ),
            ("FREQ=HOURLY;INTERVAL=7", "2020-01-31T10:30:00"),
            // (Not with BYHOUR: rrule 0.14 loses a MINUTELY rule's INTERVAL phase when it skips hours.)
            ("FREQ=MINUTELY;INTERVAL=9973", "2020-01-31T09:00:00"),
            (
                "FREQ=DAILY;BYHOUR=9,17;BYMINUTE=0,30;BYSETPOS=2,-1",
                "2020-01-31T09:00:00",
            ),
        ];
        for (rule, start) in cases {
            let r = Rule::parse(rule, n(start)).unwrap();
            let lo = z("2026-06-01T00:00:00Z");
            let hi = z("2028-06-01T00:00:00Z");
            let (full, _) = r.expand(n(start), &utc, None, Some(hi), 200_000, &|_, _| false);
            let full: Vec<_> = full.into_iter().filter(|o| o.start >= lo).collect();
            let (windowed, _) =
                r.expand(n(start), &utc, Some(lo), Some(hi), 200_000, &|_, _| false);
            assert!(!full.is_empty(), "{rule}");
            assert_eq!(full, windowed, "{rule}");
        }
    }

    #[test]
    fn hostile_rules_are_refused_or_bounded() {
        // 366 days × 86400 seconds in one period: refused outright.
        assert!(Rule::parse(
            "FREQ=YEARLY;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23;BYMINUTE=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29",
            n("2027-01-01T00:00:00")
        )
        .is_none());
        assert!(Rule::parse("FREQ=FORTNIGHTLY", n("2027-01-01T00:00:00")).is_none());
        assert!(Rule::parse("FREQ=DAILY;INTERVAL=0", n("2027-01-01T00:00:00")).is_none());
        // A rule that never matches stops at the crate's loop limit.
        let r = Rule::parse(
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
            n("2027-01-01T00:00:00"),
        )
        .unwrap();
        let t = std::time::Instant::now();
        let (v, _) = r.expand(
            n("2027-01-01T00:00:00"),
            &berlin(),
            None,
            None,
            10,
            &|_, _| false,
        );
        assert!(v.is_empty());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn truncating_rules_for_this_and_future() {
        let obj = |rrule: &str| StoredObject {
            recurrence_id: None,
            component: Component {
                kind: imipflow_schema::ComponentKind::Event,
                uid: "u".into(),
                recurrence_id: None,
                sequence: 0,
                dtstamp: None,
                start: Some(Time::zoned(
                    n("2027-03-16T10:00:00"),
                    "Europe/Berlin",
                    Utc.with_ymd_and_hms(2027, 3, 16, 9, 0, 0).unwrap(),
                )),
                end: None,
                duration_seconds: Some(3600),
                all_day: false,
                floating: false,
                rrule: vec![rrule.into()],
                rdate: vec![],
                exdate: vec![],
                status: None,
                transp: Default::default(),
                summary: None,
                organizer: None,
                attendees: vec![],
            },
            timezones: [(
                "Europe/Berlin".to_owned(),
                Zone::Iana {
                    name: "Europe/Berlin".into(),
                },
            )]
            .into(),
            raw: Default::default(),
            answers: Default::default(),
        };
        let o = obj("FREQ=WEEKLY;COUNT=10");
        let s = Series::of(&o, chrono_tz::UTC).unwrap();
        assert_eq!(
            s.rules_truncated(&o.component.rrule, z("2027-03-30T08:00:00Z")),
            vec!["FREQ=WEEKLY;COUNT=2".to_owned()]
        );
        let o = obj("FREQ=WEEKLY");
        let s = Series::of(&o, chrono_tz::UTC).unwrap();
        assert_eq!(
            s.rules_truncated(&o.component.rrule, z("2027-03-30T08:00:00Z")),
            vec!["FREQ=WEEKLY;UNTIL=20270330T075959Z".to_owned()]
        );
    }

    #[test]
    fn local_of_inverts_every_zone_kind() {
        let at = z("2027-03-30T08:00:00Z");
        assert_eq!(local_of(&berlin(), at), Some(n("2027-03-30T10:00:00")));
        let fixed = ZoneRef::Zone(Zone::Fixed {
            offset_seconds: -5 * 3600,
        });
        assert_eq!(local_of(&fixed, at), Some(n("2027-03-30T03:00:00")));
        assert_eq!(
            local_of(&ZoneRef::Tz(chrono_tz::America::New_York), at),
            Some(n("2027-03-30T04:00:00"))
        );
    }
}
