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
    /// Whether the tables are LIST-partitioned (`IMIP_DB_LAYOUT=list`),
    /// read from the catalogue on first use.
    listed: tokio::sync::OnceCell<bool>,
}

impl StatementCache {
    pub async fn get<C: tokio_postgres::GenericClient + Sync>(
        &self,
        db: &C,
        sql: &'static str,
    ) -> Result<tokio_postgres::Statement> {
        if let Some(s) = self.statements.lock().expect("cache lock").get(sql) {
            return Ok(s.clone());
        }
        let listed = *self
            .listed
            .get_or_try_init(|| async {
                let row = db
                    .query_one(
                        "SELECT coalesce((SELECT relkind = 'p' FROM pg_class
                             WHERE oid = to_regclass('freebusy')), false)",
                        &[],
                    )
                    .await?;
                Ok::<bool, tokio_postgres::Error>(row.get(0))
            })
            .await?;
        let prepared = db.prepare(&by_layout(sql, listed)).await?;
        self.statements
            .lock()
            .expect("cache lock")
            .insert(sql, prepared.clone());
        Ok(prepared)
    }
}

/// A statement that deletes or updates the rows its probes found
/// (`t.partition = $N AND t.ctid = ANY(ARRAY(..probes..))`) keeps the outer
/// partition condition only where the tables are LIST-partitioned: there it
/// prunes to one child, and a ctid is only unique within a child. On plain
/// tables it is left out, because the planner, with a fresh table's default
/// estimates, drives the statement from an index scan of the whole partition
/// instead of the TID scan (Mix/Hot 3,000 -> 2,000 msg/s with it). The
/// probes inside name the partition either way.
fn by_layout(sql: &'static str, listed: bool) -> std::borrow::Cow<'static, str> {
    const OUTER: &str = "t.partition = $";
    const THEN: &str = " AND t.ctid";
    if listed {
        return sql.into();
    }
    let Some(at) = sql.find(OUTER) else {
        return sql.into();
    };
    let digits = sql[at + OUTER.len()..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let end = at + OUTER.len() + digits;
    if digits == 0 || !sql[end..].starts_with(THEN) {
        return sql.into();
    }
    format!("{}{}", &sql[..at], &sql[end + " AND ".len()..]).into()
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

#[cfg(test)]
mod tests {
    use super::by_layout;

    #[test]
    fn the_outer_partition_condition_goes_on_plain_tables_only() {
        let sql = "DELETE FROM x t WHERE t.partition = $1 AND t.ctid = ANY(ARRAY(
            SELECT o.ctid FROM x o WHERE o.partition = $1))";
        assert_eq!(by_layout(sql, true), sql);
        assert_eq!(
            by_layout(sql, false),
            "DELETE FROM x t WHERE t.ctid = ANY(ARRAY(
            SELECT o.ctid FROM x o WHERE o.partition = $1))"
        );
        let relay = "UPDATE outbox t SET a = 1 WHERE t.partition = $3 AND t.ctid = ANY($1)";
        assert_eq!(
            by_layout(relay, false),
            "UPDATE outbox t SET a = 1 WHERE t.ctid = ANY($1)"
        );
        let load = "SELECT 1 FROM x o WHERE o.partition = $1 AND o.user_addr = $2";
        assert_eq!(by_layout(load, false), load);
    }
}
