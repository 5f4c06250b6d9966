//! `imip-processor migrate`: database, schema and streams, idempotently, and
//! safely when several processors start at once.

use crate::config::{DbLayout, Settings};
use crate::error::ProcessorError;
use crate::streams;
use tokio_postgres::Client;

pub mod list_layout;

mod embedded {
    refinery::embed_migrations!("../schema/migrations");
}

/// Key of the advisory lock that serialises concurrent migrations.
const MIGRATION_LOCK: i64 = 0x696d_6970_666c_6f77; // "imipflow"

pub use crate::connect::{connect, connect_nats};

/// Creates the database named in `IMIP_DATABASE_URL` when it does not exist yet.
pub async fn ensure_database(settings: &Settings) -> Result<Option<String>, ProcessorError> {
    let target = crate::connect::database(settings)?;
    let name = target
        .dbname()
        .ok_or_else(|| ProcessorError::Config("IMIP_DATABASE_URL names no database".into()))?
        .to_owned();
    let client = target.with_dbname("postgres").connect().await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(None);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(Some(name)),
        // Another processor created it between our check and our CREATE.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations under an advisory lock.
pub async fn apply_migrations(client: &mut Client) -> Result<Vec<String>, ProcessorError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded::migrations::runner().run_async(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = result?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("migration V{} {}: applied", m.version(), m.name()))
        .collect())
}

/// Everything `migrate` does; returns one line per action for the operator.
pub async fn run(settings: &Settings) -> Result<Vec<String>, ProcessorError> {
    let mut log = Vec::new();
    if let Some(name) = ensure_database(settings).await? {
        log.push(format!("database {name}: created"));
    }
    let mut client = connect(settings).await?;
    log.extend(apply_migrations(&mut client).await?);
    client
        .execute(
            "INSERT INTO deployment (key, value) VALUES ('partitions', $1)
             ON CONFLICT (key) DO NOTHING",
            &[&settings.partitions.to_string()],
        )
        .await?;
    let stored: String = client
        .query_one("SELECT value FROM deployment WHERE key = 'partitions'", &[])
        .await?
        .get(0);
    if stored != settings.partitions.to_string() {
        return Err(ProcessorError::Config(format!(
            "IMIP_PARTITIONS is {} but this deployment was created with {stored}; \
             changing it would reorder users' messages",
            settings.partitions
        )));
    }
    if settings.db_layout == DbLayout::List {
        log.extend(list_layout::apply(&mut client, MIGRATION_LOCK, settings.partitions).await?);
    }
    let nats = connect_nats(settings).await?;
    let js = async_nats::jetstream::new(nats);
    log.extend(streams::ensure(&js, settings).await?);
    let ns = settings.namespace()?;
    let stream = js
        .get_stream(ns.messages_stream())
        .await
        .map_err(ProcessorError::nats)?;
    let unread = crate::status::unread(&stream, &ns, settings.partitions).await?;
    if unread == 0 {
        client
            .execute(
                "DELETE FROM deployment WHERE key = $1",
                &[&crate::status::UNREAD_BEFORE],
            )
            .await?;
    } else {
        client
            .execute(
                "INSERT INTO deployment (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[
                    &crate::status::UNREAD_BEFORE,
                    &stream.cached_info().state.last_sequence.to_string(),
                ],
            )
            .await?;
        log.push(format!(
            "WARNING: {unread} message(s) in {} are on partitions no lane reads \
             (published by an ingest with another IMIP_PARTITIONS before the stream \
             took only partitions 0..{}); re-pipe those mails from the MTA's log or \
             archive (docs/operations.md, \"Partition count\")",
            ns.messages_stream(),
            settings.partitions
        ));
    }
    Ok(log)
}

/// Deletes the namespace's streams and drops its database.
pub async fn reset(settings: &Settings) -> Result<Vec<String>, ProcessorError> {
    let mut log = Vec::new();
    let ns = settings.namespace()?;
    let nats = connect_nats(settings).await?;
    let js = async_nats::jetstream::new(nats);
    for name in [
        ns.messages_stream(),
        ns.quarantine_stream(),
        ns.events_stream(),
    ] {
        if js.delete_stream(&name).await.is_ok() {
            log.push(format!("stream {name}: deleted"));
        }
    }
    let target = crate::connect::database(settings)?;
    if let Some(name) = target.dbname().map(str::to_owned) {
        let client = target.with_dbname("postgres").connect().await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .await?;
        log.push(format!("database {name}: dropped"));
    }
    Ok(log)
}

/// Version of the newest migration this build carries (`/readyz` compares the
/// database's `refinery_schema_history` with it).
pub fn latest_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
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

/// Refuses `settings.partitions` when it is not the count this deployment
/// was created with: the error `imip-processor run` exits 78 with and
/// `imip-ctl` refuses its writing commands with. A deployment that is not
/// migrated yet is [`ProcessorError::Deployment`].
pub async fn check_partitions(
    db: &impl tokio_postgres::GenericClient,
    settings: &Settings,
) -> Result<(), ProcessorError> {
    let stored = deployment_partitions(db).await?;
    if stored != settings.partitions {
        return Err(ProcessorError::Config(format!(
            "IMIP_PARTITIONS is {} but this deployment was created with {stored}: \
             set IMIP_PARTITIONS={stored} (ingest, the processors and imip-ctl must agree; \
             docs/configuration.md, \"Partition count\")",
            settings.partitions
        )));
    }
    Ok(())
}
