//! The fast path of a lane's batch: every message applied in memory against
//! state loaded for the whole batch at once, then written back with a few
//! multi-row statements.
//!
//! Why: applying message by message (`worker::Apply::payload`) costs about ten
//! PostgreSQL round trips per message (dedupe check, load, four deletes, three
//! inserts, sequence, outbox, log), and on a small machine those statements,
//! not the semantics, are the processor's cost. Here a batch costs one
//! pipelined load (message log, objects, free/busy, queue), one sequence
//! upsert and one pipelined write, whatever its size.
//!
//! It must do exactly what the per-message path does, message after message:
//! later messages of the batch see the state earlier ones left (in memory),
//! free/busy changes are differences of *stored* periods, duplicates are
//! skipped, per-user event sequences stay gap-free and in message order. Only
//! unreadable payloads are dead-lettered here; any database error makes the
//! caller roll the batch back and run the per-message path, which isolates the
//! failing message under its own savepoint.

use crate::config::Settings;
use crate::error::ProcessorError;
use crate::events;
use crate::limits::Usage;
use crate::model::{Change, Ctx, Disposition, FbType, Pending, Period, QueueChange, StoredObject};
use crate::semantics;
use crate::store::{self, QueueEntry};
use chrono::{DateTime, Utc};
use imipflow_schema::{PAYLOAD_VERSION, Payload};
use std::collections::{BTreeSet, HashMap, HashSet};
use tokio_postgres::Transaction;
use tokio_postgres::types::Json;

/// Whether lanes apply message by message instead (`IMIP_APPLY_PER_MESSAGE=1`):
/// the path before batching, kept for before/after measurements (`imip-bench
/// processor`) and as the fallback a failed batch takes anyway.
pub fn per_message() -> bool {
    static PER_MESSAGE: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("IMIP_APPLY_PER_MESSAGE").is_ok_and(|v| v == "1")
    });
    *PER_MESSAGE
}

/// One message of the batch as the lane read it.
pub struct Input<'a> {
    pub seq: i64,
    pub bytes: &'a [u8],
}

/// Reads and checks a payload; the error is what the dead-letter row says.
pub fn parse(settings: &Settings, bytes: &[u8]) -> Result<(Payload, Ctx), ProcessorError> {
    let payload = Payload::from_json(bytes)
        .map_err(|e| ProcessorError::Payload(format!("unreadable payload: {e}")))?;
    if payload.version != PAYLOAD_VERSION {
        return Err(ProcessorError::Payload(format!(
            "payload version {} (this processor knows {PAYLOAD_VERSION})",
            payload.version
        )));
    }
    let ctx = settings.ctx(payload.ingested_at)?;
    Ok((payload, ctx))
}

/// The user a dead letter is filed under: the payload's, if it has one.
pub fn user_hint(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

type Key = (String, String);

/// One statement of the pipelined write.
type Write<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>,
>;

/// What the batch knows of one (user, UID): as loaded, then as each message left it.
#[derive(Default)]
struct UidSlot {
    objects: Vec<StoredObject>,
    busy: BTreeSet<Period>,
    /// The free/busy rows as loaded: only the difference is written, because
    /// every row written costs an entry in the GiST index on (user, period),
    /// and an update of a series usually leaves most of its instances as
    /// they were.
    loaded_busy: BTreeSet<Period>,
    /// The objects as loaded: likewise, only objects that changed are
    /// rewritten (with their attendee rows); adding an override leaves the
    /// master and the other overrides alone.
    loaded_objects: Vec<StoredObject>,
    /// Whether a stored object could not be read: then all of the UID's
    /// object and attendee rows are replaced, as the per-message path does.
    unreadable: bool,
    /// Rows of it in `objects` (readable or not), for the user's quota counter.
    object_rows: usize,
    /// Raw texts of its objects by digest, and which digests `object_texts` has.
    texts: store::Texts,
    loaded_texts: BTreeSet<Vec<u8>>,
    /// (SEQUENCE, DTSTAMP) of the pending request, if any.
    queued: Option<Pending>,
    /// Whether objects, attendees, free/busy and open_series are rewritten.
    saved: bool,
    /// Whether the database had objects or free/busy rows of it: only then do
    /// its old rows need deleting (attendees and open_series rows exist only
    /// next to objects; were one left over, the insert would fail and the
    /// per-message path, which always deletes, would take the batch).
    stored: bool,
    open_until: Option<DateTime<Utc>>,
    queue_write: Option<QueueWrite>,
}

enum QueueWrite {
    Delete,
    Upsert(QueueEntry),
}

/// Applies `batch` in `tx` (the caller holds the lease and a savepoint);
/// its events are cut to fit `max_payload`, the NATS server's limit. Returns
/// how many of `batch` it applied: a prefix, all of it unless the batch spent
/// its time budget (`pace`).
pub async fn apply(
    tx: &Transaction<'_>,
    with: &crate::worker::Apply<'_>,
    batch: &[Input<'_>],
    pace: &mut crate::worker::Pace,
) -> Result<usize, ProcessorError> {
    let (cache, settings, ns, partition, max_payload) = (
        with.cache,
        with.settings,
        with.ns.as_str(),
        with.partition,
        with.max_payload,
    );
    let started = std::time::Instant::now();
    let mut good = Vec::with_capacity(batch.len());
    let mut bad = Vec::new();
    for m in batch {
        match parse(settings, m.bytes) {
            Ok((payload, ctx)) => good.push((m, payload, ctx)),
            Err(e) => bad.push((m, e)),
        }
    }

    // Load everything the batch may read, in one pipelined round trip.
    let mut keys: Vec<Key> = Vec::new();
    let mut seen_keys: HashSet<Key> = HashSet::new();
    for (_, p, _) in &good {
        for c in &p.components {
            let k = (p.user.clone(), c.uid.clone());
            if seen_keys.insert(k.clone()) {
                keys.push(k);
            }
        }
    }
    let (key_users, key_uids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(u, i)| (u.as_str(), i.as_str())).unzip();
    let log_users: Vec<&str> = good.iter().map(|(_, p, _)| p.user.as_str()).collect();
    let log_ids: Vec<&str> = good.iter().map(|(_, p, _)| p.dedupe_id.as_str()).collect();
    let (s_log, s_obj, s_busy, s_queue, s_texts, s_usage) = (
        cache.get(tx, LOAD_LOG).await?,
        cache.get(tx, LOAD_OBJECTS).await?,
        cache.get(tx, LOAD_BUSY).await?,
        cache.get(tx, LOAD_QUEUE).await?,
        cache.get(tx, LOAD_TEXTS).await?,
        cache.get(tx, LOAD_USAGE).await?,
    );
    let log_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&log_users, &log_ids];
    let key_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&key_users, &key_uids];
    let usage_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&log_users];
    let (logged, objects, busy, queued, texts, usage_rows) = futures::try_join!(
        tx.query(&s_log, &log_params),
        tx.query(&s_obj, &key_params),
        tx.query(&s_busy, &key_params),
        tx.query(&s_queue, &key_params),
        tx.query(&s_texts, &key_params),
        tx.query(&s_usage, &usage_params),
    )?;
    // Each user's row counts as the batch goes (for the quotas), and what the
    // batch changed them by (written at the end).
    let mut usage: HashMap<String, Usage> = usage_rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Usage {
                    objects: r.get(1),
                    freebusy: r.get(2),
                },
            )
        })
        .collect();
    let mut usage_delta: Vec<(&str, Usage)> = Vec::new();
    let limits = settings.limits();
    let mut applied: HashSet<(String, String)> = logged
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let mut slots: HashMap<Key, UidSlot> = HashMap::with_capacity(keys.len());
    for r in &texts {
        let slot = slots.entry((r.get(0), r.get(1))).or_default();
        let digest: Vec<u8> = r.get(2);
        slot.loaded_texts.insert(digest.clone());
        slot.texts
            .insert(digest, crate::model::Raw::from(r.get::<_, String>(3)));
    }
    for r in &objects {
        let slot = slots.entry((r.get(0), r.get(1))).or_default();
        slot.stored = true;
        slot.object_rows += 1;
        // Unreadable stored objects are skipped, as `store::load_state` does.
        // Straight from the column's bytes, without a serde_json::Value between.
        match r.try_get::<_, Json<StoredObject>>(2) {
            Ok(Json(mut o)) => {
                slot.texts.attach(&mut o, r.get(3));
                slot.objects.push(o)
            }
            Err(_) => slot.unreadable = true,
        }
    }
    for r in &busy {
        let slot = slots.entry((r.get(0), r.get(1))).or_default();
        slot.stored = true;
        slot.busy.insert(Period {
            start: r.get(2),
            end: r.get(3),
            fbtype: FbType::parse(r.get::<_, &str>(4)).unwrap_or(FbType::Busy),
            recurrence_id: r.get(5),
        });
    }
    for slot in slots.values_mut() {
        slot.loaded_busy = slot.busy.clone();
        slot.loaded_objects = slot.objects.clone();
    }
    for r in &queued {
        slots.entry((r.get(0), r.get(1))).or_default().queued = Some(Pending {
            sequence: r.get(2),
            dtstamp: r.get(3),
            organizer: r.get(4),
        });
    }

    // Apply in stream order, in memory.
    struct Done<'p> {
        payload: &'p Payload,
        seq: i64,
        disposition: Disposition,
        changes: Vec<Change>,
    }
    let mut done: Vec<Done> = Vec::with_capacity(good.len());
    let mut duplicates = Vec::new();
    // The first input not applied when the batch spent its time budget: it
    // commits what it applied, the rest goes into the next batch (worker::Pace).
    let mut cut: Option<i64> = None;
    for (i, (m, payload, ctx)) in good.iter().enumerate() {
        if i > 0 && pace.batch_spent() {
            cut = Some(m.seq);
            break;
        }
        pace.keep_alive(tx).await?;
        let began = std::time::Instant::now();
        let user = payload.user.as_str();
        if !applied.insert((payload.user.clone(), payload.dedupe_id.clone())) {
            duplicates.push((m.seq, payload));
            continue;
        }
        let mut uids: Vec<&str> = Vec::new();
        for c in &payload.components {
            if !uids.contains(&c.uid.as_str()) {
                uids.push(&c.uid);
            }
        }
        let mut disposition = Disposition::Applied;
        let mut changes = Vec::new();
        // Every UID in memory first, then into the slots: a message over a
        // limit is refused whole (limits.rs, as worker::Apply::payload does).
        let mut budget = crate::limits::MessageBudget::new(&limits);
        let mut outcomes = Vec::with_capacity(uids.len());
        let mut refusal = None;
        for uid in uids {
            let slot = slots.entry((user.to_owned(), uid.to_owned())).or_default();
            let state = crate::model::UidState {
                objects: std::mem::take(&mut slot.objects),
                pending: slot.queued.clone(),
            };
            let outcome = semantics::apply(&state, payload, uid, ctx);
            let charged = budget.charge(&outcome);
            outcomes.push((uid, state, outcome));
            if let Err(r) = charged {
                refusal = Some(r);
                break;
            }
        }
        if refusal.is_none() {
            let mut delta = Usage::default();
            for (uid, _, outcome) in &outcomes {
                if outcome.disposition == Disposition::Applied && !outcome.enqueue {
                    let slot = &slots[&(user.to_owned(), uid.to_string())];
                    let before = Usage {
                        objects: slot.object_rows as i64,
                        freebusy: slot.busy.len() as i64,
                    };
                    delta += Usage::change(
                        before,
                        outcome.state.objects.len(),
                        crate::limits::freebusy_rows(&outcome.periods),
                    );
                }
            }
            if !delta.is_zero() {
                let before = usage.get(user).copied().unwrap_or_default();
                match crate::limits::quota(before, delta, &limits) {
                    Ok(()) => {
                        usage.insert(user.to_owned(), before + delta);
                        match usage_delta.iter_mut().find(|(u, _)| *u == user) {
                            Some((_, d)) => *d += delta,
                            None => usage_delta.push((user, delta)),
                        }
                    }
                    Err(r) => refusal = Some(r),
                }
            }
        }
        if let Some(r) = refusal {
            for (uid, state, _) in outcomes {
                if let Some(slot) = slots.get_mut(&(user.to_owned(), uid.to_owned())) {
                    slot.objects = state.objects;
                }
            }
            outcomes = Vec::new();
            disposition = r;
        }
        for (uid, state, outcome) in outcomes {
            let slot = slots.entry((user.to_owned(), uid.to_owned())).or_default();
            if outcome.disposition == Disposition::Applied && outcome.enqueue {
                slot.objects = state.objects;
                // A pending request changes only the queue, never the calendar.
                if let Some(entry) = store::queue_entry(payload, uid) {
                    let newer = slot.queued.as_ref().is_none_or(|q| {
                        (q.sequence, q.dtstamp.unwrap_or(DateTime::<Utc>::MIN_UTC))
                            <= (
                                entry.sequence,
                                entry.dtstamp.unwrap_or(DateTime::<Utc>::MIN_UTC),
                            )
                    });
                    if newer {
                        slot.queued = Some(Pending {
                            organizer: entry.organizer.clone(),
                            sequence: entry.sequence,
                            dtstamp: entry.dtstamp,
                        });
                        slot.queue_write = Some(QueueWrite::Upsert(entry));
                        changes.push(Change::QueueChanged {
                            uid: uid.to_owned(),
                            change: QueueChange::Added,
                        });
                    }
                }
            } else if outcome.disposition == Disposition::Applied {
                // The free/busy change is the difference of stored periods
                // (see store::save_outcome); object changes come from the semantics.
                let after: BTreeSet<Period> = outcome.periods.iter().copied().collect();
                let added: Vec<Period> = after.difference(&slot.busy).copied().collect();
                let removed: Vec<Period> = slot.busy.difference(&after).copied().collect();
                changes.extend(
                    outcome
                        .changes
                        .into_iter()
                        .filter(|c| !matches!(c, Change::FreeBusyChanged { .. })),
                );
                if !added.is_empty() || !removed.is_empty() {
                    changes.push(Change::FreeBusyChanged {
                        uid: uid.to_owned(),
                        added,
                        removed,
                    });
                }
                let mut objects = outcome.state.objects;
                // As reloaded from `objects` (ORDER BY recurrence_key).
                objects.sort_by_cached_key(|o| store::recurrence_key(o.recurrence_id));
                slot.object_rows = objects.len();
                slot.objects = objects;
                slot.busy = after;
                slot.saved = true;
                slot.open_until = if outcome.open_ended {
                    outcome.complete_until
                } else {
                    None
                };
                if outcome.dequeue && slot.queued.take().is_some() {
                    slot.queue_write = Some(QueueWrite::Delete);
                    changes.push(Change::QueueChanged {
                        uid: uid.to_owned(),
                        change: QueueChange::Removed,
                    });
                }
            } else {
                slot.objects = state.objects;
                if disposition == Disposition::Applied {
                    disposition = outcome.disposition;
                }
            }
        }
        pace.message_done(m.seq, began)?;
        done.push(Done {
            payload,
            seq: m.seq,
            disposition,
            changes,
        });
    }
    if let Some(cut) = cut {
        bad.retain(|(m, _)| m.seq < cut);
    }

    // Per-user event sequences: one upsert for the batch, numbered in message
    // order, after each message's changes were cut to fit the broker's
    // max_payload as store::append_events cuts them (an error sends the batch
    // to the per-message path, which dead-letters that message alone).
    let fitted: Vec<Vec<events::Event>> = done
        .iter_mut()
        .map(|d| {
            events::fit(
                ns,
                &d.payload.user,
                std::mem::take(&mut d.changes),
                max_payload,
            )
        })
        .collect::<Result<_, _>>()?;
    let mut counts: Vec<(&str, i64)> = Vec::new();
    for (d, evs) in done.iter().zip(&fitted) {
        if evs.is_empty() {
            continue;
        }
        match counts.iter_mut().find(|(u, _)| *u == d.payload.user) {
            Some((_, n)) => *n += evs.len() as i64,
            None => counts.push((&d.payload.user, evs.len() as i64)),
        }
    }
    let mut next_seq: HashMap<&str, i64> = HashMap::new();
    if !counts.is_empty() {
        let (users, ns_): (Vec<&str>, Vec<i64>) = counts.iter().copied().unzip();
        let rows = tx
            .query(&cache.get(tx, UPSERT_USER_EVENTS).await?, &[&users, &ns_])
            .await?;
        for r in &rows {
            let user: String = r.get(0);
            let last: i64 = r.get(1);
            if let Some(&(u, n)) = counts.iter().find(|(u, _)| *u == user) {
                next_seq.insert(u, last - n + 1);
            }
        }
    }

    // Rows to write.
    let now = Utc::now();
    let mut out = Outbox::default();
    let mut log = Log::default();
    for (d, evs) in done.iter().zip(&fitted) {
        let user = d.payload.user.as_str();
        for event in evs {
            let seq = next_seq
                .get_mut(user)
                .ok_or_else(|| ProcessorError::Config(format!("no event sequence for {user}")))?;
            out.users.push(user);
            out.seqs.push(*seq);
            out.ids.push(events::event_id(ns, user, *seq));
            out.kinds.push(event.change.kind());
            out.bodies
                .push(Json(events::cloud_event(ns, user, *seq, now, event)));
            *seq += 1;
        }
        let (outcome, reason) = store::disposition_columns(&d.disposition);
        log.users.push(user);
        log.ids.push(&d.payload.dedupe_id);
        log.seqs.push(d.seq);
        log.methods.push(d.payload.method.as_str());
        log.outcomes.push(outcome);
        log.reasons.push(reason);
    }
    let mut rows = Rows::default();
    let mut queue_deletes: (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    let mut queue_upserts = Queue::default();
    for k in &keys {
        let Some(slot) = slots.get(k) else { continue };
        let (user, uid) = (k.0.as_str(), k.1.as_str());
        if slot.saved {
            rows.add(user, uid, slot);
        }
        match &slot.queue_write {
            Some(QueueWrite::Delete) => {
                queue_deletes.0.push(user);
                queue_deletes.1.push(uid);
            }
            Some(QueueWrite::Upsert(e)) => {
                let q = &mut queue_upserts;
                q.users.push(user);
                q.uids.push(uid);
                q.organizers.push(e.organizer.as_deref());
                q.summaries.push(e.summary.as_deref());
                q.data.push(Json(&e.data));
                q.sequences.push(e.sequence);
                q.dtstamps.push(e.dtstamp);
            }
            None => {}
        }
    }
    let mut dead = Dead::default();
    for (m, e) in &bad {
        dead.users.push(user_hint(m.bytes));
        dead.seqs.push(m.seq);
        dead.payloads.push(m.bytes);
        dead.errors.push(e.to_string());
    }

    let (usage_users, usage_objects, usage_busy): (Vec<&str>, Vec<i64>, Vec<i64>) = usage_delta
        .iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(u, d)| (*u, d.objects, d.freebusy))
        .collect();

    // One pipelined round trip: deletes before inserts (sent, and run, in order).
    let mut writes: Vec<Write<'_>> = Vec::new();
    for (sql, users, uids) in [
        (DELETE_OBJECTS, &rows.whole_users, &rows.whole_uids),
        (DELETE_ATTENDEES, &rows.whole_users, &rows.whole_uids),
        (DELETE_OPEN, &rows.saved_users, &rows.saved_uids),
    ] {
        if !users.is_empty() {
            let s = cache.get(tx, sql).await?;
            writes.push(Box::pin(
                async move { tx.execute(&s, &[users, uids]).await },
            ));
        }
    }
    if !rows.od_users.is_empty() {
        for sql in [DELETE_OBJECT_KEYS, DELETE_ATTENDEE_KEYS] {
            let s = cache.get(tx, sql).await?;
            let r = &rows;
            writes.push(Box::pin(async move {
                tx.execute(&s, &[&r.od_users, &r.od_uids, &r.od_keys]).await
            }));
        }
    }
    if !rows.td_users.is_empty() {
        let s = cache.get(tx, DELETE_TEXT_KEYS).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&r.td_users, &r.td_uids, &r.td_digests])
                .await
        }));
    }
    if !rows.t_users.is_empty() {
        let s = cache.get(tx, INSERT_TEXTS).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&r.t_users, &r.t_uids, &r.t_digests, &r.t_raws])
                .await
        }));
    }
    if !usage_users.is_empty() {
        let s = cache.get(tx, UPSERT_USAGE).await?;
        let (u, o, f) = (&usage_users, &usage_objects, &usage_busy);
        writes.push(Box::pin(async move { tx.execute(&s, &[u, o, f]).await }));
    }
    if !rows.fd_users.is_empty() {
        let s = cache.get(tx, DELETE_BUSY).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&r.fd_users, &r.fd_uids, &r.fd_inst]).await
        }));
    }
    if !rows.o_users.is_empty() {
        let s = cache.get(tx, INSERT_OBJECTS).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(
                &s,
                &[
                    &r.o_users,
                    &r.o_uids,
                    &r.o_keys,
                    &r.o_rids,
                    &r.o_seqs,
                    &r.o_stamps,
                    &r.o_status,
                    &r.o_summary,
                    &r.o_org,
                    &r.o_start,
                    &r.o_end,
                    &r.o_data,
                    &r.o_digests,
                ],
            )
            .await
        }));
    }
    if !rows.a_users.is_empty() {
        let s = cache.get(tx, INSERT_ATTENDEES).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(
                &s,
                &[
                    &r.a_users, &r.a_uids, &r.a_keys, &r.a_addr, &r.a_part, &r.a_role, &r.a_seq,
                    &r.a_stamp,
                ],
            )
            .await
        }));
    }
    if !rows.f_users.is_empty() {
        let s = cache.get(tx, INSERT_BUSY).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(
                &s,
                &[
                    &r.f_users, &r.f_uids, &r.f_inst, &r.f_start, &r.f_end, &r.f_type, &r.f_rid,
                ],
            )
            .await
        }));
    }
    if !rows.open_users.is_empty() {
        let s = cache.get(tx, INSERT_OPEN).await?;
        let r = &rows;
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&r.open_users, &r.open_uids, &r.open_until])
                .await
        }));
    }
    if !queue_deletes.0.is_empty() {
        let s = cache.get(tx, DELETE_QUEUE).await?;
        let q = &queue_deletes;
        writes.push(Box::pin(async move { tx.execute(&s, &[&q.0, &q.1]).await }));
    }
    if !queue_upserts.users.is_empty() {
        let s = cache.get(tx, UPSERT_QUEUE).await?;
        let q = &queue_upserts;
        writes.push(Box::pin(async move {
            tx.execute(
                &s,
                &[
                    &q.users,
                    &q.uids,
                    &q.organizers,
                    &q.summaries,
                    &q.data,
                    &q.sequences,
                    &q.dtstamps,
                ],
            )
            .await
        }));
    }
    if !out.users.is_empty() {
        let s = cache.get(tx, INSERT_OUTBOX).await?;
        let (o, p) = (&out, &partition);
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&o.users, &o.seqs, p, &o.ids, &o.kinds, &o.bodies])
                .await
        }));
    }
    if !log.users.is_empty() {
        let s = cache.get(tx, INSERT_LOG).await?;
        let l = &log;
        writes.push(Box::pin(async move {
            tx.execute(
                &s,
                &[
                    &l.users,
                    &l.ids,
                    &l.seqs,
                    &l.methods,
                    &l.outcomes,
                    &l.reasons,
                ],
            )
            .await
        }));
    }
    if !dead.users.is_empty() {
        let s = cache.get(tx, INSERT_DEAD_LETTERS).await?;
        let (d, p) = (&dead, &partition);
        writes.push(Box::pin(async move {
            tx.execute(&s, &[&d.users, p, &d.seqs, &d.payloads, &d.errors])
                .await
        }));
    }
    // At most 16 statements: join_all polls (and so sends) them in order.
    futures::future::try_join_all(writes).await?;

    for (m, e) in &bad {
        tracing::warn!(partition, seq = m.seq, user = %user_hint(m.bytes), error = %e, "message dead-lettered");
        crate::metrics::dead_lettered(m.bytes);
    }
    for (seq, payload) in duplicates {
        crate::metrics::message_duplicate(partition, seq, payload);
    }
    for d in &done {
        crate::metrics::message_done(partition, d.seq, d.payload, &d.disposition, started);
    }
    Ok(match cut {
        Some(cut) => batch.iter().take_while(|m| m.seq < cut).count(),
        None => batch.len(),
    })
}

#[derive(Default)]
struct Queue<'a> {
    users: Vec<&'a str>,
    uids: Vec<&'a str>,
    organizers: Vec<Option<&'a str>>,
    summaries: Vec<Option<&'a str>>,
    data: Vec<Json<&'a serde_json::Value>>,
    sequences: Vec<i64>,
    dtstamps: Vec<Option<DateTime<Utc>>>,
}

#[derive(Default)]
struct Dead<'a> {
    users: Vec<String>,
    seqs: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    errors: Vec<String>,
}

#[derive(Default)]
struct Outbox<'a> {
    users: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<String>,
    kinds: Vec<&'static str>,
    bodies: Vec<Json<serde_json::Value>>,
}

#[derive(Default)]
struct Log<'a> {
    users: Vec<&'a str>,
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    methods: Vec<&'a str>,
    outcomes: Vec<&'static str>,
    reasons: Vec<Option<&'a str>>,
}

/// Column arrays of the rows that replace the saved UIDs' rows.
#[derive(Default)]
struct Rows<'a> {
    saved_users: Vec<&'a str>,
    saved_uids: Vec<&'a str>,
    whole_users: Vec<&'a str>,
    whole_uids: Vec<&'a str>,
    od_users: Vec<&'a str>,
    od_uids: Vec<&'a str>,
    od_keys: Vec<String>,
    o_users: Vec<&'a str>,
    o_uids: Vec<&'a str>,
    o_keys: Vec<String>,
    o_rids: Vec<Option<DateTime<Utc>>>,
    o_seqs: Vec<i64>,
    o_stamps: Vec<Option<DateTime<Utc>>>,
    o_status: Vec<Option<&'a str>>,
    o_summary: Vec<Option<&'a str>>,
    o_org: Vec<Option<&'a str>>,
    o_start: Vec<Option<DateTime<Utc>>>,
    o_end: Vec<Option<DateTime<Utc>>>,
    o_data: Vec<Json<&'a StoredObject>>,
    o_digests: Vec<Vec<u8>>,
    t_users: Vec<&'a str>,
    t_uids: Vec<&'a str>,
    t_digests: Vec<Vec<u8>>,
    t_raws: Vec<&'a str>,
    td_users: Vec<&'a str>,
    td_uids: Vec<&'a str>,
    td_digests: Vec<Vec<u8>>,
    a_users: Vec<&'a str>,
    a_uids: Vec<&'a str>,
    a_keys: Vec<String>,
    a_addr: Vec<&'a str>,
    a_part: Vec<&'a str>,
    a_role: Vec<&'a str>,
    a_seq: Vec<Option<i64>>,
    a_stamp: Vec<Option<DateTime<Utc>>>,
    f_users: Vec<&'a str>,
    f_uids: Vec<&'a str>,
    f_inst: Vec<DateTime<Utc>>,
    f_start: Vec<DateTime<Utc>>,
    f_end: Vec<DateTime<Utc>>,
    f_type: Vec<&'static str>,
    f_rid: Vec<Option<DateTime<Utc>>>,
    fd_users: Vec<&'a str>,
    fd_uids: Vec<&'a str>,
    fd_inst: Vec<DateTime<Utc>>,
    open_users: Vec<&'a str>,
    open_uids: Vec<&'a str>,
    open_until: Vec<DateTime<Utc>>,
}

impl<'a> Rows<'a> {
    /// The rows that bring one UID from its loaded state to its final state:
    /// what `store::save_outcome` writes, less the objects and free/busy rows
    /// the database already holds as they are.
    fn add(&mut self, user: &'a str, uid: &'a str, slot: &'a UidSlot) {
        if slot.stored {
            self.saved_users.push(user);
            self.saved_uids.push(uid);
        }
        // StoredObject compares its recurrence id first, so `contains` is a
        // cheap search by instance before any deep comparison.
        let unchanged = |o: &StoredObject| !slot.unreadable && slot.loaded_objects.contains(o);
        if slot.unreadable {
            self.whole_users.push(user);
            self.whole_uids.push(uid);
        } else {
            // Removed or changed objects go, with their attendee rows.
            for l in slot
                .loaded_objects
                .iter()
                .filter(|l| !slot.objects.contains(l))
            {
                self.od_users.push(user);
                self.od_uids.push(uid);
                self.od_keys.push(store::recurrence_key(l.recurrence_id));
            }
        }
        // The UID's raw texts go from those loaded to those its objects now
        // refer to (each text once, whatever number of objects share it).
        let (digests, distinct) = store::texts_of(&slot.objects);
        let wanted: BTreeSet<&Vec<u8>> = distinct.iter().map(|(d, _)| d).collect();
        for d in slot.loaded_texts.iter().filter(|d| !wanted.contains(d)) {
            self.td_users.push(user);
            self.td_uids.push(uid);
            self.td_digests.push(d.clone());
        }
        for (d, raw) in distinct
            .into_iter()
            .filter(|(d, _)| !slot.loaded_texts.contains(d))
        {
            self.t_users.push(user);
            self.t_uids.push(uid);
            self.t_digests.push(d);
            self.t_raws.push(raw.as_str());
        }
        for (o, digest) in slot
            .objects
            .iter()
            .zip(digests)
            .filter(|(o, _)| !unchanged(o))
        {
            let key = store::recurrence_key(o.recurrence_id);
            let c = &o.component;
            self.o_users.push(user);
            self.o_uids.push(uid);
            self.o_keys.push(key.clone());
            self.o_rids.push(o.recurrence_id);
            self.o_seqs.push(c.sequence);
            self.o_stamps.push(c.dtstamp);
            self.o_status.push(c.status.as_ref().map(|s| s.as_str()));
            self.o_summary.push(c.summary.as_deref());
            self.o_org
                .push(c.organizer.as_ref().map(|p| p.address.as_str()));
            self.o_start.push(c.start.as_ref().and_then(|t| t.utc));
            self.o_end.push(c.end.as_ref().and_then(|t| t.utc));
            self.o_data.push(Json(o));
            self.o_digests.push(digest);
            for a in &c.attendees {
                let answer = o.answers.get(&a.address);
                self.a_users.push(user);
                self.a_uids.push(uid);
                self.a_keys.push(key.clone());
                self.a_addr.push(&a.address);
                self.a_part.push(a.partstat.as_str());
                self.a_role.push(&a.role);
                self.a_seq.push(answer.map(|s| s.sequence));
                self.a_stamp.push(answer.and_then(|s| s.dtstamp));
            }
        }
        for p in slot.loaded_busy.difference(&slot.busy) {
            self.fd_users.push(user);
            self.fd_uids.push(uid);
            self.fd_inst.push(p.recurrence_id.unwrap_or(p.start));
        }
        for p in slot.busy.difference(&slot.loaded_busy) {
            self.f_users.push(user);
            self.f_uids.push(uid);
            self.f_inst.push(p.recurrence_id.unwrap_or(p.start));
            self.f_start.push(p.start);
            self.f_end.push(p.end);
            self.f_type.push(p.fbtype.as_str());
            self.f_rid.push(p.recurrence_id);
        }
        if let Some(until) = slot.open_until {
            self.open_users.push(user);
            self.open_uids.push(uid);
            self.open_until.push(until);
        }
    }
}

const LOAD_LOG: &str = "SELECT l.user_addr, l.dedupe_id FROM message_log l
     JOIN unnest($1::text[], $2::text[]) AS k(u, d) ON l.user_addr = k.u AND l.dedupe_id = k.d";
const LOAD_OBJECTS: &str = "SELECT o.user_addr, o.uid, o.data, o.text_digest FROM objects o
     JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(u, i) ON o.user_addr = k.u AND o.uid = k.i
     ORDER BY o.user_addr, o.uid, o.recurrence_key";
const LOAD_BUSY: &str = "SELECT f.user_addr, f.uid, lower(f.period), upper(f.period), f.fbtype, f.recurrence_id
     FROM freebusy f
     JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(u, i) ON f.user_addr = k.u AND f.uid = k.i";
const LOAD_TEXTS: &str = "SELECT t.user_addr, t.uid, t.digest, t.raw FROM object_texts t
     JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(u, i) ON t.user_addr = k.u AND t.uid = k.i";
const LOAD_USAGE: &str = "SELECT u.user_addr, u.objects, u.freebusy FROM user_usage u
     JOIN (SELECT DISTINCT * FROM unnest($1::text[])) AS k(u) ON u.user_addr = k.u";
const UPSERT_USAGE: &str = "INSERT INTO user_usage (user_addr, objects, freebusy)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
     ON CONFLICT (user_addr) DO UPDATE
     SET objects = user_usage.objects + EXCLUDED.objects, freebusy = user_usage.freebusy + EXCLUDED.freebusy";
const DELETE_TEXT_KEYS: &str =
    "DELETE FROM object_texts t USING unnest($1::text[], $2::text[], $3::bytea[]) AS k(u, i, d)
     WHERE t.user_addr = k.u AND t.uid = k.i AND t.digest = k.d";
const INSERT_TEXTS: &str = "INSERT INTO object_texts (user_addr, uid, digest, raw)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])";
const LOAD_QUEUE: &str = "SELECT q.user_addr, q.uid, q.sequence, q.dtstamp, q.organizer FROM request_queue q
     JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(u, i) ON q.user_addr = k.u AND q.uid = k.i";
const UPSERT_USER_EVENTS: &str = "INSERT INTO user_events (user_addr, last_seq)
     SELECT * FROM unnest($1::text[], $2::bigint[])
     ON CONFLICT (user_addr) DO UPDATE SET last_seq = user_events.last_seq + EXCLUDED.last_seq
     RETURNING user_addr, last_seq";
const DELETE_OBJECTS: &str = "DELETE FROM objects t USING unnest($1::text[], $2::text[]) AS k(u, i)
     WHERE t.user_addr = k.u AND t.uid = k.i";
const DELETE_ATTENDEES: &str =
    "DELETE FROM attendees t USING unnest($1::text[], $2::text[]) AS k(u, i)
     WHERE t.user_addr = k.u AND t.uid = k.i";
const DELETE_BUSY: &str =
    "DELETE FROM freebusy t USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(u, i, n)
     WHERE t.user_addr = k.u AND t.uid = k.i AND t.instance = k.n";
const DELETE_OBJECT_KEYS: &str =
    "DELETE FROM objects t USING unnest($1::text[], $2::text[], $3::text[]) AS k(u, i, r)
     WHERE t.user_addr = k.u AND t.uid = k.i AND t.recurrence_key = k.r";
const DELETE_ATTENDEE_KEYS: &str =
    "DELETE FROM attendees t USING unnest($1::text[], $2::text[], $3::text[]) AS k(u, i, r)
     WHERE t.user_addr = k.u AND t.uid = k.i AND t.recurrence_key = k.r";
const DELETE_OPEN: &str =
    "DELETE FROM open_series t USING unnest($1::text[], $2::text[]) AS k(u, i)
     WHERE t.user_addr = k.u AND t.uid = k.i";
const DELETE_QUEUE: &str =
    "DELETE FROM request_queue t USING unnest($1::text[], $2::text[]) AS k(u, i)
     WHERE t.user_addr = k.u AND t.uid = k.i";
const INSERT_OBJECTS: &str = "INSERT INTO objects (user_addr, uid, recurrence_key, recurrence_id, sequence,
         dtstamp, status, summary, organizer, dtstart, dtend, data, text_digest)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
         $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
         $12::jsonb[], $13::bytea[])";
const INSERT_ATTENDEES: &str =
    "INSERT INTO attendees (user_addr, uid, recurrence_key, address, partstat,
         role, answer_sequence, answer_dtstamp)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
         $7::bigint[], $8::timestamptz[])
     ON CONFLICT DO NOTHING";
const INSERT_BUSY: &str =
    "INSERT INTO freebusy (user_addr, uid, instance, period, fbtype, recurrence_id)
     SELECT u, i, n, tstzrange(s, e, '[)'), t, r
     FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
         $6::text[], $7::timestamptz[]) AS x(u, i, n, s, e, t, r)";
const INSERT_OPEN: &str = "INSERT INTO open_series (user_addr, uid, materialised_until)
     SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])";
const INSERT_OUTBOX: &str = "INSERT INTO outbox (user_addr, user_seq, partition, event_id, kind, body)
     SELECT u, s, $3, i, k, b FROM unnest($1::text[], $2::bigint[], $4::text[], $5::text[], $6::jsonb[])
         AS x(u, s, i, k, b)";
const INSERT_LOG: &str =
    "INSERT INTO message_log (user_addr, dedupe_id, stream_seq, method, outcome, reason)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
     ON CONFLICT (user_addr, dedupe_id) DO NOTHING";
const UPSERT_QUEUE: &str =
    "INSERT INTO request_queue (user_addr, uid, organizer, summary, data, sequence, dtstamp)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[],
         $7::timestamptz[])
     ON CONFLICT (user_addr, uid) DO UPDATE
     SET organizer = EXCLUDED.organizer, summary = EXCLUDED.summary, data = EXCLUDED.data,
         sequence = EXCLUDED.sequence, dtstamp = EXCLUDED.dtstamp, added_at = now()";
const INSERT_DEAD_LETTERS: &str = "INSERT INTO dead_letters (user_addr, partition, stream_seq, payload, error)
     SELECT u, $2, s, p, e FROM unnest($1::text[], $3::bigint[], $4::bytea[], $5::text[]) AS x(u, s, p, e)";
