//! `imip-ctl dlq`: the dead letters (messages a lane could not apply) listed
//! across the deployment, and one replayed the way the lane applies it.

use crate::output::json_line;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use imipflow_processor::relay::{self, Publisher};
use imipflow_processor::{Settings, connect::connect, events, store, worker};
use imipflow_schema::Namespace;
use serde_json::json;
use tokio_postgres::{Client, GenericClient};

use super::jetstream;

/// `imip-ctl dlq list [--json]`: every dead letter, replayed ones too, by id.
/// The one listing across partitions (deployment-wide, docs/scaling.md).
pub async fn list(s: &Settings, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let rows = db
        .query(
            "SELECT id, user_addr, partition, stream_seq, error, created_at, replayed_at
             FROM dead_letters ORDER BY id",
            &[],
        )
        .await?;
    for r in rows {
        let doc = json!({"id": r.get::<_, i64>(0), "user": r.get::<_, String>(1),
            "partition": r.get::<_, i32>(2), "stream_seq": r.get::<_, i64>(3),
            "error": r.get::<_, String>(4), "created_at": r.get::<_, DateTime<Utc>>(5),
            "replayed_at": r.get::<_, Option<DateTime<Utc>>>(6)});
        if json {
            json_line(&doc)?;
        } else {
            println!(
                "{} {} p{} seq {}: {}",
                doc["id"], doc["user"], doc["partition"], doc["stream_seq"], doc["error"]
            );
        }
    }
    Ok(())
}

/// A pending dead letter: what replaying it needs.
struct DeadLetter {
    id: i64,
    user: String,
    partition: i32,
    stream_seq: i64,
    payload: Vec<u8>,
}

/// `imip-ctl dlq replay ID`: applies the message again in one transaction;
/// marks the dead letter replayed if it applied, leaves it (and everything
/// else) untouched if it failed again; then publishes the events it made.
pub async fn replay(s: &Settings, id: i64) -> anyhow::Result<()> {
    let mut db = connect(s).await?;
    let ns = s.namespace()?;
    let letter = pending(&db, id).await?;
    reapply(&mut db, s, &ns, &letter).await?;
    let js = jetstream(s).await?;
    relay::flush(
        &db,
        &Default::default(),
        &js,
        &Publisher::Serial,
        &ns,
        letter.partition,
    )
    .await?;
    println!("dead letter {id} applied");
    Ok(())
}

/// The pending dead letter `id`. The one lookup across partitions (an
/// operator's id from `dlq list`, docs/scaling.md); all else names the row's.
async fn pending(db: &Client, id: i64) -> anyhow::Result<DeadLetter> {
    let row = db
        .query_opt(
            "SELECT user_addr, partition, stream_seq, payload FROM dead_letters
             WHERE id = $1 AND replayed_at IS NULL",
            &[&id],
        )
        .await?
        .with_context(|| format!("no pending dead letter {id}"))?;
    Ok(DeadLetter {
        id,
        user: row.get(0),
        partition: row.get(1),
        stream_seq: row.get(2),
        payload: row.get(3),
    })
}

/// Applies `letter` as the lane would (`worker::Apply::message`, which files a
/// new dead letter if it fails again) and marks it replayed, or rolls back.
async fn reapply(
    db: &mut Client,
    s: &Settings,
    ns: &Namespace,
    letter: &DeadLetter,
) -> anyhow::Result<()> {
    let DeadLetter {
        id,
        ref user,
        partition,
        ..
    } = *letter;
    let mut tx = db.transaction().await?;
    let before = dead_letters_of(&tx, partition, user).await?;
    let cache = store::StatementCache::default();
    let apply = worker::Apply {
        cache: &cache,
        settings: s,
        ns,
        partition,
        max_payload: events::DEFAULT_MAX_PAYLOAD,
    };
    apply
        .message(&mut tx, letter.stream_seq, &letter.payload)
        .await?;
    if dead_letters_of(&tx, partition, user).await? > before {
        tx.rollback().await?;
        bail!("dead letter {id} failed again; left in place");
    }
    tx.execute(
        "UPDATE dead_letters SET replayed_at = now()
         WHERE partition = $1 AND user_addr = $2 AND id = $3",
        &[&partition, user, &id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How many dead letters `user` has, replayed ones included.
async fn dead_letters_of(
    db: &impl GenericClient,
    partition: i32,
    user: &str,
) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE partition = $1 AND user_addr = $2",
            &[&partition, &user],
        )
        .await?
        .get(0))
}
