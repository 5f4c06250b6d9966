//! What goes into a results file: the command line, a description of the
//! machine, the per-series figures and their ratios, as one markdown document.

use crate::measure::Summary;
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One row of the wall-time table.
pub struct Row {
    pub series: String,
    pub what: String,
    pub summary: Summary,
}

/// Instruction count of one command under callgrind.
pub struct Instructions {
    pub what: String,
    pub count: u64,
}

pub struct Report {
    pub title: String,
    pub command: String,
    pub machine: Vec<(String, String)>,
    pub setup: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// (what, ratio of medians, ratio of minimums where it applies).
    pub ratios: Vec<(String, f64, Option<f64>)>,
    pub instructions: Option<Result<Vec<Instructions>, String>>,
    pub checks: Vec<String>,
}

/// nproc, CPU model, kernel, rustc and the other facts that make two result
/// files comparable (or show why they are not).
pub fn machine(bin_dir: &Path) -> Vec<(String, String)> {
    let mut m = Vec::new();
    let nproc = std::thread::available_parallelism()
        .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
    m.push(("nproc".into(), nproc));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    m.push(("CPU model".into(), model));
    let kernel = command_line("uname", &["-srvm"]).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    });
    m.push(("kernel".into(), kernel));
    m.push((
        "rustc".into(),
        command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
    ));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(total) = meminfo.lines().find(|l| l.starts_with("MemTotal:")) {
        m.push((
            "memory".into(),
            total.trim_start_matches("MemTotal:").trim().to_owned(),
        ));
    }
    if let Some(commit) = command_line("git", &["rev-parse", "--short", "HEAD"]) {
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        m.push((
            "source".into(),
            format!(
                "git {commit}{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        ));
    }
    m.push(ingest_binary(&bin_dir.join("imip-ingest")));
    m
}

/// The "imip-ingest binary" line: path, size and how it is linked.
pub fn ingest_binary(ingest: &Path) -> (String, String) {
    let value = match std::fs::read(ingest) {
        Ok(bytes) => format!(
            "{} ({} KiB, {})",
            ingest.display(),
            bytes.len() / 1024,
            match has_interpreter(&bytes) {
                Some(true) => "dynamically linked",
                Some(false) => "statically linked",
                None => "not a 64-bit ELF",
            }
        ),
        Err(e) => format!("{} ({e})", ingest.display()),
    };
    ("imip-ingest binary".into(), value)
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header (names
/// a dynamic loader), i.e. is dynamically linked.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut interp = false;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?);
        interp |= p_type == PT_INTERP;
    }
    Some(interp)
}

/// The first line of a command's stdout, if it ran successfully.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// Writes a benchmark's results to `out`, or by default to
/// `bench/results/<bench>-<started as UTC timestamp>.md`; returns the path.
pub fn write_results(
    bench: &str,
    out: Option<&Path>,
    started: chrono::DateTime<chrono::Utc>,
    text: &str,
) -> anyhow::Result<PathBuf> {
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench/results/{bench}-{}.md",
            started.format("%Y%m%dT%H%M%SZ")
        ))
    });
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The load average, as `/proc/loadavg` has it (first three fields).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The command line as a shell would take it back.
pub fn shell_command(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.0}")
    }
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        let _ = writeln!(s, "Command:\n\n```\n{}\n```\n", self.command);
        let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s, "\n## Run\n\n| | |\n|---|---|");
        for (k, v) in &self.setup {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(
            s,
            "\n## Per message\n\n\
             Wall times in µs. The last three columns are the child's own figures \
             from `wait4`: median CPU time (user + system, µs), median minor page \
             faults, and the largest peak RSS of the series.\n\n\
             | series | what | n | median | p99 | min | max | CPU, median | minor faults, median | peak RSS, max (KiB) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.rows {
            let x = &r.summary;
            let dash = || "–".to_owned();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.series,
                r.what,
                x.n,
                us(x.median_us),
                us(x.p99_us),
                us(x.min_us),
                us(x.max_us),
                x.cpu_median_us.map_or_else(dash, us),
                x.minor_faults_median
                    .map_or_else(dash, |f| format!("{f:.0}")),
                x.max_rss_kb.map_or_else(dash, |k| k.to_string()),
            );
        }
        let _ = writeln!(
            s,
            "\n## Ratios\n\n\
             Of medians (the figures to compare across runs), and of minimums \
             (the least disturbed by other load on the machine).\n\n\
             | ratio | of medians | of minimums |\n|---|---:|---:|"
        );
        for (k, median, min) in &self.ratios {
            let min = min.map_or_else(|| "–".to_owned(), |m| format!("{m:.2}"));
            let _ = writeln!(s, "| {k} | {median:.2} | {min} |");
        }
        match &self.instructions {
            None => {}
            Some(Err(e)) => {
                let _ = writeln!(s, "\n## Instructions (callgrind)\n\nnot measured: {e}");
            }
            Some(Ok(list)) => {
                let _ = writeln!(
                    s,
                    "\n## Instructions (callgrind, `--print`, no broker)\n\n\
                     | command | instructions | × /bin/true |\n|---|---:|---:|"
                );
                let base = list.first().map(|i| i.count).filter(|&c| c > 0);
                for i in list {
                    let ratio = base.map_or_else(
                        || "–".into(),
                        |b| format!("{:.1}", i.count as f64 / b as f64),
                    );
                    let _ = writeln!(s, "| {} | {} | {} |", i.what, i.count, ratio);
                }
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(s, "\n## Checks\n");
            for c in &self.checks {
                let _ = writeln!(s, "- {c}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        let cmd =
            shell_command(["imip-bench", "ingest", "--out", "a b.md", "it's"].map(String::from));
        assert_eq!(cmd, r"imip-bench ingest --out 'a b.md' 'it'\''s'");
    }
}
