//! Settings of `imip-manager`: flags over `IMIP_*` environment variables over
//! the `[manager]` table of the shared config file over defaults
//! (`imipflow_config::layered`), named as the processor names them where they
//! are shared (`IMIP_MANAGER_ADDRESSES`, `IMIP_DEFAULT_TIMEZONE`).

use crate::error::ManagerError;
use imipflow_config::layered::ConfigFile;
use imipflow_config::{Database, NatsAuth, PgAuth, SecretUrl};
use imipflow_schema::{Namespace, normalize_address};
use ipnet::IpNet;
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

    /// PostgreSQL connection URL (read only: the queue, objects, free/busy).
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
    #[arg(long, env = "IMIP_MANAGER_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Durable consumer on the events stream (default `<namespace>-manager`);
    /// each running manager needs its own.
    #[arg(long, env = "IMIP_MANAGER_CONSUMER")]
    pub consumer: Option<String>,

    /// Request header the authenticating reverse proxy puts the user's
    /// address in.
    #[arg(
        long,
        env = "IMIP_MANAGER_USER_HEADER",
        default_value = "X-Remote-User"
    )]
    pub user_header: String,

    /// Peers (CIDR, comma-separated) whose user header is believed; a
    /// request from any other peer is 401.
    #[arg(
        long,
        env = "IMIP_MANAGER_TRUSTED_PROXIES",
        default_value = "127.0.0.1/32"
    )]
    pub trusted_proxies: String,

    /// Where replies are submitted: `smtp://host:port` (plain),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465`;
    /// `user:password@` for AUTH.
    #[arg(
        long,
        env = "IMIP_MANAGER_SMTP_URL",
        hide_env_values = true,
        default_value = "smtp://127.0.0.1:25"
    )]
    pub smtp_url: SecretUrl,

    /// The calendar address the copy to the user is sent from: one of
    /// `IMIP_MANAGER_ADDRESSES`.
    #[arg(long, env = "IMIP_MANAGER_FROM", default_value = "")]
    pub from: String,

    /// Trusted manager addresses (SPEC §3), comma-separated: the processor's
    /// setting, given to the manager too so that `config check` can tell a
    /// `IMIP_MANAGER_FROM` whose copies the processor would refuse.
    #[arg(long, env = "IMIP_MANAGER_ADDRESSES", default_value = "")]
    pub manager_addresses: String,

    /// The zone times are shown in.
    #[arg(long, env = "IMIP_DEFAULT_TIMEZONE", default_value = "UTC")]
    pub default_timezone: String,

    /// Base URL of `imip-publisher`, for the user's `.ifb` link.
    #[arg(
        long,
        env = "IMIP_MANAGER_PUBLISHER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub publisher_url: String,

    /// Key of the CSRF tokens (default: random per process, so that a
    /// restart or a second instance behind one proxy invalidates open forms).
    #[arg(long, env = "IMIP_MANAGER_CSRF_SECRET", hide_env_values = true)]
    pub csrf_secret: Option<String>,

    /// Weeks of agenda on the front page.
    #[arg(long, env = "IMIP_MANAGER_AGENDA_WEEKS", default_value_t = 4)]
    pub agenda_weeks: u32,

    /// Attempts at submitting a reply before giving up (the first one
    /// included); waits 1 s, 2 s, 4 s … between them, at most 5 min.
    #[arg(long, env = "IMIP_MANAGER_SMTP_ATTEMPTS", default_value_t = 8)]
    pub smtp_attempts: u32,

    /// Open HTTP connections at most (live pages hold one each); at the cap
    /// a newcomer displaces the quietest idle one.
    #[arg(long, env = "IMIP_MANAGER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Longest a client may take to send a request's headers, in
    /// milliseconds (a half-sent request is closed after it).
    #[arg(long, env = "IMIP_MANAGER_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// DEVELOPMENT ONLY: believe `?as=<address>` from any peer, no proxy
    /// needed. Anyone who can reach the port can act as anyone.
    #[arg(
        long,
        env = "IMIP_MANAGER_DEV_PICK_USER",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dev_pick_user: bool,
}

impl Settings {
    pub fn database(&self) -> Result<Database, ManagerError> {
        Database::new(&self.database_url, &self.pg_auth)
            .map_err(|e| ManagerError::Config(e.to_string()))
    }

    pub fn namespace(&self) -> Result<Namespace, ManagerError> {
        Namespace::new(&self.namespace).map_err(|e| ManagerError::Config(e.to_string()))
    }

    pub fn consumer_name(&self) -> Result<String, ManagerError> {
        imipflow_nats::follow::consumer_name(
            self.consumer.as_deref(),
            self.namespace()?.as_str(),
            "manager",
            "IMIP_MANAGER_CONSUMER",
        )
        .map_err(ManagerError::Config)
    }

    pub fn trusted(&self) -> Result<Vec<IpNet>, ManagerError> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ManagerError::Config(format!(
                            "IMIP_MANAGER_TRUSTED_PROXIES: {s:?} is not an address or CIDR block"
                        ))
                    })
            })
            .collect()
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz, ManagerError> {
        self.default_timezone.parse().map_err(|_| {
            ManagerError::Config(format!(
                "IMIP_DEFAULT_TIMEZONE: unknown zone {:?}",
                self.default_timezone
            ))
        })
    }

    pub fn managers(&self) -> Vec<String> {
        self.manager_addresses
            .split(',')
            .filter_map(normalize_address)
            .collect()
    }

    /// The normalised `IMIP_MANAGER_FROM`, which must be a manager address.
    pub fn calendar_address(&self) -> Result<String, ManagerError> {
        let from = normalize_address(&self.from).ok_or_else(|| {
            ManagerError::Config(format!(
                "IMIP_MANAGER_FROM: {:?} is not an address (the calendar address the \
                 copy to the user is sent from)",
                self.from
            ))
        })?;
        if !self.managers().contains(&from) {
            return Err(ManagerError::Config(format!(
                "IMIP_MANAGER_FROM: {from} is not one of IMIP_MANAGER_ADDRESSES ({}): the \
                 processor would not apply the copies it sends",
                self.manager_addresses
            )));
        }
        Ok(from)
    }

    /// Everything wrong with the settings, without connecting anywhere.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |r: Result<(), ManagerError>| {
            if let Err(e) = r {
                out.push(
                    e.to_string()
                        .trim_start_matches("configuration: ")
                        .to_owned(),
                );
            }
        };
        check(self.namespace().map(drop));
        check(self.consumer_name().map(drop));
        check(self.trusted().map(drop));
        check(self.tz().map(drop));
        check(self.calendar_address().map(drop));
        check(self.database().map(drop));
        check(crate::mail::transport(&self.smtp_url).map(drop));
        check(
            axum::http::HeaderName::try_from(self.user_header.as_str())
                .map(drop)
                .map_err(|_| {
                    ManagerError::Config(format!(
                        "IMIP_MANAGER_USER_HEADER: {:?} is not a header name",
                        self.user_header
                    ))
                }),
        );
        for item in self.manager_addresses.split(',') {
            if !item.trim().is_empty() && normalize_address(item).is_none() {
                out.push(format!(
                    "IMIP_MANAGER_ADDRESSES: {item:?} is not an address"
                ));
            }
        }
        out
    }

    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.dev_pick_user {
            out.push(
                "IMIP_MANAGER_DEV_PICK_USER is on: anyone who reaches the port can act as \
                 any user with ?as=<address>; never in production"
                    .into(),
            );
        }
        if self.csrf_secret.is_none() {
            out.push(
                "IMIP_MANAGER_CSRF_SECRET is not set: a random key per process (forms \
                 opened before a restart, or served by another instance, are refused)"
                    .into(),
            );
        }
        out
    }
}
