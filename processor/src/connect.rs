//! Connections of `imip-processor` and `imip-ctl`: NATS and PostgreSQL with
//! the credentials and TLS settings of [`Settings`] (see
//! `docs/configuration.md`). Every connection goes through here, so none can
//! forget the password or silently fall back to plaintext.

use crate::config::Settings;
use crate::error::ProcessorError;
use imipflow_config::Database;
use tokio_postgres::Client;

/// The PostgreSQL target (URL + password + TLS), files read and checked.
pub fn database(settings: &Settings) -> Result<Database, ProcessorError> {
    Database::new(&settings.database_url, &settings.pg_auth)
        .map_err(|e| ProcessorError::Config(e.to_string()))
}

/// One PostgreSQL connection, driven on a task of its own.
pub async fn connect(settings: &Settings) -> Result<Client, ProcessorError> {
    Ok(database(settings)?.connect().await?)
}

/// A NATS client with the authentication and TLS settings and options of the
/// caller's (`configure`), e.g. retrying the first connection.
pub async fn connect_nats_with(
    settings: &Settings,
    configure: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> Result<async_nats::Client, ProcessorError> {
    let (options, url) = settings
        .nats_auth
        .connect_target(&settings.nats_url)
        .map_err(|e| ProcessorError::Config(e.to_string()))?;
    let servers = imipflow_config::nats::server_addrs(&url)
        .map_err(|e| ProcessorError::Config(e.to_string()))?;
    configure(options).connect(servers).await.map_err(|e| {
        ProcessorError::Nats(
            imipflow_config::nats::explain_connect_error(&settings.nats_url, &e).to_string(),
        )
    })
}

/// A NATS client with the authentication and TLS settings.
pub async fn connect_nats(settings: &Settings) -> Result<async_nats::Client, ProcessorError> {
    imipflow_config::nats::connect(&settings.nats_url, &settings.nats_auth, "imipflow")
        .await
        .map_err(|e| ProcessorError::Nats(e.to_string()))
}
