//! `imip-publisher` binary: settings, logging, signals; the work is in the library.

use anyhow::Context;
use clap::Args;
use imipflow_publisher::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imipflow_telemetry::init_logging("info,async_nats=warn")?;
    imipflow_telemetry::install_recorder()?;
    let cli =
        imipflow_config::layered::parse_or_exit::<Cli>(imipflow_publisher::Settings::augment_args)
            .cli;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing open requests");
        let _ = tx.send(true);
    });
    imipflow_publisher::run(cli.settings, rx)
        .await
        .context("imip-publisher failed")
}
