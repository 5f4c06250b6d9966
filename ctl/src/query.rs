//! The per-user reads behind `imip-ctl freebusy` and `objects`.
//! Output formatting lives in the binary (VFREEBUSY text in
//! `imipflow_schema::freebusy`); these return typed rows. Each names the
//! user's partition (the shard key, docs/scaling.md), found with
//! [`partition_of`].

use chrono::{DateTime, Utc};
use imipflow_processor::ProcessorError;
use imipflow_processor::model::{FbType, Period, StoredObject, UidState};
use imipflow_processor::{config::Settings, semantics, store};

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

/// The partition of `user`'s rows: the pinned partition function with the
/// count this deployment was created with (the `deployment` table, which the
/// lanes and `migrate` agree on), not the `IMIP_PARTITIONS` of this command.
pub async fn partition_of(
    db: &impl tokio_postgres::GenericClient,
    user: &str,
) -> Result<i32, ProcessorError> {
    let partitions = crate::deployment_partitions(db).await?;
    Ok(imipflow_schema::partition(user, partitions) as i32)
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
    let partition = partition_of(&*db, user).await?;
    let rows = db
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE partition = $5 AND user_addr = $1 AND period && tstzrange($2, $3, '[)')
             ORDER BY lower(period), uid, instance LIMIT $4",
            &[&user, &from, &to, &(cap as i64 + 1), &partition],
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
            "SELECT uid, materialised_until FROM open_series
             WHERE partition = $3 AND user_addr = $1 AND materialised_until < $2",
            &[&user, &to, &partition],
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
            let state: UidState = store::load_uid(&tx, &cache, partition, user, &uid).await?;
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
    let partition = partition_of(db, user).await?;
    let rows = db
        .query(
            "SELECT uid, data, text_digest FROM objects
             WHERE partition = $3 AND user_addr = $1 AND ($2::text IS NULL OR uid = $2)
             ORDER BY dtstart NULLS LAST, uid, recurrence_key",
            &[&user, &uid, &partition],
        )
        .await?;
    // Each raw text once (object_texts), shared by the objects that refer to it.
    let texts: std::collections::HashMap<(String, Vec<u8>), imipflow_processor::model::Raw> = db
        .query(
            "SELECT uid, digest, raw FROM object_texts
             WHERE partition = $3 AND user_addr = $1 AND ($2::text IS NULL OR uid = $2)",
            &[&user, &uid, &partition],
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

/// Whether the store knows `user` at all: a row of theirs in any of the
/// tables a message leaves one in (a refused message leaves only its
/// `message_log` row, a failed one only its dead letter). Each probe is an
/// index lookup in the user's partition.
pub async fn user_known(
    db: &impl tokio_postgres::GenericClient,
    user: &str,
) -> Result<bool, ProcessorError> {
    let partition = partition_of(db, user).await?;
    Ok(db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM message_log WHERE partition = $1 AND user_addr = $2)
                 OR EXISTS (SELECT 1 FROM user_usage WHERE partition = $1 AND user_addr = $2)
                 OR EXISTS (SELECT 1 FROM user_events WHERE partition = $1 AND user_addr = $2)
                 OR EXISTS (SELECT 1 FROM request_queue WHERE partition = $1 AND user_addr = $2)
                 OR EXISTS (SELECT 1 FROM objects WHERE partition = $1 AND user_addr = $2)
                 OR EXISTS (SELECT 1 FROM dead_letters WHERE partition = $1 AND user_addr = $2)",
            &[&partition, &user],
        )
        .await?
        .get(0))
}

/// One row of `imip-ctl users`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserSummary {
    pub user: String,
    pub partition: i32,
    /// Stored objects (masters and overrides) and free/busy rows, from the
    /// quota counters the lane keeps in the same transaction as the rows.
    pub objects: i64,
    pub freebusy: i64,
    /// Pending requests (`request_queue` rows: series and single instances).
    pub pending_requests: i64,
    /// The sequence of the user's last change event (0: none yet).
    pub last_event_sequence: i64,
    /// Dead letters not resolved yet.
    pub dead_letters: i64,
}

/// Every user the store knows (see [`user_known`]), by address.
pub async fn users(
    db: &impl tokio_postgres::GenericClient,
) -> Result<Vec<UserSummary>, ProcessorError> {
    let rows = db
        .query(
            "WITH u AS (
                 SELECT partition, user_addr FROM message_log
                 UNION SELECT partition, user_addr FROM user_usage
                 UNION SELECT partition, user_addr FROM user_events
                 UNION SELECT partition, user_addr FROM request_queue
                 UNION SELECT partition, user_addr FROM dead_letters)
             SELECT u.user_addr, u.partition, coalesce(s.objects, 0), coalesce(s.freebusy, 0),
                    coalesce(q.n, 0), coalesce(e.last_seq, 0), coalesce(d.n, 0)
             FROM u
             LEFT JOIN user_usage s USING (partition, user_addr)
             LEFT JOIN user_events e USING (partition, user_addr)
             LEFT JOIN (SELECT partition, user_addr, count(*) AS n FROM request_queue
                        GROUP BY 1, 2) q USING (partition, user_addr)
             LEFT JOIN (SELECT partition, user_addr, count(*) AS n FROM dead_letters
                        WHERE replayed_at IS NULL GROUP BY 1, 2) d USING (partition, user_addr)
             ORDER BY u.user_addr",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UserSummary {
            user: r.get(0),
            partition: r.get(1),
            objects: r.get(2),
            freebusy: r.get(3),
            pending_requests: r.get(4),
            last_event_sequence: r.get(5),
            dead_letters: r.get(6),
        })
        .collect())
}
