//! `imip-manager` binary: settings, logging, signals, `config check`; the
//! work is in the library.

use anyhow::Context;
use clap::Args;
use imipflow_manager::cli::{Cli, Command, ConfigAction};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imipflow_telemetry::init_logging("info,async_nats=warn")?;
    imipflow_telemetry::install_recorder()?;
    let layered =
        imipflow_config::layered::parse_or_exit::<Cli>(imipflow_manager::Settings::augment_args);
    if let Some(Command::Config {
        action: ConfigAction::Check { json },
    }) = &layered.cli.command
    {
        config_check(&layered, *json);
        return Ok(());
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing open requests, closing live updates");
        let _ = tx.send(true);
    });
    imipflow_manager::run(layered.cli.settings, rx)
        .await
        .context("imip-manager failed")
}

/// `config check`: every setting with its source, problems and warnings;
/// exits 78 (EX_CONFIG) when a setting is invalid.
fn config_check(layered: &imipflow_config::layered::Layered<Cli>, json: bool) {
    let settings = &layered.cli.settings;
    let (problems, warnings) = (settings.problems(), settings.warnings());
    if !imipflow_config::layered::print_check(layered, &problems, &warnings, json) {
        std::process::exit(78);
    }
}
