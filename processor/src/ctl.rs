//! Queries behind `imip-ctl`: free/busy, objects, queue, dead letters, status.
//! Output formatting lives in the binary; these return typed rows.

use crate::error::ProcessorError;
use crate::model::{FbType, Period, StoredObject, UidState};
use crate::{config::Settings, semantics, store};
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusyPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fbtype: FbType,
    pub uid: String,
    pub recurrence_id: Option<DateTime<Utc>>,
}

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

/// RFC 5545 VFREEBUSY for the periods (as the `.ifb` files imip-agent and Outlook publish).
pub fn vfreebusy(
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    periods: &[BusyPeriod],
) -> String {
    let f = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let mut s = String::new();
    s.push_str("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow//imip-ctl//EN\r\nMETHOD:PUBLISH\r\nBEGIN:VFREEBUSY\r\n");
    s.push_str(&format!(
        "UID:freebusy-{user}\r\nDTSTAMP:{}\r\n",
        f(Utc::now())
    ));
    s.push_str(&format!(
        "ORGANIZER:mailto:{user}\r\nDTSTART:{}\r\nDTEND:{}\r\n",
        f(from),
        f(to)
    ));
    for p in periods {
        s.push_str(&format!(
            "FREEBUSY;FBTYPE={}:{}/{}\r\n",
            p.fbtype.as_str(),
            f(p.start),
            f(p.end)
        ));
    }
    s.push_str("END:VFREEBUSY\r\nEND:VCALENDAR\r\n");
    s
}
