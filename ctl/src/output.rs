//! How the commands print: `--json` documents one per line (compact, what
//! scripts and the tests parse: a list is one array, a stream one document
//! per line), aligned tables and indented documents for people, errors (one
//! JSON object on stderr under `--json`), and a progress bar on stderr for
//! the long commands.

use crate::error::CtlError;
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

/// Rows under a header, each column as wide as its widest cell (two spaces
/// apart, the last column not padded), as psql and kubectl print.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

/// `imip-ctl … | head`: once the reader has gone, the next write ends the
/// process quietly (SIGPIPE's default action, as for `cat`), instead of
/// `println!` panicking on EPIPE with exit 101. Only stdout and stderr are
/// affected: the sockets to NATS and PostgreSQL are written with
/// MSG_NOSIGNAL and still see EPIPE as an error.
pub fn quiet_on_broken_pipe() {
    // SAFETY: setting a signal's disposition to its default before any
    // other thread exists; no handler runs in this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Reports a failed command and gives its exit status: under `--json` one
/// JSON object on stderr, `{"error": "…", "kind": "…", "causes": […]}`
/// (`kind` for the errors a script may act on, [`CtlError::kind`]); as text
/// `imip-ctl: error: …: cause`.
pub fn fail(e: &anyhow::Error, json: bool) -> std::process::ExitCode {
    let ctl = e.chain().find_map(|c| c.downcast_ref::<CtlError>());
    let code = ctl.map_or(1, CtlError::exit_code);
    if json {
        let mut doc = serde_json::json!({
            "error": e.to_string(),
            "causes": e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
            "exit": code,
        });
        if let Some(c) = ctl {
            doc["kind"] = c.kind().into();
            if let CtlError::NoSuchUser(u) = c {
                doc["user"] = u.as_str().into();
            }
        }
        eprintln!("{doc}");
    } else {
        eprintln!("imip-ctl: error: {e:#}");
    }
    std::process::ExitCode::from(code)
}
