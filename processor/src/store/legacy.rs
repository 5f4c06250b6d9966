//! The per-message statements of the write path before `load`/`write`, kept
//! only until imip-ctl's rebuild and replay move over (then deleted).
//!
//! Thin on purpose: the decisions are in `semantics`; this module loads a UID's
//! state, writes an `Outcome`, and keeps the lane's bookkeeping (message log,
//! per-user event sequence, outbox, dead letters) in the same transaction.

use crate::events;
use crate::limits::Usage;
use crate::model::{
    Change, Disposition, Outcome, Pending, Period, QueueChange, Raw, StoredObject, UidState,
};
use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use tokio_postgres::types::Json;

use super::{Result, StatementCache, disposition_columns, recurrence_key, texts_of};

/// The raw texts of one UID (`object_texts`), read once and shared by the
/// objects that refer to them.
const LOAD_TEXTS: &str = "SELECT digest, raw FROM object_texts WHERE user_addr = $1 AND uid = $2";

/// Raw texts by digest, as loaded.
#[derive(Default)]
pub struct Texts(std::collections::HashMap<Vec<u8>, Raw>);

impl Texts {
    /// From rows whose columns `first` and `first + 1` are digest and text.
    pub fn from_rows(rows: &[tokio_postgres::Row], first: usize) -> Texts {
        Texts(
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, Vec<u8>>(first),
                        Raw::from(r.get::<_, String>(first + 1)),
                    )
                })
                .collect(),
        )
    }

    pub fn insert(&mut self, digest: Vec<u8>, raw: Raw) {
        self.0.insert(digest, raw);
    }

    /// Gives `o` the text its row refers to; a row without `text_digest`
    /// (written before object_texts) keeps the text of its `data`.
    pub fn attach(&self, o: &mut StoredObject, digest: Option<Vec<u8>>) {
        if let Some(raw) = digest.and_then(|d| self.0.get(&d)) {
            o.raw = raw.clone();
        }
    }
}

/// The user's row counts for the quotas (`user_usage`).
pub async fn load_usage(tx: &Transaction<'_>, cache: &StatementCache, user: &str) -> Result<Usage> {
    let row = tx
        .query_opt(
            &cache
                .get(
                    tx,
                    "SELECT objects, freebusy FROM user_usage WHERE user_addr = $1",
                )
                .await?,
            &[&user],
        )
        .await?;
    Ok(row.map_or_else(Usage::default, |r| Usage {
        objects: r.get(0),
        freebusy: r.get(1),
    }))
}

/// Adds `delta` to the user's row counts, in the transaction that wrote the rows.
pub async fn add_usage(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    delta: Usage,
) -> Result<()> {
    if delta.is_zero() {
        return Ok(());
    }
    tx.execute(
        &cache
            .get(
                tx,
                "INSERT INTO user_usage (user_addr, objects, freebusy) VALUES ($1, $2, $3)
                 ON CONFLICT (user_addr) DO UPDATE
                 SET objects = user_usage.objects + EXCLUDED.objects,
                     freebusy = user_usage.freebusy + EXCLUDED.freebusy",
            )
            .await?,
        &[&user, &delta.objects, &delta.freebusy],
    )
    .await?;
    Ok(())
}

/// The stored objects of one UID and its pending request, if any (the
/// semantics check an incoming REQUEST against the pending organizer).
pub async fn load_state(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    uid: &str,
) -> Result<UidState> {
    let (objects, queued) = (
        cache
            .get(
                tx,
                "SELECT data, text_digest FROM objects WHERE user_addr = $1 AND uid = $2 ORDER BY recurrence_key",
            )
            .await?,
        cache
            .get(
                tx,
                "SELECT organizer, sequence, dtstamp FROM request_queue WHERE user_addr = $1 AND uid = $2",
            )
            .await?,
    );
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&user, &uid];
    let texts = cache.get(tx, LOAD_TEXTS).await?;
    let (rows, queued, texts) = futures::try_join!(
        tx.query(&objects, &key),
        tx.query_opt(&queued, &key),
        tx.query(&texts, &key)
    )?;
    let texts = Texts::from_rows(&texts, 0);
    let objects = rows
        .into_iter()
        .filter_map(|r| {
            let mut o =
                serde_json::from_value::<StoredObject>(r.get::<_, serde_json::Value>(0)).ok()?;
            texts.attach(&mut o, r.get(1));
            Some(o)
        })
        .collect();
    let pending = queued.map(|r| Pending {
        organizer: r.get(0),
        sequence: r.get(1),
        dtstamp: r.get(2),
    });
    Ok(UidState { objects, pending })
}

pub async fn already_applied(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    dedupe_id: &str,
) -> Result<bool> {
    Ok(tx
        .query_opt(
            &cache
                .get(
                    tx,
                    "SELECT 1 FROM message_log WHERE user_addr = $1 AND dedupe_id = $2",
                )
                .await?,
            &[&user, &dedupe_id],
        )
        .await?
        .is_some())
}

pub async fn log_message(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    dedupe_id: &str,
    seq: i64,
    method: &str,
    disposition: &Disposition,
) -> Result<()> {
    let (outcome, reason) = disposition_columns(disposition);
    tx.execute(
        &cache.get(tx, "INSERT INTO message_log (user_addr, dedupe_id, stream_seq, method, outcome, reason)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_addr, dedupe_id) DO NOTHING").await?,
        &[&user, &dedupe_id, &seq, &method, &outcome, &reason],
    )
    .await?;
    Ok(())
}

/// What [`save_outcome`] did.
pub struct Saved {
    /// The free/busy and queue changes it made.
    pub changes: Vec<Change>,
    /// What it changed the user's row counts by (not yet in `user_usage`:
    /// the caller checks the quota first).
    pub usage: Usage,
}

/// Writes the new state and periods of one UID.
pub async fn save_outcome(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    uid: &str,
    outcome: &Outcome,
) -> Result<Saved> {
    // Independent statements are sent together: tokio-postgres pipelines them.
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&user, &uid];
    let texts = cache
        .get(
            tx,
            "DELETE FROM object_texts WHERE user_addr = $1 AND uid = $2",
        )
        .await?;
    let (objects, attendees, freebusy, open) = (
        cache
            .get(tx, "DELETE FROM objects WHERE user_addr = $1 AND uid = $2")
            .await?,
        cache
            .get(
                tx,
                "DELETE FROM attendees WHERE user_addr = $1 AND uid = $2",
            )
            .await?,
        cache
            .get(
                tx,
                "DELETE FROM freebusy WHERE user_addr = $1 AND uid = $2
                 RETURNING lower(period), upper(period), fbtype, recurrence_id",
            )
            .await?,
        cache
            .get(
                tx,
                "DELETE FROM open_series WHERE user_addr = $1 AND uid = $2",
            )
            .await?,
    );
    let (objects_before, _, stored, _, _) = futures::try_join!(
        tx.execute(&objects, &key),
        tx.execute(&attendees, &key),
        tx.query(&freebusy, &key),
        tx.execute(&open, &key),
        tx.execute(&texts, &key),
    )?;
    let usage = crate::limits::Usage::change(
        Usage {
            objects: objects_before as i64,
            freebusy: stored.len() as i64,
        },
        outcome.state.objects.len(),
        crate::limits::freebusy_rows(&outcome.periods),
    );
    let (digests, distinct) = texts_of(&outcome.state.objects);
    if !distinct.is_empty() {
        let (ds, raws): (Vec<&[u8]>, Vec<&str>) = distinct
            .iter()
            .map(|(d, r)| (d.as_slice(), r.as_str()))
            .unzip();
        tx.execute(
            &cache
                .get(
                    tx,
                    "INSERT INTO object_texts (user_addr, uid, digest, raw)
                     SELECT $1, $2, d, r FROM unnest($3::bytea[], $4::text[]) AS x(d, r)",
                )
                .await?,
            &[&user, &uid, &ds, &raws],
        )
        .await?;
    }
    // The free/busy event is the difference between what was stored and what
    // is stored now — not between two expansions, whose horizons differ.
    let before: std::collections::BTreeSet<Period> = stored
        .iter()
        .map(|r| Period {
            start: r.get(0),
            end: r.get(1),
            fbtype: crate::model::FbType::parse(r.get::<_, &str>(2))
                .unwrap_or(crate::model::FbType::Busy),
            recurrence_id: r.get(3),
        })
        .collect();
    let after: std::collections::BTreeSet<Period> = outcome.periods.iter().copied().collect();
    let mut changes = Vec::new();
    let added: Vec<Period> = after.difference(&before).copied().collect();
    let removed: Vec<Period> = before.difference(&after).copied().collect();
    if !added.is_empty() || !removed.is_empty() {
        changes.push(Change::FreeBusyChanged {
            uid: uid.to_owned(),
            added,
            removed,
        });
    }
    for (o, digest) in outcome.state.objects.iter().zip(&digests) {
        let key = recurrence_key(o.recurrence_id);
        let c = &o.component;
        let start = c.start.as_ref().and_then(|t| t.utc);
        let end = c.end.as_ref().and_then(|t| t.utc);
        tx.execute(
        &cache.get(tx, "INSERT INTO objects (user_addr, uid, recurrence_key, recurrence_id, sequence, dtstamp,
                                  status, summary, organizer, dtstart, dtend, data, text_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)").await?,
            &[
                &user,
                &uid,
                &key,
                &o.recurrence_id,
                &c.sequence,
                &c.dtstamp,
                &c.status.as_ref().map(|s| s.as_str().to_owned()),
                &c.summary,
                &c.organizer.as_ref().map(|p| p.address.clone()),
                &start,
                &end,
                &Json(o),
                digest,
            ],
        )
        .await?;
        if !c.attendees.is_empty() {
            let addresses: Vec<&str> = c.attendees.iter().map(|a| a.address.as_str()).collect();
            let partstats: Vec<&str> = c.attendees.iter().map(|a| a.partstat.as_str()).collect();
            let roles: Vec<&str> = c.attendees.iter().map(|a| a.role.as_str()).collect();
            let seqs: Vec<Option<i64>> = c
                .attendees
                .iter()
                .map(|a| o.answers.get(&a.address).map(|s| s.sequence))
                .collect();
            let stamps: Vec<Option<DateTime<Utc>>> = c
                .attendees
                .iter()
                .map(|a| o.answers.get(&a.address).and_then(|s| s.dtstamp))
                .collect();
            tx.execute(
        &cache.get(tx, "INSERT INTO attendees (user_addr, uid, recurrence_key, address, partstat, role,
                                        answer_sequence, answer_dtstamp)
                 SELECT $1, $2, $3, a, p, r, s, d
                 FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::timestamptz[])
                      AS x(a, p, r, s, d)
                 ON CONFLICT DO NOTHING").await?,
                &[
                    &user, &uid, &key, &addresses, &partstats, &roles, &seqs, &stamps,
                ],
            )
            .await?;
        }
    }
    insert_periods(tx, cache, user, uid, &outcome.periods).await?;
    if outcome.open_ended {
        // Instances starting before `complete_until` are all in `freebusy`;
        // queries past it re-expand the series.
        if let Some(until) = outcome.complete_until {
            tx.execute(
        &cache.get(tx, "INSERT INTO open_series (user_addr, uid, materialised_until) VALUES ($1, $2, $3)").await?,
                &[&user, &uid, &until],
            )
            .await?;
        }
    }
    if outcome.dequeue {
        let removed = tx
            .execute(
                &cache
                    .get(
                        tx,
                        "DELETE FROM request_queue WHERE user_addr = $1 AND uid = $2",
                    )
                    .await?,
                &[&user, &uid],
            )
            .await?;
        if removed > 0 {
            changes.push(Change::QueueChanged {
                uid: uid.to_owned(),
                change: QueueChange::Removed,
            });
        }
    }
    Ok(Saved { changes, usage })
}

async fn insert_periods(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    uid: &str,
    periods: &[Period],
) -> Result<()> {
    if periods.is_empty() {
        return Ok(());
    }
    // One multi-row statement per UID instead of one round trip per instance.
    let starts: Vec<DateTime<Utc>> = periods.iter().map(|p| p.start).collect();
    let ends: Vec<DateTime<Utc>> = periods.iter().map(|p| p.end).collect();
    let types: Vec<&str> = periods.iter().map(|p| p.fbtype.as_str()).collect();
    let instances: Vec<DateTime<Utc>> = periods
        .iter()
        .map(|p| p.recurrence_id.unwrap_or(p.start))
        .collect();
    let rids: Vec<Option<DateTime<Utc>>> = periods.iter().map(|p| p.recurrence_id).collect();
    tx.execute(
        &cache.get(tx, "INSERT INTO freebusy (user_addr, uid, instance, period, fbtype, recurrence_id)
         SELECT $1, $2, i, tstzrange(s, e, '[)'), t, r
         FROM unnest($3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::timestamptz[])
              AS x(i, s, e, t, r)
         ON CONFLICT (user_addr, uid, instance) DO UPDATE SET period = EXCLUDED.period, fbtype = EXCLUDED.fbtype").await?,
        &[&user, &uid, &instances, &starts, &ends, &types, &rids],
    )
    .await?;
    Ok(())
}

/// Appends events to the user's outbox with gap-free per-user sequence
/// numbers, each change cut to fit `max_payload` first (`events::fit`; an
/// error when one cannot fit at all).
#[allow(clippy::too_many_arguments)]
pub async fn append_events(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    namespace: &str,
    partition: i32,
    user: &str,
    changes: &[Change],
    now: DateTime<Utc>,
    max_payload: usize,
) -> std::result::Result<(), crate::error::ProcessorError> {
    if changes.is_empty() {
        return Ok(());
    }
    let changes = events::fit(namespace, user, changes.to_vec(), max_payload)?;
    let n = changes.len() as i64;
    let last: i64 = tx
        .query_one(
            &cache
                .get(
                    tx,
                    "INSERT INTO user_events (user_addr, last_seq) VALUES ($1, $2)
             ON CONFLICT (user_addr) DO UPDATE SET last_seq = user_events.last_seq + $2
             RETURNING last_seq",
                )
                .await?,
            &[&user, &n],
        )
        .await?
        .get(0);
    let first = last - n + 1;
    for (i, event) in changes.iter().enumerate() {
        let seq = first + i as i64;
        let body = events::cloud_event(namespace, user, seq, now, event);
        tx.execute(
            &cache
                .get(
                    tx,
                    "INSERT INTO outbox (user_addr, user_seq, partition, event_id, kind, body)
             VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?,
            &[
                &user,
                &seq,
                &partition,
                &events::event_id(namespace, user, seq),
                &event.change.kind(),
                &Json(&body),
            ],
        )
        .await?;
    }
    Ok(())
}

pub async fn dead_letter(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    partition: i32,
    seq: i64,
    payload: &[u8],
    error: &str,
) -> Result<()> {
    tx.execute(
        &cache
            .get(
                tx,
                "INSERT INTO dead_letters (user_addr, partition, stream_seq, payload, error)
         VALUES ($1, $2, $3, $4, $5)",
            )
            .await?,
        &[&user, &partition, &seq, &payload, &error],
    )
    .await?;
    Ok(())
}

/// A request-queue row for one UID of an incoming REQUEST (SPEC §3).
pub struct QueueEntry {
    pub organizer: Option<String>,
    pub summary: Option<String>,
    pub data: serde_json::Value,
    pub sequence: i64,
    pub dtstamp: Option<DateTime<Utc>>,
}

/// The queue row `payload` makes for `uid`; `None` when it carries no component of it.
pub fn queue_entry(payload: &imipflow_schema::Payload, uid: &str) -> Option<QueueEntry> {
    let comps: Vec<&imipflow_schema::Component> =
        payload.components.iter().filter(|c| c.uid == uid).collect();
    let first = comps.first()?;
    let master = comps
        .iter()
        .find(|c| c.recurrence_id.is_none())
        .unwrap_or(first);
    // The raw text is the whole message: kept only when the message is about
    // this one UID. A REQUEST carrying many UIDs would otherwise store its
    // whole text once per UID (1,000 UIDs in a 1 MiB payload: 1 GB); the
    // components hold everything the queue is read for.
    let single = payload.components.iter().all(|c| c.uid == uid);
    let raw = if single {
        serde_json::Value::String(payload.raw.clone())
    } else {
        serde_json::Value::Null
    };
    Some(QueueEntry {
        organizer: master.organizer.as_ref().map(|o| o.address.clone()),
        summary: master.summary.clone(),
        sequence: comps.iter().map(|c| c.sequence).max().unwrap_or(0),
        dtstamp: comps.iter().filter_map(|c| c.dtstamp).max(),
        data: serde_json::json!({
            "method": payload.method,
            "sender": payload.sender,
            "components": comps,
            "timezones": payload.timezones,
            "raw": raw,
        }),
    })
}

/// Adds or replaces the pending request for one UID (an incoming REQUEST, SPEC
/// §3) unless the stored one is newer; returns the queue change when it wrote.
pub async fn enqueue(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    payload: &imipflow_schema::Payload,
    uid: &str,
) -> Result<Option<Change>> {
    let Some(e) = queue_entry(payload, uid) else {
        return Ok(None);
    };
    let written = tx
        .query_opt(
            &cache
                .get(
                    tx,
                    "INSERT INTO request_queue (user_addr, uid, organizer, summary, data, sequence, dtstamp)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (user_addr, uid) DO UPDATE
                     SET organizer = EXCLUDED.organizer, summary = EXCLUDED.summary, data = EXCLUDED.data,
                         sequence = EXCLUDED.sequence, dtstamp = EXCLUDED.dtstamp, added_at = now()
                     WHERE (request_queue.sequence, coalesce(request_queue.dtstamp, '-infinity'))
                        <= (EXCLUDED.sequence, coalesce(EXCLUDED.dtstamp, '-infinity'))
                     RETURNING 1",
                )
                .await?,
            &[
                &payload.user,
                &uid,
                &e.organizer,
                &e.summary,
                &Json(&e.data),
                &e.sequence,
                &e.dtstamp,
            ],
        )
        .await?;
    Ok(written.map(|_| Change::QueueChanged {
        uid: uid.to_owned(),
        change: QueueChange::Added,
    }))
}
