//! `imip-ctl rebuild`: a user's free/busy recomputed from their stored
//! objects, serialised with the lane by its partition row. The lanes' own
//! load / pure step / write: `store::load`, `apply::rematerialise`,
//! `store::write`.

use crate::lock_partition;
use imipflow_processor::ProcessorError;
use imipflow_processor::apply::{self, Keys, Rules, UidKey};
use imipflow_processor::{config::Settings, store};

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

/// Every UID of a user that has rows a rebuild looks at (raw texts too: the
/// ones no object refers to any more go).
const USER_UIDS: &str = "SELECT uid FROM objects WHERE partition = $1 AND user_addr = $2
     UNION SELECT uid FROM freebusy WHERE partition = $1 AND user_addr = $2
     UNION SELECT uid FROM open_series WHERE partition = $1 AND user_addr = $2
     UNION SELECT uid FROM object_texts WHERE partition = $1 AND user_addr = $2
     ORDER BY 1";

/// Recomputes the user's free/busy rows from their stored objects with the
/// same pure functions the lanes use, in one transaction holding the
/// partition row lock; rewrites only rows that differ and emits a
/// `freebusy.changed` event (the difference) for each changed UID; repairs
/// the quota counters. `progress(done, total)` is called per UID.
pub async fn rebuild(
    db: &mut tokio_postgres::Client,
    settings: &Settings,
    user: &str,
    progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProcessorError> {
    let now = chrono::Utc::now();
    let rules = Rules {
        semantics: settings.ctx(now)?,
        limits: settings.limits(),
        namespace: settings.namespace()?.as_str().to_owned(),
        max_payload: imipflow_processor::events::DEFAULT_MAX_PAYLOAD,
        event_time: now,
    };
    let partition = imipflow_schema::partition(user, settings.partitions) as i32;
    let tx = db.transaction().await?;
    lock_partition(&tx, partition).await?;
    let keys = Keys {
        logged: Vec::new(),
        uids: tx
            .query(USER_UIDS, &[&partition, &user])
            .await?
            .iter()
            .map(|r| UidKey::new(user, r.get(0)))
            .collect(),
        users: vec![user.to_owned()],
    };
    let cache = store::StatementCache::default();
    let loaded = store::load(&tx, &cache, partition, &keys).await?;
    let r = apply::rematerialise(&loaded, user, &rules, progress)?;
    store::write(&tx, &cache, partition, &r.writes).await?;
    tx.commit().await?;
    Ok(RebuildReport {
        user: user.to_owned(),
        uids: r.uids,
        changed: r.changed,
        periods_added: r.periods_added,
        periods_removed: r.periods_removed,
        events: r.events,
    })
}
