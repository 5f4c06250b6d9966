//! The strict reading of date and date-time text (RFC 5545 §3.3.4/§3.3.5),
//! done on the raw lines before calcard's lenient parser sees them.

use super::{Refusal, refuse, shown};
use imipflow_schema::{ComponentKind, QuarantineReason};

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
pub(super) fn check_date_syntax(text: &str) -> Result<(), Refusal> {
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
