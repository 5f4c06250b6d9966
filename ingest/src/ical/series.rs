//! What one component's recurrence may cost: an estimate of the instances
//! the processor would materialise, for the limits per message.

use crate::tz::naive;
use calcard::icalendar::{ICalendarFrequency, ICalendarRecurrenceRule};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};

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
    pub(super) start: Option<NaiveDateTime>,
    pub(super) rules: Vec<Rule>,
    pub(super) rdates: u64,
    /// RRULE + RDATE + EXDATE values.
    pub values: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
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

pub(super) fn rule_shape(r: &ICalendarRecurrenceRule) -> Rule {
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
