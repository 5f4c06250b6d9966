//! Measuring one child process (spawn, feed stdin, reap with `wait4` for its
//! peak RSS) and summarising a series of samples (median, p99, min, max).
//!
//! Every process series — the `/bin/true` baselines and each ingest class —
//! goes through [`run_child`], so they pay for exactly the same parent-side
//! work (pipe set-up, one write, one `wait4`) and differ only in the child.

use anyhow::{Context, bail};
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run of a child process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From just before `spawn` to just after `wait4` returned.
    pub wall: Duration,
    /// `ru_maxrss` of the child, in KiB (Linux reports kilobytes).
    pub max_rss_kb: i64,
}

/// Spawns `cmd` with `input` on a pipe as its stdin, stdout discarded and
/// stderr captured, and reaps it with `wait4`. Fails unless it exits with 0.
pub fn run_child(cmd: &mut Command, input: &[u8]) -> anyhow::Result<Sample> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot spawn {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("child has no stdin pipe")?;
    let written = stdin.write_all(input);
    drop(stdin);
    let (status, usage) = wait4(child.id())?;
    let wall = start.elapsed();
    // A child that does not read its stdin (`/bin/true`) may be gone before the
    // write: a broken pipe is expected then, and the exit status decides.
    if let Err(e) = written
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(e).context("cannot write the child's stdin");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("wait status {status:#x}")
        };
        bail!("{cmd:?} failed with {how}: {}", stderr.trim());
    }
    Ok(Sample {
        wall,
        max_rss_kb: usage.ru_maxrss,
    })
}

/// Reaps one child and returns its wait status and resource usage.
fn wait4(pid: u32) -> anyhow::Result<(libc::c_int, libc::rusage)> {
    let pid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's `Child` only
        // reaps in `wait`/`try_wait`, which we never call); both pointers are
        // valid and exclusive for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("wait4 failed");
        }
    }
}

/// Summary of one series, times in microseconds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub n: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Largest peak RSS over the series (process series only).
    pub max_rss_kb: Option<i64>,
}

impl Summary {
    /// Summarises wall times; `rss` is given for process series.
    pub fn of(walls: &[Duration], rss: Option<&[i64]>) -> Summary {
        let mut us: Vec<f64> = walls.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        let median_us = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => us[n / 2],
            _ => (us[n / 2 - 1] + us[n / 2]) / 2.0,
        };
        Summary {
            n,
            median_us,
            p99_us: percentile(&us, 0.99),
            min_us: us.first().copied().unwrap_or(f64::NAN),
            max_us: us.last().copied().unwrap_or(f64::NAN),
            max_rss_kb: rss.and_then(|r| r.iter().copied().max()),
        }
    }
}

/// Nearest-rank percentile of sorted values (p99 of 100 samples is the 99th).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Total instructions executed (`Collected`) by a command under callgrind.
pub fn callgrind_instructions(program: &str, args: &[&str], input: &[u8]) -> anyhow::Result<u64> {
    let mut child = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            program,
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn valgrind")?;
    let mut stdin = child.stdin.take().context("valgrind has no stdin pipe")?;
    let written = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().context("valgrind failed")?;
    if let Err(e) = written
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(e).context("cannot write valgrind's stdin");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "valgrind {program} exited with {}: {}",
            out.status,
            stderr.trim()
        );
    }
    parse_collected(&stderr)
        .with_context(|| format!("no `Collected :` line in valgrind's output:\n{stderr}"))
}

/// Finds `==PID== Collected : N` in callgrind's summary.
fn parse_collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let rest = line.split_once("Collected")?.1.trim_start();
        let digits: String = rest
            .strip_prefix(':')?
            .trim()
            .chars()
            .filter(|c| *c != ',')
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_p99_min() {
        let walls: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(&walls, Some(&[3, 9, 4]));
        assert_eq!(s.n, 100);
        assert!((s.median_us - 50.5).abs() < 1e-6);
        assert!((s.p99_us - 99.0).abs() < 1e-6);
        assert!((s.min_us - 1.0).abs() < 1e-6);
        assert_eq!(s.max_rss_kb, Some(9));
        let five: Vec<Duration> = [5, 1, 4, 2, 3]
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        let s = Summary::of(&five, None);
        assert!((s.median_us - 3.0).abs() < 1e-6);
        assert!((s.p99_us - 5.0).abs() < 1e-6);
    }

    #[test]
    fn parses_callgrind_summary() {
        let err = "==123== Events    : Ir\n==123== Collected : 1,234,567\n==123==\n==123== I   refs:      1,234,567\n";
        assert_eq!(parse_collected(err), Some(1_234_567));
        assert_eq!(parse_collected("==1== Collected : 42\n"), Some(42));
        assert_eq!(parse_collected("nothing here"), None);
    }

    #[test]
    fn true_runs_and_reports_rss() {
        let s = run_child(&mut Command::new("/bin/true"), b"hello").unwrap();
        assert!(s.max_rss_kb > 0);
        assert!(run_child(&mut Command::new("/bin/false"), b"").is_err());
    }
}
