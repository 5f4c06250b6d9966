//! How the commands print: `--json` documents one per line (compact, what
//! scripts and the tests parse), an indented document for people, and a
//! progress bar on stderr for the long commands.

use serde::Serialize;

/// The form a command that has more than text and JSON answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// iCalendar (`--ics`): VFREEBUSY, or a stored object as the calendar holds it.
    Ics,
}

impl Format {
    /// From the `--json` / `--ics` flags (clap keeps them exclusive).
    pub fn from_flags(json: bool, ics: bool) -> Self {
        match (json, ics) {
            (true, _) => Format::Json,
            (false, true) => Format::Ics,
            (false, false) => Format::Text,
        }
    }
}

/// One JSON document on one line of stdout.
pub fn json_line(doc: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(doc)?);
    Ok(())
}

/// One JSON document, indented, for a person to read.
pub fn json_pretty(doc: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(doc)?);
    Ok(())
}

/// A progress bar on stderr with the rate and the time left; hidden with
/// --json or when stderr is not a terminal (a log gets only the report).
pub fn progress(json: bool, what: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(what);
    bar
}

/// Ctrl-C during a long command: says where it stopped and exits 130 (as a
/// shell reports SIGINT). `at` is what to tell the operator, e.g. "stopped at
/// stream sequence 812; resume with --from 812"; a transaction the command
/// had open is rolled back as the process ends.
pub fn interrupted(bar: &indicatif::ProgressBar, at: &str) -> ! {
    bar.abandon();
    eprintln!("interrupted: {at}");
    std::process::exit(130);
}
