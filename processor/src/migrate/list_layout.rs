//! `IMIP_DB_LAYOUT=list`: after the migrations, the partition-keyed tables
//! become native PostgreSQL `PARTITION BY LIST (partition)` tables with one
//! child `<table>_p<N>` per partition. It is the single-node stand-in for a
//! Citus layout distributed by `partition` (docs/scaling.md): with it, a
//! statement that forgets its partition visibly reads every child
//! (tests/tests/sharding.rs).
//!
//! One transaction for all tables, under the migration lock, so that a
//! failure leaves the plain layout whole; a table that is partitioned
//! already is left alone, so that running `migrate` again changes nothing.

use crate::error::ProcessorError;
use tokio_postgres::{Client, Transaction};

/// The tables whose key begins with `partition` (migration V6, and
/// `freebusy_shares` of V9), in the order they are converted. `partitions`
/// (a few rows, one per lane) and `deployment` stay plain.
pub const TABLES: [&str; 12] = [
    "objects",
    "attendees",
    "freebusy",
    "open_series",
    "request_queue",
    "message_log",
    "dead_letters",
    "user_events",
    "outbox",
    "object_texts",
    "user_usage",
    "freebusy_shares",
];

/// Converts every table of [`TABLES`] not partitioned yet; one log line per
/// table converted.
pub async fn apply(
    client: &mut Client,
    lock: i64,
    partitions: u32,
) -> Result<Vec<String>, ProcessorError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    let mut log = Vec::new();
    for table in TABLES {
        let partitioned: bool = tx
            .query_one(
                "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)",
                &[&table],
            )
            .await?
            .get(0);
        if partitioned {
            continue;
        }
        let rows = convert(&tx, table, partitions).await?;
        log.push(format!(
            "table {table}: LIST-partitioned by partition into {partitions} children, {rows} row(s) moved"
        ));
    }
    tx.commit().await?;
    Ok(log)
}

/// What a plain table carries that `CREATE TABLE ... (LIKE ...)` does not:
/// its primary key, its other indexes and the sequences its columns own.
struct Shape {
    primary_key: String,
    indexes: Vec<(String, String)>,
    sequences: Vec<(String, String)>,
}

async fn shape(tx: &Transaction<'_>, table: &str) -> Result<Shape, ProcessorError> {
    let primary_key: String = tx
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1::text::regclass AND contype = 'p'",
            &[&table],
        )
        .await?
        .get(0);
    let indexes = tx
        .query(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1::text::regclass AND NOT i.indisprimary ORDER BY 1",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sequences = tx
        .query(
            "SELECT attname::text, pg_get_serial_sequence($1, attname) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
               AND pg_get_serial_sequence($1, attname) IS NOT NULL",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Shape {
        primary_key,
        indexes,
        sequences,
    })
}

/// Replaces `table` by a LIST-partitioned table of the same columns, key,
/// indexes and defaults, and moves its rows; returns how many.
async fn convert(
    tx: &Transaction<'_>,
    table: &str,
    partitions: u32,
) -> Result<u64, ProcessorError> {
    let shape = shape(tx, table).await?;
    let old = format!("{table}_unpartitioned");
    tx.batch_execute(&format!(
        "ALTER TABLE {table} RENAME TO {old};
         ALTER TABLE {old} DROP CONSTRAINT {table}_pkey;"
    ))
    .await?;
    for (name, _) in &shape.indexes {
        tx.batch_execute(&format!("DROP INDEX {name}")).await?;
    }
    // A bigserial's sequence belongs to the old table's column: dropping
    // the old table would drop it (and the ids already handed out with it).
    for (_, sequence) in &shape.sequences {
        tx.batch_execute(&format!("ALTER SEQUENCE {sequence} OWNED BY NONE"))
            .await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
             INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY LIST (partition);
         ALTER TABLE {table} ADD CONSTRAINT {table}_pkey {};",
        shape.primary_key
    ))
    .await?;
    for (_, definition) in &shape.indexes {
        tx.batch_execute(definition).await?;
    }
    let children: String = (0..partitions)
        .map(|p| format!("CREATE TABLE {table}_p{p} PARTITION OF {table} FOR VALUES IN ({p});"))
        .collect();
    tx.batch_execute(&children).await?;
    let moved = tx
        .execute(&format!("INSERT INTO {table} SELECT * FROM {old}"), &[])
        .await?;
    tx.batch_execute(&format!("DROP TABLE {old}; ANALYZE {table};"))
        .await?;
    for (column, sequence) in &shape.sequences {
        tx.batch_execute(&format!(
            "ALTER SEQUENCE {sequence} OWNED BY {table}.{column}"
        ))
        .await?;
    }
    Ok(moved)
}
