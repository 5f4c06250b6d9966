//! `imip-ctl dlq`: the dead letters (messages a lane could not apply) listed
//! across the deployment, and one replayed the way the lane applies it.

use crate::error::CtlError;
use crate::output::{json_line, table_aligned, time};
use anyhow::bail;
use chrono::{DateTime, Utc};
use imipflow_processor::relay::{self, Publisher};
use imipflow_processor::{Settings, connect::connect, events, store, worker};
use imipflow_schema::Namespace;
use serde_json::{Value, json};
use tokio_postgres::{Client, GenericClient};

use super::jetstream;

/// `imip-ctl dlq list [--all] [--json]`: the dead letters not resolved yet
/// (with `--all`, replayed ones too), by id. The one listing across
/// partitions (deployment-wide, docs/scaling.md).
pub async fn list(s: &Settings, all: bool, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let rows = db
        .query(
            "SELECT id, user_addr, partition, stream_seq, error, created_at, replayed_at
             FROM dead_letters WHERE $1 OR replayed_at IS NULL ORDER BY id",
            &[&all],
        )
        .await?;
    let docs: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.get::<_, i64>(0), "user": r.get::<_, String>(1),
            "partition": r.get::<_, i32>(2), "stream_seq": r.get::<_, i64>(3),
            "error": r.get::<_, String>(4), "created_at": r.get::<_, DateTime<Utc>>(5),
            "replayed_at": r.get::<_, Option<DateTime<Utc>>>(6)})
        })
        .collect();
    if json {
        return json_line(&docs);
    }
    if docs.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let mut header = vec!["ID", "USER", "PARTITION", "SEQ", "CREATED"];
    if all {
        header.push("REPLAYED");
    }
    header.push("ERROR");
    let when = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), time);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.get::<_, i64>(0).to_string(),
                r.get::<_, String>(1),
                r.get::<_, i32>(2).to_string(),
                r.get::<_, i64>(3).to_string(),
                when(r.get(5)),
            ];
            if all {
                row.push(when(r.get(6)));
            }
            row.push(r.get(4));
            row
        })
        .collect();
    table_aligned(&header, &rows, &[0, 2, 3]);
    Ok(())
}

/// `imip-ctl dlq delete ID [--json]`: removes a dead letter, pending or
/// replayed, without applying it (the operator resolved it otherwise); the
/// `imipflow_dead_letters` gauge drops with it at the next scrape.
pub async fn delete(s: &Settings, id: i64, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let row = db
        .query_opt(
            "DELETE FROM dead_letters WHERE id = $1 RETURNING user_addr, stream_seq",
            &[&id],
        )
        .await?
        .ok_or(CtlError::NoSuchDeadLetter(id))?;
    let (user, seq): (String, i64) = (row.get(0), row.get(1));
    if json {
        return json_line(&json!({"id": id, "deleted": true, "user": user, "stream_seq": seq}));
    }
    println!("dead letter {id} deleted ({user}, stream sequence {seq})");
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

/// `imip-ctl dlq replay ID [--json]`: applies the message again in one
/// transaction; marks the dead letter replayed (resolved: out of `dlq list`
/// and the `imipflow_dead_letters` gauge) if it applied, leaves it (and
/// everything else) untouched if it failed again; then publishes the events
/// it made.
pub async fn replay(s: &Settings, id: i64, json: bool) -> anyhow::Result<()> {
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
    if json {
        return json_line(&json!({"id": id, "replayed": true, "user": letter.user,
            "stream_seq": letter.stream_seq}));
    }
    println!("dead letter {id} applied");
    Ok(())
}

/// The pending dead letter `id`. The one lookup across partitions (an
/// operator's id from `dlq list`, docs/scaling.md); all else names the row's.
async fn pending(db: &Client, id: i64) -> anyhow::Result<DeadLetter> {
    let row = db
        .query_opt(
            "SELECT user_addr, partition, stream_seq, payload, replayed_at FROM dead_letters
             WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or(CtlError::NoSuchDeadLetter(id))?;
    if let Some(at) = row.get::<_, Option<DateTime<Utc>>>(4) {
        bail!("dead letter {id} was replayed already, at {}", time(at));
    }
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
