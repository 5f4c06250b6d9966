//! Queries behind `imip-ctl`: free/busy, objects, queue, dead letters, status.
//! Output formatting lives in the binary (VFREEBUSY text in
//! `imipflow_schema::freebusy`); these return typed rows.

use crate::error::ProcessorError;
use crate::model::{FbType, Period, StoredObject, UidState};
use crate::{config::Settings, semantics, store};
use chrono::{DateTime, Utc};

/// One row of `imip-ctl freebusy`; the type is part of the contract.
pub use imipflow_schema::BusyPeriod;

/// Busy periods of `user` intersecting [from, to): the materialised rows, plus
/// instances of open-ended series past their materialised horizon.
pub async fn freebusy(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BusyPeriod>, ProcessorError> {
    let rows = db
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE user_addr = $1 AND period && tstzrange($2, $3, '[)')",
            &[&user, &from, &to],
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
            let state: UidState = store::load_state(&tx, &cache, user, &uid).await?;
            let stored: std::collections::HashSet<DateTime<Utc>> = out
                .iter()
                .filter(|b| b.uid == uid)
                .map(|b| b.start)
                .collect();
            for p in semantics::periods_in_window(&state, user, from.max(until), to, &ctx) {
                if p.start >= until && !stored.contains(&p.start) {
                    out.push(busy(&uid, &p));
                }
            }
        }
        tx.commit().await?;
    }
    out.sort();
    Ok(out)
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
            "SELECT uid, data FROM objects WHERE user_addr = $1 AND ($2::text IS NULL OR uid = $2)
             ORDER BY dtstart NULLS LAST, uid, recurrence_key",
            &[&user, &uid],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let o: StoredObject = serde_json::from_value(r.get::<_, serde_json::Value>(1)).ok()?;
            Some((r.get::<_, String>(0), o))
        })
        .collect())
}
