//! The command line of `imip-manager` (clap), in the library so that
//! `imip-ctl man` can write its manual page; the binary dispatches it.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "imip-manager",
    version,
    about = "The web page where users see their pending invitations and agenda and answer them (behind an authenticating proxy)",
    after_help = "Connection and settings come from flags, IMIP_* variables or the --config file \
(docs/configuration.md, docs/manager.md).\n\n\
Examples:\n  imip-manager\n  \
IMIP_MANAGER_FROM=calendar@example.com IMIP_MANAGER_SMTP_URL=smtp://127.0.0.1:587 imip-manager --config /etc/imipflow/imipflow.toml\n  \
imip-manager config check --json"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: crate::Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the pages (the default).
    Run,
    /// Settings: `config check` validates them and prints each with its
    /// source (flag, env, file, default), secrets hidden.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate without connecting; exit 78 (EX_CONFIG) when invalid.
    Check {
        /// JSON on stdout: validity, problems, warnings, every setting with its source.
        #[arg(long)]
        json: bool,
    },
}
