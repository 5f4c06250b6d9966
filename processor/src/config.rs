//! Settings shared by `imip-processor` and `imip-ctl`: flags over `IMIP_*`
//! environment variables over the TOML config file over defaults (SPEC §1;
//! the layering is `imipflow_config::layered`, the reference
//! `docs/configuration.md`). Every field here is a config-file key.

use crate::error::ProcessorError;
use imipflow_config::layered::ConfigFile;
use imipflow_config::{NatsAuth, PgAuth, SecretUrl};
use imipflow_schema::Namespace;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub config: ConfigFile,

    /// NATS server URL(s), comma-separated.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: SecretUrl,

    #[command(flatten)]
    pub nats_auth: NatsAuth,

    /// PostgreSQL connection URL.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgresql://postgres@127.0.0.1:5432/imip",
        global = true
    )]
    pub database_url: SecretUrl,

    #[command(flatten)]
    pub pg_auth: PgAuth,

    /// Prefix of every stream, subject and consumer.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NAMESPACE",
        default_value = "imip",
        global = true
    )]
    pub namespace: String,

    /// Number of partitions (ordered lanes); must match imip-ingest's.
    #[arg(help_heading = "Settings", long, env = "IMIP_PARTITIONS", default_value_t = imipflow_schema::DEFAULT_PARTITIONS, global = true)]
    pub partitions: u32,

    /// Stream replicas (3 on a NATS cluster).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_STREAM_REPLICAS",
        default_value_t = 1,
        global = true
    )]
    pub replicas: usize,

    /// How long JetStream remembers a Nats-Msg-Id to drop re-deliveries, in seconds.
    #[arg(help_heading = "Settings", long, env = "IMIP_DEDUPE_WINDOW_SECS", default_value_t = 24 * 3600, global = true)]
    pub dedupe_window_secs: u64,

    /// Zone for floating times and all-day events of users without their own.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_DEFAULT_TIMEZONE",
        default_value = "UTC",
        global = true
    )]
    pub default_timezone: String,

    /// Trusted manager addresses (SPEC §3), comma-separated.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MANAGER_ADDRESSES",
        default_value = "",
        global = true
    )]
    pub manager_addresses: String,

    /// Partition lease length in milliseconds; a dead worker's lanes move after this.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_LEASE_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub lease_ms: u64,

    /// Most messages applied in one transaction (256: per-batch costs amortised,
    /// see bench/results/processor-*.md; a batch takes only messages that have already arrived).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_BATCH_SIZE",
        default_value_t = 256,
        global = true
    )]
    pub batch_size: usize,

    /// Longest one message may take to apply, in milliseconds, before the lane
    /// treats it as too costly: tried alone, then dead-lettered
    /// (docs/reliability.md, "One message never stops a lane"). At most half
    /// the lease is in effect, so that a message within its budget never
    /// outlasts its transaction.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MESSAGE_BUDGET_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub message_budget_ms: u64,

    /// Longest a batch may spend applying messages, in milliseconds: past it
    /// the batch ends early, commits what it applied, and the rest goes into
    /// the next one.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_BATCH_BUDGET_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub batch_budget_ms: u64,

    /// A partition with messages waiting whose applied position has not moved
    /// for this many seconds is stalled: `/readyz` fails, `imip-ctl status`
    /// warns, `imipflow_partition_stalled` is 1 (docs/operations.md).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_STALL_AFTER_SECS",
        default_value_t = 60,
        global = true
    )]
    pub stall_after_secs: u64,

    /// Most free/busy periods the UIDs of one message may materialise
    /// together; a message over it is refused whole (docs/hostile-input.md,
    /// "Processor"). Each UID alone is capped at 5,000 instances.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MAX_PERIODS_PER_MESSAGE",
        default_value_t = 20_000,
        global = true
    )]
    pub max_periods_per_message: usize,

    /// Most stored objects (events and specific recurrences) of one user; a
    /// message that would add beyond it is refused, removals always pass.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MAX_OBJECTS_PER_USER",
        default_value_t = 500_000,
        global = true
    )]
    pub max_objects_per_user: i64,

    /// Most free/busy rows of one user; as `IMIP_MAX_OBJECTS_PER_USER`.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MAX_FREEBUSY_PER_USER",
        default_value_t = 1_000_000,
        global = true
    )]
    pub max_freebusy_per_user: i64,

    /// Most periods one `imip-ctl freebusy` answer holds (the first ones by
    /// start); a longer answer is cut and says so.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_MAX_QUERY_PERIODS",
        default_value_t = 100_000,
        global = true
    )]
    pub max_query_periods: usize,

    /// How far ahead series instances are materialised, in days (later ones are
    /// computed at query time).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_HORIZON_DAYS",
        default_value_t = 366,
        global = true
    )]
    pub horizon_days: i64,

    /// How long the messages stream keeps messages (for replay), in days.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_RETENTION_DAYS",
        default_value_t = 7,
        global = true
    )]
    pub retention_days: u64,

    /// Address of `imip-processor run`'s HTTP listener for `/metrics`,
    /// `/healthz` and `/readyz` (docs/operations.md); empty disables it.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_METRICS_LISTEN",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_listen: String,

    /// This instance's name as shown as partition owner (`imip-ctl status`),
    /// followed by `:pid`; default: the host name.
    #[arg(help_heading = "Settings", long, env = "IMIP_INSTANCE", global = true)]
    pub instance: Option<String>,

    /// The table layout `imip-processor migrate` leaves: `plain` tables, or
    /// `list`, the partition-keyed tables as native PostgreSQL LIST
    /// partitions with one child per partition (docs/scaling.md).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_DB_LAYOUT",
        value_enum,
        default_value = "plain",
        global = true
    )]
    pub db_layout: DbLayout,
}

/// How `migrate` lays out the partition-keyed tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbLayout {
    /// One table each (what a Citus deployment distributes by `partition`).
    Plain,
    /// `PARTITION BY LIST (partition)`, one child `<table>_p<N>` per
    /// partition: the single-node stand-in for shards.
    List,
}

impl Settings {
    /// Everything `imip-processor config check` validates without connecting,
    /// one line per problem (empty: valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                out.push(e);
            }
        };
        check(self.namespace().map(drop).map_err(|e| e.to_string()));
        check(self.default_tz().map(drop).map_err(|e| e.to_string()));
        check(if self.partitions == 0 {
            Err("IMIP_PARTITIONS: must be at least 1".into())
        } else {
            Ok(())
        });
        for url in self.nats_url.split(',') {
            check(
                url.trim()
                    .parse::<async_nats::ServerAddr>()
                    .map(drop)
                    .map_err(|e| {
                        format!(
                            "IMIP_NATS_URL: {} is not a NATS URL: {e}",
                            imipflow_config::redact_url(url)
                        )
                    }),
            );
        }
        check(self.nats_auth.validate().map_err(|e| e.to_string()));
        check(
            match imipflow_config::nats::split_url_login(&self.nats_url).1 {
                Some(_) if self.nats_auth.has_login() => Err(
                    "IMIP_NATS_URL: carries credentials and another login is set too \
                     (the URL's would win); choose one"
                        .into(),
                ),
                _ => Ok(()),
            },
        );
        check(
            crate::connect::database(self)
                .map(drop)
                .map_err(|e| e.to_string()),
        );
        check(if (1..=5).contains(&self.replicas) {
            Ok(())
        } else {
            Err("IMIP_STREAM_REPLICAS: must be 1 to 5".into())
        });
        check(if self.batch_size == 0 {
            Err("IMIP_BATCH_SIZE: must be at least 1".into())
        } else {
            Ok(())
        });
        check(if self.lease_ms < 100 {
            Err("IMIP_LEASE_MS: must be at least 100".into())
        } else {
            Ok(())
        });
        for (name, value) in [
            ("IMIP_MESSAGE_BUDGET_MS", self.message_budget_ms),
            ("IMIP_BATCH_BUDGET_MS", self.batch_budget_ms),
            ("IMIP_STALL_AFTER_SECS", self.stall_after_secs),
        ] {
            check(if value == 0 {
                Err(format!("{name}: must be at least 1"))
            } else {
                Ok(())
            });
        }
        for (name, value) in [
            (
                "IMIP_MAX_PERIODS_PER_MESSAGE",
                self.max_periods_per_message as i64,
            ),
            ("IMIP_MAX_OBJECTS_PER_USER", self.max_objects_per_user),
            ("IMIP_MAX_FREEBUSY_PER_USER", self.max_freebusy_per_user),
            ("IMIP_MAX_QUERY_PERIODS", self.max_query_periods as i64),
        ] {
            check(if value < 1 {
                Err(format!("{name}: must be at least 1"))
            } else {
                Ok(())
            });
        }
        check(if self.horizon_days < 1 {
            Err("IMIP_HORIZON_DAYS: must be at least 1".into())
        } else {
            Ok(())
        });
        for item in self.manager_addresses.split(',') {
            check(if item.trim().is_empty() {
                Ok(())
            } else {
                manager_address(item).map(drop).map_err(|why| {
                    format!(
                        "IMIP_MANAGER_ADDRESSES: {:?} is not an address ({why}); \
                         write local@domain, comma-separated",
                        item.trim()
                    )
                })
            });
        }
        out
    }

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

    /// What `config check` points out without failing: settings that are
    /// valid but safe only with something outside imipflow in place.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let managers = self.managers();
        if !managers.is_empty() {
            // The processor cannot tell a forged envelope sender from the
            // manager's own: only the MTA knows who connected.
            out.push(format!(
                "IMIP_MANAGER_ADDRESSES: mail from {} is applied to its recipients' calendars \
                 as their own, trusted on the envelope sender alone; the MTA must accept these \
                 addresses as envelope sender only from the manager's own submission path \
                 (docs/mta.md, \"The calendar manager's address\")",
                managers.join(", ")
            ));
        }
        out
    }

    /// The per-message limit and per-user quotas (`limits`).
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits {
            max_periods_per_message: self.max_periods_per_message,
            max_objects_per_user: self.max_objects_per_user,
            max_freebusy_per_user: self.max_freebusy_per_user,
        }
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

    /// The budget per message in effect: `IMIP_MESSAGE_BUDGET_MS`, at most half
    /// the lease (PostgreSQL ends a transaction idle for a lease, and a lane
    /// sends nothing while it applies one message in memory).
    pub fn message_budget(&self) -> Duration {
        Duration::from_millis(self.message_budget_ms.min(self.lease_ms / 2).max(1))
    }

    pub fn batch_budget(&self) -> Duration {
        Duration::from_millis(self.batch_budget_ms.max(1))
    }

    pub fn stall_after(&self) -> Duration {
        Duration::from_secs(self.stall_after_secs.max(1))
    }

    pub fn dedupe_window(&self) -> Duration {
        Duration::from_secs(self.dedupe_window_secs)
    }

    /// Owner identity of this process's lanes: `<IMIP_INSTANCE or host name>:<pid>`.
    /// (Fencing is by lease epoch, so two processes with the same name are still safe.)
    pub fn instance_id(&self) -> String {
        let name = self
            .instance
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "host".into());
        format!("{}:{}", name.trim(), std::process::id())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days * 86_400)
    }
}

/// A manager address as the processor compares it (normalised), or why it is
/// not one: a trusted sender that can never match (a typo, a display name, a
/// `;` list) would silently turn the manager's mail into ordinary mail, so
/// `config check` and `run` refuse it.
pub fn manager_address(item: &str) -> Result<String, &'static str> {
    let a = imipflow_schema::normalize_address(item).ok_or("empty")?;
    let (local, domain) = a.split_once('@').ok_or("no @domain")?;
    if domain.contains('@') {
        return Err("more than one @");
    }
    if local.is_empty() {
        return Err("nothing before the @");
    }
    let bad = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"".contains(c);
    if local.chars().any(bad) {
        return Err("a space or one of <>()[],;:\\\" before the @");
    }
    if domain.is_empty() {
        return Err("no domain after the @");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if !domain.split('.').all(label_ok) {
        return Err("the domain is not host names joined by dots");
    }
    Ok(a)
}

#[cfg(test)]
mod manager_address_tests {
    use super::manager_address;

    #[test]
    fn well_formed_addresses_pass_and_malformed_ones_say_why() {
        for ok in [
            "cal@example.com",
            "<Cal@Example.COM>",
            "mailto:cal@example.com",
            "a.b+c@sub.example.org",
        ] {
            assert!(manager_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "bob",
            "a@@b",
            "@example.com",
            "bob@",
            "bob smith@example.com",
            "bob@exa mple.com",
            "bob@example.com;x@y",
            "bob@.example.com",
            "bob@-x.com",
        ] {
            assert!(manager_address(bad).is_err(), "{bad}");
        }
    }
}
