//! The per-UID read `imip-ctl freebusy` used before `store::load_uid`, kept
//! only until it moves over (then deleted). No partition filter.

use super::{Result, StatementCache};
use crate::model::{Pending, Raw, StoredObject, UidState};
use tokio_postgres::Transaction;

const LOAD_TEXTS: &str = "SELECT digest, raw FROM object_texts WHERE user_addr = $1 AND uid = $2";

/// Raw texts by digest, as loaded.
#[derive(Default)]
pub struct Texts(std::collections::HashMap<Vec<u8>, Raw>);

impl Texts {
    /// From rows whose columns `first` and `first + 1` are digest and text.
    pub fn from_rows(rows: &[tokio_postgres::Row], first: usize) -> Texts {
        Texts(
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, Vec<u8>>(first),
                        Raw::from(r.get::<_, String>(first + 1)),
                    )
                })
                .collect(),
        )
    }

    pub fn insert(&mut self, digest: Vec<u8>, raw: Raw) {
        self.0.insert(digest, raw);
    }

    /// Gives `o` the text its row refers to; a row without `text_digest`
    /// (written before object_texts) keeps the text of its `data`.
    pub fn attach(&self, o: &mut StoredObject, digest: Option<Vec<u8>>) {
        if let Some(raw) = digest.and_then(|d| self.0.get(&d)) {
            o.raw = raw.clone();
        }
    }
}

/// The stored objects of one UID and its pending request, if any (the
/// semantics check an incoming REQUEST against the pending organizer).
pub async fn load_state(
    tx: &Transaction<'_>,
    cache: &StatementCache,
    user: &str,
    uid: &str,
) -> Result<UidState> {
    let (objects, queued) = (
        cache
            .get(
                tx,
                "SELECT data, text_digest FROM objects WHERE user_addr = $1 AND uid = $2 ORDER BY recurrence_key",
            )
            .await?,
        cache
            .get(
                tx,
                "SELECT organizer, sequence, dtstamp FROM request_queue WHERE user_addr = $1 AND uid = $2",
            )
            .await?,
    );
    let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&user, &uid];
    let texts = cache.get(tx, LOAD_TEXTS).await?;
    let (rows, queued, texts) = futures::try_join!(
        tx.query(&objects, &key),
        tx.query_opt(&queued, &key),
        tx.query(&texts, &key)
    )?;
    let texts = Texts::from_rows(&texts, 0);
    let objects = rows
        .into_iter()
        .filter_map(|r| {
            let mut o =
                serde_json::from_value::<StoredObject>(r.get::<_, serde_json::Value>(0)).ok()?;
            texts.attach(&mut o, r.get(1));
            Some(o)
        })
        .collect();
    let pending = queued.map(|r| Pending {
        organizer: r.get(0),
        sequence: r.get(1),
        dtstamp: r.get(2),
    });
    Ok(UidState { objects, pending })
}
