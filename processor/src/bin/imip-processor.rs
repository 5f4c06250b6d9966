//! `imip-processor` binary: subcommand dispatch; the work is in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use imipflow_processor::{Settings, migrate};

#[derive(Parser)]
#[command(
    name = "imip-processor",
    version,
    about = "imipflow workers: consume iMIP payloads and apply them to PostgreSQL"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if absent, apply migrations, create the streams.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMIP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate => {
            let log = migrate::run(&cli.settings)
                .await
                .context("migrate failed")?;
            for line in log {
                println!("{line}");
            }
            println!("migrate: done");
        }
    }
    Ok(())
}
