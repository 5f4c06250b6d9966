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
    /// Dead letters: list, or replay one.
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
    Delete { id: u64 },
}

#[derive(Subcommand)]
pub enum DlqAction {
    List {
        #[arg(long)]
        json: bool,
    },
    Replay {
        id: i64,
    },
}
