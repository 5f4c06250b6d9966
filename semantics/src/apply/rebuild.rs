//! `imip-ctl rebuild` as a pure step: a user's free/busy rows recomputed from
//! their stored objects with the lanes' functions, as the same [`Writes`]
//! the lanes produce (only the rows that differ, numbered events, usage).

use super::{Loaded, Rules, UidKey, Writes};
use crate::SemanticsError;
use crate::events;
use crate::limits::Usage;
use crate::model::{Change, Ctx, Period, UidState};
use std::collections::BTreeSet;

/// What [`rematerialise`] found and the rows that repair it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rematerialised {
    pub writes: Writes,
    /// UIDs looked at.
    pub uids: usize,
    /// UIDs whose free/busy rows or open-series horizon differed.
    pub changed: Vec<String>,
    pub periods_added: usize,
    pub periods_removed: usize,
    /// freebusy.changed events emitted.
    pub events: usize,
}

/// Recomputes every loaded UID of `user` (all of the user's UIDs must be
/// loaded: the usage counters are set from them). `progress(done, total)`
/// is called per UID. An error when an event cannot fit `rules.max_payload`.
pub fn rematerialise(
    loaded: &Loaded,
    user: &str,
    rules: &Rules,
    mut progress: impl FnMut(u64, u64),
) -> Result<Rematerialised, SemanticsError> {
    let mut keys: Vec<&UidKey> = loaded.uids.keys().filter(|k| k.user == user).collect();
    keys.sort();
    let total = keys.len() as u64;
    progress(0, total);
    let mut out = Rematerialised {
        // A UID with nothing but raw texts left is only cleaned up.
        uids: keys
            .iter()
            .filter(|k| loaded.uids[**k].is_stored() || loaded.uids[**k].open_until.is_some())
            .count(),
        ..Default::default()
    };
    let mut changes = Vec::new();
    let mut rows = Usage::default();
    for (i, key) in keys.into_iter().enumerate() {
        let stored = &loaded.uids[key];
        // The lane materialised an open-ended series up to (ingest time +
        // horizon); reuse that reference instant so that an intact user
        // rebuilds to exactly the rows they have.
        let mut ctx: Ctx = rules.semantics.clone();
        if let Some(u) = stored.open_until {
            ctx.now = u - ctx.horizon;
        }
        let state = UidState {
            objects: stored.objects.clone(),
            pending: stored.pending.clone(),
        };
        let m = crate::method::materialise_bounded(&state, user, &ctx);
        let fresh: BTreeSet<Period> = m.periods.iter().copied().collect();
        let until = if m.open_ended { m.complete_until } else { None };
        rows.objects += stored.rows as i64;
        rows.freebusy += crate::limits::freebusy_rows(&m.periods) as i64;
        // Orphan texts (rows deleted by hand) go.
        for d in stored.texts.difference(&stored.referenced) {
            out.writes.texts_removed.push((key.clone(), d.clone()));
        }
        if stored.busy != fresh || stored.open_until != until {
            out.writes.busy_rows(key, &stored.busy, &fresh);
            if stored.open_until.is_some() {
                out.writes.open_removed.push(key.clone());
            }
            if let Some(u) = until {
                out.writes.open.push((key.clone(), u));
            }
            let added: Vec<Period> = fresh.difference(&stored.busy).copied().collect();
            let removed: Vec<Period> = stored.busy.difference(&fresh).copied().collect();
            out.periods_added += added.len();
            out.periods_removed += removed.len();
            out.changed.push(key.uid.clone());
            if !added.is_empty() || !removed.is_empty() {
                changes.push(Change::FreeBusyChanged {
                    uid: key.uid.clone(),
                    added,
                    removed,
                });
            }
        }
        progress(i as u64 + 1, total);
    }
    out.events = changes.len();
    let fitted = events::fit(&rules.namespace, user, changes, rules.max_payload)?;
    let mut seq = loaded.last_seq.get(user).copied().unwrap_or(0);
    for event in fitted {
        seq += 1;
        out.writes.outbox.push(super::OutboxRow {
            user: user.to_owned(),
            seq,
            event_id: events::event_id(&rules.namespace, user, seq),
            kind: event.change.kind(),
            body: events::cloud_event(&rules.namespace, user, seq, rules.event_time, &event),
        });
    }
    if !out.writes.outbox.is_empty() {
        out.writes.last_seq.push((user.to_owned(), seq));
    }
    // The quota counters follow the rewritten rows (and are repaired, should
    // they have drifted from them).
    let before = loaded.usage.get(user).copied().unwrap_or_default();
    let delta = Usage {
        objects: rows.objects - before.objects,
        freebusy: rows.freebusy - before.freebusy,
    };
    if !delta.is_zero() {
        out.writes.usage.push((user.to_owned(), delta));
    }
    Ok(out)
}
