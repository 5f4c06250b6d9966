//! What a message does to the user's request queue (SPEC §3): one pending
//! entry per recurrence key (the series, and each instance the organizer
//! updated on its own), and what the user's answer to one of them stores.
//!
//! Keyed by instance because organizers update and cancel instances one by
//! one: a pending update of 12 April must survive a CANCEL of 19 April, or
//! the user never sees the update and keeps the old time. The answer stores
//! the proposal, not the thin REPLY, because the REPLY a client sends names
//! only its user: a calendar that kept it would lose the organizer's other
//! attendees, the description and the overrides (docs/semantics.md,
//! "Request queue").

use super::{Msg, Source, add_exdate, dedupe, request, stale, uninvite, zones_used};
use crate::model::{
    AnswerStamp, Ctx, Disposition, Pending, Proposal, QueueOp, StoredObject, UidState,
};
use chrono::{DateTime, Utc};
use imipflow_schema::{Component, Payload};
use std::collections::BTreeMap;

/// An incoming REQUEST from the organizer: a message with the master is one
/// entry for the series (its instances with it), and supersedes the pending
/// instance updates it is not older than; a message of instances only is one
/// entry per instance. Stale as a whole when one of its entries is older
/// than the pending one of the same key (highest SEQUENCE, then latest
/// DTSTAMP, a missing DTSTAMP lowest), so that a message is never half
/// queued.
pub(super) fn requested(
    state: &UidState,
    msgs: &[Msg<'_>],
    payload: &Payload,
) -> Result<Vec<QueueOp>, Disposition> {
    let series = msgs.iter().any(|m| m.rid.is_none());
    let groups: Vec<(Option<DateTime<Utc>>, Vec<&Msg<'_>>)> = if series {
        vec![(None, msgs.iter().collect())]
    } else {
        msgs.iter().map(|m| (m.rid, vec![m])).collect()
    };
    let mut ops = Vec::new();
    for (rid, group) in groups {
        let entry = pending_of(rid, &group, payload);
        if let Some(q) = state.pending_at(rid)
            && behind(stamp_of(&entry), stamp_of(q))
        {
            return Err(stale("pending request", stamp_of(&entry), stamp_of(q)));
        }
        ops.push(QueueOp::Add(entry));
    }
    if series && let Some(QueueOp::Add(s)) = ops.first() {
        let s = stamp_of(s);
        for q in state.pending.iter().filter(|q| q.recurrence_id.is_some()) {
            if !behind(s, stamp_of(q)) {
                ops.push(QueueOp::Remove(q.recurrence_id));
            }
        }
    }
    Ok(ops)
}

/// An incoming CANCEL from the organizer: the entries of what it cancels for
/// the user go (the series: every entry; one instance: that instance's;
/// this-and-future: the instances from it on). A CANCEL of one instance of
/// a series that is only pending also excludes that instance from the
/// pending series, so that accepting it later does not bring the instance
/// back. An uninvite of other attendees (the user keeps the event,
/// [`uninvite::scope`]) leaves the queue alone.
pub(super) fn cancelled(state: &UidState, msgs: &[Msg<'_>], user: &str, ctx: &Ctx) -> Vec<QueueOp> {
    let master = state.objects.iter().find(|o| o.recurrence_id.is_none());
    let mut ops = Vec::new();
    let mut series = state.pending_at(None).cloned();
    for m in msgs {
        let stored = state
            .objects
            .iter()
            .find(|o| o.recurrence_id == m.rid)
            .or(m.rid.and(master));
        if let Some(s) = stored
            && matches!(
                uninvite::scope(m.c, &s.component, user),
                uninvite::Scope::Attendees(_)
            )
        {
            continue;
        }
        match m.rid {
            None => return remove_all(state),
            Some(rid) if m.this_and_future => ops.extend(
                state
                    .pending
                    .iter()
                    .filter(|q| q.recurrence_id.is_some_and(|r| r >= rid))
                    .map(|q| QueueOp::Remove(q.recurrence_id)),
            ),
            Some(rid) => {
                if state.pending_at(Some(rid)).is_some() {
                    ops.push(QueueOp::Remove(Some(rid)));
                }
                if let Some(s) = series.as_mut() {
                    exclude(s, rid, ctx);
                }
            }
        }
    }
    if let Some(s) = series
        && Some(&s) != state.pending_at(None)
    {
        ops.push(QueueOp::Amend(s));
    }
    ops
}

/// Every pending entry of the UID goes (the user organizes it now, or it is
/// cancelled whole).
pub(super) fn remove_all(state: &UidState) -> Vec<QueueOp> {
    state
        .pending
        .iter()
        .map(|q| QueueOp::Remove(q.recurrence_id))
        .collect()
}

/// The user's own REPLY: each answered key with a pending entry (an
/// instance's own, else the series') first stores that proposal as a REQUEST
/// would, so that the REPLY then merges the user's answer into the
/// invitation as the organizer sent it. The entries answered go: the
/// series' for an answer to the series, an instance's for an answer to that
/// instance (an answer to one instance of a pending series stores the
/// series, whose own answer is still to come). A proposal older than what
/// is stored changes nothing (its entry still goes). Keys with nothing
/// pending keep the REPLY rule as it was.
pub(super) fn accept(
    state: &UidState,
    msgs: &[Msg<'_>],
    payload: &Payload,
    ctx: &Ctx,
) -> (UidState, Vec<QueueOp>) {
    let mut new = state.clone();
    let mut ops = Vec::new();
    let mut stored: Vec<Option<DateTime<Utc>>> = Vec::new();
    for m in msgs {
        if state.pending_at(m.rid).is_some() {
            ops.push(QueueOp::Remove(m.rid));
        }
        let Some(p) = state
            .pending_at(m.rid)
            .or_else(|| m.rid.and_then(|_| state.pending_at(None)))
        else {
            continue;
        };
        if stored.contains(&p.recurrence_id) {
            continue;
        }
        stored.push(p.recurrence_id);
        let comps: Vec<&Component> = p.proposal.components.iter().collect();
        let proposed = dedupe(&comps, &p.proposal.timezones, ctx);
        let raw = if p.proposal.raw.is_empty() {
            payload.raw.as_str()
        } else {
            &*p.proposal.raw
        };
        let src = Source {
            zones: &p.proposal.timezones,
            raw,
        };
        if let Ok(s) = request(&new, &proposed, src) {
            new = s;
        }
    }
    (new, ops)
}

/// The pending entry one key of an incoming REQUEST makes.
fn pending_of(rid: Option<DateTime<Utc>>, group: &[&Msg<'_>], payload: &Payload) -> Pending {
    let master = group
        .iter()
        .find(|m| m.rid.is_none())
        .or(group.first())
        .map(|m| m.c);
    let mut timezones = BTreeMap::new();
    for m in group {
        timezones.extend(zones_used(m.c, &payload.timezones));
    }
    // The whole text only when the message is about this one UID: a REQUEST
    // carrying many UIDs would otherwise store its whole text once per UID
    // (1,000 UIDs in a 1 MiB payload: 1 GB); the components hold the rest.
    let uid = master.map(|c| c.uid.as_str()).unwrap_or_default();
    let single = payload.components.iter().all(|c| c.uid == uid);
    Pending {
        recurrence_id: rid,
        organizer: master.and_then(|c| c.organizer.as_ref().map(|o| o.address.clone())),
        sequence: group.iter().map(|m| m.c.sequence).max().unwrap_or(0),
        dtstamp: group.iter().filter_map(|m| m.c.dtstamp).max(),
        proposal: Proposal {
            components: group.iter().map(|m| m.c.clone()).collect(),
            timezones,
            raw: if single {
                crate::model::Raw::shared(&payload.raw)
            } else {
                Default::default()
            },
        },
    }
}

/// Takes one instance out of a pending series: an EXDATE on its master, and
/// the instance's own component (if the request carried one) removed.
fn exclude(series: &mut Pending, rid: DateTime<Utc>, ctx: &Ctx) {
    let zones = &series.proposal.timezones;
    series.proposal.components.retain(|c| {
        c.recurrence_id
            .as_ref()
            .is_none_or(|r| super::recurrence::resolve(&r.time, zones, ctx.default_tz) != Some(rid))
    });
    let Some(i) = series
        .proposal
        .components
        .iter()
        .position(|c| c.recurrence_id.is_none())
    else {
        return;
    };
    let mut master = StoredObject {
        recurrence_id: None,
        component: series.proposal.components[i].clone(),
        timezones: series.proposal.timezones.clone(),
        raw: Default::default(),
        answers: BTreeMap::new(),
    };
    add_exdate(&mut master, rid, ctx);
    series.proposal.components[i] = master.component;
}

fn stamp_of(p: &Pending) -> AnswerStamp {
    AnswerStamp {
        sequence: p.sequence,
        dtstamp: p.dtstamp,
    }
}

/// The queue's order: SEQUENCE, then DTSTAMP, a missing DTSTAMP lowest.
fn behind(msg: AnswerStamp, queued: AnswerStamp) -> bool {
    let key = |s: AnswerStamp| (s.sequence, s.dtstamp.unwrap_or(DateTime::<Utc>::MIN_UTC));
    key(msg) < key(queued)
}
