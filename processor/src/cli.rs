//! The command line of `imip-processor` (clap), in the library so that
//! `imip-ctl man` can write its manual page; the binary dispatches it.

use crate::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "imip-processor",
    version,
    about = "imipflow workers: consume iMIP payloads and apply them to PostgreSQL",
    after_help = "Connection and settings come from flags, IMIP_* variables or the --config file \
(docs/configuration.md).\n\n\
Examples:\n  \
imip-processor migrate\n  \
imip-processor --config /etc/imipflow/imipflow.toml run\n  \
imip-processor config check --json"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the database if absent, apply migrations, create the streams.
    #[command(after_help = "Examples:\n  imip-processor migrate\n  \
IMIP_PARTITIONS=32 IMIP_DATABASE_URL=postgresql://imip@db/imip imip-processor migrate")]
    Migrate,
    /// Consume and apply; run any number of instances.
    #[command(after_help = "Exit status: 78 (EX_CONFIG) for invalid settings.\n\n\
Examples:\n  imip-processor run\n  imip-processor --config /etc/imipflow/imipflow.toml run")]
    Run,
    /// Settings: `config check` validates them and prints each with its
    /// source (flag, env, file, default), secrets hidden.
    #[command(after_help = "Example:\n  imip-processor config check")]
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Delete this namespace's streams and drop its database (demos, tests).
    #[command(after_help = "Example:\n  IMIP_NAMESPACE=demo imip-processor reset --yes")]
    Reset {
        /// Required: this destroys data.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate without connecting; exit 78 (EX_CONFIG) when invalid.
    #[command(after_help = "Examples:\n  imip-processor config check\n  \
imip-processor --config /etc/imipflow/imipflow.toml config check --json")]
    Check {
        /// JSON on stdout: validity, problems, warnings, every setting with its source.
        #[arg(long)]
        json: bool,
    },
}
