//! The rows of a batch ([`Writes`]) as multi-row statements, sent in one
//! pipelined round trip: deletes before inserts (sent, and run, in order).
//! Every statement names the partition (`$1`).

use super::{Result, StatementCache};
use crate::model::StoredObject;
use chrono::{DateTime, Utc};
use imipflow_semantics::apply::{UidKey, Writes};
use tokio_postgres::Transaction;
use tokio_postgres::types::{Json, ToSql};

const DELETE_UID_OBJECTS: &str =
    "DELETE FROM objects t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[]) AS k(u, i)
         CROSS JOIN LATERAL (SELECT ctid FROM objects o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i OFFSET 0) AS o))";
const DELETE_UID_ATTENDEES: &str =
    "DELETE FROM attendees t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[]) AS k(u, i)
         CROSS JOIN LATERAL (SELECT ctid FROM attendees o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i OFFSET 0) AS o))";
const DELETE_OBJECTS: &str =
    "DELETE FROM objects t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[], $4::text[]) AS k(u, i, r)
         CROSS JOIN LATERAL (SELECT ctid FROM objects o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i AND o.recurrence_key = k.r OFFSET 0) AS o))";
const DELETE_ATTENDEES: &str =
    "DELETE FROM attendees t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[], $4::text[]) AS k(u, i, r)
         CROSS JOIN LATERAL (SELECT ctid FROM attendees o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i AND o.recurrence_key = k.r OFFSET 0) AS o))";
const DELETE_TEXTS: &str =
    "DELETE FROM object_texts t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[], $4::bytea[]) AS k(u, i, d)
         CROSS JOIN LATERAL (SELECT ctid FROM object_texts o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i AND o.digest = k.d OFFSET 0) AS o))";
const DELETE_BUSY: &str =
    "DELETE FROM freebusy t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS k(u, i, n)
         CROSS JOIN LATERAL (SELECT ctid FROM freebusy o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i AND o.instance = k.n OFFSET 0) AS o))";
const DELETE_OPEN: &str = "DELETE FROM open_series t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[]) AS k(u, i)
         CROSS JOIN LATERAL (SELECT ctid FROM open_series o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i OFFSET 0) AS o))";
const DELETE_QUEUE: &str =
    "DELETE FROM request_queue t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($2::text[], $3::text[], $4::text[]) AS k(u, i, r)
         CROSS JOIN LATERAL (SELECT ctid FROM request_queue o
             WHERE o.partition = $1 AND o.user_addr = k.u AND o.uid = k.i
                 AND o.recurrence_key = k.r OFFSET 0) AS o))";
const INSERT_TEXTS: &str = "INSERT INTO object_texts (partition, user_addr, uid, digest, raw)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[])";
const INSERT_OBJECTS: &str = "INSERT INTO objects (partition, user_addr, uid, recurrence_key,
         recurrence_id, sequence, dtstamp, status, summary, organizer, dtstart, dtend, data, text_digest)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[],
         $6::bigint[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
         $12::timestamptz[], $13::jsonb[], $14::bytea[])";
const INSERT_ATTENDEES: &str = "INSERT INTO attendees (partition, user_addr, uid, recurrence_key,
         address, partstat, role, answer_sequence, answer_dtstamp)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
         $7::text[], $8::bigint[], $9::timestamptz[])
     ON CONFLICT DO NOTHING";
const INSERT_BUSY: &str =
    "INSERT INTO freebusy (partition, user_addr, uid, instance, period, fbtype, recurrence_id)
     SELECT $1::integer, u, i, n, tstzrange(s, e, '[)'), t, r
     FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[],
         $7::text[], $8::timestamptz[]) AS x(u, i, n, s, e, t, r)";
const INSERT_OPEN: &str = "INSERT INTO open_series (partition, user_addr, uid, materialised_until)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::timestamptz[])";
/// A plain upsert: whether the request is newer was decided in Rust.
const UPSERT_QUEUE: &str = "INSERT INTO request_queue (partition, user_addr, uid, recurrence_key,
         recurrence_id, organizer, summary, data, sequence, dtstamp)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[],
         $6::text[], $7::text[], $8::jsonb[], $9::bigint[], $10::timestamptz[])
     ON CONFLICT (partition, user_addr, uid, recurrence_key) DO UPDATE
     SET recurrence_id = EXCLUDED.recurrence_id, organizer = EXCLUDED.organizer,
         summary = EXCLUDED.summary, data = EXCLUDED.data, sequence = EXCLUDED.sequence,
         dtstamp = EXCLUDED.dtstamp, added_at = now()";
const UPSERT_USAGE: &str = "INSERT INTO user_usage (partition, user_addr, objects, freebusy)
     SELECT $1::integer, * FROM unnest($2::text[], $3::bigint[], $4::bigint[])
     ON CONFLICT (partition, user_addr) DO UPDATE
     SET objects = user_usage.objects + EXCLUDED.objects,
         freebusy = user_usage.freebusy + EXCLUDED.freebusy";
/// The writer holds the partition row, so no one else numbers these users' events.
const UPSERT_LAST_SEQ: &str = "INSERT INTO user_events (partition, user_addr, last_seq)
     SELECT $1::integer, * FROM unnest($2::text[], $3::bigint[])
     ON CONFLICT (partition, user_addr) DO UPDATE SET last_seq = EXCLUDED.last_seq";
const INSERT_OUTBOX: &str = "INSERT INTO outbox (partition, user_addr, user_seq, event_id, kind, body)
     SELECT $1::integer, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[])";
const INSERT_LOG: &str = "INSERT INTO message_log (partition, user_addr, dedupe_id, stream_seq,
         method, outcome, reason, uid, recurrence_id)
     SELECT $1::integer, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
         $7::text[], $8::text[], $9::text[])
     ON CONFLICT (partition, user_addr, dedupe_id) DO NOTHING";
const INSERT_DEAD_LETTERS: &str = "INSERT INTO dead_letters (partition, user_addr, stream_seq,
         payload, error)
     SELECT $1::integer, * FROM unnest($2::text[], $3::bigint[], $4::bytea[], $5::text[])";

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Statements to send together, each with its parameters after the partition.
struct Pipeline<'a> {
    partition: &'a i32,
    statements: Vec<(&'static str, Params<'a>)>,
}

impl<'a> Pipeline<'a> {
    /// Adds `sql` unless it has no rows.
    fn add(&mut self, sql: &'static str, rows: usize, params: &[&'a (dyn ToSql + Sync)]) {
        if rows > 0 {
            let mut p: Params<'a> = vec![self.partition];
            p.extend_from_slice(params);
            self.statements.push((sql, p));
        }
    }

    async fn run(self, tx: &Transaction<'_>, cache: &StatementCache) -> Result<()> {
        let mut prepared = Vec::with_capacity(self.statements.len());
        for (sql, _) in &self.statements {
            prepared.push(cache.get(tx, sql).await?);
        }
        // join_all polls (and so sends) them in order.
        futures::future::try_join_all(
            prepared
                .iter()
                .zip(&self.statements)
                .map(|(s, (_, p))| tx.execute(s, p)),
        )
        .await?;
        Ok(())
    }
}

/// Writes `w` in `tx`, in `partition`, in one round trip.
pub async fn write(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    partition: i32,
    w: &Writes,
) -> Result<()> {
    let c = Columns::of(w);
    let mut p = Pipeline {
        partition: &partition,
        statements: Vec::new(),
    };
    let n = |k: &Keys| k.users.len();
    p.add(
        DELETE_UID_OBJECTS,
        n(&c.cleared),
        &[&c.cleared.users, &c.cleared.uids],
    );
    p.add(
        DELETE_UID_ATTENDEES,
        n(&c.cleared),
        &[&c.cleared.users, &c.cleared.uids],
    );
    let r = &c.removed;
    p.add(
        DELETE_OBJECTS,
        n(&r.keys),
        &[&r.keys.users, &r.keys.uids, &r.recurrence_keys],
    );
    p.add(
        DELETE_ATTENDEES,
        n(&r.keys),
        &[&r.keys.users, &r.keys.uids, &r.recurrence_keys],
    );
    let t = &c.texts_removed;
    p.add(DELETE_TEXTS, n(&t.0), &[&t.0.users, &t.0.uids, &t.1]);
    let b = &c.busy_removed;
    p.add(DELETE_BUSY, n(&b.0), &[&b.0.users, &b.0.uids, &b.1]);
    p.add(
        DELETE_OPEN,
        n(&c.open_removed),
        &[&c.open_removed.users, &c.open_removed.uids],
    );
    p.add(
        DELETE_QUEUE,
        n(&c.queue_removed.0),
        &[
            &c.queue_removed.0.users,
            &c.queue_removed.0.uids,
            &c.queue_removed.1,
        ],
    );
    c.inserts(&mut p);
    p.run(tx, cache).await
}

/// The user and UID columns of some keys.
#[derive(Default)]
struct Keys<'a> {
    users: Vec<&'a str>,
    uids: Vec<&'a str>,
}

impl<'a> Keys<'a> {
    fn of(keys: impl Iterator<Item = &'a UidKey>) -> Keys<'a> {
        let mut k = Keys::default();
        for key in keys {
            k.push(key);
        }
        k
    }

    fn push(&mut self, key: &'a UidKey) {
        self.users.push(&key.user);
        self.uids.push(&key.uid);
    }
}

/// Every statement's column arrays, borrowed from the rows.
struct Columns<'a> {
    cleared: Keys<'a>,
    removed: Removed<'a>,
    texts_removed: (Keys<'a>, Vec<&'a [u8]>),
    busy_removed: (Keys<'a>, Vec<DateTime<Utc>>),
    open_removed: Keys<'a>,
    queue_removed: (Keys<'a>, Vec<&'a str>),
    texts: (Keys<'a>, Vec<&'a [u8]>, Vec<&'a str>),
    objects: Objects<'a>,
    attendees: Attendees<'a>,
    busy: Busy<'a>,
    open: (Keys<'a>, Vec<DateTime<Utc>>),
    queue: Queue<'a>,
    usage: (Vec<&'a str>, Vec<i64>, Vec<i64>),
    last_seq: (Vec<&'a str>, Vec<i64>),
    outbox: Outbox<'a>,
    log: Log<'a>,
    dead: Dead<'a>,
}

#[derive(Default)]
struct Removed<'a> {
    keys: Keys<'a>,
    recurrence_keys: Vec<&'a str>,
}

#[derive(Default)]
struct Objects<'a> {
    keys: Keys<'a>,
    recurrence_keys: Vec<&'a str>,
    rids: Vec<Option<DateTime<Utc>>>,
    sequences: Vec<i64>,
    dtstamps: Vec<Option<DateTime<Utc>>>,
    status: Vec<Option<&'a str>>,
    summaries: Vec<Option<&'a str>>,
    organizers: Vec<Option<&'a str>>,
    starts: Vec<Option<DateTime<Utc>>>,
    ends: Vec<Option<DateTime<Utc>>>,
    data: Vec<Json<&'a StoredObject>>,
    digests: Vec<&'a [u8]>,
}

#[derive(Default)]
struct Attendees<'a> {
    keys: Keys<'a>,
    recurrence_keys: Vec<&'a str>,
    addresses: Vec<&'a str>,
    partstats: Vec<&'a str>,
    roles: Vec<&'a str>,
    sequences: Vec<Option<i64>>,
    dtstamps: Vec<Option<DateTime<Utc>>>,
}

#[derive(Default)]
struct Busy<'a> {
    keys: Keys<'a>,
    instances: Vec<DateTime<Utc>>,
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
    types: Vec<&'static str>,
    rids: Vec<Option<DateTime<Utc>>>,
}

#[derive(Default)]
struct Queue<'a> {
    keys: Keys<'a>,
    recurrence_keys: Vec<&'a str>,
    rids: Vec<Option<DateTime<Utc>>>,
    organizers: Vec<Option<&'a str>>,
    summaries: Vec<Option<&'a str>>,
    data: Vec<Json<&'a serde_json::Value>>,
    sequences: Vec<i64>,
    dtstamps: Vec<Option<DateTime<Utc>>>,
}

#[derive(Default)]
struct Outbox<'a> {
    users: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<&'a str>,
    kinds: Vec<&'a str>,
    bodies: Vec<Json<&'a serde_json::Value>>,
}

#[derive(Default)]
struct Log<'a> {
    users: Vec<&'a str>,
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    methods: Vec<&'a str>,
    outcomes: Vec<&'static str>,
    reasons: Vec<Option<&'a str>>,
    uids: Vec<Option<&'a str>>,
    rids: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct Dead<'a> {
    users: Vec<&'a str>,
    seqs: Vec<i64>,
    payloads: Vec<&'a [u8]>,
    errors: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(w: &'a Writes) -> Columns<'a> {
        let mut c = Columns {
            cleared: Keys::of(w.uids_cleared.iter()),
            removed: Removed::default(),
            texts_removed: (Keys::of(w.texts_removed.iter().map(|(k, _)| k)), Vec::new()),
            busy_removed: (Keys::of(w.busy_removed.iter().map(|(k, _)| k)), Vec::new()),
            open_removed: Keys::of(w.open_removed.iter()),
            queue_removed: (
                Keys::of(w.queue_removed.iter().map(|q| &q.key)),
                w.queue_removed
                    .iter()
                    .map(|q| q.recurrence_key.as_str())
                    .collect(),
            ),
            texts: (
                Keys::of(w.texts.iter().map(|t| &t.key)),
                Vec::new(),
                Vec::new(),
            ),
            objects: Objects::default(),
            attendees: Attendees::default(),
            busy: Busy::default(),
            open: (Keys::of(w.open.iter().map(|(k, _)| k)), Vec::new()),
            queue: Queue::default(),
            usage: (Vec::new(), Vec::new(), Vec::new()),
            last_seq: (Vec::new(), Vec::new()),
            outbox: Outbox::default(),
            log: Log::default(),
            dead: Dead::default(),
        };
        for o in &w.objects_removed {
            c.removed.keys.push(&o.key);
            c.removed.recurrence_keys.push(&o.recurrence_key);
        }
        c.texts_removed.1 = w.texts_removed.iter().map(|(_, d)| d.as_slice()).collect();
        c.busy_removed.1 = w.busy_removed.iter().map(|(_, n)| *n).collect();
        for t in &w.texts {
            c.texts.1.push(&t.digest);
            c.texts.2.push(t.raw.as_str());
        }
        for r in &w.objects {
            c.objects.push(r);
            c.attendees.push(r);
        }
        for (k, p) in &w.busy {
            c.busy.push(k, p);
        }
        c.open.1 = w.open.iter().map(|(_, t)| *t).collect();
        for (k, e) in &w.queue {
            c.queue.push(k, e);
        }
        for (u, d) in &w.usage {
            c.usage.0.push(u);
            c.usage.1.push(d.objects);
            c.usage.2.push(d.freebusy);
        }
        for (u, s) in &w.last_seq {
            c.last_seq.0.push(u);
            c.last_seq.1.push(*s);
        }
        c.outbox.of(w);
        c.log.of(w);
        c.dead.of(w);
        c
    }

    /// The inserts and upserts, after the deletes.
    fn inserts(&'a self, p: &mut Pipeline<'a>) {
        let t = &self.texts;
        p.add(
            INSERT_TEXTS,
            t.0.users.len(),
            &[&t.0.users, &t.0.uids, &t.1, &t.2],
        );
        let o = &self.objects;
        #[rustfmt::skip]
        p.add(INSERT_OBJECTS, o.keys.users.len(), &[
            &o.keys.users, &o.keys.uids, &o.recurrence_keys, &o.rids, &o.sequences, &o.dtstamps,
            &o.status, &o.summaries, &o.organizers, &o.starts, &o.ends, &o.data, &o.digests,
        ]);
        let a = &self.attendees;
        #[rustfmt::skip]
        p.add(INSERT_ATTENDEES, a.keys.users.len(), &[
            &a.keys.users, &a.keys.uids, &a.recurrence_keys, &a.addresses, &a.partstats, &a.roles,
            &a.sequences, &a.dtstamps,
        ]);
        let b = &self.busy;
        #[rustfmt::skip]
        p.add(INSERT_BUSY, b.keys.users.len(), &[
            &b.keys.users, &b.keys.uids, &b.instances, &b.starts, &b.ends, &b.types, &b.rids,
        ]);
        let s = &self.open;
        p.add(INSERT_OPEN, s.0.users.len(), &[&s.0.users, &s.0.uids, &s.1]);
        let q = &self.queue;
        #[rustfmt::skip]
        p.add(UPSERT_QUEUE, q.keys.users.len(), &[
            &q.keys.users, &q.keys.uids, &q.recurrence_keys, &q.rids, &q.organizers, &q.summaries,
            &q.data, &q.sequences, &q.dtstamps,
        ]);
        let u = &self.usage;
        p.add(UPSERT_USAGE, u.0.len(), &[&u.0, &u.1, &u.2]);
        let l = &self.last_seq;
        p.add(UPSERT_LAST_SEQ, l.0.len(), &[&l.0, &l.1]);
        let e = &self.outbox;
        #[rustfmt::skip]
        p.add(INSERT_OUTBOX, e.users.len(), &[&e.users, &e.seqs, &e.ids, &e.kinds, &e.bodies]);
        let g = &self.log;
        #[rustfmt::skip]
        p.add(INSERT_LOG, g.users.len(), &[
            &g.users, &g.ids, &g.seqs, &g.methods, &g.outcomes, &g.reasons, &g.uids, &g.rids,
        ]);
        let d = &self.dead;
        p.add(
            INSERT_DEAD_LETTERS,
            d.users.len(),
            &[&d.users, &d.seqs, &d.payloads, &d.errors],
        );
    }
}

impl<'a> Objects<'a> {
    fn push(&mut self, r: &'a imipflow_semantics::apply::ObjectRow) {
        let (o, c) = (&r.object, &r.object.component);
        self.keys.push(&r.key);
        self.recurrence_keys.push(&r.recurrence_key);
        self.rids.push(o.recurrence_id);
        self.sequences.push(c.sequence);
        self.dtstamps.push(c.dtstamp);
        self.status.push(c.status.as_ref().map(|s| s.as_str()));
        self.summaries.push(c.summary.as_deref());
        self.organizers
            .push(c.organizer.as_ref().map(|p| p.address.as_str()));
        self.starts.push(c.start.as_ref().and_then(|t| t.utc));
        self.ends.push(c.end.as_ref().and_then(|t| t.utc));
        self.data.push(Json(o));
        self.digests.push(&r.digest);
    }
}

impl<'a> Attendees<'a> {
    /// The attendee rows of one object row.
    fn push(&mut self, r: &'a imipflow_semantics::apply::ObjectRow) {
        for a in &r.object.component.attendees {
            let answer = r.object.answers.get(&a.address);
            self.keys.push(&r.key);
            self.recurrence_keys.push(&r.recurrence_key);
            self.addresses.push(&a.address);
            self.partstats.push(a.partstat.as_str());
            self.roles.push(&a.role);
            self.sequences.push(answer.map(|s| s.sequence));
            self.dtstamps.push(answer.and_then(|s| s.dtstamp));
        }
    }
}

impl<'a> Busy<'a> {
    fn push(&mut self, key: &'a UidKey, p: &crate::model::Period) {
        self.keys.push(key);
        self.instances.push(imipflow_semantics::apply::instance(p));
        self.starts.push(p.start);
        self.ends.push(p.end);
        self.types.push(p.fbtype.as_str());
        self.rids.push(p.recurrence_id);
    }
}

impl<'a> Queue<'a> {
    fn push(&mut self, key: &'a UidKey, e: &'a imipflow_semantics::apply::QueueEntry) {
        self.keys.push(key);
        self.recurrence_keys.push(&e.recurrence_key);
        self.rids.push(e.recurrence_id);
        self.organizers.push(e.organizer.as_deref());
        self.summaries.push(e.summary.as_deref());
        self.data.push(Json(&e.data));
        self.sequences.push(e.sequence);
        self.dtstamps.push(e.dtstamp);
    }
}

impl<'a> Outbox<'a> {
    fn of(&mut self, w: &'a Writes) {
        for o in &w.outbox {
            self.users.push(&o.user);
            self.seqs.push(o.seq);
            self.ids.push(&o.event_id);
            self.kinds.push(o.kind.as_str());
            self.bodies.push(Json(&o.body));
        }
    }
}

impl<'a> Log<'a> {
    fn of(&mut self, w: &'a Writes) {
        for l in &w.log {
            let (outcome, reason) = (l.disposition.outcome(), l.disposition.reason());
            self.users.push(&l.user);
            self.ids.push(&l.dedupe_id);
            self.seqs.push(l.seq);
            self.methods.push(&l.method);
            self.outcomes.push(outcome.as_str());
            self.reasons.push(reason);
            self.uids.push(l.uid.as_deref());
            self.rids.push(l.recurrence_id.as_deref());
        }
    }
}

impl<'a> Dead<'a> {
    fn of(&mut self, w: &'a Writes) {
        for d in &w.dead_letters {
            self.users.push(&d.user);
            self.seqs.push(d.seq);
            self.payloads.push(&d.payload);
            self.errors.push(&d.error);
        }
    }
}
