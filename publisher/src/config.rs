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
        help_heading = "Connection",
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
        help_heading = "Connection",
        long,
        env = "IMIP_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgresql://postgres@127.0.0.1:5432/imip"
    )]
    pub database_url: SecretUrl,

    #[command(flatten)]
    pub pg_auth: PgAuth,

    /// Prefix of every stream, subject and consumer.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NAMESPACE",
        default_value = "imip"
    )]
    pub namespace: String,

    /// Address and port the HTTP server listens on.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Durable consumer on the events stream (default `<namespace>-publisher`).
    /// Each running publisher needs its own: instances sharing one consumer
    /// would split the events between them.
    #[arg(help_heading = "Settings", long, env = "IMIP_PUBLISHER_CONSUMER")]
    pub consumer: Option<String>,

    /// Most users whose free/busy is kept in memory; past it, some are
    /// dropped and loaded again when asked for.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_MAX_USERS",
        default_value_t = 100_000
    )]
    pub max_users: usize,

    /// PostgreSQL connections used for loading users.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_DB_CONNECTIONS",
        default_value_t = 4
    )]
    pub db_connections: usize,

    /// Bytes of free/busy the cache may hold (an estimate of the heap it
    /// takes); past it, users are dropped and loaded again when asked for.
    #[arg(help_heading = "Settings", long, env = "IMIP_PUBLISHER_CACHE_BYTES", default_value_t = 256 << 20)]
    pub cache_bytes: usize,

    /// Most stored busy periods (all time) of a user kept in the cache; a
    /// user with more is answered from PostgreSQL, window by window.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_MAX_CACHED_PERIODS",
        default_value_t = 50_000
    )]
    pub max_cached_periods: usize,

    /// Most busy periods in one answer; a window with more is answered up to
    /// the start of the first period left out (`to`/DTEND say so).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_MAX_PERIODS",
        default_value_t = 20_000
    )]
    pub max_periods: usize,

    /// Longest window (`to` − `from`) a request may ask for, in days.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_MAX_WINDOW_DAYS",
        default_value_t = 1830
    )]
    pub max_window_days: u32,

    /// What an address with no events and no busy time gets: `not-found`
    /// (404, which tells an outsider which addresses exist) or `empty` (an
    /// empty VFREEBUSY / period list, as for a known user who is free).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_UNKNOWN_USERS",
        value_enum,
        default_value = "not-found"
    )]
    pub unknown_users: UnknownUsers,

    /// Most milliseconds a client may take to send a request's head, counted
    /// from the connection's start or the end of the previous answer: the
    /// bound on half-sent requests and on idle keep-alive connections.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub header_read_timeout_ms: u64,

    /// Most milliseconds a connection may go without a byte moving either
    /// way (a client that stops reading its answer).
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_IDLE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub idle_timeout_ms: u64,

    /// Most connections open at once (default: 4096, or fewer when the
    /// descriptor limit cannot carry them). At the limit a new connection
    /// displaces the longest-idle one without a request in progress, or is
    /// answered 503 and closed when every one is busy.
    #[arg(
        help_heading = "Settings",
        long,
        env = "IMIP_PUBLISHER_MAX_CONNECTIONS"
    )]
    pub max_connections: Option<usize>,
}

/// The answer for an address the store knows nothing about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownUsers {
    /// 404 Not Found.
    NotFound,
    /// 200 with no busy time.
    Empty,
}

/// Descriptors kept back from connections: stdio, the listener, epoll and
/// the runtime's own, NATS, and room for the PostgreSQL connections.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Connections allowed when none is configured and the descriptors allow it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Settings {
    /// The PostgreSQL target: URL, password and TLS, files read.
    pub fn database(&self) -> Result<Database, PublisherError> {
        Database::new(&self.database_url, &self.pg_auth)
            .map_err(|e| PublisherError::Config(e.to_string()))
    }

    pub fn namespace(&self) -> Result<Namespace, PublisherError> {
        Namespace::new(&self.namespace).map_err(|e| PublisherError::Config(e.to_string()))
    }

    /// The connection limit for a process with `nofile` descriptors: the
    /// configured one if they can carry it, else the default capped by them.
    pub fn connection_limit(&self, nofile: u64) -> Result<usize, PublisherError> {
        let room = nofile.saturating_sub(RESERVED_DESCRIPTORS + self.db_connections as u64);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        match self.max_connections {
            Some(0) => Err(PublisherError::Config(
                "IMIP_PUBLISHER_MAX_CONNECTIONS: must be at least 1".into(),
            )),
            Some(n) if n > room => Err(PublisherError::Config(format!(
                "IMIP_PUBLISHER_MAX_CONNECTIONS: {n} connections need more than the \
                 {nofile} file descriptors this process may open (RLIMIT_NOFILE; at most \
                 {room} fit); raise LimitNOFILE / ulimit -n or lower the setting"
            ))),
            Some(n) => Ok(n),
            None if room == 0 => Err(PublisherError::Config(format!(
                "RLIMIT_NOFILE {nofile} leaves no descriptor for connections"
            ))),
            None => Ok(DEFAULT_MAX_CONNECTIONS.min(room)),
        }
    }

    /// The durable consumer's name: given, or `<namespace>-publisher`.
    pub fn consumer_name(&self) -> Result<String, PublisherError> {
        imipflow_nats::follow::consumer_name(
            self.consumer.as_deref(),
            self.namespace()?.as_str(),
            "publisher",
            "IMIP_PUBLISHER_CONSUMER",
        )
        .map_err(PublisherError::Config)
    }
}
