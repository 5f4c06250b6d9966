//! Settings of `imip-publisher`: flags over `IMIP_*` environment variables over
//! the TOML config file over defaults (`imipflow_config::layered`), named as
//! the processor names them where they are shared (`docs/configuration.md`).

use crate::error::PublisherError;
use imipflow_config::layered::ConfigFile;
use imipflow_config::{Database, NatsAuth, PgAuth, SecretUrl};
use imipflow_schema::Namespace;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub config: ConfigFile,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: SecretUrl,

    #[command(flatten)]
    pub nats_auth: NatsAuth,

    /// PostgreSQL connection URL (read only: a user's free/busy is loaded once,
    /// on the first request for that user).
    #[arg(
        long,
        env = "IMIP_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgresql://postgres@127.0.0.1:5432/imip"
    )]
    pub database_url: SecretUrl,

    #[command(flatten)]
    pub pg_auth: PgAuth,

    /// Prefix of every stream, subject and consumer.
    #[arg(long, env = "IMIP_NAMESPACE", default_value = "imip")]
    pub namespace: String,

    /// Address and port the HTTP server listens on.
    #[arg(long, env = "IMIP_PUBLISHER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Durable consumer on the events stream (default `<namespace>-publisher`).
    /// Each running publisher needs its own: instances sharing one consumer
    /// would split the events between them.
    #[arg(long, env = "IMIP_PUBLISHER_CONSUMER")]
    pub consumer: Option<String>,

    /// Most users whose free/busy is kept in memory; past it, some are
    /// dropped and loaded again when asked for.
    #[arg(long, env = "IMIP_PUBLISHER_MAX_USERS", default_value_t = 100_000)]
    pub max_users: usize,

    /// PostgreSQL connections used for loading users.
    #[arg(long, env = "IMIP_PUBLISHER_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: usize,
}

impl Settings {
    /// The PostgreSQL target: URL, password and TLS, files read.
    pub fn database(&self) -> Result<Database, PublisherError> {
        Database::new(&self.database_url, &self.pg_auth)
            .map_err(|e| PublisherError::Config(e.to_string()))
    }

    pub fn namespace(&self) -> Result<Namespace, PublisherError> {
        Namespace::new(&self.namespace).map_err(|e| PublisherError::Config(e.to_string()))
    }

    /// The durable consumer's name: given, or `<namespace>-publisher`.
    pub fn consumer_name(&self) -> Result<String, PublisherError> {
        let name = match &self.consumer {
            Some(c) => c.clone(),
            None => format!("{}-publisher", self.namespace()?),
        };
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(name)
        } else {
            Err(PublisherError::Config(format!(
                "IMIP_PUBLISHER_CONSUMER: {name:?} is not a consumer name (A-Z a-z 0-9 _ -)"
            )))
        }
    }
}
