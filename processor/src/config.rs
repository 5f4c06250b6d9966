//! Settings shared by `imip-processor` and `imip-ctl`: flags over `IMIP_*`
//! environment variables over defaults (SPEC §1).

use crate::error::ProcessorError;
use imipflow_schema::Namespace;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "IMIP_DATABASE_URL",
        default_value = "postgresql://postgres@127.0.0.1:5432/imip",
        global = true
    )]
    pub database_url: String,

    /// Prefix of every stream, subject and consumer.
    #[arg(long, env = "IMIP_NAMESPACE", default_value = "imip", global = true)]
    pub namespace: String,

    /// Number of partitions (ordered lanes); must match imip-ingest's.
    #[arg(long, env = "IMIP_PARTITIONS", default_value_t = imipflow_schema::DEFAULT_PARTITIONS, global = true)]
    pub partitions: u32,

    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "IMIP_STREAM_REPLICAS", default_value_t = 1, global = true)]
    pub replicas: usize,

    /// How long JetStream remembers a Nats-Msg-Id to drop re-deliveries, in seconds.
    #[arg(long, env = "IMIP_DEDUPE_WINDOW_SECS", default_value_t = 24 * 3600, global = true)]
    pub dedupe_window_secs: u64,

    /// How long the messages stream keeps messages (for replay), in days.
    #[arg(long, env = "IMIP_RETENTION_DAYS", default_value_t = 7, global = true)]
    pub retention_days: u64,
}

impl Settings {
    pub fn namespace(&self) -> Result<Namespace, ProcessorError> {
        Namespace::new(&self.namespace).map_err(|e| ProcessorError::Config(e.to_string()))
    }

    pub fn dedupe_window(&self) -> Duration {
        Duration::from_secs(self.dedupe_window_secs)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days * 86_400)
    }
}
