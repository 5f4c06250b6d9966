//! Free/busy as others see it: the busy-period type every part shows, and the
//! RFC 5545 VFREEBUSY text (§3.6.4) that `imip-ctl freebusy --ics` prints and
//! `imip-publisher` serves as `/freebusy/<user>.ifb`.
//!
//! Pure: the caller passes the stamp time, so the same input gives the same text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// FBTYPE of a busy period (RFC 5545 §3.2.9; FREE is never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum FbType {
    Busy,
    BusyTentative,
    BusyUnavailable,
}

impl FbType {
    pub fn as_str(self) -> &'static str {
        match self {
            FbType::Busy => "BUSY",
            FbType::BusyTentative => "BUSY-TENTATIVE",
            FbType::BusyUnavailable => "BUSY-UNAVAILABLE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BUSY" => Some(FbType::Busy),
            "BUSY-TENTATIVE" => Some(FbType::BusyTentative),
            "BUSY-UNAVAILABLE" => Some(FbType::BusyUnavailable),
            _ => None,
        }
    }
}

/// One busy period of a user, as `imip-ctl freebusy --json` and the publisher's
/// `.json` list it. Ordered by start, end, type, UID, instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusyPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fbtype: FbType,
    pub uid: String,
    /// The instance this period belongs to (its original start); `None` for a
    /// non-recurring event.
    pub recurrence_id: Option<DateTime<Utc>>,
}

/// What a VFREEBUSY document says: whose time, over which window, stamped when.
#[derive(Debug, Clone, Copy)]
pub struct VFreeBusy<'a> {
    /// PRODID of the producing program, e.g. `-//imipflow//imip-ctl//EN`.
    pub prodid: &'a str,
    /// The user (normalised address): ORGANIZER and part of the UID.
    pub user: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub dtstamp: DateTime<Utc>,
    /// Written in the order given, one FREEBUSY line each.
    pub periods: &'a [BusyPeriod],
}

impl VFreeBusy<'_> {
    /// The iCalendar text (CRLF line ends, METHOD:PUBLISH, times in UTC), as the
    /// `.ifb` files imip-agent and Outlook publish.
    pub fn to_ics(&self) -> String {
        let f = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
        let mut s = String::with_capacity(256 + 64 * self.periods.len());
        for line in [
            "BEGIN:VCALENDAR".to_owned(),
            "VERSION:2.0".to_owned(),
            format!("PRODID:{}", self.prodid),
            "METHOD:PUBLISH".to_owned(),
            "BEGIN:VFREEBUSY".to_owned(),
            format!("UID:freebusy-{}", self.user),
            format!("DTSTAMP:{}", f(self.dtstamp)),
            format!("ORGANIZER:mailto:{}", self.user),
            format!("DTSTART:{}", f(self.from)),
            format!("DTEND:{}", f(self.to)),
        ] {
            content_line(&mut s, &line);
        }
        for p in self.periods {
            content_line(
                &mut s,
                &format!(
                    "FREEBUSY;FBTYPE={}:{}/{}",
                    p.fbtype.as_str(),
                    f(p.start),
                    f(p.end)
                ),
            );
        }
        s.push_str("END:VFREEBUSY\r\nEND:VCALENDAR\r\n");
        s
    }
}

/// Appends one content line: control characters dropped, folded after 75
/// octets (RFC 5545 §3.1) without splitting a UTF-8 sequence, CRLF-terminated.
fn content_line(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars().filter(|c| !c.is_control()) {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn vfreebusy_text() {
        let periods = [BusyPeriod {
            start: t("2027-03-16T09:00:00Z"),
            end: t("2027-03-16T10:00:00Z"),
            fbtype: FbType::BusyTentative,
            uid: "u1".into(),
            recurrence_id: None,
        }];
        let text = VFreeBusy {
            prodid: "-//imipflow//test//EN",
            user: "alice@example.com",
            from: t("2027-03-01T00:00:00Z"),
            to: t("2027-04-01T00:00:00Z"),
            dtstamp: t("2027-02-01T12:00:00Z"),
            periods: &periods,
        }
        .to_ics();
        assert_eq!(
            text,
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow//test//EN\r\nMETHOD:PUBLISH\r\n\
             BEGIN:VFREEBUSY\r\nUID:freebusy-alice@example.com\r\nDTSTAMP:20270201T120000Z\r\n\
             ORGANIZER:mailto:alice@example.com\r\nDTSTART:20270301T000000Z\r\nDTEND:20270401T000000Z\r\n\
             FREEBUSY;FBTYPE=BUSY-TENTATIVE:20270316T090000Z/20270316T100000Z\r\n\
             END:VFREEBUSY\r\nEND:VCALENDAR\r\n"
        );
    }

    #[test]
    fn long_lines_fold_and_control_characters_go() {
        let mut s = String::new();
        content_line(&mut s, &format!("UID:{}\r\nX", "é".repeat(50)));
        let lines: Vec<&str> = s.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= 75), "{lines:?}");
        assert!(lines[1].starts_with(' '));
        assert_eq!(
            s.replace("\r\n ", ""),
            format!("UID:{}X\r\n", "é".repeat(50))
        );
    }

    #[test]
    fn fbtype_round_trips() {
        for f in [FbType::Busy, FbType::BusyTentative, FbType::BusyUnavailable] {
            assert_eq!(FbType::parse(f.as_str()), Some(f));
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::from(f.as_str())
            );
        }
    }
}
