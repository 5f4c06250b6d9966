//! Queries behind `imip-ctl`: free/busy, objects, queue, dead letters, status.
//! Output formatting lives in the binary (VFREEBUSY text in
//! `imipflow_schema::freebusy`); these return typed rows.

use crate::error::ProcessorError;
use crate::model::{FbType, Period, StoredObject, UidState};
use crate::{config::Settings, semantics, store};
use chrono::{DateTime, Utc};

/// One row of `imip-ctl freebusy`; the type is part of the contract.
pub use imipflow_schema::BusyPeriod;

/// What `imip-ctl freebusy` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeBusy {
    /// Sorted by start; at most `IMIP_MAX_QUERY_PERIODS`.
    pub periods: Vec<BusyPeriod>,
    /// Periods were left out: the answer holds the first ones by start, and
    /// is complete only before the start of its last period.
    pub truncated: bool,
}

/// Busy periods of `user` intersecting [from, to): the materialised rows, plus
/// instances of open-ended series past their materialised horizon. At most
/// `IMIP_MAX_QUERY_PERIODS`, the first ones by start: the rows are read in
/// that order up to the cap, and each open series is expanded up to it, then
/// merged and cut again, so that the memory a query takes is bounded by the
/// cap, not by the user's number of series (30 open series over a year took
/// 3.3 GB).
pub async fn freebusy(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<FreeBusy, ProcessorError> {
    let cap = settings.max_query_periods.max(1);
    let rows = db
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE user_addr = $1 AND period && tstzrange($2, $3, '[)')
             ORDER BY lower(period), uid, instance LIMIT $4",
            &[&user, &from, &to, &(cap as i64 + 1)],
        )
        .await?;
    let mut out: Vec<BusyPeriod> = rows
        .iter()
        .map(|r| BusyPeriod {
            start: r.get(0),
            end: r.get(1),
            fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
            uid: r.get(3),
            recurrence_id: r.get(4),
        })
        .collect();
    drop(rows);
    let mut truncated = false;
    let cut = |out: &mut Vec<BusyPeriod>, truncated: &mut bool| {
        out.sort();
        if out.len() > cap {
            out.truncate(cap);
            *truncated = true;
        }
    };
    cut(&mut out, &mut truncated);
    let open = db
        .query(
            "SELECT uid, materialised_until FROM open_series WHERE user_addr = $1 AND materialised_until < $2",
            &[&user, &to],
        )
        .await?;
    if !open.is_empty() {
        let tx = db.transaction().await?;
        let cache = store::StatementCache::default();
        let ctx = settings.ctx(Utc::now())?;
        for r in open {
            let uid: String = r.get(0);
            let until: DateTime<Utc> = r.get(1);
            let lo = from.max(until);
            // Once the answer is full, a series matters only up to its last period.
            let hi = match out.last() {
                Some(last) if out.len() >= cap => {
                    (last.start + chrono::Duration::seconds(1)).min(to)
                }
                _ => to,
            };
            let state: UidState = store::load_state(&tx, &cache, user, &uid).await?;
            if hi > lo {
                let stored: std::collections::HashSet<DateTime<Utc>> = out
                    .iter()
                    .filter(|b| b.uid == uid)
                    .map(|b| b.start)
                    .collect();
                let (periods, series_cut) =
                    semantics::periods_in_window_capped(&state, user, lo, hi, &ctx, cap);
                truncated |= series_cut;
                for p in periods {
                    if p.start >= until && !stored.contains(&p.start) {
                        out.push(busy(&uid, &p));
                    }
                }
                cut(&mut out, &mut truncated);
            }
            if hi < to && !truncated {
                // Whether the series has periods past the full answer's end.
                let (rest, _) =
                    semantics::periods_in_window_capped(&state, user, hi.max(lo), to, &ctx, 64);
                truncated = rest.iter().any(|p| p.start >= hi.max(until));
            }
        }
        tx.commit().await?;
    }
    cut(&mut out, &mut truncated);
    Ok(FreeBusy {
        periods: out,
        truncated,
    })
}

fn busy(uid: &str, p: &Period) -> BusyPeriod {
    BusyPeriod {
        start: p.start,
        end: p.end,
        fbtype: p.fbtype,
        uid: uid.to_owned(),
        recurrence_id: p.recurrence_id,
    }
}

pub async fn objects(
    db: &tokio_postgres::Client,
    user: &str,
    uid: Option<&str>,
) -> Result<Vec<(String, StoredObject)>, ProcessorError> {
    let rows = db
        .query(
            "SELECT uid, data, text_digest FROM objects WHERE user_addr = $1 AND ($2::text IS NULL OR uid = $2)
             ORDER BY dtstart NULLS LAST, uid, recurrence_key",
            &[&user, &uid],
        )
        .await?;
    // Each raw text once (object_texts), shared by the objects that refer to it.
    let texts: std::collections::HashMap<(String, Vec<u8>), crate::model::Raw> = db
        .query(
            "SELECT uid, digest, raw FROM object_texts WHERE user_addr = $1 AND ($2::text IS NULL OR uid = $2)",
            &[&user, &uid],
        )
        .await?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, String>(2).into()))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let uid: String = r.get(0);
            let mut o: StoredObject =
                serde_json::from_value(r.get::<_, serde_json::Value>(1)).ok()?;
            if let Some(raw) = r
                .get::<_, Option<Vec<u8>>>(2)
                .and_then(|d| texts.get(&(uid.clone(), d)))
            {
                o.raw = raw.clone();
            }
            Some((uid, o))
        })
        .collect())
}

/// One partition in `imip-ctl status` and in the lag metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// Stream position the lane has applied.
    pub applied: u64,
    /// Stream position of the partition's newest message.
    pub newest: u64,
    /// `newest - applied`: messages (of this partition) not applied yet.
    pub lag: u64,
    /// Instance holding (or last holding) the lease: `<IMIP_INSTANCE or host>:<pid>`.
    pub owner: Option<String>,
    pub epoch: i64,
    /// Whether the owner's lease is current (a live instance owns the lane).
    pub leased: bool,
    pub lease_until: Option<DateTime<Utc>>,
    /// When the applied position last moved (none yet: never since V5).
    pub progress_at: Option<DateTime<Utc>>,
    /// How long the lane has had messages waiting without its applied
    /// position moving, in seconds: since the later of `progress_at` and the
    /// arrival of the oldest waiting message; 0 when nothing waits.
    pub stalled_for_secs: u64,
    /// `stalled_for_secs` reached `IMIP_STALL_AFTER_SECS`.
    pub stalled: bool,
}

impl PartitionStatus {
    /// Why the partition counts as stalled, for `/readyz` and `imip-ctl
    /// status`; none when it does not.
    pub fn stall_reason(&self) -> Option<String> {
        if !self.stalled {
            return None;
        }
        let owner = match (&self.owner, self.leased) {
            (Some(o), true) => format!("owned by {o}"),
            _ => "no live owner".to_owned(),
        };
        Some(format!(
            "partition {} stalled: {} message(s) waiting, applied position {} unchanged for {} s ({owner})",
            self.partition, self.lag, self.applied, self.stalled_for_secs
        ))
    }
}

/// Everything `imip-ctl status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub partitions: Vec<PartitionStatus>,
    pub lag: u64,
    pub dead_letters: u64,
    pub quarantined: u64,
    /// Messages refused by the trust rules (SPEC §2 "Trust"), from `message_log`
    /// (not counted for a metrics scrape: it reads the whole log).
    pub refused: u64,
    /// Change events committed but not yet published by a lane's relay.
    pub unpublished_events: u64,
    /// Live instances and how many partitions each owns.
    pub instances: Vec<InstanceStatus>,
    /// `IMIP_STALL_AFTER_SECS`: a partition waiting this long is stalled.
    pub stall_after_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub partitions: usize,
}

/// Lanes, owners, lag, dead letters, quarantine: from PostgreSQL and the streams.
pub async fn status(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
) -> Result<Status, ProcessorError> {
    status_of(db, js, settings, true).await
}

/// [`status`] without the reads that grow with the message log, for the
/// processor's `/metrics` (scraped every few seconds).
pub async fn scrape_status(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
) -> Result<Status, ProcessorError> {
    status_of(db, js, settings, false).await
}

async fn status_of(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
    count_refused: bool,
) -> Result<Status, ProcessorError> {
    let ns = settings.namespace()?;
    let rows = db
        .query(
            "SELECT partition, last_sequence, owner, epoch,
                    coalesce(lease_until > clock_timestamp(), false), lease_until,
                    progress_at, clock_timestamp()
             FROM partitions ORDER BY partition",
            &[],
        )
        .await?;
    // The database's clock, which wrote progress_at (a partition without a
    // row has none: read it apart).
    let now: DateTime<Utc> = match rows.first() {
        Some(r) => r.get(7),
        None => db.query_one("SELECT clock_timestamp()", &[]).await?.get(0),
    };
    let dead_letters: i64 = db
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let refused: i64 = if count_refused {
        db.query_one(
            "SELECT count(*) FROM message_log WHERE outcome = 'refused'",
            &[],
        )
        .await?
        .get(0)
    } else {
        0
    };
    // Served by the partial index outbox_unpublished: cheap while the relay keeps up.
    let unpublished: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let stream = js
        .get_stream(ns.messages_stream())
        .await
        .map_err(ProcessorError::nats)?;
    // The partitions' newest positions, asked for all at once.
    let newest = futures::future::join_all((0..settings.partitions).map(|p| {
        let stream = &stream;
        let filter = ns.partition_filter(p);
        async move {
            stream
                .get_last_raw_message_by_subject(&filter)
                .await
                .map(|m| m.sequence)
                .unwrap_or(0)
        }
    }))
    .await;
    let mut partitions = Vec::new();
    for (p, newest) in newest.into_iter().enumerate() {
        let row = rows.iter().find(|r| r.get::<_, i32>(0) == p as i32);
        let applied = row.map(|r| r.get::<_, i64>(1)).unwrap_or(0).max(0) as u64;
        let progress_at: Option<DateTime<Utc>> = row.and_then(|r| r.get(6));
        partitions.push(PartitionStatus {
            partition: p as u32,
            applied,
            newest,
            lag: newest.saturating_sub(applied),
            owner: row.and_then(|r| r.get(2)),
            epoch: row.map(|r| r.get(3)).unwrap_or(0),
            leased: row.map(|r| r.get(4)).unwrap_or(false),
            lease_until: row.and_then(|r| r.get(5)),
            progress_at,
            stalled_for_secs: 0,
            stalled: false,
        });
    }
    stalls(&stream, &ns, &mut partitions, now, settings.stall_after()).await;
    let mut quarantine = js
        .get_stream(ns.quarantine_stream())
        .await
        .map_err(ProcessorError::nats)?;
    let quarantined = quarantine
        .info()
        .await
        .map_err(ProcessorError::nats)?
        .state
        .messages;
    let mut instances: std::collections::BTreeMap<String, usize> = Default::default();
    for p in partitions.iter().filter(|p| p.leased) {
        if let Some(o) = &p.owner {
            *instances.entry(o.clone()).or_default() += 1;
        }
    }
    Ok(Status {
        lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
        dead_letters: dead_letters.max(0) as u64,
        quarantined,
        refused: refused.max(0) as u64,
        unpublished_events: unpublished.max(0) as u64,
        instances: instances
            .into_iter()
            .map(|(instance, partitions)| InstanceStatus {
                instance,
                partitions,
            })
            .collect(),
        stall_after_secs: settings.stall_after().as_secs(),
    })
}

/// Fills in how long each partition with messages waiting has not advanced
/// (docs/operations.md, "Stalled partitions"): since the later of its
/// `progress_at` and the arrival of its oldest waiting message, so that
/// neither a lane working through a backlog (it advances) nor one that just
/// received a message after a quiet night (it has not waited) counts. The
/// oldest waiting message is read only where the position has not moved for
/// a second; both times are taken against the database's clock.
async fn stalls(
    stream: &async_nats::jetstream::stream::Stream,
    ns: &imipflow_schema::Namespace,
    partitions: &mut [PartitionStatus],
    now: DateTime<Utc>,
    after: std::time::Duration,
) {
    let since = |t: DateTime<Utc>| (now - t).num_seconds().max(0) as u64;
    let suspects: Vec<usize> = partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.lag > 0 && p.progress_at.is_none_or(|t| since(t) >= 1))
        .map(|(i, _)| i)
        .collect();
    let arrived = futures::future::join_all(suspects.iter().map(|&i| {
        let p = &partitions[i];
        let filter = ns.partition_filter(p.partition);
        let from = p.applied + 1;
        async move {
            let m = stream
                .get_first_raw_message_by_subject(&filter, from)
                .await
                .ok()?;
            DateTime::<Utc>::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
        }
    }))
    .await;
    for (i, arrived) in suspects.into_iter().zip(arrived) {
        let p = &mut partitions[i];
        // Unreadable (the message expired meanwhile): judged by progress alone.
        let waiting = arrived.map_or(u64::MAX, since);
        let unmoved = p.progress_at.map_or(u64::MAX, since);
        let secs = waiting.min(unmoved);
        if secs == u64::MAX {
            continue;
        }
        p.stalled_for_secs = secs;
        p.stalled = secs >= after.as_secs();
    }
}

/// Locks the user's partition row for the rest of `tx`: the lane's fencing
/// update of the same row waits until `tx` ends, so whatever `tx` does is
/// serialised with the lane (before or after a whole batch, never inside one).
pub async fn lock_partition(
    tx: &tokio_postgres::Transaction<'_>,
    partition: i32,
) -> Result<i64, ProcessorError> {
    tx.execute(
        "INSERT INTO partitions (partition) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&partition],
    )
    .await?;
    Ok(tx
        .query_one(
            "SELECT last_sequence FROM partitions WHERE partition = $1 FOR UPDATE",
            &[&partition],
        )
        .await?
        .get(0))
}

/// What `imip-ctl rebuild` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub user: String,
    /// UIDs looked at (stored objects, and free/busy rows without an object).
    pub uids: usize,
    /// UIDs whose rows differed and were rewritten.
    pub changed: Vec<String>,
    pub periods_added: usize,
    pub periods_removed: usize,
    /// freebusy.changed events emitted (one per changed UID).
    pub events: usize,
}

/// Recomputes the user's free/busy rows from their stored objects with the
/// same pure functions the lanes use, in one transaction holding the
/// partition row lock; rewrites only UIDs whose rows differ and emits a
/// `freebusy.changed` event (the difference) for each. `progress(done, total)`
/// is called per UID.
pub async fn rebuild(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    user: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProcessorError> {
    let ns = settings.namespace()?;
    let partition = imipflow_schema::partition(user, settings.partitions) as i32;
    let tx = db.transaction().await?;
    lock_partition(&tx, partition).await?;
    let uids: Vec<String> = tx
        .query(
            "SELECT uid FROM objects WHERE user_addr = $1
             UNION SELECT uid FROM freebusy WHERE user_addr = $1
             UNION SELECT uid FROM open_series WHERE user_addr = $1
             ORDER BY 1",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let cache = store::StatementCache::default();
    let mut report = RebuildReport {
        user: user.to_owned(),
        uids: uids.len(),
        ..Default::default()
    };
    let mut changes = Vec::new();
    let total = uids.len() as u64;
    progress(0, total);
    for (i, uid) in uids.iter().enumerate() {
        let state = store::load_state(&tx, &cache, user, uid).await?;
        let until: Option<DateTime<Utc>> = tx
            .query_opt(
                "SELECT materialised_until FROM open_series WHERE user_addr = $1 AND uid = $2",
                &[&user, &uid],
            )
            .await?
            .map(|r| r.get(0));
        // The lane materialised an open-ended series up to (ingest time +
        // horizon); reuse that reference instant so that an intact user
        // rebuilds to exactly the rows they have.
        let mut ctx = settings.ctx(Utc::now())?;
        if let Some(u) = until {
            ctx.now = u - ctx.horizon;
        }
        let m = semantics::materialise_bounded(&state, user, &ctx);
        let stored: std::collections::BTreeSet<Period> = tx
            .query(
                "SELECT lower(period), upper(period), fbtype, recurrence_id FROM freebusy
                 WHERE user_addr = $1 AND uid = $2",
                &[&user, &uid],
            )
            .await?
            .iter()
            .map(|r| Period {
                start: r.get(0),
                end: r.get(1),
                fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
                recurrence_id: r.get(3),
            })
            .collect();
        let fresh: std::collections::BTreeSet<Period> = m.periods.iter().copied().collect();
        let new_until = if m.open_ended { m.complete_until } else { None };
        if stored != fresh || until != new_until {
            tx.execute(
                "DELETE FROM freebusy WHERE user_addr = $1 AND uid = $2",
                &[&user, &uid],
            )
            .await?;
            tx.execute(
                "DELETE FROM open_series WHERE user_addr = $1 AND uid = $2",
                &[&user, &uid],
            )
            .await?;
            insert_periods(&tx, user, uid, &m.periods).await?;
            if let Some(u) = new_until {
                tx.execute(
                    "INSERT INTO open_series (user_addr, uid, materialised_until) VALUES ($1, $2, $3)",
                    &[&user, &uid, &u],
                )
                .await?;
            }
            let added: Vec<Period> = fresh.difference(&stored).copied().collect();
            let removed: Vec<Period> = stored.difference(&fresh).copied().collect();
            report.periods_added += added.len();
            report.periods_removed += removed.len();
            report.changed.push(uid.clone());
            if !added.is_empty() || !removed.is_empty() {
                changes.push(crate::model::Change::FreeBusyChanged {
                    uid: uid.clone(),
                    added,
                    removed,
                });
            }
        }
        progress(i as u64 + 1, total);
    }
    report.events = changes.len();
    store::append_events(
        &tx,
        &cache,
        ns.as_str(),
        partition,
        user,
        &changes,
        Utc::now(),
        crate::events::DEFAULT_MAX_PAYLOAD,
    )
    .await?;
    // Raw texts no object refers to any more (rows deleted by hand) go.
    tx.execute(
        "DELETE FROM object_texts t WHERE t.user_addr = $1 AND NOT EXISTS
             (SELECT 1 FROM objects o WHERE o.user_addr = t.user_addr AND o.uid = t.uid
                                        AND o.text_digest = t.digest)",
        &[&user],
    )
    .await?;
    // The quota counters follow the rewritten rows (and are repaired, should
    // they have drifted from them).
    tx.execute(
        "INSERT INTO user_usage (user_addr, objects, freebusy)
         VALUES ($1, (SELECT count(*) FROM objects WHERE user_addr = $1),
                     (SELECT count(*) FROM freebusy WHERE user_addr = $1))
         ON CONFLICT (user_addr) DO UPDATE SET objects = EXCLUDED.objects, freebusy = EXCLUDED.freebusy",
        &[&user],
    )
    .await?;
    tx.commit().await?;
    Ok(report)
}

/// The lane's multi-row insert of one UID's periods (same key and conflict rule).
async fn insert_periods(
    tx: &tokio_postgres::Transaction<'_>,
    user: &str,
    uid: &str,
    periods: &[Period],
) -> Result<(), ProcessorError> {
    if periods.is_empty() {
        return Ok(());
    }
    let starts: Vec<DateTime<Utc>> = periods.iter().map(|p| p.start).collect();
    let ends: Vec<DateTime<Utc>> = periods.iter().map(|p| p.end).collect();
    let types: Vec<&str> = periods.iter().map(|p| p.fbtype.as_str()).collect();
    let instances: Vec<DateTime<Utc>> = periods
        .iter()
        .map(|p| p.recurrence_id.unwrap_or(p.start))
        .collect();
    let rids: Vec<Option<DateTime<Utc>>> = periods.iter().map(|p| p.recurrence_id).collect();
    tx.execute(
        "INSERT INTO freebusy (user_addr, uid, instance, period, fbtype, recurrence_id)
         SELECT $1, $2, i, tstzrange(s, e, '[)'), t, r
         FROM unnest($3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::timestamptz[])
              AS x(i, s, e, t, r)
         ON CONFLICT (user_addr, uid, instance) DO UPDATE SET period = EXCLUDED.period, fbtype = EXCLUDED.fbtype",
        &[&user, &uid, &instances, &starts, &ends, &types, &rids],
    )
    .await?;
    Ok(())
}

/// What became of one message in `imip-ctl replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// In `message_log` already: nothing done (the normal case).
    Duplicate,
    Applied,
    Stale,
    Ignored,
    Refused,
    /// Failed again; a new dead letter records it.
    DeadLettered,
    /// Past the partition's applied position: left to the lane, which applies
    /// it in order (replaying it first could reorder the user's messages).
    Pending,
}

impl ReplayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Duplicate => "duplicate",
            ReplayOutcome::Applied => "applied",
            ReplayOutcome::Stale => "stale",
            ReplayOutcome::Ignored => "ignored",
            ReplayOutcome::Refused => "refused",
            ReplayOutcome::DeadLettered => "dead_lettered",
            ReplayOutcome::Pending => "pending",
        }
    }
}

/// Re-applies one stream message the way the lane does, in its own
/// transaction holding the partition row lock (serialised with the lane),
/// without moving the partition's position. Idempotent: a message already in
/// `message_log` changes nothing; one that is not (dead-lettered before, or
/// its log lost with a restored database) goes through newer-wins again.
pub async fn replay_one(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    partition: i32,
    seq: i64,
    payload: &[u8],
) -> Result<ReplayOutcome, ProcessorError> {
    let ns = settings.namespace()?;
    let ids = serde_json::from_slice::<serde_json::Value>(payload).ok();
    let user = ids
        .as_ref()
        .and_then(|v| v["user"].as_str().map(str::to_owned));
    let dedupe = ids
        .as_ref()
        .and_then(|v| v["dedupe_id"].as_str().map(str::to_owned));
    let mut tx = db.transaction().await?;
    let applied_up_to = lock_partition(&tx, partition).await?;
    if seq > applied_up_to {
        tx.rollback().await?;
        return Ok(ReplayOutcome::Pending);
    }
    let cache = store::StatementCache::default();
    if let (Some(u), Some(d)) = (&user, &dedupe)
        && store::already_applied(&tx, &cache, u, d).await?
    {
        tx.rollback().await?;
        return Ok(ReplayOutcome::Duplicate);
    }
    let apply = crate::worker::Apply {
        cache: &cache,
        settings,
        ns: &ns,
        partition,
        max_payload: crate::events::DEFAULT_MAX_PAYLOAD,
    };
    apply.message(&mut tx, seq, payload).await?;
    let logged = match (&user, &dedupe) {
        (Some(u), Some(d)) => tx
            .query_opt(
                "SELECT outcome FROM message_log WHERE user_addr = $1 AND dedupe_id = $2",
                &[u, d],
            )
            .await?
            .map(|r| r.get::<_, String>(0)),
        _ => None,
    };
    tx.commit().await?;
    Ok(match logged.as_deref() {
        Some("applied") => ReplayOutcome::Applied,
        Some("stale") => ReplayOutcome::Stale,
        Some("ignored") => ReplayOutcome::Ignored,
        Some("refused") => ReplayOutcome::Refused,
        _ => ReplayOutcome::DeadLettered,
    })
}
