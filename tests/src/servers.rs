//! Private servers for tests that stop, restart, pause or kill a server: a
//! nats-server with its own file store, a three-node NATS cluster, and a
//! PostgreSQL cluster, each on free loopback ports with its data in a temp
//! directory, torn down when dropped (also when the test panics).
//!
//! The shared services on 4222 and 5432 are never touched from here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

fn wait_port(port: u16, up: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} not {} within {within:?}",
            if up { "open" } else { "closed" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The nats-server binary: `IMIP_TEST_NATS_SERVER` or the machine's.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("IMIP_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// One nats-server with JetStream on a file store of its own.
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub store: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// User and password the server wants (plain TCP), if any.
    login: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl NatsServer {
    /// A single server on a free port, started and ready for JetStream.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A single server with extra lines inside its `jetstream { }` block
    /// (e.g. `sync_interval: always` on servers ≥ 2.10).
    pub async fn start_with(jetstream_extra: &str) -> Self {
        let dir = TempDir::new("imip-nats");
        let port = crate::free_port();
        let mut s = Self::configure(&dir.0, "n1", port, 0, &[], jetstream_extra);
        s._dir = Some(dir);
        s.spawn();
        s.wait_ready().await;
        s
    }

    /// A single plain-TCP server that wants a user and password; [`Self::url`]
    /// carries them.
    pub async fn start_with_login(user: &str, password: &str) -> Self {
        let dir = TempDir::new("imip-nats");
        let port = crate::free_port();
        let mut s = Self::configure(&dir.0, "n1", port, 0, &[], "");
        let mut text = std::fs::read_to_string(&s.config).expect("nats config");
        text.push_str(&format!(
            "authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n"
        ));
        std::fs::write(&s.config, text).expect("write nats config");
        s.login = Some((user.to_owned(), password.to_owned()));
        s._dir = Some(dir);
        s.spawn();
        s.wait_ready().await;
        s
    }

    /// A single server that accepts messages of at most `bytes` (headers and
    /// payload; nats-server's `max_payload`, 1 MiB by default), announced in
    /// its INFO.
    pub async fn start_with_max_payload(bytes: usize) -> Self {
        let dir = TempDir::new("imip-nats");
        let port = crate::free_port();
        let mut s = Self::configure(&dir.0, "n1", port, 0, &[], "");
        let mut text = std::fs::read_to_string(&s.config).expect("nats config");
        text.push_str(&format!("max_payload: {bytes}\n"));
        std::fs::write(&s.config, text).expect("write nats config");
        s._dir = Some(dir);
        s.spawn();
        s.wait_ready().await;
        s
    }

    fn configure(
        dir: &Path,
        name: &str,
        port: u16,
        cluster_port: u16,
        routes: &[u16],
        jetstream_extra: &str,
    ) -> Self {
        let store = dir.join(format!("store-{name}"));
        let config = dir.join(format!("{name}.conf"));
        let mut text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n  {jetstream_extra}\n}}\n",
            store.display()
        );
        if cluster_port != 0 {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: imipc\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        std::fs::write(&config, text).expect("write nats config");
        NatsServer {
            name: name.to_owned(),
            port,
            cluster_port,
            store,
            config,
            child: None,
            login: None,
            _dir: None,
        }
    }

    pub fn url(&self) -> String {
        if let Some((user, password)) = &self.login {
            return format!("nats://{user}:{password}@127.0.0.1:{}", self.port);
        }
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::File::create(self.config.with_extension("log")).expect("nats log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(20));
    }

    /// Waits until JetStream answers on this server (for a cluster member:
    /// until the cluster has a meta leader).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut options =
                async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
            if let Some((user, password)) = &self.login {
                options = options.user_and_password(user.clone(), password.clone());
            }
            if let Ok(client) = options.connect(format!("127.0.0.1:{}", self.port)).await {
                // Raw `$JS.API.INFO`: any answer without an error means
                // JetStream is up (on a cluster member: a meta leader exists).
                let reply = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await;
                if let Ok(Ok(m)) = reply
                    && !String::from_utf8_lossy(&m.payload).contains("\"error\"")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} (port {}) not ready for JetStream within 30 s; log: {}",
                self.name,
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: nothing is flushed beyond what the server already wrote.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// Starts again on the same port and store.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts again without waiting for JetStream (cluster members need their peers).
    pub fn restart_nowait(&mut self) {
        self.spawn();
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three nats-servers on loopback with routes between them and JetStream on
/// each: streams created with 3 replicas survive the loss of one node.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    _dir: TempDir,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let dir = TempDir::new("imip-natsc");
        let ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let cports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                let routes: Vec<u16> = cports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect();
                NatsServer::configure(
                    &dir.0,
                    &format!("n{}", i + 1),
                    ports[i],
                    cports[i],
                    &routes,
                    "",
                )
            })
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        for n in &nodes {
            n.wait_ready().await;
        }
        NatsCluster { nodes, _dir: dir }
    }

    /// `nats://a,nats://b,nats://c`: what IMIP_NATS_URL lists.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A PostgreSQL 15 cluster of its own (initdb in a temp dir, `pg_ctl` on a
/// free port, unix socket in the same temp dir), run as the `postgres` user.
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    dir: TempDir,
    running: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `pg_ctl start` of the cluster in `data` with server options `opts`,
/// logging to `dir/pg.log`; panics with the log when it fails.
pub(crate) fn pg_ctl_start(data: &Path, opts: &str, dir: &Path) {
    let log = dir.join("pg.log").display().to_string();
    let data = data.display().to_string();
    let out = as_postgres(
        "pg_ctl",
        &[
            "-D", &data, "-o", opts, "-l", &log, "-w", "-t", "60", "start",
        ],
    );
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

pub(crate) fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser")
}

impl PgServer {
    pub fn start() -> Self {
        let dir = TempDir::new("imip-pg");
        let _ = Command::new("chown")
            .args(["postgres:postgres", &dir.0.display().to_string()])
            .status();
        let data = dir.0.join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgServer {
            port: crate::free_port(),
            data,
            dir,
            running: false,
        };
        pg.restart();
        pg
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// (Re)starts on the same port and data directory and waits until it accepts connections.
    pub fn restart(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.dir.0.display()
        );
        pg_ctl_start(&self.data, &opts, &self.dir.0);
        self.running = true;
        wait_port(self.port, true, Duration::from_secs(30));
    }

    /// Immediate shutdown: every backend is killed mid-transaction, and the
    /// next start runs crash recovery (as after a kill -9 of the postmaster).
    pub fn stop_immediate(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        self.running = false;
        wait_port(self.port, false, Duration::from_secs(20));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            self.stop_immediate();
        }
    }
}

/// Starts `imip-processor run` for `env` with `extra` variables (which, unlike
/// [`crate::TestEnv::start_processor`], may set `IMIP_LEASE_MS`), its stderr
/// appended to `log` when given (fencing evidence is read from there).
pub fn spawn_processor(
    env: &crate::TestEnv,
    extra: &[(&str, &str)],
    log: Option<&Path>,
) -> crate::Processor {
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .env("IMIP_LEASE_MS", "1000")
        // Several instances per test, tests in parallel: no fixed listener port.
        .env("IMIP_METRICS_LISTEN", "")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("processor log");
            cmd.stderr(f);
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    crate::Processor {
        child: cmd.spawn().expect("spawn imip-processor run"),
    }
}
