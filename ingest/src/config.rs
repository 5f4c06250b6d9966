//! Command line and environment of `imip-ingest` (SPEC §1.1).
//!
//! Ingest reads flags and `IMIP_*` environment variables only, no config file:
//! it starts once per mail and must not touch the disk more than it has to.
//! NATS authentication and TLS are the same settings as the other binaries'
//! (`imipflow_config::NatsAuth`); nothing TLS-related is loaded unless set.

use crate::error::IngestError;
use clap::{Parser, ValueEnum};
use imipflow_config::NatsAuth;
use imipflow_schema::Direction;
use std::ffi::OsString;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Outgoing,
    Incoming,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::Outgoing => Direction::Outgoing,
            DirectionArg::Incoming => Direction::Incoming,
        }
    }
}

/// Reads one RFC 5322 message on stdin and publishes its iMIP calendar objects.
#[derive(Debug, Parser)]
#[command(
    name = "imip-ingest",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 published (or not calendar mail), 64 bad arguments, 74 stdin unreadable, \
75 NATS unavailable or refused (the MTA keeps the mail and retries); docs/mta.md.\n\n\
Examples:\n  \
imip-ingest --direction outgoing --sender alice@example.com < invite.eml\n  \
imip-ingest --direction incoming --sender bob@example.org --recipient alice@example.com < reply.eml\n  \
imip-ingest --print --sender alice@example.com < invite.eml   # show the payloads, publish nothing"
)]
pub struct Args {
    /// Whose records change: the sender (outgoing) or each recipient (incoming).
    #[arg(long, value_enum, default_value = "outgoing")]
    pub direction: DirectionArg,

    /// Envelope sender (Postfix: ${sender}).
    #[arg(long)]
    pub sender: String,

    /// Envelope recipient (Postfix: ${recipient}); repeat for several.
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,

    /// Print the payloads and quarantine records as JSON lines instead of publishing.
    #[arg(long)]
    pub print: bool,

    /// NATS server URL(s), comma-separated.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every stream and subject.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NAMESPACE",
        default_value = "imip"
    )]
    pub namespace: String,

    /// Number of partitions (must match the processors').
    #[arg(help_heading = "Connection", long, env = "IMIP_PARTITIONS", default_value_t = imipflow_schema::DEFAULT_PARTITIONS)]
    pub partitions: u32,

    /// How long to wait for the connection and for each acknowledgement, in milliseconds.
    #[arg(
        help_heading = "Connection",
        long,
        env = "IMIP_NATS_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,

    #[command(flatten)]
    pub nats_auth: NatsAuth,

    #[command(flatten)]
    pub limits: Limits,
}

/// The options `Args` takes a value for (long name, environment variable), in
/// the order [`Args::parse_plain`] stores them. A unit test checks this list
/// against clap's.
const VALUED: [(&str, Option<&str>); 27] = [
    ("direction", None),
    ("sender", None),
    ("nats-url", Some("IMIP_NATS_URL")),
    ("namespace", Some("IMIP_NAMESPACE")),
    ("partitions", Some("IMIP_PARTITIONS")),
    ("timeout-ms", Some("IMIP_NATS_TIMEOUT_MS")),
    ("nats-user", Some("IMIP_NATS_USER")),
    ("nats-password", Some("IMIP_NATS_PASSWORD")),
    ("nats-password-file", Some("IMIP_NATS_PASSWORD_FILE")),
    ("nats-token", Some("IMIP_NATS_TOKEN")),
    ("nats-token-file", Some("IMIP_NATS_TOKEN_FILE")),
    ("nats-nkey-file", Some("IMIP_NATS_NKEY_FILE")),
    ("nats-creds-file", Some("IMIP_NATS_CREDS_FILE")),
    ("nats-tls-ca", Some("IMIP_NATS_TLS_CA")),
    ("nats-tls-cert", Some("IMIP_NATS_TLS_CERT")),
    ("nats-tls-key", Some("IMIP_NATS_TLS_KEY")),
    ("max-message-bytes", Some("IMIP_MAX_MESSAGE_BYTES")),
    ("max-calendar-parts", Some("IMIP_MAX_CALENDAR_PARTS")),
    ("max-components", Some("IMIP_MAX_COMPONENTS")),
    ("max-attendees", Some("IMIP_MAX_ATTENDEES")),
    ("max-recurrence-values", Some("IMIP_MAX_RECURRENCE_VALUES")),
    ("max-rrules", Some("IMIP_MAX_RRULES")),
    (
        "max-message-recurrence-values",
        Some("IMIP_MAX_MESSAGE_RECURRENCE_VALUES"),
    ),
    ("max-message-instances", Some("IMIP_MAX_MESSAGE_INSTANCES")),
    ("max-uid-bytes", Some("IMIP_MAX_UID_BYTES")),
    ("max-payload-bytes", Some("IMIP_MAX_PAYLOAD_BYTES")),
    ("excerpt-bytes", Some("IMIP_QUARANTINE_EXCERPT_BYTES")),
];

/// The `Args` flags without a value: (long name, environment variable).
const FLAGS: [(&str, Option<&str>); 2] = [
    ("print", None),
    ("nats-tls-required", Some("IMIP_NATS_TLS_REQUIRED")),
];

/// The option taking several values.
const RECIPIENT: &str = "recipient";

impl Args {
    /// What `Args::try_parse_from(argv)` returns, for the plain command lines
    /// an MTA runs, without clap: building clap's parser took 180 k of the
    /// 1.5 M instructions ingest spent on a typical invitation (callgrind),
    /// and its scattered code a dozen page faults. Plain means: only known
    /// options, as `--name value` or `--name=value`, each at most once but
    /// `--recipient`; no value (nor variable read) empty, starting with `-`,
    /// not UTF-8 or not parsing; `IMIP_NATS_TLS_REQUIRED` unset. Anything else
    /// is `None`, and clap parses it (and words the errors): clap remains the
    /// definition, and the tests check that both agree.
    pub fn parse_plain(
        argv: impl IntoIterator<Item = OsString>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Option<Args> {
        let mut given = PlainArgs::read(argv)?;
        given.fill_from(env)?;
        given.into_args()
    }
}

/// What a plain command line gave, by option, before the environment fills
/// in what it left out.
struct PlainArgs {
    /// In the order of [`VALUED`].
    values: [Option<String>; VALUED.len()],
    /// In the order of [`FLAGS`].
    flags: [bool; FLAGS.len()],
    recipients: Vec<String>,
}

impl PlainArgs {
    /// The options of `argv` (the program name first); `None` unless plain.
    fn read(argv: impl IntoIterator<Item = OsString>) -> Option<PlainArgs> {
        let mut given = PlainArgs {
            values: Default::default(),
            flags: [false; FLAGS.len()],
            recipients: Vec::new(),
        };
        let mut argv = argv.into_iter().skip(1);
        let plain = |v: OsString| {
            v.into_string()
                .ok()
                .filter(|v| !v.is_empty() && !v.starts_with('-'))
        };
        while let Some(arg) = argv.next() {
            let arg = arg.into_string().ok()?;
            let (name, inline) = match arg.strip_prefix("--")?.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.strip_prefix("--")?, None),
            };
            if let Some(i) = FLAGS.iter().position(|f| f.0 == name) {
                if inline.is_some() || given.flags[i] {
                    return None;
                }
                given.flags[i] = true;
                continue;
            }
            let value = match inline {
                Some(v) => plain(v.into())?,
                None => plain(argv.next()?)?,
            };
            if name == RECIPIENT {
                given.recipients.push(value);
                continue;
            }
            let slot = &mut given.values[VALUED.iter().position(|o| o.0 == name)?];
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(given)
    }

    /// The environment variables of the options the command line left out;
    /// `None` when one is not plain, or a flag's variable is set at all.
    fn fill_from(&mut self, env: impl Fn(&str) -> Option<OsString>) -> Option<()> {
        for (i, (_, var)) in FLAGS.iter().enumerate() {
            if !self.flags[i] && var.is_some_and(|v| env(v).is_some()) {
                return None;
            }
        }
        for (slot, (_, var)) in self.values.iter_mut().zip(VALUED) {
            if slot.is_none()
                && let Some(var) = var
                && let Some(v) = env(var)
            {
                *slot = Some(v.into_string().ok().filter(|v| !v.is_empty())?);
            }
        }
        Some(())
    }

    /// The `Args`, with clap's defaults for what was not given; `None` when a
    /// value does not parse.
    fn into_args(self) -> Option<Args> {
        let [
            direction,
            sender,
            nats_url,
            namespace,
            partitions,
            timeout_ms,
            rest @ ..,
        ] = self.values;
        let [
            nats_user,
            nats_password,
            nats_password_file,
            nats_token,
            nats_token_file,
            nats_nkey_file,
            nats_creds_file,
            nats_tls_ca,
            nats_tls_cert,
            nats_tls_key,
            limits @ ..,
        ] = rest;
        Some(Args {
            direction: match direction.as_deref() {
                None | Some("outgoing") => DirectionArg::Outgoing,
                Some("incoming") => DirectionArg::Incoming,
                Some(_) => return None,
            },
            sender: sender?,
            recipients: self.recipients,
            print: self.flags[0],
            nats_url: nats_url.unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
            namespace: namespace.unwrap_or_else(|| "imip".to_owned()),
            partitions: number(partitions, imipflow_schema::DEFAULT_PARTITIONS)?,
            timeout_ms: number(timeout_ms, 10_000)?,
            nats_auth: NatsAuth {
                nats_user,
                nats_password: nats_password.map(Into::into),
                nats_password_file: nats_password_file.map(Into::into),
                nats_token: nats_token.map(Into::into),
                nats_token_file: nats_token_file.map(Into::into),
                nats_nkey_file: nats_nkey_file.map(Into::into),
                nats_creds_file: nats_creds_file.map(Into::into),
                nats_tls_ca: nats_tls_ca.map(Into::into),
                nats_tls_cert: nats_tls_cert.map(Into::into),
                nats_tls_key: nats_tls_key.map(Into::into),
                nats_tls_required: self.flags[1],
            },
            limits: plain_limits(limits)?,
        })
    }
}

/// The `--max-*` and `--excerpt-bytes` values, in the order of [`VALUED`].
fn plain_limits(values: [Option<String>; 11]) -> Option<Limits> {
    let [
        max_message_bytes,
        max_calendar_parts,
        max_components,
        max_attendees,
        max_recurrence_values,
        max_rrules,
        max_message_recurrence_values,
        max_message_instances,
        max_uid_bytes,
        max_payload_bytes,
        excerpt_bytes,
    ] = values;
    let defaults = Limits::default();
    Some(Limits {
        max_message_bytes: number(max_message_bytes, defaults.max_message_bytes)?,
        max_calendar_parts: number(max_calendar_parts, defaults.max_calendar_parts)?,
        max_components: number(max_components, defaults.max_components)?,
        max_attendees: number(max_attendees, defaults.max_attendees)?,
        max_recurrence_values: number(max_recurrence_values, defaults.max_recurrence_values)?,
        max_rrules: number(max_rrules, defaults.max_rrules)?,
        max_message_recurrence_values: number(
            max_message_recurrence_values,
            defaults.max_message_recurrence_values,
        )?,
        max_message_instances: number(max_message_instances, defaults.max_message_instances)?,
        max_uid_bytes: number(max_uid_bytes, defaults.max_uid_bytes)?,
        max_payload_bytes: number(max_payload_bytes, defaults.max_payload_bytes)?,
        excerpt_bytes: number(excerpt_bytes, defaults.excerpt_bytes)?,
    })
}

/// A given value as a number, or the default when not given; `None` when
/// given but not a number: clap words that error.
fn number<T: std::str::FromStr>(v: Option<String>, default: T) -> Option<T> {
    v.map_or(Some(default), |v| v.parse().ok())
}

/// Connect options for one publish, and the URL to connect to (credentials
/// written in the URL move into the options, so async-nats never sees or logs
/// them): credentials and TLS from the settings, a deadline on everything, no
/// reconnects (a failure is the MTA's retry, exit 75). A missing credentials
/// file or a refused login is also exit 75: the message waits in the MTA's
/// queue until the administrator fixes it.
pub fn connect_options(
    url: &str,
    auth: &NatsAuth,
    timeout: Duration,
) -> Result<(async_nats::ConnectOptions, String), IngestError> {
    let (options, clean) = auth.connect_target(url).map_err(|e| IngestError::Connect {
        url: imipflow_config::redact_url(url),
        reason: e.to_string(),
    })?;
    let options = options
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .max_reconnects(Some(0))
        .name("imip-ingest");
    Ok((options, clean))
}

/// Bounds on what one message may make ingest do. Exceeding one quarantines.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct Limits {
    /// Largest message read, in bytes.
    #[arg(long, env = "IMIP_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Most calendar objects in one message.
    #[arg(long, env = "IMIP_MAX_CALENDAR_PARTS", default_value_t = 32)]
    pub max_calendar_parts: usize,
    /// Most scheduling components in one calendar object.
    #[arg(long, env = "IMIP_MAX_COMPONENTS", default_value_t = 1000)]
    pub max_components: usize,
    /// Most attendees in one component.
    #[arg(long, env = "IMIP_MAX_ATTENDEES", default_value_t = 2000)]
    pub max_attendees: usize,
    /// Most RRULE + RDATE + EXDATE values in one component.
    #[arg(long, env = "IMIP_MAX_RECURRENCE_VALUES", default_value_t = 5000)]
    pub max_recurrence_values: usize,
    /// Most RRULE properties in one component (RFC 5545: SHOULD NOT be more than one).
    #[arg(long, env = "IMIP_MAX_RRULES", default_value_t = 4)]
    pub max_rrules: usize,
    /// Most RRULE + RDATE + EXDATE values in the whole message.
    #[arg(
        long,
        env = "IMIP_MAX_MESSAGE_RECURRENCE_VALUES",
        default_value_t = 10_000
    )]
    pub max_message_recurrence_values: usize,
    /// Most instances (free/busy records) the message's events may make, by
    /// ingest's estimate (each series counted up to 5,000, a year ahead).
    #[arg(long, env = "IMIP_MAX_MESSAGE_INSTANCES", default_value_t = 50_000)]
    pub max_message_instances: u64,
    /// Longest UID, in bytes (the store keys objects by it; PostgreSQL's
    /// B-tree entries hold at most 2,704 bytes with the address beside it).
    #[arg(long, env = "IMIP_MAX_UID_BYTES", default_value_t = 1000)]
    pub max_uid_bytes: usize,
    /// Largest serialised payload, in bytes (keep below the server's max_payload).
    #[arg(long, env = "IMIP_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024 - 16 * 1024)]
    pub max_payload_bytes: usize,
    /// How much of refused data a quarantine record keeps, in bytes.
    #[arg(long, env = "IMIP_QUARANTINE_EXCERPT_BYTES", default_value_t = 256 * 1024)]
    pub excerpt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024 * 1024,
            max_calendar_parts: 32,
            max_components: 1000,
            max_attendees: 2000,
            max_recurrence_values: 5000,
            max_rrules: 4,
            max_message_recurrence_values: 10_000,
            max_message_instances: 50_000,
            max_uid_bytes: 1000,
            max_payload_bytes: 1024 * 1024 - 16 * 1024,
            excerpt_bytes: 256 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::collections::BTreeSet;

    #[test]
    fn plain_parser_knows_clap_options() {
        let cmd = Args::command();
        let clap: BTreeSet<_> = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .map(|a| {
                let env = a.get_env().map(|e| e.to_str().unwrap().to_owned());
                let valued = a.get_action().takes_values();
                (a.get_long().unwrap().to_owned(), env, valued)
            })
            .collect();
        let own: BTreeSet<_> = VALUED
            .iter()
            .map(|(l, e)| (l.to_string(), e.map(str::to_owned), true))
            .chain(
                FLAGS
                    .iter()
                    .map(|(l, e)| (l.to_string(), e.map(str::to_owned), false)),
            )
            .chain([(RECIPIENT.to_owned(), None, true)])
            .collect();
        assert_eq!(own, clap);
    }

    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("imip-ingest")
            .chain(line.split(' ').filter(|w| !w.is_empty()))
            .map(OsString::from)
            .collect()
    }

    /// Everything `Args` holds, secrets included (Debug hides them).
    fn dump(a: &Args) -> String {
        let secret =
            |s: &Option<imipflow_config::Secret>| s.as_ref().map(|s| s.expose().to_owned());
        format!(
            "{a:?} {:?} {:?}",
            secret(&a.nats_auth.nats_password),
            secret(&a.nats_auth.nats_token)
        )
    }

    #[test]
    fn plain_parser_agrees_with_clap() {
        // (command line, whether it is plain)
        let cases = [
            ("--sender alice@example.com", true),
            ("--sender=alice@example.com --print", true),
            (
                "--direction incoming --sender a@b --recipient c@d --recipient=e@f",
                true,
            ),
            ("--direction=outgoing --sender a@b --recipient c@d", true),
            (
                "--sender a --nats-url nats://h:1 --namespace ns --partitions 4 --timeout-ms 5 \
                 --nats-user u --nats-password p --nats-password-file /p --nats-token t \
                 --nats-token-file /t --nats-nkey-file /n --nats-creds-file /c --nats-tls-ca /ca \
                 --nats-tls-cert /ce --nats-tls-key /k --nats-tls-required --max-message-bytes 1 \
                 --max-calendar-parts 2 --max-components 3 --max-attendees 4 \
                 --max-recurrence-values 5 --max-payload-bytes 6 --excerpt-bytes 7 \
                 --max-rrules 8 --max-message-recurrence-values 9 --max-message-instances 10 \
                 --max-uid-bytes 11",
                true,
            ),
            ("--sender a --partitions +7 --timeout-ms 007", true),
            ("--sender a=b --namespace=x=y", true),
            // Left to clap: errors, and shapes clap takes that are rare.
            ("", false),
            ("--print", false),
            ("--sender", false),
            ("--sender a --sender b", false),
            ("--sender a --print --print", false),
            ("--sender a --print=true", false),
            ("--sender a --nats-tls-required=yes", false),
            ("--sender -a", false),
            ("--sender=-a", false),
            ("--sender= ", false),
            ("--sender a --direction Incoming", false),
            ("--sender a --direction sideways", false),
            ("--sender a --partitions 4294967296", false),
            ("--sender a --partitions -1", false),
            ("--sender a --timeout-ms x", false),
            ("--sender a --max-components 1e3", false),
            ("--sender a extra", false),
            ("--sender a -- --print", false),
            ("-s a", false),
            ("--sender a --unknown x", false),
            ("--sender a --recipient", false),
            ("--send a", false),
        ];
        for (line, plain) in cases {
            let fast = Args::parse_plain(argv(line), |k| std::env::var_os(k));
            let clap = Args::try_parse_from(argv(line));
            assert_eq!(fast.is_some(), plain, "{line:?}");
            if let Some(fast) = fast {
                let clap = clap.unwrap_or_else(|e| panic!("{line:?}: clap says {e}"));
                assert_eq!(dump(&fast), dump(&clap), "{line:?}");
            }
        }
    }

    #[test]
    fn plain_parser_reads_the_environment() {
        let with = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let vars = &[
            ("IMIP_NAMESPACE", "ns"),
            ("IMIP_PARTITIONS", "3"),
            ("IMIP_NATS_PASSWORD", "pw"),
            ("IMIP_NATS_CREDS_FILE", "/c"),
            ("IMIP_QUARANTINE_EXCERPT_BYTES", "9"),
        ];
        let a = Args::parse_plain(argv("--sender a --partitions 5"), with(vars)).unwrap();
        assert_eq!(a.namespace, "ns");
        assert_eq!(a.partitions, 5, "the command line wins");
        assert_eq!(a.nats_auth.nats_password.unwrap().expose(), "pw");
        assert_eq!(
            a.nats_auth.nats_creds_file,
            Some(std::path::PathBuf::from("/c"))
        );
        assert_eq!(a.limits.excerpt_bytes, 9);
        for vars in [
            &[("IMIP_PARTITIONS", "x")][..],
            &[("IMIP_NAMESPACE", "")],
            &[("IMIP_NATS_TLS_REQUIRED", "true")],
        ] {
            assert!(Args::parse_plain(argv("--sender a"), with(vars)).is_none());
        }
        let a = Args::parse_plain(
            argv("--sender a --nats-tls-required"),
            with(&[("IMIP_NATS_TLS_REQUIRED", "false")]),
        )
        .unwrap();
        assert!(a.nats_auth.nats_tls_required);
    }
}
