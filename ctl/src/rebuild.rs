//! `imip-ctl rebuild`: a user's free/busy recomputed from their stored
//! objects, serialised with the lane by its partition row.

use crate::lock_partition;
use chrono::{DateTime, Utc};
use imipflow_processor::ProcessorError;
use imipflow_processor::model::{FbType, Period};
use imipflow_processor::{config::Settings, semantics, store};

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
                changes.push(imipflow_processor::model::Change::FreeBusyChanged {
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
        imipflow_processor::events::DEFAULT_MAX_PAYLOAD,
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
