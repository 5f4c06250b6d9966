//! Times as a calendar message states them, and the zones that turn them into instants.
//!
//! A [`Time`] keeps what the sender wrote (local value and TZID) next to the UTC
//! instant ingest resolved, because recurrence must later be expanded in the
//! event's own zone (DST-correct), not in UTC. A [`Zone`] is how a TZID resolves:
//! an IANA zone (also reached from Windows names), or the rules of a VTIMEZONE the
//! message carried when its name means nothing (Outlook's "Customized Time Zone").

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use serde::{Deserialize, Serialize};

/// How a time value was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeKind {
    /// `...Z`: an instant.
    Utc,
    /// Local time with a TZID that resolved to a zone.
    Zoned,
    /// Local time without a zone (or with a TZID nobody can resolve): its
    /// instant depends on the user's configured zone, so `utc` is absent.
    Floating,
    /// `VALUE=DATE`: a whole day in the user's zone; `utc` is absent.
    Date,
}

/// One DTSTART/DTEND/RECURRENCE-ID/RDATE/EXDATE value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// The instant, for `utc` and `zoned` values.
    pub utc: Option<DateTime<Utc>>,
    /// The value as written: `2027-03-15T09:00:00` or, for dates, `2027-03-15`.
    pub local: String,
    /// The TZID parameter as written, if any.
    pub tzid: Option<String>,
    pub kind: TimeKind,
}

impl Time {
    pub fn utc(instant: DateTime<Utc>) -> Self {
        Time {
            utc: Some(instant),
            local: instant.naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string(),
            tzid: None,
            kind: TimeKind::Utc,
        }
    }

    pub fn zoned(local: NaiveDateTime, tzid: &str, instant: DateTime<Utc>) -> Self {
        Time {
            utc: Some(instant),
            local: local.format("%Y-%m-%dT%H:%M:%S").to_string(),
            tzid: Some(tzid.to_owned()),
            kind: TimeKind::Zoned,
        }
    }

    pub fn floating(local: NaiveDateTime, tzid: Option<&str>) -> Self {
        Time {
            utc: None,
            local: local.format("%Y-%m-%dT%H:%M:%S").to_string(),
            tzid: tzid.map(str::to_owned),
            kind: TimeKind::Floating,
        }
    }

    pub fn date(date: NaiveDate) -> Self {
        Time {
            utc: None,
            local: date.format("%Y-%m-%d").to_string(),
            tzid: None,
            kind: TimeKind::Date,
        }
    }

    /// The local wall-clock value (midnight for dates).
    pub fn naive_local(&self) -> Option<NaiveDateTime> {
        if self.kind == TimeKind::Date {
            NaiveDate::parse_from_str(&self.local, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(NaiveTime::MIN))
        } else {
            NaiveDateTime::parse_from_str(&self.local, "%Y-%m-%dT%H:%M:%S").ok()
        }
    }

    /// The instant, using `fallback` for floating times and dates (the user's zone).
    pub fn resolve(&self, fallback: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        match self.utc {
            Some(u) => Some(u),
            None => local_to_utc_iana(self.naive_local()?, fallback),
        }
    }
}

/// What a TZID resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Zone {
    /// An IANA zone name (from the TZID itself, a Windows name, X-LIC-LOCATION, …).
    Iana { name: String },
    /// A fixed offset from UTC, in seconds east.
    Fixed { offset_seconds: i32 },
    /// The observances of a VTIMEZONE whose name maps to no known zone.
    Rules(ZoneRules),
}

impl Zone {
    /// The instant of a local wall-clock time in this zone. In a DST gap the
    /// time is moved forward by the gap; in an overlap the earlier instant wins
    /// (RFC 5545 §3.3.5).
    pub fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Iana { name } => local_to_utc_iana(local, name.parse().ok()?),
            Zone::Fixed { offset_seconds } => Some(
                Utc.from_utc_datetime(&(local - Duration::seconds(i64::from(*offset_seconds)))),
            ),
            Zone::Rules(rules) => rules.to_utc(local),
        }
    }
}

/// Local → UTC in an IANA zone with RFC 5545's rules for gaps and overlaps.
pub fn local_to_utc_iana(local: NaiveDateTime, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::LocalResult;
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: interpret with the offset in force before the gap.
            let before = tz
                .from_local_datetime(&(local - Duration::hours(3)))
                .earliest()?;
            let offset = before.naive_local() - before.naive_utc();
            Some(Utc.from_utc_datetime(&(local - offset)))
        }
    }
}

/// A VTIMEZONE's observances, as far as real clients use them: a start, the
/// offsets before and after, and a yearly rule and/or RDATEs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRules {
    pub observances: Vec<Observance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observance {
    /// DAYLIGHT (true) or STANDARD.
    pub daylight: bool,
    /// DTSTART, local time in `offset_from`.
    pub start: NaiveDateTime,
    pub offset_from: i32,
    pub offset_to: i32,
    pub rule: Option<YearlyRule>,
    /// Further onsets, local time in `offset_from`.
    pub rdates: Vec<NaiveDateTime>,
}

/// `FREQ=YEARLY;BYMONTH=m;BYDAY=nWD` (or `BYMONTHDAY=d`), the only recurrence
/// VTIMEZONEs use in practice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct YearlyRule {
    pub month: u32,
    /// `(n, weekday)` with n in 1..=5 or -5..=-1; weekday 0 = Monday.
    pub nth_weekday: Option<(i8, u8)>,
    pub month_day: Option<i8>,
    /// Last onset allowed (UTC), from UNTIL.
    pub until: Option<NaiveDateTime>,
    pub count: Option<u32>,
}

impl YearlyRule {
    /// The onset date of this rule in `year`, if it has one.
    fn date_in(&self, year: i32) -> Option<NaiveDate> {
        if let Some((n, wd)) = self.nth_weekday {
            nth_weekday_of_month(year, self.month, n, weekday_from_index(wd)?)
        } else {
            let d = self.month_day?;
            let last = days_in_month(year, self.month)?;
            let day = if d > 0 {
                d as u32
            } else {
                (last as i32 + 1 + i32::from(d)) as u32
            };
            NaiveDate::from_ymd_opt(year, self.month, day)
        }
    }
}

impl ZoneRules {
    /// Onsets as (UTC instant, offset after) in the years around `year`.
    fn onsets_near(&self, year: i32) -> Vec<(NaiveDateTime, i32)> {
        let mut out = Vec::new();
        for o in &self.observances {
            let to_utc = |local: NaiveDateTime| local - Duration::seconds(i64::from(o.offset_from));
            out.push((to_utc(o.start), o.offset_to));
            for r in &o.rdates {
                out.push((to_utc(*r), o.offset_to));
            }
            if let Some(rule) = &o.rule {
                let first_year = o.start.year();
                for y in (year - 1).max(first_year)..=(year + 1) {
                    if rule
                        .count
                        .is_some_and(|count| i64::from(y - first_year) >= i64::from(count))
                    {
                        break;
                    }
                    let Some(date) = rule.date_in(y) else {
                        continue;
                    };
                    let onset = to_utc(date.and_time(o.start.time()));
                    if onset < to_utc(o.start) {
                        continue;
                    }
                    if rule.until.is_some_and(|u| onset > u) {
                        break;
                    }
                    out.push((onset, o.offset_to));
                }
            }
        }
        out.sort();
        out
    }

    /// Offset (seconds east) in force at a UTC instant.
    fn offset_at(&self, utc: NaiveDateTime, onsets: &[(NaiveDateTime, i32)]) -> Option<i32> {
        match onsets.iter().rev().find(|(at, _)| *at <= utc) {
            Some((_, off)) => Some(*off),
            // Before the first onset: the offset that onset changed from.
            None => {
                let first = onsets.first()?;
                self.observances
                    .iter()
                    .find(|o| o.offset_to == first.1)
                    .map(|o| o.offset_from)
            }
        }
    }

    pub fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let onsets = self.onsets_near(local.year());
        let mut candidates: Vec<NaiveDateTime> = Vec::new();
        let mut offsets: Vec<i32> = self.observances.iter().map(|o| o.offset_to).collect();
        offsets.sort();
        offsets.dedup();
        for off in &offsets {
            let utc = local - Duration::seconds(i64::from(*off));
            if self.offset_at(utc, &onsets) == Some(*off) {
                candidates.push(utc);
            }
        }
        let utc = match candidates.into_iter().min() {
            Some(u) => u,
            // In a gap: use the offset in force just before it.
            None => {
                let probe = local - Duration::hours(3);
                let off = self.offset_at(probe, &onsets)?;
                local - Duration::seconds(i64::from(off))
            }
        };
        Some(Utc.from_utc_datetime(&utc))
    }
}

fn weekday_from_index(i: u8) -> Option<Weekday> {
    Some(match i {
        0 => Weekday::Mon,
        1 => Weekday::Tue,
        2 => Weekday::Wed,
        3 => Weekday::Thu,
        4 => Weekday::Fri,
        5 => Weekday::Sat,
        6 => Weekday::Sun,
        _ => return None,
    })
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    Some((next - first).num_days() as u32)
}

fn nth_weekday_of_month(year: i32, month: u32, n: i8, wd: Weekday) -> Option<NaiveDate> {
    if n > 0 {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let shift = (7 + wd.num_days_from_monday() as i64
            - first.weekday().num_days_from_monday() as i64)
            % 7;
        let d = first + Duration::days(shift + 7 * (i64::from(n) - 1));
        (d.month() == month).then_some(d)
    } else if n < 0 {
        let last = NaiveDate::from_ymd_opt(year, month, days_in_month(year, month)?)?;
        let shift = (7 + last.weekday().num_days_from_monday() as i64
            - wd.num_days_from_monday() as i64)
            % 7;
        let d = last - Duration::days(shift + 7 * (i64::from(-n) - 1));
        (d.month() == month).then_some(d)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    /// Outlook's "W. Europe Standard Time" as a custom VTIMEZONE.
    fn europe_rules() -> ZoneRules {
        ZoneRules {
            observances: vec![
                Observance {
                    daylight: false,
                    start: dt("1601-10-28T03:00:00"),
                    offset_from: 7200,
                    offset_to: 3600,
                    rule: Some(YearlyRule {
                        month: 10,
                        nth_weekday: Some((-1, 6)),
                        month_day: None,
                        until: None,
                        count: None,
                    }),
                    rdates: vec![],
                },
                Observance {
                    daylight: true,
                    start: dt("1601-03-25T02:00:00"),
                    offset_from: 3600,
                    offset_to: 7200,
                    rule: Some(YearlyRule {
                        month: 3,
                        nth_weekday: Some((-1, 6)),
                        month_day: None,
                        until: None,
                        count: None,
                    }),
                    rdates: vec![],
                },
            ],
        }
    }

    #[test]
    fn custom_rules_match_iana_across_a_year() {
        let rules = Zone::Rules(europe_rules());
        let iana = Zone::Iana {
            name: "Europe/Berlin".into(),
        };
        let mut t = dt("2027-01-01T00:30:00");
        while t < dt("2028-01-01T00:00:00") {
            assert_eq!(rules.to_utc(t), iana.to_utc(t), "at {t}");
            t += Duration::minutes(90);
        }
    }

    #[test]
    fn gap_moves_forward_and_overlap_takes_first() {
        let z = Zone::Iana {
            name: "Europe/Berlin".into(),
        };
        // 2027-03-28 02:30 does not exist in Berlin.
        assert_eq!(
            z.to_utc(dt("2027-03-28T02:30:00")).unwrap().to_rfc3339(),
            "2027-03-28T01:30:00+00:00"
        );
        // 2027-10-31 02:30 happens twice; the first is 00:30Z.
        assert_eq!(
            z.to_utc(dt("2027-10-31T02:30:00")).unwrap().to_rfc3339(),
            "2027-10-31T00:30:00+00:00"
        );
        let r = Zone::Rules(europe_rules());
        assert_eq!(
            r.to_utc(dt("2027-03-28T02:30:00")),
            z.to_utc(dt("2027-03-28T02:30:00"))
        );
        assert_eq!(
            r.to_utc(dt("2027-10-31T02:30:00")),
            z.to_utc(dt("2027-10-31T02:30:00"))
        );
    }

    #[test]
    fn nth_weekdays() {
        assert_eq!(
            nth_weekday_of_month(2027, 3, -1, Weekday::Sun),
            NaiveDate::from_ymd_opt(2027, 3, 28)
        );
        assert_eq!(
            nth_weekday_of_month(2027, 3, 2, Weekday::Sun),
            NaiveDate::from_ymd_opt(2027, 3, 14)
        );
        assert_eq!(nth_weekday_of_month(2027, 2, 5, Weekday::Mon), None);
    }

    #[test]
    fn time_serialises_as_rfc3339_utc() {
        let t = Time::utc(Utc.with_ymd_and_hms(2027, 3, 15, 9, 0, 0).unwrap());
        let j = serde_json::to_value(&t).unwrap();
        assert_eq!(j["utc"], "2027-03-15T09:00:00Z");
        assert_eq!(j["kind"], "utc");
    }
}
