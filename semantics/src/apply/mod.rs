//! The pure batch step of a lane: what a batch of stream messages does to the
//! state one pipelined read loaded ([`Loaded`]), as typed rows to write
//! ([`Writes`]) and one [`Handled`] outcome per message.
//!
//! Every rule of the write side is here once, for every writer: the lane's
//! batches, its fallback (a batch of one), `imip-ctl replay` and
//! `dlq replay` (a batch of one) and `imip-ctl rebuild` ([`rematerialise`]).
//! Messages are taken one at a time ([`Applier::message`]) so that the lane's
//! I/O loop can keep its lease alive and check its budgets between them;
//! later messages see the state earlier ones left, in memory.
//!
//! The rules: a message already in the message log (or earlier in the batch)
//! is a duplicate; each of its UIDs goes through [`crate::method::apply`]; a
//! message over a limit is refused whole, as is one over its user's quota
//! ([`crate::limits`]); the queue changes per recurrence key as the
//! semantics say ([`crate::model::QueueOp`]); the free/busy change is the
//! difference of *stored* periods; events are cut to fit the broker
//! ([`crate::events::fit`]) and numbered gap-free per user in message order,
//! after the loaded last sequence; a message whose events cannot fit is
//! dead-lettered with no effect.

mod input;
mod rebuild;
mod rows;
#[cfg(test)]
mod tests;

pub use input::{Digest, Keys, Loaded, Msg, Parsed, StoredUid, UidKey, keys, parse, user_hint};
pub use rebuild::{Rematerialised, rematerialise};
pub use rows::{
    DeadLetter, LogRow, ObjectKey, ObjectRow, OutboxRow, QueueEntry, QueueKey, TextRow, Writes,
    instance, queue_row, recurrence_key, text_digest, texts_of,
};

use crate::events;
use crate::limits::{Limits, MessageBudget, Usage};
use crate::model::{
    Change, Ctx, Disposition, Outcome, Pending, Period, QueueChange, QueueOp, StoredObject,
    UidState,
};
use chrono::{DateTime, Utc};
use imipflow_schema::Payload;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What a batch is applied under, besides the state.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The semantics' context; `now` is replaced by each payload's ingest time.
    pub semantics: Ctx,
    pub limits: Limits,
    /// The namespace events are numbered and named in.
    pub namespace: String,
    /// Largest NATS message an event may make (`events::fit`).
    pub max_payload: usize,
    /// The `time` of the events the batch emits.
    pub event_time: DateTime<Utc>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decided and logged: applied, stale, ignored or refused.
    Done(Disposition),
    /// In the message log already (or earlier in the batch): nothing done.
    Duplicate,
    /// Not applicable at all: a dead letter with this error, no effect.
    DeadLettered(String),
}

/// One message's verdict, by stream sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub seq: i64,
    pub verdict: Verdict,
}

/// Applies `batch` to `loaded` in one go (the lane applies message by
/// message through [`Applier`]).
pub fn apply(loaded: &Loaded, batch: &[Msg<'_>], rules: &Rules) -> Writes {
    let mut a = Applier::new(loaded, rules);
    for m in batch {
        a.message(&parse(*m));
    }
    a.finish()
}

/// A (user, UID) as the batch has left it so far.
#[derive(Debug, Clone, Default)]
struct Slot {
    objects: Vec<StoredObject>,
    busy: BTreeSet<Period>,
    rows: usize,
    open_until: Option<DateTime<Utc>>,
    pending: Vec<Pending>,
    /// Whether its objects, free/busy and open_series were rewritten.
    saved: bool,
    /// The queue rows to write, by recurrence key.
    queue: BTreeMap<String, QueueWrite>,
}

#[derive(Debug, Clone)]
enum QueueWrite {
    Delete,
    Upsert(QueueEntry),
}

/// One change of a queue entry, with the row it writes.
enum Queued {
    Upsert(Box<(Pending, QueueEntry)>),
    Remove(Option<DateTime<Utc>>),
}

/// What one UID of a message does, decided before anything is kept.
enum Effect {
    /// Nothing (not applied).
    Keep,
    /// The request becomes pending: only the queue changes.
    Enqueue(Vec<Queued>),
    /// The UID's new objects and periods, and what that does to its queue.
    Save(Outcome, Vec<Queued>),
}

/// A message's effects before they are kept.
struct Decision {
    disposition: Disposition,
    /// Each UID with the objects taken out of its slot, and its effect.
    effects: Vec<(String, UidState, Effect)>,
    /// What it changes its user's row counts by.
    usage: Usage,
}

/// Applies messages one at a time to the loaded state; [`Applier::finish`]
/// gives the rows that bring the database to where the messages left it.
pub struct Applier<'a> {
    loaded: &'a Loaded,
    rules: &'a Rules,
    logged: HashSet<(String, String)>,
    slots: HashMap<UidKey, Slot>,
    /// Keys in the order messages first touched them (the rows' order).
    order: Vec<UidKey>,
    usage: HashMap<String, Usage>,
    usage_delta: Vec<(String, Usage)>,
    last_seq: Vec<(String, i64)>,
    writes: Writes,
}

impl<'a> Applier<'a> {
    pub fn new(loaded: &'a Loaded, rules: &'a Rules) -> Self {
        Applier {
            loaded,
            rules,
            logged: loaded.logged.clone(),
            slots: HashMap::new(),
            order: Vec::new(),
            usage: loaded.usage.clone(),
            usage_delta: Vec::new(),
            last_seq: Vec::new(),
            writes: Writes::default(),
        }
    }

    /// Applies one message after those before it.
    pub fn message(&mut self, m: &Parsed<'_>) {
        let seq = m.msg.seq;
        let payload = match &m.payload {
            Ok(p) => p,
            Err(e) => return self.dead_letter(m.msg, e),
        };
        let id = (payload.user.clone(), payload.dedupe_id.clone());
        if self.logged.contains(&id) {
            return self.handled(seq, Verdict::Duplicate);
        }
        let ctx = Ctx {
            now: payload.ingested_at,
            ..self.rules.semantics.clone()
        };
        let Decision {
            disposition,
            effects,
            usage,
        } = self.decide(payload, &ctx);
        let changes = self.changes(&payload.user, &effects);
        let fitted = events::fit(
            &self.rules.namespace,
            &payload.user,
            changes,
            self.rules.max_payload,
        );
        let events = match fitted {
            Ok(events) => events,
            Err(e) => {
                self.restore(&payload.user, effects);
                return self.dead_letter(m.msg, &e.to_string());
            }
        };
        self.keep(&payload.user, effects);
        self.count(&payload.user, usage);
        self.number(&payload.user, events);
        self.logged.insert(id);
        self.writes.log.push(LogRow {
            user: payload.user.clone(),
            dedupe_id: payload.dedupe_id.clone(),
            seq,
            method: payload.method.as_str().to_owned(),
            uid: payload.components.first().map(|c| c.uid.clone()),
            recurrence_id: payload.components.first().and_then(|c| {
                let t = &c.recurrence_id.as_ref()?.time;
                Some(t.utc.map_or_else(
                    || t.local.clone(),
                    |u| u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ))
            }),
            disposition: disposition.clone(),
        });
        self.handled(seq, Verdict::Done(disposition));
    }

    /// Files `msg` as a dead letter without applying it (unreadable, its
    /// events cannot fit, or the lane condemned it).
    pub fn dead_letter(&mut self, msg: Msg<'_>, error: &str) {
        self.writes.dead_letters.push(DeadLetter {
            user: user_hint(msg.bytes),
            seq: msg.seq,
            payload: msg.bytes.to_vec(),
            error: error.to_owned(),
        });
        self.handled(msg.seq, Verdict::DeadLettered(error.to_owned()));
    }

    fn handled(&mut self, seq: i64, verdict: Verdict) {
        self.writes.outcomes.push(Handled { seq, verdict });
    }

    /// The slot of `key`, from the loaded rows on first use.
    fn slot(&mut self, user: &str, uid: &str) -> &mut Slot {
        let key = UidKey::new(user, uid);
        if !self.slots.contains_key(&key) {
            let slot = match self.loaded.uids.get(&key) {
                Some(s) => Slot {
                    objects: s.objects.clone(),
                    busy: s.busy.clone(),
                    rows: s.rows,
                    open_until: s.open_until,
                    pending: s.pending.clone(),
                    saved: false,
                    queue: BTreeMap::new(),
                },
                None => Slot::default(),
            };
            self.order.push(key.clone());
            self.slots.insert(key.clone(), slot);
        }
        self.slots.get_mut(&key).expect("slot just inserted")
    }

    /// Every UID of the message in memory, then the limits: a message over
    /// one is refused whole. The UIDs' objects are taken out of their slots
    /// (put back by `keep` or `restore`).
    fn decide(&mut self, payload: &Payload, ctx: &Ctx) -> Decision {
        let user = payload.user.as_str();
        let mut uids: Vec<&str> = Vec::new();
        for c in &payload.components {
            if !uids.contains(&c.uid.as_str()) {
                uids.push(&c.uid);
            }
        }
        let mut budget = MessageBudget::new(&self.rules.limits);
        let mut decided = Vec::with_capacity(uids.len());
        let mut refusal = None;
        for uid in uids {
            let slot = self.slot(user, uid);
            let state = UidState {
                objects: std::mem::take(&mut slot.objects),
                pending: slot.pending.clone(),
            };
            let outcome = crate::method::apply(&state, payload, uid, ctx);
            let charged = budget.charge(&outcome);
            decided.push((uid.to_owned(), state, outcome));
            if let Err(r) = charged {
                refusal = Some(r);
                break;
            }
        }
        let mut usage = Usage::default();
        if refusal.is_none() {
            match self.quota(user, &decided) {
                Ok(delta) => usage = delta,
                Err(r) => refusal = Some(r),
            }
        }
        if let Some(r) = refusal {
            let effects = decided
                .into_iter()
                .map(|(uid, state, _)| (uid, state, Effect::Keep))
                .collect();
            return Decision {
                disposition: r,
                effects,
                usage: Usage::default(),
            };
        }
        let mut disposition = Disposition::Applied;
        let effects = decided
            .into_iter()
            .map(|(uid, state, outcome)| {
                let effect = self.effect(payload, outcome, &mut disposition);
                (uid, state, effect)
            })
            .collect();
        Decision {
            disposition,
            effects,
            usage,
        }
    }

    /// The user's quota against what the applied UIDs change: the change
    /// when it passes.
    fn quota(
        &self,
        user: &str,
        decided: &[(String, UidState, Outcome)],
    ) -> Result<Usage, Disposition> {
        let mut delta = Usage::default();
        for (uid, _, o) in decided {
            if o.disposition == Disposition::Applied && !o.enqueues() {
                let slot = &self.slots[&UidKey::new(user, uid)];
                let before = Usage {
                    objects: slot.rows as i64,
                    freebusy: slot.busy.len() as i64,
                };
                delta += Usage::change(
                    before,
                    o.state.objects.len(),
                    crate::limits::freebusy_rows(&o.periods),
                );
            }
        }
        if !delta.is_zero() {
            let before = self.usage.get(user).copied().unwrap_or_default();
            crate::limits::quota(before, delta, &self.rules.limits)?;
        }
        Ok(delta)
    }

    /// Counts a kept message's rows in its user's usage.
    fn count(&mut self, user: &str, delta: Usage) {
        if delta.is_zero() {
            return;
        }
        *self.usage.entry(user.to_owned()).or_default() += delta;
        match self.usage_delta.iter_mut().find(|(u, _)| u == user) {
            Some((_, d)) => *d += delta,
            None => self.usage_delta.push((user.to_owned(), delta)),
        }
    }

    /// What an outcome does to its UID; the message's disposition is that of
    /// its first UID not applied, if any.
    fn effect(&self, payload: &Payload, outcome: Outcome, disposition: &mut Disposition) -> Effect {
        if outcome.disposition != Disposition::Applied {
            if *disposition == Disposition::Applied {
                *disposition = outcome.disposition;
            }
            return Effect::Keep;
        }
        let queued = outcome
            .queue
            .iter()
            .map(|op| match op {
                QueueOp::Add(p) | QueueOp::Amend(p) => {
                    Queued::Upsert(Box::new((p.clone(), queue_row(payload, p))))
                }
                QueueOp::Remove(rid) => Queued::Remove(*rid),
            })
            .collect();
        if outcome.enqueues() {
            Effect::Enqueue(queued)
        } else {
            Effect::Save(outcome, queued)
        }
    }

    /// The message's changes, UID by UID: the semantics' object changes,
    /// the difference of stored free/busy periods, the queue's.
    fn changes(&self, user: &str, effects: &[(String, UidState, Effect)]) -> Vec<Change> {
        let mut changes = Vec::new();
        for (uid, _, effect) in effects {
            let slot = &self.slots[&UidKey::new(user, uid)];
            let queued = match effect {
                Effect::Keep => continue,
                Effect::Enqueue(q) => q,
                Effect::Save(o, q) => {
                    changes.extend(o.changes.iter().cloned());
                    let after: BTreeSet<Period> = o.periods.iter().copied().collect();
                    let added: Vec<Period> = after.difference(&slot.busy).copied().collect();
                    let removed: Vec<Period> = slot.busy.difference(&after).copied().collect();
                    if !added.is_empty() || !removed.is_empty() {
                        changes.push(Change::FreeBusyChanged {
                            uid: uid.clone(),
                            added,
                            removed,
                        });
                    }
                    q
                }
            };
            for q in queued {
                let (recurrence_id, change) = match q {
                    Queued::Upsert(u) => (u.0.recurrence_id, QueueChange::Added),
                    Queued::Remove(rid) if slot.pending.iter().any(|p| p.recurrence_id == *rid) => {
                        (*rid, QueueChange::Removed)
                    }
                    Queued::Remove(_) => continue,
                };
                changes.push(Change::QueueChanged {
                    uid: uid.clone(),
                    recurrence_id,
                    change,
                });
            }
        }
        changes
    }

    /// Puts the taken objects back: the message changes nothing.
    fn restore(&mut self, user: &str, effects: Vec<(String, UidState, Effect)>) {
        for (uid, state, _) in effects {
            self.slot(user, &uid).objects = state.objects;
        }
    }

    /// Keeps what the message decided.
    fn keep(&mut self, user: &str, effects: Vec<(String, UidState, Effect)>) {
        for (uid, state, effect) in effects {
            let slot = self.slot(user, &uid);
            let queued = match effect {
                Effect::Keep => {
                    slot.objects = state.objects;
                    continue;
                }
                Effect::Enqueue(q) => {
                    slot.objects = state.objects;
                    q
                }
                Effect::Save(o, q) => {
                    let mut objects = o.state.objects;
                    // As the objects table gives them back (by recurrence key).
                    objects.sort_by_cached_key(|o| recurrence_key(o.recurrence_id));
                    slot.rows = objects.len();
                    slot.objects = objects;
                    slot.busy = o.periods.into_iter().collect();
                    slot.saved = true;
                    slot.open_until = if o.open_ended { o.complete_until } else { None };
                    q
                }
            };
            for q in queued {
                match q {
                    Queued::Upsert(u) => {
                        let (p, entry) = *u;
                        let rk = recurrence_key(p.recurrence_id);
                        slot.pending.retain(|x| x.recurrence_id != p.recurrence_id);
                        slot.pending.push(p);
                        slot.queue.insert(rk, QueueWrite::Upsert(entry));
                    }
                    Queued::Remove(rid) => {
                        let before = slot.pending.len();
                        slot.pending.retain(|x| x.recurrence_id != rid);
                        if slot.pending.len() < before {
                            slot.queue.insert(recurrence_key(rid), QueueWrite::Delete);
                        }
                    }
                }
            }
        }
    }

    /// Numbers the message's events after the user's last one.
    fn number(&mut self, user: &str, events: Vec<events::Event>) {
        if events.is_empty() {
            return;
        }
        let i = match self.last_seq.iter().position(|(u, _)| u == user) {
            Some(i) => i,
            None => {
                let last = self.loaded.last_seq.get(user).copied().unwrap_or(0);
                self.last_seq.push((user.to_owned(), last));
                self.last_seq.len() - 1
            }
        };
        let ns = self.rules.namespace.as_str();
        for event in events {
            let seq = self.last_seq[i].1 + 1;
            self.last_seq[i].1 = seq;
            self.writes.outbox.push(OutboxRow {
                user: user.to_owned(),
                seq,
                event_id: events::event_id(ns, user, seq),
                kind: event.change.kind(),
                body: events::cloud_event(ns, user, seq, self.rules.event_time, &event),
            });
        }
    }

    /// The rows that bring the database from the loaded state to the
    /// batch's, and every message's verdict.
    pub fn finish(mut self) -> Writes {
        let empty = StoredUid::default();
        for key in &self.order {
            let slot = &self.slots[key];
            let loaded = self.loaded.uids.get(key).unwrap_or(&empty);
            if slot.saved {
                self.writes
                    .uid_rows(key, loaded, &slot.objects, &slot.busy, slot.open_until);
            }
            for (rk, w) in &slot.queue {
                match w {
                    QueueWrite::Delete => self.writes.queue_removed.push(QueueKey {
                        key: key.clone(),
                        recurrence_key: rk.clone(),
                    }),
                    QueueWrite::Upsert(e) => self.writes.queue.push((key.clone(), e.clone())),
                }
            }
        }
        self.writes.usage = self
            .usage_delta
            .into_iter()
            .filter(|(_, d)| !d.is_zero())
            .collect();
        self.writes.last_seq = self.last_seq;
        self.writes
    }
}
