//! Measuring one run of a binary: exit status, wall and CPU time, peak RSS.
//!
//! A child's `ru_maxrss` starts at the high-water mark of the process it was
//! forked from, so measuring from a (large) test process would report the
//! test's own memory. [`measure`] therefore re-executes the test binary as a
//! small helper — the test file's `rusage_helper` test, which calls
//! [`helper`] — that runs the binary as its own child, reaps it with wait4
//! and writes what it measured to a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What the helper reports of one child run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kb: i64,
}

/// Runs `bin ARGS` with exactly the environment `envs` and `stdin`, killed
/// after `kill_after`, and measures it. The calling test binary must have a
/// test named `rusage_helper` whose body is [`helper`]`()`.
pub fn measure(
    bin: &Path,
    args: &[String],
    envs: &[(String, String)],
    stdin: &[u8],
    kill_after: Duration,
) -> Run {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "imipflow-rusage-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "rusage_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("IMIPFLOW_RUSAGE_DIR", &dir)
        .env("IMIPFLOW_RUSAGE_BIN", bin)
        .env("IMIPFLOW_RUSAGE_ARGS", serde_json::to_string(args).unwrap())
        .env(
            "IMIPFLOW_RUSAGE_KILL_MS",
            kill_after.as_millis().to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the rusage helper");
    let mut pipe = helper.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let status = helper.wait().expect("wait for the rusage helper");
    let _ = feeder.join();
    assert!(status.success(), "rusage helper failed: {status}");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_default();
    let report = String::from_utf8(read("rusage")).unwrap();
    let n: Vec<i64> = report
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let run = Run {
        code: n[0] as i32,
        stdout: read("stdout"),
        stderr: read("stderr"),
        wall: Duration::from_micros(n[1] as u64),
        cpu: Duration::from_micros(n[2] as u64),
        max_rss_kb: n[3],
    };
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// The helper's body: does nothing unless the test binary was re-executed by
/// [`measure`] (`IMIPFLOW_RUSAGE_DIR` set); then runs the child, writes the
/// report and exits the process.
pub fn helper() {
    let Some(dir) = std::env::var_os("IMIPFLOW_RUSAGE_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let args: Vec<String> =
        serde_json::from_str(&std::env::var("IMIPFLOW_RUSAGE_ARGS").unwrap()).unwrap();
    let kill_after = Duration::from_millis(
        std::env::var("IMIPFLOW_RUSAGE_KILL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000),
    );
    let start = Instant::now();
    let mut child = Command::new(std::env::var_os("IMIPFLOW_RUSAGE_BIN").unwrap())
        .args(&args)
        .env_remove("IMIPFLOW_RUSAGE_DIR")
        .env_remove("IMIPFLOW_RUSAGE_BIN")
        .env_remove("IMIPFLOW_RUSAGE_ARGS")
        .env_remove("IMIPFLOW_RUSAGE_KILL_MS")
        .stdin(Stdio::inherit())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("spawn the measured binary");
    let pid = child.id() as libc::pid_t;
    let mut killed = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if !killed && start.elapsed() > kill_after {
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let wall = start.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    std::fs::write(
        dir.join("rusage"),
        format!(
            "{code} {} {} {}",
            wall.as_micros(),
            us(usage.ru_utime) + us(usage.ru_stime),
            usage.ru_maxrss
        ),
    )
    .unwrap();
    std::process::exit(0);
}
