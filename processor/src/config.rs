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

    /// Zone for floating times and all-day events of users without their own.
    #[arg(
        long,
        env = "IMIP_DEFAULT_TIMEZONE",
        default_value = "UTC",
        global = true
    )]
    pub default_timezone: String,

    /// Trusted manager addresses (SPEC §3), comma-separated.
    #[arg(
        long,
        env = "IMIP_MANAGER_ADDRESSES",
        default_value = "",
        global = true
    )]
    pub manager_addresses: String,

    /// Partition lease length in milliseconds; a dead worker's lanes move after this.
    #[arg(long, env = "IMIP_LEASE_MS", default_value_t = 10_000, global = true)]
    pub lease_ms: u64,

    /// Most messages applied in one transaction.
    #[arg(long, env = "IMIP_BATCH_SIZE", default_value_t = 64, global = true)]
    pub batch_size: usize,

    /// How far ahead series instances are materialised, in days (later ones are
    /// computed at query time).
    #[arg(long, env = "IMIP_HORIZON_DAYS", default_value_t = 366, global = true)]
    pub horizon_days: i64,

    /// How long the messages stream keeps messages (for replay), in days.
    #[arg(long, env = "IMIP_RETENTION_DAYS", default_value_t = 7, global = true)]
    pub retention_days: u64,
}

impl Settings {
    pub fn default_tz(&self) -> Result<chrono_tz::Tz, ProcessorError> {
        self.default_timezone.parse().map_err(|_| {
            ProcessorError::Config(format!(
                "IMIP_DEFAULT_TIMEZONE: unknown zone {:?}",
                self.default_timezone
            ))
        })
    }

    pub fn managers(&self) -> Vec<String> {
        self.manager_addresses
            .split(',')
            .filter_map(imipflow_schema::normalize_address)
            .collect()
    }

    /// Semantics context for a message ingested at `now`.
    pub fn ctx(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::model::Ctx, ProcessorError> {
        Ok(crate::model::Ctx {
            default_tz: self.default_tz()?,
            now,
            horizon: chrono::Duration::days(self.horizon_days),
            max_instances: 5000,
            managers: self.managers(),
        })
    }

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
