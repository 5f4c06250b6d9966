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
    about = "Inspect and operate imipflow's store"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// A user's busy periods in a window.
    Freebusy {
        user: String,
        #[arg(long)]
        from: DateTime<Utc>,
        #[arg(long)]
        to: DateTime<Utc>,
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        #[arg(long)]
        ics: bool,
    },
    /// One stored object (the master, or one recurrence).
    Object {
        user: String,
        uid: String,
        #[arg(long)]
        recurrence_id: Option<DateTime<Utc>>,
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        #[arg(long)]
        ics: bool,
    },
    /// All of a user's stored objects.
    Objects {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// A user's pending requests.
    Queue {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Change events from the events stream.
    Events {
        #[arg(long)]
        user: Option<String>,
        /// Start after this per-user sequence (with --user) or stream sequence.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// A user's message history: what became of each message, and why.
    Log {
        user: String,
        /// Only messages decided at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only this outcome: applied, stale, ignored, refused,
        /// dead_lettered, duplicate.
        #[arg(long)]
        outcome: Option<imipflow_schema::MessageOutcome>,
        #[arg(long)]
        json: bool,
    },
    /// The users the store knows, with their counts.
    Users {
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list, replay or delete one.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Partitions, owners, positions, DLQ count.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Recompute a user's free/busy rows from their stored objects (emits
    /// freebusy.changed where they differed).
    Rebuild {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-apply a range of the messages stream, idempotently: messages already
    /// applied change nothing; messages past a partition's applied position
    /// are left to its lane.
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
        #[arg(long)]
        json: bool,
    },
    /// Calendar data imip-ingest refused: list, show, release, delete.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Subcommand)]
pub enum QuarantineAction {
    /// Every record (ID = stream sequence), oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One record, with the refused data.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Re-plan the record under the current limits (IMIP_MAX_*), publish the
    /// payloads to the messages stream, delete the record.
    Release {
        id: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: imipflow_ingest::Limits,
    },
    /// Delete a record without releasing it.
    Delete {
        id: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// The dead letters not resolved yet.
    List {
        /// Replayed ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Apply one again; resolves it when it applies.
    Replay {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Delete one without applying it (resolved by hand).
    Delete {
        id: i64,
        #[arg(long)]
        json: bool,
    },
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
            Command::Quarantine { action } => match action {
                QuarantineAction::List { json }
                | QuarantineAction::Show { json, .. }
                | QuarantineAction::Release { json, .. }
                | QuarantineAction::Delete { json, .. } => *json,
            },
        }
    }
}
