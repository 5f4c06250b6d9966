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

/// The partition count this deployment was created with (`deployment`,
/// written by `imip-processor migrate`).
pub async fn deployment_partitions(
    db: &impl tokio_postgres::GenericClient,
) -> Result<u32, ProcessorError> {
    let value: String = db
        .query_opt("SELECT value FROM deployment WHERE key = 'partitions'", &[])
        .await?
        .ok_or_else(|| {
            ProcessorError::Deployment(
                "the database has no partition count (run imip-processor migrate)".into(),
            )
        })?
        .get(0);
    value.parse().map_err(|_| {
        ProcessorError::Deployment(format!(
            "the deployment's partition count is not a number: {value:?}"
        ))
    })
}

/// Refuses to go on when this command's `IMIP_PARTITIONS` is not the
/// deployment's: the commands that publish to the messages stream or write
/// events (rebuild, replay, quarantine release) name subjects and partitions
/// with it, and a wrong count would put a user's messages in another lane,
/// out of order, or flush the wrong partition's outbox.
pub async fn check_partitions(
    settings: &imipflow_processor::Settings,
) -> Result<(), ProcessorError> {
    let db = imipflow_processor::connect::connect(settings).await?;
    let stored = deployment_partitions(&db).await?;
    if stored != settings.partitions {
        return Err(ProcessorError::Config(format!(
            "IMIP_PARTITIONS is {} but this deployment was created with {stored}; \
             set it to {stored} (imip-ctl must agree with ingest and the processors)",
            settings.partitions
        )));
    }
    Ok(())
}
