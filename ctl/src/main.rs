//! `imip-ctl`: read and operate the store (SPEC §1.3). Human-readable output by
//! default, `--json` for scripts. This file parses the arguments ([`cli`]) and
//! calls the one library function of the command (`imipflow_ctl::cmd`).

mod cli;

use clap::Args;
use cli::{Cli, Command, DlqAction, QuarantineAction};
use imipflow_ctl::cmd::{dlq, events, log, lookup, quarantine, queue, repair, status, users};
use imipflow_ctl::output::{self, Format};
use imipflow_processor::Settings;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    imipflow_ctl::output::quiet_on_broken_pipe();
    let cli = parse();
    let json = cli.command.json();
    let result = match (imipflow_telemetry::init_logging("warn"), view(&cli.view)) {
        (Ok(_), Ok(view)) => {
            imipflow_ctl::output::set_view(view);
            run(&cli.settings, cli.command).await
        }
        (Err(e), _) => Err(e.into()),
        (_, Err(e)) => Err(e.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let target = imipflow_ctl::advice::PgTarget::of(&cli.settings);
            let advice = imipflow_ctl::advice::advice(&e, target.as_ref());
            imipflow_ctl::output::fail(&e, json, advice)
        }
    }
}

/// The human output's `--wide` and `--tz`, the zone checked.
fn view(args: &cli::ViewArgs) -> Result<imipflow_ctl::output::View, imipflow_ctl::error::CtlError> {
    Ok(imipflow_ctl::output::View {
        wide: args.wide,
        tz: args
            .tz
            .as_deref()
            .map(imipflow_ctl::output::zone)
            .transpose()?,
    })
}

/// The arguments, or the exit: under `--json` a usage or configuration
/// error is one JSON object on stderr like any other error (help and
/// version print as usual), otherwise clap's own message.
fn parse() -> Cli {
    use imipflow_config::layered::{LayerError, parse_or_exit, try_parse_from};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = args.iter().any(|a| a == "--json");
    let error = match try_parse_from::<Cli>(
        Settings::augment_args,
        args,
        std::env::var_os("IMIP_CONFIG"),
    ) {
        Ok(layered) => return layered.cli,
        Err(e) => e,
    };
    let (kind, code) = match &error {
        LayerError::Clap(e) if e.use_stderr() => ("usage", e.exit_code()),
        LayerError::Config(_) => ("configuration", 78),
        LayerError::Clap(_) => ("", 0),
    };
    if !json || kind.is_empty() {
        // The same error again, reported and exited on the usual way.
        return parse_or_exit::<Cli>(Settings::augment_args).cli;
    }
    let text = error.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let doc = serde_json::json!({
        "error": first.strip_prefix("error: ").unwrap_or(first),
        "kind": kind,
        "causes": lines.collect::<Vec<_>>(),
        "exit": code,
    });
    eprintln!("{doc}");
    std::process::exit(code);
}

/// `imip-ctl completions SHELL`: the script, from the clap definition.
fn completions(shell: cli::CompletionShell, json: bool) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let (shell, name) = match shell {
        cli::CompletionShell::Bash => (Shell::Bash, "bash"),
        cli::CompletionShell::Zsh => (Shell::Zsh, "zsh"),
        cli::CompletionShell::Fish => (Shell::Fish, "fish"),
    };
    // Rendered first: clap_complete panics on a failed write, and
    // `imip-ctl completions bash | head` must end quietly.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd::<Cli>(), "imip-ctl", &mut script);
    if json {
        return output::json_line(
            &serde_json::json!({"shell": name, "script": String::from_utf8_lossy(&script)}),
        );
    }
    use std::io::Write;
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `imip-ctl man DIR`: a page per binary and per subcommand
/// (`imip-ctl-freebusy.1`, …), from the same definitions `--help` prints.
fn man_pages(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for command in [
        cmd::<Cli>(),
        cmd::<imipflow_processor::cli::Cli>(),
        cmd::<imipflow_publisher::cli::Cli>(),
        cmd::<imipflow_manager::cli::Cli>(),
        cmd::<imipflow_ingest::Args>(),
    ] {
        let name = command.get_name().to_owned();
        clap_mangen::generate_to(command, dir).map_err(|e| {
            anyhow::anyhow!("writing {name}'s manual pages into {}: {e}", dir.display())
        })?;
    }
    if json {
        // The pages are named after the binaries; other files in DIR are not ours.
        let pages: Vec<String> = pages_in(dir)?
            .into_iter()
            .filter(|p| p.starts_with("imip-"))
            .collect();
        return output::json_line(&serde_json::json!({"dir": dir, "pages": pages}));
    }
    println!("manual pages written to {}", dir.display());
    Ok(())
}

/// The `.1` files in `dir`, by name.
fn pages_in(dir: &std::path::Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut pages = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".1") {
            pages.insert(name);
        }
    }
    Ok(pages)
}

/// A binary's clap command, as `--help` shows it.
fn cmd<C: clap::CommandFactory>() -> clap::Command {
    C::command()
}

async fn run(s: &Settings, command: Command) -> anyhow::Result<()> {
    if matches!(
        command,
        Command::Rebuild { .. }
            | Command::Replay { .. }
            | Command::Quarantine {
                action: QuarantineAction::Release { .. }
            }
    ) {
        imipflow_ctl::check_partitions(s).await?;
    }
    match command {
        Command::Freebusy {
            user,
            from,
            to,
            json,
            ics,
        } => lookup::freebusy(s, &user, from, to, Format::from_flags(json, ics)).await,
        Command::Object {
            user,
            uid,
            recurrence_id,
            json,
            ics,
        } => lookup::object(s, &user, &uid, recurrence_id, Format::from_flags(json, ics)).await,
        Command::Objects { user, json } => lookup::objects(s, &user, json).await,
        Command::Queue { user, json } => queue::run(s, &user, json).await,
        Command::Events {
            user,
            since,
            follow,
            json,
        } => events::run(s, user.as_deref(), since, follow, json).await,
        Command::Log {
            user,
            since,
            outcome,
            json,
        } => log::run(s, &user, since, outcome, json).await,
        Command::Users { json } => users::run(s, json).await,
        Command::Dlq { action } => match action {
            DlqAction::List { all, json } => dlq::list(s, all, json).await,
            DlqAction::Replay { id, json } => dlq::replay(s, id, json).await,
            DlqAction::Delete { id, json } => dlq::delete(s, id, json).await,
        },
        Command::Status { json } => status::run(s, json).await,
        Command::Rebuild { user, json } => repair::rebuild(s, &user, json).await,
        Command::Replay {
            from,
            to,
            user,
            json,
        } => repair::replay(s, from, to, user.as_deref(), json).await,
        Command::Completions { shell, json } => completions(shell, json),
        Command::Man { dir, json } => man_pages(&dir, json),
        Command::Quarantine { action } => match action {
            QuarantineAction::List { json } => quarantine::list(s, json).await,
            QuarantineAction::Show { id, json } => quarantine::show(s, id, json).await,
            QuarantineAction::Release { id, json, limits } => {
                quarantine::release(s, id, json, &limits).await
            }
            QuarantineAction::Delete { id, json } => quarantine::delete(s, id, json).await,
        },
    }
}
