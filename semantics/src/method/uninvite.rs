//! Whom a CANCEL is for: everyone (the event, or that instance, is
//! cancelled) or only the attendees it lists (they are uninvited and the
//! event stays).
//!
//! RFC 5546 §3.2.5 has the organizer send CANCEL "to remove selected
//! attendees or an entire event", and the clients tell the two apart only by
//! whom the CANCEL names, not by its STATUS: Outlook/Exchange marks the
//! cancellation it sends a removed attendee `STATUS:CANCELLED` and names only
//! them; Thunderbird sends them the event with its own STATUS; sabre/dav
//! (Nextcloud, Baïkal) and Apple's CalendarServer write no STATUS at all.
//! The decision table per client is in docs/semantics.md ("CANCEL: whole
//! event or uninvite").

use super::{Msg, StoredObject, derived_override, norm};
use crate::model::Ctx;
use imipflow_schema::Component;
use std::collections::BTreeSet;

/// Whom one CANCEL component is for, seen from the user's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// The event (or the instance) is cancelled for the user.
    Everyone,
    /// Only these attendees (normalised addresses) are removed.
    Attendees(BTreeSet<String>),
}

/// The scope of `msg` against the stored object `stored` of the same key (or
/// the master, for an instance without one), for `user` (normalised).
///
/// The organizer is set aside on both sides (Google and sabre list the
/// organizer as an attendee too). The CANCEL is for everyone when it lists
/// nobody else, or every stored attendee; otherwise it uninvites those it
/// lists. Seen by an attendee, a CANCEL that names them is their own
/// uninvitation, so for them the event is gone whatever else it lists; a
/// user without a recorded organizer is the organizer of their own event.
pub(super) fn scope(msg: &Component, stored: &Component, user: &str) -> Scope {
    let organizer = stored
        .organizer
        .as_ref()
        .or(msg.organizer.as_ref())
        .map(|o| norm(&o.address));
    let users_own = organizer.as_deref().is_none_or(|o| o == user);
    let others = |c: &Component| -> BTreeSet<String> {
        c.attendees
            .iter()
            .map(|a| norm(&a.address))
            .filter(|a| Some(a) != organizer.as_ref() && !(users_own && a == user))
            .collect()
    };
    let listed = others(msg);
    let invited = others(stored);
    if listed.is_empty() || invited.is_subset(&listed) || (!users_own && listed.contains(user)) {
        Scope::Everyone
    } else {
        Scope::Attendees(listed)
    }
}

/// Removes `listed` from the objects the CANCEL `m` is about: every object
/// for a CANCEL of the series, else that instance's object (made from the
/// master's instance when it has none, so that the other instances keep
/// them). The objects take the CANCEL's SEQUENCE and DTSTAMP, so an older
/// REQUEST that still lists them is stale. Busy time is not touched: the
/// user's own answer and the event's times stay.
pub(super) fn remove(
    objects: &mut Vec<StoredObject>,
    m: &Msg<'_>,
    listed: &BTreeSet<String>,
    target: Option<usize>,
    reference: usize,
    ctx: &Ctx,
) {
    let uninvite = |o: &mut StoredObject| {
        o.component
            .attendees
            .retain(|a| !listed.contains(&norm(&a.address)));
        o.component.sequence = o.component.sequence.max(m.c.sequence);
        o.component.dtstamp = m.c.dtstamp.or(o.component.dtstamp);
    };
    match m.rid {
        None => objects.iter_mut().for_each(uninvite),
        Some(rid) => {
            let i = match target {
                Some(i) => i,
                None => {
                    let o = derived_override(&objects[reference], rid, ctx);
                    objects.push(o);
                    objects.len() - 1
                }
            };
            uninvite(&mut objects[i]);
        }
    }
}
