//! Measuring one child process (spawn, feed stdin, reap with `wait4` for its
//! peak RSS) and summarising a series of samples (median, p99, min, max).
//!
//! Every process series — the `/bin/true` baselines and each ingest class —
//! goes through [`run_child`], so they pay for exactly the same parent-side
//! work (pipe set-up, one write, one `wait4`) and differ only in the child.
//!
//! [`run_child`] forks (not `posix_spawn`) in a helper process (`imip-bench
//! spawn-helper`, driven through [`Spawner`]), not in the benchmark's main
//! process. Linux carries the spawning process's memory into the child's
//! `ru_maxrss`: at `execve` the old address space's high-water mark is
//! recorded, and that is the whole parent's after a `posix_spawn` (a vfork),
//! or the parent's anonymous pages after a `fork`. Forking from a helper that
//! has done nothing but read job frames keeps that floor near half a megabyte,
//! instead of the main process's tokio + NATS client footprint; the static
//! exit(0) baseline shows where the floor is.

use anyhow::{Context, bail};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// One run of a child process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From just before `spawn` to just after `wait4` returned.
    pub wall: Duration,
    /// `ru_maxrss` of the child, in KiB (Linux reports kilobytes).
    pub max_rss_kb: i64,
    /// User CPU time of the child (`ru_utime`).
    pub user: Duration,
    /// System CPU time of the child (`ru_stime`): exec, page faults, I/O.
    pub sys: Duration,
    /// Minor page faults of the child (`ru_minflt`).
    pub minor_faults: i64,
}

/// Spawns `cmd` with `input` on a pipe as its stdin, stdout discarded and
/// stderr captured, and reaps it with `wait4`. Fails unless it exits with 0.
pub fn run_child(cmd: &mut Command, input: &[u8]) -> anyhow::Result<Sample> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A `pre_exec` hook makes std fork + exec instead of `posix_spawn` (a vfork:
    // the child runs in the parent's address space until exec, and inherits its
    // whole RSS high-water mark). After a real fork the child starts with only
    // the parent's anonymous pages, which keeps the RSS floor low. It is also
    // how MTAs start pipe transports (Postfix's pipe(8) forks).
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
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
        user: timeval(usage.ru_utime),
        sys: timeval(usage.ru_stime),
        minor_faults: usage.ru_minflt,
    })
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
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

/// One request to the spawn helper: run `program args…` with `env` added and
/// `input` on stdin.
pub struct Job<'a> {
    pub program: &'a str,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub input: &'a [u8],
}

/// The main process's handle on the spawn helper.
pub struct Spawner {
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl Spawner {
    /// Starts the helper: `exe args…` (this executable, `spawn-helper`).
    pub fn start(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<Spawner> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let requests = child.stdin.take().context("helper has no stdin")?;
        let replies = BufReader::new(child.stdout.take().context("helper has no stdout")?);
        Ok(Spawner {
            child,
            requests,
            replies,
        })
    }

    /// Has the helper run one job and returns what it measured.
    pub fn run(&mut self, job: &Job<'_>) -> anyhow::Result<Sample> {
        let mut items: Vec<&[u8]> = vec![job.program.as_bytes(), job.input];
        let n_args = job.args.len().to_string();
        items.push(n_args.as_bytes());
        items.extend(job.args.iter().map(|a| a.as_bytes()));
        for (k, v) in job.env {
            items.push(k.as_bytes());
            items.push(v.as_bytes());
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for item in items {
            frame.extend_from_slice(&(item.len() as u32).to_le_bytes());
            frame.extend_from_slice(item);
        }
        self.requests
            .write_all(&frame)
            .context("spawn helper is gone")?;
        self.requests.flush()?;
        let mut line = String::new();
        self.replies
            .read_line(&mut line)
            .context("spawn helper is gone")?;
        parse_reply(line.trim_end()).with_context(|| format!("running {}", job.program))
    }

    /// Ends the helper (it exits at end of input).
    pub fn finish(self) -> anyhow::Result<()> {
        let Spawner {
            mut child,
            requests,
            ..
        } = self;
        drop(requests);
        let status = child.wait()?;
        if !status.success() {
            bail!("spawn helper exited with {status}");
        }
        Ok(())
    }
}

fn parse_reply(line: &str) -> anyhow::Result<Sample> {
    if let Some(err) = line.strip_prefix("err ") {
        bail!("{}", err.replace("\\n", "\n"));
    }
    let mut fields = line
        .strip_prefix("ok ")
        .context("garbled reply from the spawn helper")?
        .split(' ');
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok());
    match (next(), next(), next(), next(), next()) {
        (Some(ns), Some(kb), Some(user_ns), Some(sys_ns), Some(faults)) => Ok(Sample {
            wall: Duration::from_nanos(ns),
            max_rss_kb: i64::try_from(kb)?,
            user: Duration::from_nanos(user_ns),
            sys: Duration::from_nanos(sys_ns),
            minor_faults: i64::try_from(faults)?,
        }),
        _ => bail!("garbled reply from the spawn helper: {line}"),
    }
}

/// The helper's side: runs jobs from stdin until it closes, one reply line each.
pub fn helper_main() -> anyhow::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    while let Some(items) = read_frame(&mut input)? {
        let reply = match run_job(&items) {
            Ok(s) => format!(
                "ok {} {} {} {} {}\n",
                s.wall.as_nanos(),
                s.max_rss_kb,
                s.user.as_nanos(),
                s.sys.as_nanos(),
                s.minor_faults
            ),
            Err(e) => format!("err {}\n", format!("{e:#}").replace('\n', "\\n")),
        };
        output.write_all(reply.as_bytes())?;
        output.flush()?;
    }
    Ok(())
}

fn read_frame(input: &mut impl Read) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    let mut word = [0u8; 4];
    match input.read_exact(&mut word) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_le_bytes(word) as usize;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        input.read_exact(&mut word)?;
        let mut item = vec![0u8; u32::from_le_bytes(word) as usize];
        input.read_exact(&mut item)?;
        items.push(item);
    }
    Ok(Some(items))
}

fn run_job(items: &[Vec<u8>]) -> anyhow::Result<Sample> {
    let text = |b: &Vec<u8>| String::from_utf8(b.clone()).context("non-UTF-8 job field");
    let [program, input, n_args, rest @ ..] = items else {
        bail!("short job frame");
    };
    let n_args: usize = text(n_args)?.parse()?;
    if rest.len() < n_args || !(rest.len() - n_args).is_multiple_of(2) {
        bail!("bad job frame");
    }
    let mut cmd = Command::new(text(program)?);
    for a in &rest[..n_args] {
        cmd.arg(text(a)?);
    }
    for kv in rest[n_args..].chunks(2) {
        cmd.env(text(&kv[0])?, text(&kv[1])?);
    }
    run_child(&mut cmd, input)
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
    /// Median CPU time (user + system) of the child, µs (process series only).
    /// The sum is exact (the scheduler's runtime); the kernel's split between
    /// user and system is tick-sampled, hence not reported.
    pub cpu_median_us: Option<f64>,
    /// Median number of minor page faults of the child (process series only).
    pub minor_faults_median: Option<f64>,
}

impl Summary {
    /// Summarises wall times; `children` holds the child figures of process
    /// series (empty for the publish series).
    pub fn of(walls: &[Duration], children: &[Sample]) -> Summary {
        let mut us: Vec<f64> = walls.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let per_child = |f: &dyn Fn(&Sample) -> f64| {
            let mut v: Vec<f64> = children.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| median(&v))
        };
        Summary {
            n: us.len(),
            median_us: median(&us),
            p99_us: percentile(&us, 0.99),
            min_us: us.first().copied().unwrap_or(f64::NAN),
            max_us: us.last().copied().unwrap_or(f64::NAN),
            max_rss_kb: children.iter().map(|s| s.max_rss_kb).max(),
            cpu_median_us: per_child(&|s| (s.user + s.sys).as_secs_f64() * 1e6),
            minor_faults_median: per_child(&|s| s.minor_faults as f64),
        }
    }
}

/// Median of sorted values.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
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
        let child = |kb, cpu, faults| Sample {
            wall: Duration::ZERO,
            max_rss_kb: kb,
            user: Duration::from_micros(cpu),
            sys: Duration::from_micros(2 * cpu),
            minor_faults: faults,
        };
        let s = Summary::of(&walls, &[child(3, 10, 7), child(9, 30, 5), child(4, 20, 6)]);
        assert_eq!(s.n, 100);
        assert!((s.median_us - 50.5).abs() < 1e-6);
        assert!((s.p99_us - 99.0).abs() < 1e-6);
        assert!((s.min_us - 1.0).abs() < 1e-6);
        assert_eq!(s.max_rss_kb, Some(9));
        assert_eq!(s.cpu_median_us, Some(60.0));
        assert_eq!(s.minor_faults_median, Some(6.0));
        let five: Vec<Duration> = [5, 1, 4, 2, 3]
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        let s = Summary::of(&five, &[]);
        assert_eq!(s.max_rss_kb, None);
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
    fn reply_lines_round_trip() {
        let s = parse_reply("ok 1500 812 900 600 77").unwrap();
        assert_eq!(s.wall, Duration::from_nanos(1500));
        assert_eq!(s.max_rss_kb, 812);
        assert_eq!(s.user, Duration::from_nanos(900));
        assert_eq!(s.sys, Duration::from_nanos(600));
        assert_eq!(s.minor_faults, 77);
        assert!(parse_reply("ok 1500 812").is_err());
        let e = parse_reply("err exit status 75:\\nno broker").unwrap_err();
        assert_eq!(e.to_string(), "exit status 75:\nno broker");
        assert!(parse_reply("what").is_err());
    }

    #[test]
    fn job_frames_decode() {
        let items: Vec<Vec<u8>> = ["/bin/sh", "in", "2", "-c", "exit 0", "K", "V"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert!(run_job(&items).is_ok());
        assert!(run_job(&items[..2]).is_err());
        let bad: Vec<Vec<u8>> = ["/bin/true", "", "0", "K"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert!(run_job(&bad).is_err());
    }

    #[test]
    fn true_runs_and_reports_rss() {
        let s = run_child(&mut Command::new("/bin/true"), b"hello").unwrap();
        assert!(s.max_rss_kb > 0);
        assert!(run_child(&mut Command::new("/bin/false"), b"").is_err());
    }
}
