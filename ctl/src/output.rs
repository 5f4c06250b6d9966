//! How the commands print: `--json` documents one per line (compact, what
//! scripts and the tests parse: a list is one array, a stream one document
//! per line), aligned tables for people (UIDs shortened unless `--wide`,
//! times in UTC unless `--tz`: [`View`]), errors (one
//! JSON object on stderr under `--json`), and a progress bar on stderr for
//! the long commands.

use crate::advice::Advice;
use crate::error::CtlError;
use chrono::{DateTime, Utc};
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
    table_aligned(header, rows, &[]);
}

/// [`table`] with the columns numbered in `right` aligned to the right
/// (counts and positions, so that their digits line up).
pub fn table_aligned(header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    println!("{}", row(&header, &widths, right));
    for r in rows {
        println!("{}", row(r, &widths, right));
    }
}

/// One line of a table whose column widths are known (a table printed as
/// it streams, `events --follow`, fixes them up front): cells padded to
/// `widths`, two spaces apart, trailing blanks trimmed.
pub fn row(cells: &[String], widths: &[usize], right: &[usize]) -> String {
    let mut out = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        let pad = w.saturating_sub(cell.chars().count());
        if right.contains(&i) {
            out.push_str(&" ".repeat(pad));
            out.push_str(cell);
        } else {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad));
            }
        }
        if i + 1 < cells.len() {
            out.push_str("  ");
        }
    }
    out.trim_end().to_owned()
}

/// How the human output shows UIDs and times: `--wide` and `--tz`, set once
/// by `main` before a command runs and read by every cell formatter below
/// (a process-wide setting, like the terminal's, rather than a parameter
/// threaded through each command down to each cell).
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// Full UIDs instead of shortened ones.
    pub wide: bool,
    /// Local times in this zone instead of UTC.
    pub tz: Option<chrono_tz::Tz>,
}

static VIEW: std::sync::OnceLock<View> = std::sync::OnceLock::new();

/// Sets the [`View`] for the rest of the process (the first call wins).
pub fn set_view(view: View) {
    let _ = VIEW.set(view);
}

fn view() -> View {
    VIEW.get().copied().unwrap_or_default()
}

/// `--tz ZONE`: an IANA zone name; anything else is a usage error (exit 64)
/// that says what is expected.
pub fn zone(name: &str) -> Result<chrono_tz::Tz, CtlError> {
    name.parse().map_err(|_| {
        CtlError::Usage(format!(
            "--tz {name:?} is not a time zone: give an IANA name such as Europe/Berlin, \
             America/New_York or UTC"
        ))
    })
}

/// Characters of a long UID kept before and after the ellipsis: enough
/// that two UIDs of one organizer (same prefix or suffix) stay apart.
const UID_HEAD: usize = 12;
const UID_TAIL: usize = 8;

/// A UID for a table cell: a long one (Outlook's are 100 hex digits)
/// shortened to its first 12 and last 8 characters around "…", unless
/// `--wide`.
pub fn uid(u: &str) -> String {
    let n = u.chars().count();
    // Shortening must save something worth the ambiguity.
    if view().wide || n <= UID_HEAD + UID_TAIL + 4 {
        return u.to_owned();
    }
    let head: String = u.chars().take(UID_HEAD).collect();
    let tail: String = u.chars().skip(n - UID_TAIL).collect();
    format!("{head}…{tail}")
}

/// An instant for a person: `2027-03-02 09:00:00Z` in UTC, or with `--tz`
/// the zone's local time and offset, `2027-03-02 10:00:00+01:00`. Every
/// human output prints times so (`--json` keeps RFC 3339 in UTC).
pub fn time(t: DateTime<Utc>) -> String {
    match view().tz {
        None => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        Some(tz) => t
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S%:z")
            .to_string(),
    }
}

/// A calendar time as stored: its instant as [`time`] prints it, or, for
/// a date or a floating time (no instant of its own), the value as written
/// ("2027-03-15", "2027-03-15T09:00:00 floating").
pub fn cal_time(t: &imipflow_schema::Time) -> String {
    use imipflow_schema::TimeKind;
    match (t.utc, t.kind) {
        (Some(utc), _) => time(utc),
        (None, TimeKind::Floating) => format!("{} floating", t.local),
        (None, _) => t.local.clone(),
    }
}

/// An optional cell: the text, or "-".
pub fn dash(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_owned(), str::to_owned)
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
/// (`kind` for the errors a script may act on, [`CtlError::kind`] or the
/// [`Advice`]'s); as text `imip-ctl: error: …: cause`, or with advice its
/// sentence and the error under it as the cause.
pub fn fail(e: &anyhow::Error, json: bool, advice: Option<Advice>) -> std::process::ExitCode {
    let ctl = e.chain().find_map(|c| c.downcast_ref::<CtlError>());
    let code = ctl.map_or(1, CtlError::exit_code);
    if json {
        let mut causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
        let error = match &advice {
            Some(a) => {
                causes.insert(0, e.to_string());
                a.message.clone()
            }
            None => e.to_string(),
        };
        let mut doc = serde_json::json!({"error": error, "causes": causes, "exit": code});
        if let Some(c) = ctl {
            doc["kind"] = c.kind().into();
            if let CtlError::NoSuchUser(u) = c {
                doc["user"] = u.as_str().into();
            }
        }
        if let Some(a) = &advice {
            doc["kind"] = a.kind.into();
        }
        eprintln!("{doc}");
    } else {
        match &advice {
            Some(a) => eprintln!("imip-ctl: error: {}\n  cause: {e:#}", a.message),
            None => eprintln!("imip-ctl: error: {e:#}"),
        }
    }
    std::process::ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_pads_left_or_right_and_trims_the_end() {
        let cells = ["7".to_owned(), "ab".to_owned(), "x".to_owned()];
        assert_eq!(row(&cells, &[3, 4, 9], &[0]), "  7  ab    x");
        assert_eq!(row(&cells, &[3, 4, 9], &[]), "7    ab    x");
    }

    #[test]
    fn only_long_uids_are_shortened_to_head_and_tail() {
        // The default view (no --wide): the tests never set one.
        assert_eq!(uid("weekly-sync@example.com"), "weekly-sync@example.com");
        let long = "040000008200E00074C5B7101A82E0080000000012345678DEADBEEFCAFE";
        assert_eq!(uid(long), "040000008200…BEEFCAFE");
        assert_eq!(uid("ééééééééééééééééééééééééééé").chars().count(), 21);
    }

    #[test]
    fn an_unknown_zone_is_a_usage_error_and_a_known_one_parses() {
        assert_eq!(zone("Europe/Berlin").unwrap(), chrono_tz::Europe::Berlin);
        let e = zone("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(e.to_string().contains("IANA"), "{e}");
    }
}
