//! Resolving TZIDs: by name first (IANA, Windows names such as
//! `W. Europe Standard Time`, X-LIC-LOCATION, Exchange CDO ids — calcard knows
//! them all), else by interpreting the message's own VTIMEZONE rules.
//!
//! Names win over rules because a name brings the full IANA history, while a
//! VTIMEZONE often carries only the current year's rule; rules are the fallback
//! for custom zones (Outlook's "Customized Time Zone") that no name describes.

use calcard::common::PartialDateTime;
use calcard::common::timezone::Tz;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarFrequency, ICalendarProperty,
    ICalendarValue,
};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use imipflow_schema::{Observance, YearlyRule, Zone, ZoneRules};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The zones of one calendar object, resolved once per TZID.
pub struct ZoneResolver<'a> {
    ical: &'a ICalendar,
    cache: BTreeMap<String, Option<Zone>>,
}

impl<'a> ZoneResolver<'a> {
    pub fn new(ical: &'a ICalendar) -> Self {
        ZoneResolver {
            ical,
            cache: BTreeMap::new(),
        }
    }

    pub fn resolve(&mut self, tzid: &str) -> Option<Zone> {
        if let Some(z) = self.cache.get(tzid) {
            return z.clone();
        }
        let zone = self.lookup(tzid);
        self.cache.insert(tzid.to_owned(), zone.clone());
        zone
    }

    /// Every TZID resolved so far that led somewhere.
    pub fn used(self) -> BTreeMap<String, Zone> {
        self.cache
            .into_iter()
            .filter_map(|(k, v)| v.map(|z| (k, z)))
            .collect()
    }

    fn lookup(&self, tzid: &str) -> Option<Zone> {
        let vtimezone = self.ical.components.iter().find(|c| {
            c.component_type == ICalendarComponentType::VTimezone
                && c.property(&ICalendarProperty::Tzid)
                    .and_then(|e| e.values.first())
                    .and_then(|v| v.as_text())
                    == Some(tzid)
        });
        if let Some(vtz) = vtimezone
            && let Some((_, tz)) = vtz.timezone()
            && let Some(z) = zone_of(tz)
        {
            return Some(z);
        }
        if let Some(z) = Tz::from_str(tzid).ok().and_then(zone_of) {
            return Some(z);
        }
        vtimezone
            .and_then(|vtz| rules_of(self.ical, vtz))
            .map(Zone::Rules)
    }
}

fn zone_of(tz: Tz) -> Option<Zone> {
    match tz {
        Tz::Tz(t) => Some(Zone::Iana {
            name: t.name().to_owned(),
        }),
        Tz::Fixed(off) => Some(Zone::Fixed {
            offset_seconds: off.local_minus_utc(),
        }),
        Tz::Floating => None,
    }
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
