//! `imip-processor` binary: subcommand dispatch; the work is in the library.

use anyhow::Context;
use clap::Args;
use imipflow_processor::cli::{Cli, Command, ConfigAction};
use imipflow_processor::{Settings, health, migrate};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imipflow_telemetry::init_logging("info,async_nats=warn")?;
    let layered = imipflow_config::layered::parse_or_exit::<Cli>(Settings::augment_args);
    match &layered.cli.command {
        Command::Config {
            action: ConfigAction::Check { json },
        } => config_check(&layered, *json),
        Command::Migrate => {
            let log = migrate::run(&layered.cli.settings)
                .await
                .context("migrate failed")?;
            for line in log {
                println!("{line}");
            }
            println!("migrate: done");
        }
        Command::Reset { yes } => {
            if !yes {
                anyhow::bail!("reset destroys the namespace's streams and database; pass --yes");
            }
            for line in migrate::reset(&layered.cli.settings)
                .await
                .context("reset failed")?
            {
                println!("{line}");
            }
        }
        Command::Run => {
            refuse_invalid(&layered.cli.settings);
            run(layered.cli.settings).await?
        }
    }
    Ok(())
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

/// Exits 78 (EX_CONFIG) with one `invalid:` line per problem, as `config
/// check` does, before `run` starts: a setting that can never work (an
/// unknown zone, a malformed manager address) is the operator's to fix, and
/// a supervisor should not restart the processor as if it had crashed.
fn refuse_invalid(settings: &Settings) {
    let problems = settings.problems();
    for p in &problems {
        eprintln!("invalid: {p}");
    }
    if !problems.is_empty() {
        eprintln!("imip-processor: invalid settings (imip-processor config check shows them all)");
        std::process::exit(78);
    }
}

/// `run`: the health listener, then the lanes until SIGTERM or Ctrl-C.
async fn run(settings: Settings) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down: finishing the current batches, releasing leases");
        let _ = tx.send(true);
    });
    // The listener is up before the lanes, so that /healthz answers from the
    // start and /readyz says why the processor is not ready (e.g. not
    // migrated yet) while the lanes keep retrying.
    serve_health(&settings, rx.clone()).await?;
    match imipflow_processor::worker::run(settings, rx).await {
        // A setting that can never work is the operator's to fix: 78, so
        // that a supervisor does not restart it as if it had crashed.
        Err(e @ imipflow_processor::ProcessorError::Config(_)) => {
            eprintln!("imip-processor: {e}");
            std::process::exit(78);
        }
        r => r.context("run failed"),
    }
}

/// `/metrics`, `/healthz` and `/readyz` on `IMIP_METRICS_LISTEN` (empty: none).
async fn serve_health(
    settings: &Settings,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(addr) = imipflow_telemetry::parse_listen(&settings.metrics_listen)? else {
        return Ok(());
    };
    imipflow_telemetry::install_recorder()?;
    imipflow_processor::metrics::describe();
    // A taken port does not stop the processor: applying mail matters more
    // than its metrics, and several processors on one host with default
    // settings still work (the first one serves the port). The error says
    // which setting to change.
    match imipflow_telemetry::bind(addr).await {
        Ok(listener) => {
            tracing::info!(listen = %listener.local_addr()?, "metrics, /healthz, /readyz");
            let probe = std::sync::Arc::new(health::Probe::new(settings.clone()).await?);
            tokio::spawn(imipflow_telemetry::serve(listener, probe, shutdown));
        }
        Err(e) => tracing::error!(
            error = %e,
            "no /metrics, /healthz, /readyz: set IMIP_METRICS_LISTEN to a free address (empty disables)"
        ),
    }
    Ok(())
}
