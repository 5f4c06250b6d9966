//! `imip-bench all`: the whole suite in one command — ingest, processor
//! throughput, latency, growth — each as its own `imip-bench` subcommand
//! (a child process, so one benchmark's memory and threads never disturb
//! the next), then a summary file with every benchmark's ratios.

use anyhow::{Context, bail};
use chrono::Utc;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct AllArgs {
    /// Where imip-processor (and, unless --ingest, imip-ingest) are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The imip-ingest binary to measure (default: <bin-dir>/imip-ingest).
    #[arg(long)]
    pub ingest: Option<PathBuf>,
    /// Folder for the results files (default: bench/results; with --smoke a temporary folder).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Benchmarks to leave out, comma-separated: ingest, processor, latency, growth.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// CI mode: every benchmark in its tiny mode; checks that they run and report ratios.
    #[arg(long)]
    pub smoke: bool,
}

const BENCHMARKS: [&str; 4] = ["ingest", "processor", "latency", "growth"];

pub fn run(args: AllArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find imip-bench itself")?;
    let ts = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let dir = args.out_dir.clone().unwrap_or_else(|| {
        if args.smoke {
            std::env::temp_dir().join(format!("imip-bench-smoke-{}", std::process::id()))
        } else {
            PathBuf::from("bench/results")
        }
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut done: Vec<(&str, Option<PathBuf>)> = Vec::new();
    let mut failed = Vec::new();
    for name in BENCHMARKS {
        if args.skip.iter().any(|s| s == name) {
            continue;
        }
        let out = dir.join(format!("{name}-{ts}.md"));
        let mut cmd = Command::new(&exe);
        cmd.arg(name).arg("--bin-dir").arg(&args.bin_dir);
        if args.smoke {
            cmd.arg("--smoke");
        }
        if let Some(ingest) = &args.ingest
            && matches!(name, "ingest" | "latency")
        {
            cmd.arg("--ingest").arg(ingest);
        }
        // The processor benchmark's smoke mode writes no file.
        let writes = !(args.smoke && name == "processor");
        if writes {
            cmd.arg("--out").arg(&out);
        }
        eprintln!("imip-bench all: {cmd:?}");
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        if !status.success() {
            eprintln!("imip-bench all: {name} failed ({status})");
            failed.push(name);
            continue;
        }
        if writes {
            let text = std::fs::read_to_string(&out)
                .with_context(|| format!("{name} wrote no {}", out.display()))?;
            if ratios_section(&text).is_none() {
                eprintln!("imip-bench all: {} has no ratios", out.display());
                failed.push(name);
                continue;
            }
            done.push((name, Some(out)));
        } else {
            done.push((name, None));
        }
    }
    let summary = dir.join(format!("summary-{ts}.md"));
    std::fs::write(&summary, summary_text(&ts, &done, &failed))
        .with_context(|| format!("cannot write {}", summary.display()))?;
    eprintln!("imip-bench all: summary in {}", summary.display());
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Each benchmark's `## Ratios` section (and target lines), with a link to
/// its full results file.
fn summary_text(ts: &str, done: &[(&str, Option<PathBuf>)], failed: &[&str]) -> String {
    let mut s = format!(
        "# imip-bench all, {ts}\n\nLoad average at the end: {}. Each section is the `## Ratios` \
section of the benchmark's own results file, which has the machine, the command and the raw \
numbers.\n",
        crate::report::loadavg()
    );
    for (name, path) in done {
        s += &format!("\n## {name}\n\n");
        let Some(path) = path else {
            s += "(smoke run: no results file)\n";
            continue;
        };
        s += &format!("File: `{}`\n\n", file_name(path));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let section = ratios_section(&text).unwrap_or("");
        s += section;
        s += "\n";
        for line in text
            .lines()
            .filter(|l| l.starts_with("Target") && !section.contains(*l))
        {
            s += &format!("\n{line}\n");
        }
    }
    if !failed.is_empty() {
        s += &format!("\n## Failed\n\n{}\n", failed.join(", "));
    }
    s
}

/// The body of the `## Ratios` section (the processor benchmark keeps its
/// ratio columns in `## Results`).
fn ratios_section(text: &str) -> Option<&str> {
    ["\n## Ratios", "\n## Results"].iter().find_map(|h| {
        let i = text.find(h)?;
        let rest = &text[i + h.len()..];
        let end = rest.find("\n## ").unwrap_or(rest.len());
        Some(rest[..end].trim())
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
