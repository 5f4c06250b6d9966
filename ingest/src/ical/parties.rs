//! ORGANIZER and ATTENDEE: the parties of a scheduling component, their
//! addresses normalised, and what is not an address dropped with a warning.

use super::{Refusal, refuse, shown};
use calcard::icalendar::{
    ICalendarComponent, ICalendarEntry, ICalendarParameterName, ICalendarProperty,
};
use imipflow_schema::{
    Attendee, MAX_ADDRESS_BYTES, PartStat, Party, QuarantineReason, normalize_address,
};

/// The organizer and attendees of one component.
pub(super) struct Parties {
    pub organizer: Option<Party>,
    pub attendees: Vec<Attendee>,
}

/// Reads ORGANIZER and every ATTENDEE (warning about each value that is not
/// an address), then refuses the component if any address it kept is longer
/// than an address can be.
pub(super) fn parties(
    c: &ICalendarComponent,
    uid: &str,
    warnings: &mut Vec<String>,
) -> Result<Parties, Refusal> {
    let organizer = c.property(&ICalendarProperty::Organizer).and_then(|e| {
        Some(Party {
            address: address_of("ORGANIZER", e, uid, warnings)?,
            cn: param_text(e, ICalendarParameterName::Cn).map(str::to_owned),
            sent_by: param_text(e, ICalendarParameterName::SentBy).and_then(normalize_address),
        })
    });
    let attendees: Vec<Attendee> = c
        .properties(&ICalendarProperty::Attendee)
        .filter_map(|e| attendee(e, uid, warnings))
        .collect();
    check_lengths(organizer.as_ref(), &attendees, uid)?;
    Ok(Parties {
        organizer,
        attendees,
    })
}

fn attendee(e: &ICalendarEntry, uid: &str, warnings: &mut Vec<String>) -> Option<Attendee> {
    Some(Attendee {
        address: address_of("ATTENDEE", e, uid, warnings)?,
        cn: param_text(e, ICalendarParameterName::Cn).map(str::to_owned),
        partstat: param_text(e, ICalendarParameterName::Partstat)
            .map(PartStat::from)
            .unwrap_or(PartStat::NeedsAction),
        role: param_text(e, ICalendarParameterName::Role)
            .unwrap_or("REQ-PARTICIPANT")
            .to_ascii_uppercase(),
        rsvp: param_text(e, ICalendarParameterName::Rsvp)
            .is_some_and(|r| r.eq_ignore_ascii_case("TRUE")),
        delegated_to: param_addresses(e, ICalendarParameterName::DelegatedTo),
        delegated_from: param_addresses(e, ICalendarParameterName::DelegatedFrom),
        sent_by: param_text(e, ICalendarParameterName::SentBy).and_then(normalize_address),
    })
}

/// The normalised address of an ORGANIZER or ATTENDEE (`what`), or `None`
/// with a warning when the value is not one.
fn address_of(
    what: &str,
    e: &ICalendarEntry,
    uid: &str,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let raw = e.values.first().and_then(|v| v.as_text()).unwrap_or("");
    let address = e.calendar_address().and_then(normalize_address);
    match address {
        Some(a) if is_address(&a) => Some(a),
        _ => {
            warnings.push(format!(
                "{what} {:?} in {} is not an address: dropped",
                shown(raw),
                shown(uid)
            ));
            None
        }
    }
}

fn check_lengths(
    organizer: Option<&Party>,
    attendees: &[Attendee],
    uid: &str,
) -> Result<(), Refusal> {
    if let Some(o) = organizer {
        check_address("ORGANIZER", &o.address, uid)?;
        if let Some(s) = &o.sent_by {
            check_address("ORGANIZER SENT-BY", s, uid)?;
        }
    }
    for a in attendees {
        check_address("ATTENDEE", &a.address, uid)?;
        for d in a.delegated_to.iter().chain(&a.delegated_from) {
            check_address("ATTENDEE DELEGATED-TO/FROM", d, uid)?;
        }
        if let Some(s) = &a.sent_by {
            check_address("ATTENDEE SENT-BY", s, uid)?;
        }
    }
    Ok(())
}

/// Whether a normalised ORGANIZER/ATTENDEE value is a mail address at all:
/// one `@` between a non-empty local part and a dotless-or-dotted domain, no
/// white space, no URI scheme left over (`mailto` alone, `invalid:nomail`,
/// `bob smith@example.org` are not).
fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains(['@', ':'])
        && !local.contains(':')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// An address from the message longer than an RFC 5321 path allows: it
/// cannot be anyone's, and the store keys attendees by it.
fn check_address(what: &str, address: &str, uid: &str) -> Result<(), Refusal> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(refuse(
            QuarantineReason::ValueTooLong,
            format!(
                "{what} address of {} bytes in {}, limit {MAX_ADDRESS_BYTES}",
                address.len(),
                shown(uid)
            ),
        ));
    }
    Ok(())
}

fn param_text(e: &ICalendarEntry, name: ICalendarParameterName) -> Option<&str> {
    e.parameter(&name).and_then(|v| v.as_text())
}

fn param_addresses(e: &ICalendarEntry, name: ICalendarParameterName) -> Vec<String> {
    e.parameters(&name)
        .filter_map(|v| v.as_text())
        .flat_map(|s| s.split(','))
        .filter_map(|s| normalize_address(s.trim_matches('"')))
        .collect()
}
