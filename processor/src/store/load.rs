//! One pipelined read of everything a batch may need for its keys
//! (`imipflow_semantics::apply::keys`): message-log entries, objects, raw
//! texts, free/busy rows, open-series horizons, pending requests, and each
//! user's usage counters and last event sequence.
//!
//! Every statement probes the keys (each UNNEST row looked up by primary
//! key, the partition first, in a LATERAL subquery the planner cannot turn
//! into a scan of the partition), so a batch's cost is that of its own keys
//! whatever the tables' size (see `worker::Lane::run`).

use super::{Result, StatementCache, period};
use crate::limits::Usage;
use crate::model::{Pending, Raw, StoredObject};
use imipflow_semantics::apply::{Keys, Loaded, StoredUid, UidKey};
use std::collections::HashMap;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Row, Transaction};

const LOAD_LOG: &str =
    "SELECT l.user_addr, l.dedupe_id FROM unnest($2::text[], $3::text[]) AS k(u, d)
     CROSS JOIN LATERAL (SELECT user_addr, dedupe_id FROM message_log l
         WHERE l.partition = $1 AND l.user_addr = k.u AND l.dedupe_id = k.d OFFSET 0) AS l";
const LOAD_OBJECTS: &str = "SELECT o.user_addr, o.uid, o.data, o.text_digest
     FROM unnest($2::text[], $3::text[]) AS k(u, i)
     CROSS JOIN LATERAL (SELECT user_addr, uid, recurrence_key, data, text_digest FROM objects o
         WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i OFFSET 0) AS o
     ORDER BY o.user_addr, o.uid, o.recurrence_key";
const LOAD_TEXTS: &str = "SELECT t.user_addr, t.uid, t.digest, t.raw
     FROM unnest($2::text[], $3::text[]) AS k(u, i)
     CROSS JOIN LATERAL (SELECT user_addr, uid, digest, raw FROM object_texts t
         WHERE t.partition = $1 AND t.user_addr = k.u AND t.uid = k.i OFFSET 0) AS t";
const LOAD_BUSY: &str =
    "SELECT f.user_addr, f.uid, lower(f.period), upper(f.period), f.fbtype, f.recurrence_id
     FROM unnest($2::text[], $3::text[]) AS k(u, i)
     CROSS JOIN LATERAL (SELECT user_addr, uid, period, fbtype, recurrence_id FROM freebusy f
         WHERE f.partition = $1 AND f.user_addr = k.u AND f.uid = k.i OFFSET 0) AS f";
const LOAD_OPEN: &str = "SELECT s.user_addr, s.uid, s.materialised_until
     FROM unnest($2::text[], $3::text[]) AS k(u, i)
     CROSS JOIN LATERAL (SELECT user_addr, uid, materialised_until FROM open_series s
         WHERE s.partition = $1 AND s.user_addr = k.u AND s.uid = k.i OFFSET 0) AS s";
const LOAD_QUEUE: &str = "SELECT q.user_addr, q.uid, q.sequence, q.dtstamp, q.organizer
     FROM unnest($2::text[], $3::text[]) AS k(u, i)
     CROSS JOIN LATERAL (SELECT user_addr, uid, sequence, dtstamp, organizer FROM request_queue q
         WHERE q.partition = $1 AND q.user_addr = k.u AND q.uid = k.i OFFSET 0) AS q";
const LOAD_USERS: &str = "SELECT k.u, u.objects, u.freebusy, e.last_seq
     FROM unnest($2::text[]) AS k(u)
     LEFT JOIN user_usage u ON u.partition = $1 AND u.user_addr = k.u
     LEFT JOIN user_events e ON e.partition = $1 AND e.user_addr = k.u
     WHERE u.user_addr IS NOT NULL OR e.user_addr IS NOT NULL";

/// Reads the rows of `keys` in `partition` (each key once in `keys`).
pub async fn load(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    partition: i32,
    keys: &Keys,
) -> Result<Loaded> {
    let (log_users, log_ids): (Vec<&str>, Vec<&str>) = keys
        .logged
        .iter()
        .map(|(u, d)| (u.as_str(), d.as_str()))
        .unzip();
    let (users, uids): (Vec<&str>, Vec<&str>) = keys
        .uids
        .iter()
        .map(|k| (k.user.as_str(), k.uid.as_str()))
        .unzip();
    let by_key: [&(dyn ToSql + Sync); 3] = [&partition, &users, &uids];
    let by_log: [&(dyn ToSql + Sync); 3] = [&partition, &log_users, &log_ids];
    let by_user: [&(dyn ToSql + Sync); 2] = [&partition, &keys.users];
    let s = [
        LOAD_LOG,
        LOAD_OBJECTS,
        LOAD_TEXTS,
        LOAD_BUSY,
        LOAD_OPEN,
        LOAD_QUEUE,
        LOAD_USERS,
    ];
    let mut st = Vec::with_capacity(s.len());
    for sql in s {
        st.push(cache.get(tx, sql).await?);
    }
    // Sent together: tokio-postgres pipelines concurrent queries.
    let (logged, objects, texts, busy, open, queue, usage) = futures::try_join!(
        tx.query(&st[0], &by_log),
        tx.query(&st[1], &by_key),
        tx.query(&st[2], &by_key),
        tx.query(&st[3], &by_key),
        tx.query(&st[4], &by_key),
        tx.query(&st[5], &by_key),
        tx.query(&st[6], &by_user),
    )?;
    let mut loaded = Loaded {
        logged: logged.iter().map(|r| (r.get(0), r.get(1))).collect(),
        uids: uids_of(&objects, &texts),
        ..Loaded::default()
    };
    for r in &busy {
        let p = period(r.get(2), r.get(3), r.get(4), r.get(5));
        slot(&mut loaded, r).busy.insert(p);
    }
    for r in &open {
        slot(&mut loaded, r).open_until = Some(r.get(2));
    }
    for r in &queue {
        slot(&mut loaded, r).pending = Some(Pending {
            sequence: r.get(2),
            dtstamp: r.get(3),
            organizer: r.get(4),
        });
    }
    for r in &usage {
        let user: String = r.get(0);
        if let (Some(objects), Some(freebusy)) = (r.get(1), r.get(2)) {
            loaded
                .usage
                .insert(user.clone(), Usage { objects, freebusy });
        }
        if let Some(last) = r.get::<_, Option<i64>>(3) {
            loaded.last_seq.insert(user, last);
        }
    }
    Ok(loaded)
}

/// The stored UID of a row whose first two columns are user and UID.
fn slot<'a>(loaded: &'a mut Loaded, r: &Row) -> &'a mut StoredUid {
    loaded
        .uids
        .entry(UidKey {
            user: r.get(0),
            uid: r.get(1),
        })
        .or_default()
}

/// Objects with the raw texts they refer to; an object that cannot be read
/// is left out and marks its UID (then rewritten whole when saved).
fn uids_of(objects: &[Row], texts: &[Row]) -> HashMap<UidKey, StoredUid> {
    let mut uids: HashMap<UidKey, StoredUid> = HashMap::new();
    // A digest names one text, whichever UID stores it.
    let mut raws: HashMap<Vec<u8>, Raw> = HashMap::new();
    for r in texts {
        let key = UidKey {
            user: r.get(0),
            uid: r.get(1),
        };
        let digest: Vec<u8> = r.get(2);
        uids.entry(key).or_default().texts.insert(digest.clone());
        raws.insert(digest, Raw::from(r.get::<_, String>(3)));
    }
    for r in objects {
        let key = UidKey {
            user: r.get(0),
            uid: r.get(1),
        };
        let digest: Option<Vec<u8>> = r.get(3);
        // Straight from the column's bytes, without a serde_json::Value between.
        let object = r
            .try_get::<_, Json<StoredObject>>(2)
            .ok()
            .map(|Json(mut o)| {
                // A row without `text_digest` (written before object_texts)
                // keeps the text of its `data`.
                if let Some(raw) = digest.as_ref().and_then(|d| raws.get(d)) {
                    o.raw = raw.clone();
                }
                o
            });
        let stored = uids.entry(key).or_default();
        stored.rows += 1;
        stored.referenced.extend(digest);
        match object {
            Some(o) => stored.objects.push(o),
            None => stored.unreadable = true,
        }
    }
    uids
}
