//! The processor's PostgreSQL side of the write path: [`load`] reads what a
//! batch needs in one pipelined round trip, [`write`] writes the rows the
//! pure step (`imipflow_semantics::apply`) returned in another. The lanes,
//! their per-message fallback, `imip-ctl rebuild`, `replay` and `dlq replay`
//! all go through these two.
//!
//! Every statement names one partition (the lane's): the tables are keyed by
//! it first (migration V6), so that a deployment sharded by partition runs
//! each batch on one shard (docs/scaling.md).

mod load;
mod write;

pub use load::load;
pub use write::write;

pub use imipflow_semantics::apply::{recurrence_key, text_digest, texts_of};

use crate::model::{FbType, Period};
use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;

pub type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Prepared statements of one connection, by SQL text. Preparing once per
/// connection instead of once per call halves the round trips of every
/// statement (tokio-postgres would otherwise parse each one anew).
#[derive(Default)]
pub struct StatementCache {
    statements:
        std::sync::Mutex<std::collections::HashMap<&'static str, tokio_postgres::Statement>>,
}

impl StatementCache {
    pub async fn get(
        &self,
        tx: &Transaction<'_>,
        sql: &'static str,
    ) -> Result<tokio_postgres::Statement> {
        if let Some(s) = self.statements.lock().expect("cache lock").get(sql) {
            return Ok(s.clone());
        }
        let prepared = tx.prepare(sql).await?;
        self.statements
            .lock()
            .expect("cache lock")
            .insert(sql, prepared.clone());
        Ok(prepared)
    }
}

/// A `freebusy` row's period from its columns (lower, upper, fbtype,
/// recurrence_id). An FBTYPE the contract does not know reads as BUSY, the
/// safe side for a free/busy answer.
pub fn period(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    fbtype: &str,
    recurrence_id: Option<DateTime<Utc>>,
) -> Period {
    Period {
        start,
        end,
        fbtype: FbType::parse(fbtype).unwrap_or(FbType::Busy),
        recurrence_id,
    }
}

/// The stored objects and pending request of one UID, for a reader outside
/// the write path (`imip-ctl freebusy` expanding an open series).
pub async fn load_uid(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    partition: i32,
    user: &str,
    uid: &str,
) -> Result<crate::model::UidState> {
    use imipflow_semantics::apply::{Keys, UidKey};
    let key = UidKey::new(user, uid);
    let keys = Keys {
        uids: vec![key.clone()],
        ..Keys::default()
    };
    let mut loaded = load(tx, cache, partition, &keys).await?;
    let stored = loaded.uids.remove(&key).unwrap_or_default();
    Ok(crate::model::UidState {
        objects: stored.objects,
        pending: stored.pending,
    })
}
