//! A real browser for the manager's end-to-end test: Debian's headless
//! Chromium behind Debian's `chromedriver` (the WebDriver server the test's
//! client talks to), installed by `scripts/browser-setup.sh` when missing.
//!
//! Chromedriver runs in a process group of its own with the Chromium it
//! starts, so that `Drop` (also on a panic) kills both at once; a watcher
//! does the same if the test process is killed before its `Drop` runs.

use crate::free_port;
use crate::mta::{private_dir, reap_after_test};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Why the browser test cannot run here, or `None` when it can. Installs
/// Chromium and its driver with `scripts/browser-setup.sh` when they are
/// missing.
pub fn chromium_unavailable() -> Option<String> {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present() {
        let out = Command::new(crate::repo_root().join("scripts/browser-setup.sh")).output();
        if !present() {
            let detail = match out {
                // Its reason is on stderr; "skipped (…)" is on stdout.
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
                .trim()
                .to_owned(),
                Err(e) => e.to_string(),
            };
            return Some(format!(
                "chromium or chromedriver missing and scripts/browser-setup.sh could not install them: {detail}"
            ));
        }
    }
    None
}

/// Chromium's command-line flags for a test run: headless, and quiet on a
/// closed network (no sandbox: the tests run as root; no GPU; no calls home,
/// updates, sync or QUIC), with a fresh profile in `profile`.
pub fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// A running `chromedriver` on a free loopback port, and a fresh directory
/// for Chromium's profile; both gone when dropped.
pub struct Chromedriver {
    pub port: u16,
    /// Chromium's `--user-data-dir`.
    pub profile: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Chromedriver {
    pub fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let dir = private_dir("browser");
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("create the profile dir");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which Chromium inherits: one kill for all.
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        // Only while the group's leader is still chromedriver: after a normal
        // end the id may belong to someone else.
        reap_after_test(&format!(
            "if [ \"$(ps -o comm= -p {pid})\" = chromedriver ]; then kill -KILL -{pid}; fi; rm -rf '{}'",
            dir.display(),
            pid = child.id(),
        ));
        let driver = Chromedriver {
            port,
            profile,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on 127.0.0.1:{port} within 20 s:\n{}",
                driver.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        driver
    }

    /// The WebDriver URL to connect to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Chromedriver's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }

    /// The process group id (chromedriver's pid): Chromium's processes are in it.
    pub fn group(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // SIGKILL to the whole group: chromedriver and every Chromium process.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
