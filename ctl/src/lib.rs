//! `imip-ctl`, the operator's command line, as a library: one module per
//! group of commands, each returning typed rows, and [`cmd`], one function
//! per command that runs it and prints the answer ([`output`]); `main.rs`
//! only parses the arguments. Everything that writes goes through the lanes' own
//! load / apply / write (`imipflow_processor::store`) while holding the
//! user's partition row, so a command is serialised with the lane.

pub mod advice;
pub mod args;
pub mod cmd;
pub mod error;
pub mod ics;
pub mod output;
pub mod quarantine;
pub mod query;
pub mod rebuild;
pub mod replay;

pub use imipflow_processor::ProcessorError;

/// Locks the user's partition row for the rest of `tx`: the lane's fencing
/// update of the same row waits until `tx` ends, so whatever `tx` does is
/// serialised with the lane (before or after a whole batch, never inside one).
pub async fn lock_partition(
    tx: &tokio_postgres::Transaction<'_>,
    partition: i32,
) -> Result<i64, ProcessorError> {
    tx.execute(
        "INSERT INTO partitions (partition) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&partition],
    )
    .await?;
    Ok(tx
        .query_one(
            "SELECT last_sequence FROM partitions WHERE partition = $1 FOR UPDATE",
            &[&partition],
        )
        .await?
        .get(0))
}

pub use imipflow_processor::migrate::deployment_partitions;

/// Refuses to go on when this command's `IMIP_PARTITIONS` is not the
/// deployment's: the commands that publish to the messages stream or write
/// events (rebuild, replay, quarantine release) name subjects and partitions
/// with it, and a wrong count would put a user's messages in another lane,
/// out of order, or flush the wrong partition's outbox.
pub async fn check_partitions(
    settings: &imipflow_processor::Settings,
) -> Result<(), ProcessorError> {
    let db = imipflow_processor::connect::connect(settings).await?;
    imipflow_processor::migrate::check_partitions(&db, settings).await
}
