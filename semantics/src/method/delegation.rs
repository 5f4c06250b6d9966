//! The delegator's line of a delegate's REPLY (RFC 5546 §4.2.6).
//!
//! A delegate answers the organizer with two ATTENDEE lines: their own
//! (PARTSTAT, DELEGATED-FROM the delegator) and the delegator's
//! (PARTSTAT=DELEGATED, DELEGATED-TO the delegate). When the two match each
//! other and the delegator is a stored attendee, both are applied, so the
//! organizer does not see the delegate ACCEPTED beside a delegator who still
//! NEEDS-ACTION. Whether the sender may answer at all is decided before
//! (`may_answer`, `answer_of`); this only says what the delegator's line does.

use super::{StoredObject, norm, older, same};
use crate::model::AnswerStamp;
use imipflow_schema::{Attendee, Component, PartStat};

/// The delegators' lines of `c` that match the entry of `sender` (the
/// delegate): PARTSTAT=DELEGATED with DELEGATED-TO the sender, whom the
/// sender's own entry names in DELEGATED-FROM. Lines that do not match are
/// copies and change nothing.
pub(super) fn delegators<'a>(c: &'a Component, sender: &str) -> Vec<&'a Attendee> {
    let Some(own) = c.attendees.iter().find(|a| same(&a.address, sender)) else {
        return Vec::new();
    };
    c.attendees
        .iter()
        .filter(|x| !same(&x.address, sender))
        .filter(|x| x.partstat == PartStat::Delegated)
        .filter(|x| x.delegated_to.iter().any(|t| same(t, sender)))
        .filter(|x| own.delegated_from.iter().any(|f| same(f, &x.address)))
        .collect()
}

/// Marks each delegator the object lists as DELEGATED to the delegates
/// their line names (added to those already recorded).
///
/// Not over a newer answer of the delegator's own (their stamp in
/// `o.answers`: a delegator who answered after this message speaks for
/// themselves), and not stamped: the delegator's line was written by the
/// delegate, so the delegator's own later answer, if not older than their
/// last one, still applies. A delegator the object does not list is not
/// added.
pub(super) fn merge(o: &mut StoredObject, delegators: &[&Attendee], at: AnswerStamp) {
    for d in delegators {
        if o.answers
            .get(&norm(&d.address))
            .is_some_and(|own| older(at, *own))
        {
            continue;
        }
        let Some(x) = o
            .component
            .attendees
            .iter_mut()
            .find(|x| same(&x.address, &d.address))
        else {
            continue;
        };
        x.partstat = PartStat::Delegated;
        for t in &d.delegated_to {
            if !x.delegated_to.iter().any(|have| same(have, t)) {
                x.delegated_to.push(t.clone());
            }
        }
    }
}
