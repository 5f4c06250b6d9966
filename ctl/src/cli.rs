//! The command line of `imip-ctl`: its commands, arguments and help text
//! (clap). `main.rs` dispatches each command to its function in
//! `imipflow_ctl::cmd`.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use imipflow_processor::Settings;

#[derive(Parser)]
#[command(
    name = "imip-ctl",
    version,
    about = "Inspect and operate imipflow's store",
    after_help = "Connection and settings come from flags, IMIP_* variables or the --config file \
(docs/configuration.md); `imip-ctl COMMAND --help` shows each command's examples.\n\n\
Examples:\n  \
imip-ctl status\n  \
imip-ctl freebusy alice@example.com --from 2027-04-01 --to 2027-05-01\n  \
IMIP_DATABASE_URL=postgresql://imip@db/imip imip-ctl objects alice@example.com --json\n  \
imip-ctl queue alice@example.com --tz Europe/Berlin --wide"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub view: ViewArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How the human output looks (`--json` is unaffected: full UIDs, RFC 3339
/// in UTC).
#[derive(clap::Args)]
#[command(next_help_heading = "Output")]
pub struct ViewArgs {
    /// Show long UIDs in full (by default a table shortens them to their
    /// first 12 and last 8 characters, as in 040000008200…1A82E008).
    #[arg(long, global = true)]
    pub wide: bool,
    /// Print times in this IANA time zone (Europe/Berlin, America/New_York)
    /// instead of UTC, with their offset: 2027-04-01 11:00:00+02:00.
    #[arg(long, global = true, value_name = "ZONE")]
    pub tz: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// A user's busy periods in a window.
    #[command(after_help = "Examples:\n  \
imip-ctl freebusy alice@example.com --from 2027-04-01 --to 2027-05-01\n  \
imip-ctl freebusy alice@example.com --from 2027-04-01 --to 2027-04-02 --tz Europe/Berlin\n  \
imip-ctl freebusy alice@example.com --from 2027-04-01T08:00:00Z --to 2027-04-01T18:00:00+02:00 --json\n  \
imip-ctl freebusy alice@example.com --from 2027-04-01 --to 2027-04-08 --ics > alice.ifb")]
    Freebusy {
        /// The user's address.
        user: String,
        /// Start of the window: a date (2027-04-01, meaning 00:00 UTC that day) or an RFC 3339 instant.
        #[arg(long, value_parser = imipflow_ctl::args::instant)]
        from: DateTime<Utc>,
        /// End of the window (exclusive): a date (00:00 UTC that day) or an RFC 3339 instant.
        #[arg(long, value_parser = imipflow_ctl::args::instant)]
        to: DateTime<Utc>,
        /// One JSON document on stdout.
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        /// An iCalendar VFREEBUSY on stdout.
        #[arg(long)]
        ics: bool,
    },
    /// One stored object (the master, or one recurrence).
    #[command(after_help = "Examples:\n  \
imip-ctl object alice@example.com 040000008200E00074C5B7101A82E008\n  \
imip-ctl object alice@example.com weekly-sync@example.com --recurrence-id 2027-04-08T09:00:00Z --json\n  \
imip-ctl object alice@example.com weekly-sync@example.com --ics")]
    Object {
        /// The user's address.
        user: String,
        /// The object's UID.
        uid: String,
        /// One recurrence instead of the master: its RECURRENCE-ID, a date (00:00 UTC) or an RFC 3339 instant.
        #[arg(long, value_parser = imipflow_ctl::args::instant)]
        recurrence_id: Option<DateTime<Utc>>,
        /// One JSON document on stdout.
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        /// The object as an iCalendar VCALENDAR, as the user's calendar holds it.
        #[arg(long)]
        ics: bool,
    },
    /// All of a user's stored objects.
    #[command(after_help = "Examples:\n  \
imip-ctl objects alice@example.com\n  \
imip-ctl objects alice@example.com --wide\n  \
imip-ctl objects alice@example.com --json")]
    Objects {
        /// The user's address.
        user: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A user's pending requests.
    #[command(after_help = "Examples:\n  \
imip-ctl queue alice@example.com\n  \
imip-ctl queue alice@example.com --json")]
    Queue {
        /// The user's address.
        user: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Change events from the events stream, each as a sentence
    /// ("freebusy changed: +3 busy, −1").
    #[command(
        after_help = "SEQ is what --since takes: the user's event sequence with --user, \
the stream sequence without.\n\n\
Examples:\n  \
imip-ctl events --user alice@example.com\n  \
imip-ctl events --user alice@example.com --tz Europe/Berlin --wide\n  \
imip-ctl events --since 1200 --follow --json"
    )]
    Events {
        /// Only this user's events.
        #[arg(long)]
        user: Option<String>,
        /// Start after this per-user sequence (with --user) or stream sequence.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep waiting for new events (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
        /// JSON on stdout: one array, or with --follow one event per line.
        #[arg(long)]
        json: bool,
    },
    /// A user's message history: what became of each message, and why.
    #[command(after_help = "Examples:\n  \
imip-ctl log alice@example.com\n  \
imip-ctl log alice@example.com --outcome refused --since 2027-04-01T00:00:00Z")]
    Log {
        /// The user's address.
        user: String,
        /// Only messages decided at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only this outcome: applied, stale, ignored, refused,
        /// dead_lettered, duplicate.
        #[arg(long)]
        outcome: Option<imipflow_schema::MessageOutcome>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The users the store knows, with their counts.
    #[command(after_help = "Examples:\n  imip-ctl users\n  imip-ctl users --json")]
    Users {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list, replay or delete one.
    #[command(after_help = "Examples:\n  \
imip-ctl dlq list\n  \
imip-ctl dlq replay 42\n  \
imip-ctl dlq delete 42")]
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Partitions, owners, positions, DLQ count; warns about partitions no
    /// live processor owns, stalls and messages no lane reads.
    #[command(after_help = "Examples:\n  \
imip-ctl status\n  \
imip-ctl status --json")]
    Status {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Recompute a user's free/busy rows from their stored objects (emits
    /// freebusy.changed where they differed).
    #[command(
        after_help = "Shows a progress bar with rate and ETA on a terminal.\n\n\
Examples:\n  \
imip-ctl rebuild alice@example.com\n  \
imip-ctl rebuild alice@example.com --json"
    )]
    Rebuild {
        /// The user's address.
        user: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-apply a range of the messages stream, idempotently: messages already
    /// applied change nothing; messages past a partition's applied position
    /// are left to its lane.
    #[command(
        after_help = "Shows a progress bar with rate and ETA on a terminal.\n\n\
Examples:\n  \
imip-ctl replay --from 1\n  \
imip-ctl replay --from 5000 --to 5999 --user alice@example.com --json"
    )]
    Replay {
        /// First stream sequence.
        #[arg(long)]
        from: u64,
        /// Last stream sequence (default: the stream's last message now).
        #[arg(long)]
        to: Option<u64>,
        /// Only this user's messages.
        #[arg(long)]
        user: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A shell completion script on stdout.
    #[command(after_help = "Examples:\n  \
imip-ctl completions bash > /usr/share/bash-completion/completions/imip-ctl\n  \
imip-ctl completions zsh > /usr/local/share/zsh/site-functions/_imip-ctl\n  \
imip-ctl completions fish > ~/.config/fish/completions/imip-ctl.fish")]
    Completions {
        /// The shell: bash, zsh or fish.
        shell: CompletionShell,
        /// One JSON object on stdout, {"shell": …, "script": …}, instead of the script.
        #[arg(long)]
        json: bool,
    },
    /// Write the manual pages of every imipflow binary (and of each
    /// subcommand) into DIR; the install steps run it.
    #[command(hide = true)]
    Man {
        /// Where the .1 pages go (e.g. /usr/local/share/man/man1).
        dir: std::path::PathBuf,
        /// JSON on stdout: {"dir": …, "pages": [the files written]}.
        #[arg(long)]
        json: bool,
    },
    /// Calendar data imip-ingest refused: list, show, release, delete.
    #[command(after_help = "Examples:\n  \
imip-ctl quarantine list\n  \
imip-ctl quarantine show 7\n  \
IMIP_MAX_ATTENDEES=5000 imip-ctl quarantine release 7\n  \
imip-ctl quarantine delete 7")]
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Subcommand)]
pub enum QuarantineAction {
    /// Every record (ID = stream sequence), oldest first.
    #[command(
        after_help = "Examples:\n  imip-ctl quarantine list\n  imip-ctl quarantine list --json"
    )]
    List {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One record, with the refused data.
    #[command(
        after_help = "Examples:\n  imip-ctl quarantine show 7\n  imip-ctl quarantine show 7 --json"
    )]
    Show {
        /// The record's ID (from `quarantine list`).
        id: u64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-plan the record under the current limits (IMIP_MAX_*), publish the
    /// payloads to the messages stream, delete the record.
    #[command(
        after_help = "Examples:\n  imip-ctl quarantine release 7\n  IMIP_MAX_ATTENDEES=5000 imip-ctl quarantine release 7 --json"
    )]
    Release {
        /// The record's ID (from `quarantine list`).
        id: u64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: imipflow_ingest::Limits,
    },
    /// Delete a record without releasing it.
    #[command(after_help = "Example:\n  imip-ctl quarantine delete 7")]
    Delete {
        /// The record's ID (from `quarantine list`).
        id: u64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// The dead letters not resolved yet, oldest first.
    #[command(after_help = "Examples:\n  imip-ctl dlq list\n  imip-ctl dlq list --all --json")]
    List {
        /// Replayed (resolved) ones too.
        #[arg(long)]
        all: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Apply a dead letter's message again, the way the lane does; resolves
    /// it when it applies.
    #[command(after_help = "Example:\n  imip-ctl dlq replay 42")]
    Replay {
        /// The dead letter's ID (from `dlq list`).
        id: i64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete one without applying it (resolved by hand).
    #[command(after_help = "Example:\n  imip-ctl dlq delete 42")]
    Delete {
        /// The dead letter's ID (from `dlq list`).
        id: i64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// The shells `imip-ctl completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl Command {
    /// Whether the command was given `--json` (its errors are JSON too).
    pub fn json(&self) -> bool {
        match self {
            Command::Freebusy { json, .. }
            | Command::Object { json, .. }
            | Command::Objects { json, .. }
            | Command::Queue { json, .. }
            | Command::Events { json, .. }
            | Command::Log { json, .. }
            | Command::Users { json }
            | Command::Status { json }
            | Command::Rebuild { json, .. }
            | Command::Replay { json, .. } => *json,
            Command::Dlq { action } => match action {
                DlqAction::List { json, .. }
                | DlqAction::Replay { json, .. }
                | DlqAction::Delete { json, .. } => *json,
            },
            Command::Completions { json, .. } | Command::Man { json, .. } => *json,
            Command::Quarantine { action } => match action {
                QuarantineAction::List { json }
                | QuarantineAction::Show { json, .. }
                | QuarantineAction::Release { json, .. }
                | QuarantineAction::Delete { json, .. } => *json,
            },
        }
    }
}
