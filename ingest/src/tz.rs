//! Resolving TZIDs. A TZID that is a standard name — IANA (also behind a
//! libical `/vendor/version/` prefix) or a Windows zone id such as
//! `W. Europe Standard Time` — resolves to its IANA zone. Any other TZID (Outlook
//! 12 and Exchange display names such as `(UTC+02:00) Athens, Bucharest`,
//! Outlook's "Customized Time Zone", `FLE`) is resolved by the message's own
//! VTIMEZONE rules; without usable rules, by the VTIMEZONE's X-LIC-LOCATION or
//! X-MICROSOFT-CDO-TZID; else not at all (the caller makes the time floating and
//! says so). Never by an offset or a city guessed from the text.
//!
//! A standard name wins over the message's rules for that name, because the
//! name brings the full IANA history while a VTIMEZONE often carries one
//! truncated or outdated observance (a Europe/Berlin with only its 1893
//! observance, an Outlook 2003 "Eastern Standard Time" with pre-2007 US rules);
//! the rules are kept to say, in a warning, when they put an instant elsewhere.
//! docs/semantics.md "Time zones" has the evidence from other clients.

use calcard::common::PartialDateTime;
use calcard::common::timezone::Tz;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarFrequency, ICalendarProperty,
    ICalendarValue,
};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use imipflow_schema::{Observance, YearlyRule, Zone, ZoneRules};
use std::collections::BTreeMap;
use std::str::FromStr;

/// How one TZID resolved.
struct Resolved {
    zone: Option<Zone>,
    /// The message's own rules for a TZID resolved by its name, while no
    /// disagreement with the name has been reported.
    unchecked_rules: Option<ZoneRules>,
}

/// The zones of one calendar object, resolved once per TZID.
pub struct ZoneResolver<'a> {
    ical: &'a ICalendar,
    cache: BTreeMap<String, Resolved>,
}

impl<'a> ZoneResolver<'a> {
    pub fn new(ical: &'a ICalendar) -> Self {
        ZoneResolver {
            ical,
            cache: BTreeMap::new(),
        }
    }

    pub fn resolve(&mut self, tzid: &str) -> Option<Zone> {
        if let Some(r) = self.cache.get(tzid) {
            return r.zone.clone();
        }
        let r = self.lookup(tzid);
        let zone = r.zone.clone();
        self.cache.insert(tzid.to_owned(), r);
        zone
    }

    /// The same check for the instances of a series starting at `start`:
    /// its time of day on the 15th of each of the twelve months from its
    /// start, which falls inside every DST window real zones have had
    /// changed (the US 2007 change moved March and November by weeks).
    pub fn series_disagreement(&mut self, tzid: &str, start: NaiveDateTime) -> Option<String> {
        let zone = self.cache.get(tzid)?.zone.clone()?;
        self.cache.get(tzid)?.unchecked_rules.as_ref()?;
        let (mut year, mut month) = (start.year(), start.month());
        for _ in 0..12 {
            if let Some(local) =
                NaiveDate::from_ymd_opt(year, month, 15).map(|d| d.and_time(start.time()))
                && let Some(utc) = zone.to_utc(local)
                && let Some(w) = self.disagreement(tzid, local, utc)
            {
                return Some(w);
            }
            (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
        }
        None
    }

    /// When the message's VTIMEZONE for a standard name puts `local` at
    /// another instant than the name's zone did (`utc`), the warning that
    /// says so; once per TZID.
    pub fn disagreement(
        &mut self,
        tzid: &str,
        local: NaiveDateTime,
        utc: DateTime<Utc>,
    ) -> Option<String> {
        let r = self.cache.get_mut(tzid)?;
        let theirs = r.unchecked_rules.as_ref()?.to_utc(local)?;
        if theirs == utc {
            return None;
        }
        r.unchecked_rules = None;
        let name = match &r.zone {
            Some(Zone::Iana { name }) => name.as_str(),
            _ => "its IANA zone",
        };
        let offset = |u: DateTime<Utc>| {
            let secs = (local - u.naive_utc()).num_seconds();
            let sign = if secs < 0 { '-' } else { '+' };
            format!(
                "{sign}{:02}:{:02}",
                secs.abs() / 3600,
                secs.abs() % 3600 / 60
            )
        };
        Some(format!(
            "TZID {tzid:?}: the message's VTIMEZONE puts {local} at {}, {name} at {}; {name} is used",
            offset(theirs),
            offset(utc)
        ))
    }

    /// Every TZID resolved so far that led somewhere.
    pub fn used(self) -> BTreeMap<String, Zone> {
        self.cache
            .into_iter()
            .filter_map(|(k, v)| v.zone.map(|z| (k, z)))
            .collect()
    }

    fn lookup(&self, tzid: &str) -> Resolved {
        let vtimezone = self.ical.components.iter().find(|c| {
            c.component_type == ICalendarComponentType::VTimezone
                && c.property(&ICalendarProperty::Tzid)
                    .and_then(|e| e.values.first())
                    .and_then(|v| v.as_text())
                    == Some(tzid)
        });
        let rules = vtimezone.and_then(|vtz| rules_of(self.ical, vtz));
        if let Some(tz) = standard_zone(tzid) {
            return Resolved {
                zone: Some(iana(tz)),
                unchecked_rules: rules,
            };
        }
        let zone = match rules {
            Some(r) => Some(Zone::Rules(r)),
            None => vtimezone.and_then(named_by_extension).map(iana),
        };
        Resolved {
            zone,
            unchecked_rules: None,
        }
    }
}

fn iana(tz: chrono_tz::Tz) -> Zone {
    Zone::Iana {
        name: tz.name().to_owned(),
    }
}

/// The IANA zone a TZID names by a standard: an IANA name, the same behind a
/// libical-style `/softwarestudio.org/Olson_20011030_5/` prefix, or a Windows
/// zone id (CLDR windowsZones: `… Standard Time`, `UTC`, `UTC±nn`). calcard
/// also maps display names and abbreviations (`Athens, Istanbul, Minsk`,
/// `FLE`) and turns `(UTC+02:00) …` into a fixed offset; those are guesses,
/// not names, and are left to the message's VTIMEZONE.
pub fn standard_zone(tzid: &str) -> Option<chrono_tz::Tz> {
    let tzid = tzid.trim();
    if let Ok(tz) = chrono_tz::Tz::from_str(tzid) {
        return Some(tz);
    }
    let windows = {
        let lower = tzid.to_ascii_lowercase();
        lower.ends_with(" standard time")
            || lower
                .strip_prefix("utc")
                .and_then(|r| r.strip_prefix(['+', '-']))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(path) = tzid.strip_prefix('/') {
        // RFC 5545 §3.2.19's globally unique prefix, as libical writes it
        // (`/freeassociation.sourceforge.net/Europe/Berlin`, also with
        // `Tzfile/` or a version segment): the first tail that is a name.
        return path
            .match_indices('/')
            .find_map(|(i, _)| chrono_tz::Tz::from_str(&path[i + 1..]).ok());
    }
    if !windows {
        return None;
    }
    match Tz::from_str(tzid) {
        Ok(Tz::Tz(tz)) => Some(tz),
        _ => None,
    }
}

/// The zone a VTIMEZONE names in its vendor properties (libical's
/// X-LIC-LOCATION, Exchange's X-MICROSOFT-CDO-TZID), for one without rules.
fn named_by_extension(vtz: &ICalendarComponent) -> Option<chrono_tz::Tz> {
    vtz.entries.iter().find_map(|e| {
        let ICalendarProperty::Other(name) = &e.name else {
            return None;
        };
        let value = e.values.first()?.as_text()?.trim();
        if name.eq_ignore_ascii_case("X-LIC-LOCATION") {
            chrono_tz::Tz::from_str(value.strip_prefix("SystemV/").unwrap_or(value)).ok()
        } else if name.eq_ignore_ascii_case("X-MICROSOFT-CDO-TZID") {
            match Tz::from_ms_cdo_zone_id(value)? {
                Tz::Tz(tz) => Some(tz),
                _ => None,
            }
        } else {
            None
        }
    })
}

/// Local date-time of a PartialDateTime, ignoring any offset.
pub fn naive(p: &PartialDateTime) -> Option<NaiveDateTime> {
    let date = NaiveDate::from_ymd_opt(i32::from(p.year?), u32::from(p.month?), u32::from(p.day?))?;
    let time = NaiveTime::from_hms_opt(
        u32::from(p.hour.unwrap_or(0)),
        u32::from(p.minute.unwrap_or(0)),
        u32::from(p.second.unwrap_or(0)).min(59),
    )?;
    Some(date.and_time(time))
}

/// A UTC-OFFSET value in seconds east.
fn offset_seconds(v: &ICalendarValue) -> Option<i32> {
    match v {
        ICalendarValue::PartialDateTime(p) => {
            let secs = i32::from(p.tz_hour?) * 3600 + i32::from(p.tz_minute.unwrap_or(0)) * 60;
            Some(if p.tz_minus { -secs } else { secs })
        }
        ICalendarValue::Text(t) => {
            let t = t.trim();
            let (sign, digits) = match t.as_bytes().first()? {
                b'+' => (1, &t[1..]),
                b'-' => (-1, &t[1..]),
                _ => (1, t),
            };
            if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let h: i32 = digits[0..2].parse().ok()?;
            let m: i32 = digits[2..4].parse().ok()?;
            let s: i32 = digits.get(4..6).and_then(|s| s.parse().ok()).unwrap_or(0);
            Some(sign * (h * 3600 + m * 60 + s))
        }
        _ => None,
    }
}

fn rules_of(ical: &ICalendar, vtz: &ICalendarComponent) -> Option<ZoneRules> {
    let mut observances = Vec::new();
    for id in &vtz.component_ids {
        let Some(c) = ical.components.get(*id as usize) else {
            continue;
        };
        let daylight = match c.component_type {
            ICalendarComponentType::Daylight => true,
            ICalendarComponentType::Standard => false,
            _ => continue,
        };
        let first = |p: ICalendarProperty| c.property(&p).and_then(|e| e.values.first());
        let Some(start) = first(ICalendarProperty::Dtstart)
            .and_then(|v| v.as_partial_date_time())
            .and_then(naive)
        else {
            continue;
        };
        let (Some(offset_from), Some(offset_to)) = (
            first(ICalendarProperty::Tzoffsetfrom).and_then(offset_seconds),
            first(ICalendarProperty::Tzoffsetto).and_then(offset_seconds),
        ) else {
            continue;
        };
        let rule = match first(ICalendarProperty::Rrule) {
            Some(ICalendarValue::RecurrenceRule(r)) if r.freq == ICalendarFrequency::Yearly => {
                let month = r
                    .bymonth
                    .first()
                    .map(|m| u32::from(m.month()))
                    .unwrap_or(chrono::Datelike::month(&start));
                let nth_weekday = r.byday.first().map(|d| {
                    let wd: chrono::Weekday = d.weekday.into();
                    (
                        d.ordwk.unwrap_or(1).clamp(-5, 5) as i8,
                        wd.num_days_from_monday() as u8,
                    )
                });
                let month_day = if nth_weekday.is_none() {
                    Some(
                        r.bymonthday
                            .first()
                            .copied()
                            .unwrap_or(chrono::Datelike::day(&start) as i8),
                    )
                } else {
                    None
                };
                Some(YearlyRule {
                    month,
                    nth_weekday,
                    month_day,
                    until: r.until.as_ref().and_then(naive),
                    count: r.count,
                })
            }
            _ => None,
        };
        let rdates = c
            .properties(&ICalendarProperty::Rdate)
            .flat_map(|e| e.values.iter())
            .filter_map(|v| match v {
                ICalendarValue::PartialDateTime(p) => naive(p),
                _ => None,
            })
            .collect();
        observances.push(Observance {
            daylight,
            start,
            offset_from,
            offset_to,
            rule,
            rdates,
        });
    }
    (!observances.is_empty()).then_some(ZoneRules { observances })
}
