//! `imip-publisher` binary: settings, logging, signals; the work is in the library.

use anyhow::Context;
use clap::{Args, Parser};

#[derive(Parser)]
#[command(
    name = "imip-publisher",
    version,
    about = "Serve each user's free/busy over HTTP (/freebusy/<user>.ifb and .json), kept current from imipflow's change events",
    after_help = "Connection and settings come from flags, IMIP_* variables or the --config file \
(docs/configuration.md).\n\n\
Examples:\n  imip-publisher\n  \
imip-publisher --listen 0.0.0.0:8080 --config /etc/imipflow/imipflow.toml\n  \
curl http://127.0.0.1:8080/freebusy/alice@example.com.ifb"
)]
struct Cli {
    #[command(flatten)]
    settings: imipflow_publisher::Settings,
}

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
