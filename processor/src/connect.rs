//! Connections of `imip-processor` and `imip-ctl`: NATS and PostgreSQL with
//! the credentials and TLS settings of [`Settings`] (see
//! `docs/configuration.md`). Every connection goes through here, so none can
//! forget the password or silently fall back to plaintext.

use crate::config::Settings;
use crate::error::ProcessorError;
use imipflow_config::Database;
use std::sync::{Arc, Mutex};
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

/// Why a [`connect_nats_retrying`] client is not connected: the last error
/// its connection attempts reported (none while connected), shared with the
/// callback that records it.
#[derive(Clone, Default)]
pub struct NatsTrouble(Arc<Mutex<Option<String>>>);

impl NatsTrouble {
    pub fn last(&self) -> Option<String> {
        self.0.lock().expect("not poisoned").clone()
    }

    fn set(&self, reason: Option<String>) {
        *self.0.lock().expect("not poisoned") = reason;
    }
}

/// A NATS client that is returned at once and connects in the background,
/// retrying with the client's backoff (0, then doubling up to a few seconds)
/// for as long as the broker stays away: a processor started before NATS, or
/// while it restarts, waits for it instead of exiting, and `/readyz` says
/// why. Only settings that can never work (a malformed URL, an unreadable
/// credentials file) fail here.
pub async fn connect_nats_retrying(
    settings: &Settings,
    name: &'static str,
) -> Result<(async_nats::Client, NatsTrouble), ProcessorError> {
    let trouble = NatsTrouble::default();
    let recorder = trouble.clone();
    let client = connect_nats_with(settings, move |o| {
        o.retry_on_initial_connect()
            .name(name)
            .event_callback(move |event| {
                let recorder = recorder.clone();
                async move {
                    use async_nats::Event;
                    match event {
                        Event::Connected => recorder.set(None),
                        Event::Disconnected => recorder.set(Some("disconnected".into())),
                        Event::ClientError(e) => recorder.set(Some(e.to_string())),
                        Event::ServerError(e) => recorder.set(Some(e.to_string())),
                        _ => {}
                    }
                }
            })
    })
    .await?;
    Ok((client, trouble))
}

/// Why the NATS servers of `settings` cannot be reached at all (a TCP
/// connection to each, within a second), for `/readyz` and the log while a
/// retrying client is not connected: the client's own errors say only "IO
/// error". None when one accepts a connection (the trouble is then the
/// client's: credentials, TLS).
pub async fn nats_unreachable(settings: &Settings) -> Option<String> {
    let (_, url) = settings.nats_auth.connect_target(&settings.nats_url).ok()?;
    let servers = imipflow_config::nats::server_addrs(&url).ok()?;
    let mut reasons = Vec::new();
    for s in &servers {
        let target = format!("{}:{}", s.host(), s.port());
        match tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(&target),
        )
        .await
        {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => reasons.push(format!("{target}: {e}")),
            Err(_) => reasons.push(format!("{target}: no answer within 1 s")),
        }
    }
    Some(format!("cannot reach {}", reasons.join(", ")))
}

/// A NATS client with the authentication and TLS settings.
pub async fn connect_nats(settings: &Settings) -> Result<async_nats::Client, ProcessorError> {
    imipflow_config::nats::connect(&settings.nats_url, &settings.nats_auth, "imipflow")
        .await
        .map_err(|e| ProcessorError::Nats(e.to_string()))
}
