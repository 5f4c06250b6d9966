//! Value parsers for `imip-ctl`'s arguments, shared by its commands so that
//! every time argument reads the same forms and says so in the same words.

use chrono::{DateTime, NaiveDate, Utc};

/// The forms a time argument takes, as the help says them.
pub const INSTANT_FORMS: &str =
    "a date (2027-04-01, meaning 00:00 UTC that day) or an RFC 3339 instant (2027-04-01T09:30:00Z)";

/// A time argument: an RFC 3339 instant, or a date meaning its 00:00 UTC
/// (what an administrator types for "from the 1st").
pub fn instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!("{s:?} is not {INSTANT_FORMS}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_its_midnight_utc_and_an_instant_is_itself() {
        assert_eq!(
            instant("2027-04-01").unwrap().to_rfc3339(),
            "2027-04-01T00:00:00+00:00"
        );
        assert_eq!(
            instant("2027-04-01T09:30:00+02:00").unwrap().to_rfc3339(),
            "2027-04-01T07:30:00+00:00"
        );
        assert!(instant("2027-13-01").is_err());
        assert!(instant("tomorrow").unwrap_err().contains("RFC 3339"));
    }
}
