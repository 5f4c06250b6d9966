//! Private mail servers for the MTA end-to-end tests: a real Postfix
//! instance and a real Exim (each with its own config, queue and log
//! directory and loopback ports, every real delivery discarded) wired to
//! `imip-ingest` with the example configuration in `deploy/postfix/` and
//! `deploy/exim/`, and a private `nats-server` that a test may stop and start
//! without disturbing anyone else's tests.
//!
//! All are torn down by `Drop`, also when the test panics.

use crate::{TestEnv, bin, free_port, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POSTFIX: &str = "/usr/sbin/postfix";
const NATS_SERVER: &str = "/usr/sbin/nats-server";
/// Serialises edits of the system's `/etc/postfix/main.cf` between tests
/// (a file of that name in the temp dir).
const MAIN_CF_LOCK: &str = "imipflow-postfix-main-cf.lock";

/// The domain the test instance treats as local (the deploy examples use it too).
pub const DOMAIN: &str = "example.org";

/// The SASL logins of the Postfix test instance's submission service: the
/// calendar manager's (as in `deploy/postfix/imip-manager-login`) and users'.
pub const SASL_LOGINS: [&str; 3] = ["calendar-manager", "alice", "bob"];
/// Their password (the Exim instance accepts it for any login).
pub const SASL_PASSWORD: &str = "test";

/// Why the Postfix tests cannot run here, or `None` when they can. Installs
/// postfix and swaks with `scripts/mta-setup.sh` when they are missing.
pub fn postfix_unavailable() -> Option<String> {
    let present = || Path::new(POSTFIX).exists() && which("swaks") && which("saslpasswd2");
    if !present() {
        let out = Command::new(repo_root().join("scripts/mta-setup.sh")).output();
        if !present() {
            let detail = match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            return Some(format!(
                "postfix, swaks or saslpasswd2 missing and scripts/mta-setup.sh could not install them: {detail}"
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("a private Postfix instance must be started as root".to_owned());
    }
    None
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
}

/// A fresh directory under the system temp dir that the unprivileged pipe
/// user can traverse (mode 0755).
pub(crate) fn private_dir(kind: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("imipflow-{kind}-{}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create private dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn wait_listening(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `nats-server` with JetStream on a free loopback port and a store
/// directory of its own, for a test that stops and starts it; killed (and
/// its directory removed) when dropped.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        let mut server = NatsServer {
            port: free_port(),
            dir: private_dir("nats"),
            child: None,
        };
        server.start_again();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store: streams and
    /// their messages survive a stop. JetStream is up before the port opens.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        wait_listening(self.port, "nats-server", Duration::from_secs(15));
    }

    /// SIGTERM (a clean shutdown, as an operator's restart would do) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Postfix instance: `main.cf` and `master.cf` are a minimal base
/// (own directories and ports, real deliveries discarded) plus the example
/// configuration from `deploy/postfix/`, with its paths pointed at this
/// instance, its pipes at the test's NATS namespace and `user=imip` replaced by
/// `nobody`. Two SMTP listeners: `mx_port` (port 25's role: incoming copies
/// only, main.cf's sender restrictions) and `submission_port` (port 587's
/// role: the lines `master.cf.imip` says to add to a submission entry, so
/// submitted mail also gets the outgoing copy and the manager's address needs
/// its login). Submission offers SASL PLAIN (Cyrus, a sasldb of this
/// instance) for the logins in [`SASL_LOGINS`], password [`SASL_PASSWORD`];
/// unlike a real submission service it also accepts unauthenticated clients,
/// as the older tests submit that way.
pub struct Postfix {
    pub dir: PathBuf,
    pub mx_port: u16,
    pub submission_port: u16,
    config_dir: PathBuf,
    registered: bool,
    started: bool,
}

impl Postfix {
    /// Writes the configuration, registers it with the system Postfix
    /// (`alternate_config_directories`), checks it and starts the instance.
    pub fn start(env: &TestEnv) -> Self {
        Self::start_with(env, |master_cf| master_cf)
    }

    /// As `start`, with `edit` applied to the (localised) example master.cf
    /// lines: for tests of a misconfigured pipe.
    pub fn start_with(env: &TestEnv, edit: impl Fn(String) -> String) -> Self {
        Self::start_inner(env, "", &edit)
    }

    /// As `start`, with `main_cf` (parameter lines) appended to main.cf:
    /// e.g. `defer_transports = imip-in, imip-out` to hold the copies until
    /// [`Self::flush`].
    pub fn start_with_main_cf(env: &TestEnv, main_cf: &str) -> Self {
        Self::start_inner(env, main_cf, &|master_cf| master_cf)
    }

    fn start_inner(env: &TestEnv, main_cf: &str, edit: &dyn Fn(String) -> String) -> Self {
        let dir = private_dir("postfix");
        let mut pf = Postfix {
            config_dir: dir.join("etc"),
            dir,
            mx_port: free_port(),
            submission_port: free_port(),
            registered: false,
            started: false,
        };
        reap_after_test(&format!(
            "postfix -c '{}' abort; rm -rf '{}'",
            pf.config_dir.display(),
            pf.dir.display()
        ));
        pf.write_config(env, main_cf, edit);
        pf.register();
        let check = pf.postfix(&["check"]);
        assert!(
            check.status.success(),
            "postfix check failed: {}{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            pf.maillog()
        );
        let start = pf.postfix(&["start"]);
        assert!(
            start.status.success(),
            "postfix start failed: {}\n{}",
            String::from_utf8_lossy(&start.stderr),
            pf.maillog()
        );
        pf.started = true;
        wait_listening(pf.mx_port, "postfix smtpd", Duration::from_secs(15));
        wait_listening(
            pf.submission_port,
            "postfix submission",
            Duration::from_secs(15),
        );
        pf
    }

    fn write_config(&self, env: &TestEnv, extra_main_cf: &str, edit: &dyn Fn(String) -> String) {
        use std::os::unix::fs::{PermissionsExt, chown};
        let etc = &self.config_dir;
        for sub in ["etc", "spool", "data", "bin"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("create instance dirs");
        }
        // The data directory belongs to the mail system owner.
        let postfix_uid = user_id("postfix");
        chown(self.dir.join("data"), Some(postfix_uid), None).expect("chown data_directory");
        // The pipe runs as nobody: it gets its own copy of the binary, in a
        // directory it can reach (target/ may not be, and may be rebuilt mid-test).
        let ingest = self.dir.join("bin/imip-ingest");
        std::fs::copy(bin("imip-ingest"), &ingest).expect("copy imip-ingest");
        for p in [self.dir.join("bin"), ingest.clone()] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }

        let deploy = repo_root().join("deploy/postfix");
        let read = |name: &str| {
            std::fs::read_to_string(deploy.join(name))
                .unwrap_or_else(|e| panic!("deploy/postfix/{name}: {e}"))
        };
        let etc_s = etc.display().to_string();
        let localise = |text: String| {
            text.replace("/etc/postfix/", &format!("{etc_s}/"))
                .replace("/usr/local/bin/imip-ingest", &ingest.display().to_string())
                .replace(
                    "IMIP_NATS_URL=nats://127.0.0.1:4222",
                    &format!(
                        "IMIP_NATS_URL={} IMIP_NAMESPACE={} IMIP_PARTITIONS={}",
                        env.nats_url, env.namespace, env.partitions
                    ),
                )
                .replace(" user=imip ", " user=nobody ")
        };
        for table in [
            "imip-incoming-bcc",
            "imip-outgoing-bcc",
            "imip-transport",
            "imip-reserved",
            "imip-manager-senders",
            "imip-manager-login",
        ] {
            std::fs::write(etc.join(table), read(table)).expect("write table");
        }

        let d = self.dir.display();
        let main_cf = format!(
            "# Private test instance (tests/src/mta.rs): own directories and ports;\n\
             # every real delivery is discarded, nothing leaves the machine.\n\
             compatibility_level = 3.6\n\
             queue_directory = {d}/spool\n\
             data_directory = {d}/data\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             myhostname = mx.{DOMAIN}\n\
             mydomain = {DOMAIN}\n\
             myorigin = $mydomain\n\
             mydestination = {DOMAIN}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             cyrus_sasl_config_path = {etc_s}/sasl\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             biff = no\n\
             default_transport = discard:\n\
             relay_transport = discard:\n\
             local_transport = discard:\n\
             virtual_transport = discard:\n\
             \n{}\n{extra_main_cf}\n",
            localise(read("main.cf.imip"))
        );
        let master_cf = format!(
            "# Private test instance (tests/src/mta.rs). No chroot anywhere.\n\
             127.0.0.1:{mx} inet n - n - - smtpd\n\
             127.0.0.1:{sub} inet n - n - - smtpd\n  -o syslog_name=postfix/submission\n  -o smtpd_sasl_auth_enable=yes\n{submission}\
             pickup    unix  n - n 60 1 pickup\n\
             cleanup   unix  n - n - 0 cleanup\n\
             qmgr      unix  n - n 300 1 qmgr\n\
             rewrite   unix  - - n - - trivial-rewrite\n\
             bounce    unix  - - n - 0 bounce\n\
             defer     unix  - - n - 0 bounce\n\
             trace     unix  - - n - 0 bounce\n\
             verify    unix  - - n - 1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n - - proxymap\n\
             showq     unix  n - n - - showq\n\
             error     unix  - - n - - error\n\
             retry     unix  - - n - - error\n\
             discard   unix  - - n - - discard\n\
             anvil     unix  - - n - 1 anvil\n\
             scache    unix  - - n - 1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n\
             \n{}",
            edit(localise(read("master.cf.imip"))),
            submission = submission_lines(&localise(read("master.cf.imip"))),
            mx = self.mx_port,
            sub = self.submission_port,
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("write main.cf");
        write_sasldb(etc);
        std::fs::write(etc.join("master.cf"), master_cf).expect("write master.cf");
    }

    /// Adds (or removes) this instance's config directory to the system
    /// main.cf's `alternate_config_directories`, under a lock: tests run in
    /// parallel processes.
    fn edit_alternate_dirs(&self, add: bool) {
        let script = r#"
            # Also drops directories that no longer exist (a test killed
            # before its Drop ran).
            new=""
            for d in $(postconf -h alternate_config_directories 2>/dev/null); do
                if [ -d "$d" ] && [ "$d" != "$1" ]; then new="$new $d"; fi
            done
            if [ "$2" = add ]; then new="$new $1"; fi
            postconf -e "alternate_config_directories = $(echo $new)"
        "#;
        let status = Command::new("flock")
            .arg(std::env::temp_dir().join(MAIN_CF_LOCK))
            .args(["sh", "-c", script, "sh"])
            .arg(&self.config_dir)
            .arg(if add { "add" } else { "remove" })
            .status()
            .expect("run flock/postconf");
        assert!(
            status.success(),
            "editing alternate_config_directories failed"
        );
    }

    fn register(&mut self) {
        self.edit_alternate_dirs(true);
        self.registered = true;
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new(POSTFIX)
            .arg("-c")
            .arg(&self.config_dir)
            .args(args)
            .output()
            .expect("run postfix")
    }

    /// Submits `message` over SMTP (swaks) to `port`; panics unless accepted.
    pub fn send(&self, port: u16, from: &str, to: &[&str], message: &[u8]) {
        let out = self.try_send(port, from, to, message);
        assert!(out.0, "SMTP submission failed:\n{}", out.1);
    }

    /// Submits `message` over SMTP; `(accepted, transcript)`.
    pub fn try_send(&self, port: u16, from: &str, to: &[&str], message: &[u8]) -> (bool, String) {
        self.try_send_as(port, None, from, to, message)
    }

    /// As `try_send`, logged in first (SASL PLAIN) as `login` when given.
    pub fn try_send_as(
        &self,
        port: u16,
        login: Option<&str>,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> (bool, String) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let file = self.dir.join(format!("msg-{nanos:x}.eml"));
        std::fs::write(&file, message).expect("write message");
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--from", from, "--to", &to.join(",")])
            .args(["--timeout", "20"])
            .arg("--data")
            .arg(format!("@{}", file.display()))
            .stdin(Stdio::null());
        if let Some(login) = login {
            cmd.args(["--auth", "PLAIN", "--auth-user", login])
                .args(["--auth-password", SASL_PASSWORD]);
        }
        let out = cmd.output().expect("run swaks");
        let _ = std::fs::remove_file(&file);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The log lines that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.maillog()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `count` log lines contain every one of `needles`; returns
    /// the last of them.
    pub async fn wait_log(&self, needles: &[&str], count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.log_lines(needles);
            if lines.len() >= count {
                return lines[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {count} maillog lines with {needles:?} within 30 s; log:\n{}",
                self.maillog()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `postqueue -p` of this instance.
    pub fn queue(&self) -> String {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("-p")
            .output()
            .expect("run postqueue -p");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -f`: retry every deferred message now.
    pub fn flush(&self) {
        let status = Command::new("postqueue")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("-f")
            .status()
            .expect("run postqueue -f");
        assert!(status.success(), "postqueue -f failed");
    }

    /// Waits until the queue is empty (every copy delivered).
    pub async fn wait_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let q = self.queue();
            if q.contains("Mail queue is empty") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue not empty after 30 s:\n{q}\nlog:\n{}",
                self.maillog()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.started {
            // `abort`: no need to wait for idle daemons, the instance is discarded.
            let _ = self.postfix(&["abort"]);
        }
        if self.registered {
            self.edit_alternate_dirs(false);
        }
        if std::env::var_os("IMIPFLOW_KEEP_POSTFIX").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The lines `deploy/postfix/master.cf.imip` tells the reader to add to
/// their submission entry (its comment lines `#      -o …`), uncommented.
fn submission_lines(master_cf: &str) -> String {
    let lines: String = master_cf
        .lines()
        .filter_map(|l| l.strip_prefix("#      -o "))
        .map(|l| format!("  -o {l}\n"))
        .collect();
    assert!(
        lines.contains("cleanup_service_name=imip-cleanup"),
        "master.cf.imip names no submission lines:\n{master_cf}"
    );
    lines
}

/// Cyrus SASL for the submission service: `sasl/smtpd.conf` (read because
/// `cyrus_sasl_config_path` points there) and a sasldb with [`SASL_LOGINS`],
/// readable by the `postfix` user smtpd runs as.
fn write_sasldb(etc: &Path) {
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, chown};
    let db = etc.join("sasldb2");
    std::fs::create_dir_all(etc.join("sasl")).expect("create sasl dir");
    std::fs::write(
        etc.join("sasl/smtpd.conf"),
        format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN\nsasldb_path: {}\n",
            db.display()
        ),
    )
    .expect("write sasl/smtpd.conf");
    for login in SASL_LOGINS {
        let mut child = Command::new("saslpasswd2")
            .arg("-f")
            .arg(&db)
            // Cyrus's default realm: the server's name (myhostname).
            .args(["-c", "-p", "-u", &format!("mx.{DOMAIN}"), login])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run saslpasswd2");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(SASL_PASSWORD.as_bytes())
            .expect("password to saslpasswd2");
        assert!(
            child.wait().expect("saslpasswd2").success(),
            "saslpasswd2 {login}"
        );
    }
    chown(&db, Some(user_id("postfix")), None).expect("chown sasldb2");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod sasldb2");
}

/// Runs `cleanup` (a shell command) once this test process has gone, from a
/// watcher in a session of its own: if the test is killed before its `Drop`
/// runs (a nextest timeout), a daemonised Postfix or an Exim daemon would
/// otherwise keep running. After a normal end it finds nothing left to do.
pub(crate) fn reap_after_test(cleanup: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {cleanup}",
        std::process::id()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn user_id(name: &str) -> u32 {
    let out = Command::new("id")
        .args(["-u", name])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user {name}"))
}

/// Where `scripts/mta-setup.sh` unpacks Debian's Exim (its packages conflict
/// with postfix, so they are not installed).
fn exim_root() -> PathBuf {
    std::env::var_os("IMIP_EXIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/imipflow/exim"))
}

/// Why the Exim tests cannot run here, or `None` when they can (unpacks Exim
/// with `scripts/mta-setup.sh` when needed).
pub fn exim_unavailable() -> Option<String> {
    if let Some(why) = postfix_unavailable() {
        return Some(why);
    }
    let runs = || {
        let conf = std::env::temp_dir().join(format!("imipflow-exim-probe-{}", std::process::id()));
        let _ = std::fs::write(&conf, "keep_environment =\n");
        let ok = Command::new(exim_root().join("usr/sbin/exim4"))
            .arg("-C")
            .arg(&conf)
            .arg("-bV")
            .output()
            .is_ok_and(|o| o.status.success());
        let _ = std::fs::remove_file(&conf);
        ok
    };
    if !runs() {
        let out = Command::new(repo_root().join("scripts/mta-setup.sh")).output();
        if !runs() {
            let detail = out
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_else(|e| e.to_string());
            return Some(format!(
                "Debian's Exim could not be unpacked into {} by scripts/mta-setup.sh: {detail}",
                exim_root().display()
            ));
        }
    }
    None
}

/// A private Exim: a minimal main section (own spool, log and ports, a test
/// PLAIN authenticator on the submission port), the routers and transports
/// from `deploy/exim/` (paths, environment and `user = imip` localised as for
/// Postfix), then a catch-all router whose transport reads and discards.
///
/// The unpacked binary is not setuid root and an alternate configuration
/// (`-C`) is not trusted, so a delivery process forked by the daemon could
/// not switch to the pipe user. Hence `queue_only`: the daemon receives, and
/// the test delivers with `run_queue` (`exim -qff`, as root) — a normal
/// queue run.
pub struct Exim {
    pub dir: PathBuf,
    pub mx_port: u16,
    pub submission_port: u16,
    config: PathBuf,
    daemon: Option<Child>,
}

impl Exim {
    pub fn start(env: &TestEnv) -> Self {
        Self::start_with(env, |transports| transports)
    }

    /// As `start`, with `edit` applied to the (localised) example transports:
    /// for tests of a misconfigured pipe.
    pub fn start_with(env: &TestEnv, edit: impl Fn(String) -> String) -> Self {
        use std::os::unix::fs::{PermissionsExt, chown};
        let dir = private_dir("exim");
        let mut exim = Exim {
            config: dir.join("exim.conf"),
            dir,
            mx_port: free_port(),
            submission_port: free_port(),
            daemon: None,
        };
        let d = exim.dir.clone();
        let exim_uid = user_id("Debian-exim");
        for sub in ["spool", "log", "bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("create instance dirs");
        }
        for sub in ["spool", "log"] {
            chown(d.join(sub), Some(exim_uid), Some(exim_uid)).expect("chown");
        }
        let ingest = d.join("bin/imip-ingest");
        std::fs::copy(bin("imip-ingest"), &ingest).expect("copy imip-ingest");
        for p in [d.join("bin"), ingest.clone()] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let read = |name: &str| {
            let text = std::fs::read_to_string(repo_root().join("deploy/exim").join(name))
                .unwrap_or_else(|e| panic!("deploy/exim/{name}: {e}"));
            text.replace("/usr/local/bin/imip-ingest", &ingest.display().to_string())
                .replace("/etc/exim4/", &format!("{}/", d.display()))
                .replace(
                    "IMIP_NATS_URL=nats://127.0.0.1:4222",
                    &format!(
                        "IMIP_NATS_URL={} ; IMIP_NAMESPACE={} ; IMIP_PARTITIONS={}",
                        env.nats_url, env.namespace, env.partitions
                    ),
                )
                .replace("user = imip\n", "user = nobody\n")
        };
        std::fs::write(d.join("imip-managers"), read("imip-managers"))
            .expect("write imip-managers");
        let (mx, sub) = (exim.mx_port, exim.submission_port);
        let config = format!(
            "# Private test instance (tests/src/mta.rs); every real delivery is discarded.\n\
             primary_hostname = mx.{DOMAIN}\n\
             domainlist local_domains = {DOMAIN}\n\
             daemon_smtp_ports = {mx} : {sub}\n\
             local_interfaces = 127.0.0.1\n\
             spool_directory = {d}/spool\n\
             log_file_path = {d}/log/%slog\n\
             pid_file_path = {d}/exim.pid\n\
             exim_path = {exim_bin}\n\
             tls_advertise_hosts =\n\
             queue_only = true\n\
             never_users = root\n\
             keep_environment =\n\
             auth_advertise_hosts = ${{if eq{{$received_port}}{{{sub}}}{{*}}{{}}}}\n\
             acl_smtp_mail = acl_imip_check_mail\n\
             acl_smtp_rcpt = acl_check_rcpt\n\
             \n\
             begin acl\n\
             {acl}\n\
             acl_check_rcpt:\n\
             \x20 accept authenticated = *\n\
             \x20 accept domains = +local_domains\n\
             \x20 deny message = relay not permitted\n\
             \n\
             begin routers\n\
             {routers}\n\
             deliver_and_discard:\n\
             \x20 driver = accept\n\
             \x20 transport = discard\n\
             \n\
             begin transports\n\
             {transports}\n\
             discard:\n\
             \x20 driver = pipe\n\
             \x20 command = /bin/sh -c 'cat >/dev/null'\n\
             \x20 user = nobody\n\
             \n\
             begin retry\n\
             *  *  F,1h,1m\n\
             \n\
             begin authenticators\n\
             plain:\n\
             \x20 driver = plaintext\n\
             \x20 public_name = PLAIN\n\
             \x20 server_prompts = :\n\
             \x20 server_condition = ${{if eq{{$auth3}}{{{SASL_PASSWORD}}}}}\n\
             \x20 server_set_id = $auth2\n",
            d = d.display(),
            exim_bin = exim_root().join("usr/sbin/exim4").display(),
            acl = read("acl_imip"),
            routers = read("router_imip"),
            transports = edit(read("transport_imip")),
        );
        std::fs::write(&exim.config, config).expect("write exim.conf");
        let check = exim.command().arg("-bV").output().expect("run exim -bV");
        assert!(
            check.status.success(),
            "exim rejects the configuration: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let daemon = exim
            .command()
            .arg("-bdf")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exim daemon");
        reap_after_test(&format!(
            "kill -9 {}; rm -rf '{}'",
            daemon.id(),
            exim.dir.display()
        ));
        exim.daemon = Some(daemon);
        wait_listening(mx, "exim", Duration::from_secs(15));
        wait_listening(sub, "exim submission", Duration::from_secs(15));
        exim
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(exim_root().join("usr/sbin/exim4"));
        cmd.arg("-C").arg(&self.config);
        cmd
    }

    /// Submits `message` over SMTP (swaks); with `auth`, authenticates as
    /// `from` first (the submission port's test authenticator). Panics
    /// unless accepted.
    pub fn send(&self, port: u16, auth: bool, from: &str, to: &[&str], message: &[u8]) {
        let (accepted, transcript) =
            self.try_send_as(port, auth.then_some(from), from, to, message);
        assert!(accepted, "SMTP submission failed:\n{transcript}");
    }

    /// Submits `message` over SMTP, logged in first as `login` when given
    /// (the test authenticator takes any login with [`SASL_PASSWORD`]);
    /// `(accepted, transcript)`.
    pub fn try_send_as(
        &self,
        port: u16,
        login: Option<&str>,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> (bool, String) {
        let file = self.dir.join("message.eml");
        std::fs::write(&file, message).expect("write message");
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--from", from, "--to", &to.join(",")])
            .args(["--timeout", "20"])
            .arg("--data")
            .arg(format!("@{}", file.display()))
            .stdin(Stdio::null());
        if let Some(login) = login {
            cmd.args(["--auth", "PLAIN", "--auth-user", login])
                .args(["--auth-password", SASL_PASSWORD]);
        }
        let out = cmd.output().expect("run swaks");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// One queue run over every message (`exim -qff`), as root.
    pub fn run_queue(&self) {
        let out = self.command().arg("-qff").output().expect("run exim -qff");
        assert!(
            out.status.success(),
            "exim -qff: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `exim -bp`: the queue.
    pub fn queue(&self) -> String {
        let out = self.command().arg("-bp").output().expect("run exim -bp");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn mainlog(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/mainlog")).unwrap_or_default()
    }

    /// The main log's lines that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.mainlog()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if std::env::var_os("IMIPFLOW_KEEP_EXIM").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the calendar manager sends to Bob on his behalf (he made the meeting
/// in its web page): his own REQUEST, which, from the manager's address,
/// imipflow applies as if Bob had sent it (the Postfix and Exim tests).
pub fn managed_meeting(message_id: &str, envelope_from: &str) -> Vec<u8> {
    let meeting = crate::vevent(&[
        "UID:bob-planning@example.org",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270312T090000Z",
        "DTEND:20270312T100000Z",
        "SUMMARY:Planning",
        "ORGANIZER:mailto:bob@example.org",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:dave@example.com",
    ]);
    crate::imip_mail("REQUEST", envelope_from, message_id, &[meeting])
}

/// Bob's busy time once [`managed_meeting`] is applied.
pub const MANAGED_SLOT: &str = "2027-03-12T09:00:00Z 2027-03-12T10:00:00Z BUSY";
