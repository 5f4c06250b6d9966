//! The harness every end-to-end test uses: a private PostgreSQL database and
//! NATS namespace per test on the local services, the real binaries, and
//! cleanup when the test ends (pass or fail).
//!
//! Tests run in parallel (nextest runs each in its own process), so nothing
//! here is shared: names are unique per process and per environment.

pub mod browser;
pub mod manager_http;
pub mod mta;
pub mod oracle;
pub mod rusage;
pub mod secure;
pub mod servers;
pub mod smtp_sink;

use async_nats::jetstream;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const PG_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Directory of the workspace's binaries (`target/debug`), found from the test
/// executable's own path (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IMIPFLOW_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --bins`; scripts/test does it)",
        path.display()
    );
    path
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixture(rel: &str) -> Vec<u8> {
    let path = repo_root().join("tests/fixtures").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// One test's private world.
pub struct TestEnv {
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub nats_url: String,
    pub partitions: u32,
}

impl TestEnv {
    /// A fresh namespace and database, migrated (streams and tables created)
    /// by the real `imip-processor migrate`.
    pub async fn new() -> Self {
        let env = Self::unmigrated();
        let out = env.run("imip-processor", &["migrate"], b"").await;
        assert!(
            out.status.success(),
            "imip-processor migrate failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    /// Like [`Self::new`] with `partitions` lanes and `IMIP_DB_LAYOUT=layout`
    /// for `migrate` (`list`: the tables LIST-partitioned by partition).
    pub async fn with_layout(layout: &str, partitions: u32) -> Self {
        let mut env = Self::unmigrated();
        env.partitions = partitions;
        let mut cmd = env.command("imip-processor");
        cmd.env("IMIP_DB_LAYOUT", layout);
        let out = env.run_with(cmd, &["migrate"], b"").await;
        assert!(
            out.status.success(),
            "imip-processor migrate (layout {layout}) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    /// The partition (shard key) of `user`'s rows: where ingest routes their
    /// messages and the lanes write them. Raw SQL that inserts rows gives it.
    pub fn partition_of(&self, user: &str) -> i32 {
        imipflow_schema::partition(user, self.partitions) as i32
    }

    /// Names only; nothing created yet.
    pub fn unmigrated() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!(
            "t{}x{:x}x{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        TestEnv {
            namespace: id.clone(),
            database: format!("imip_{id}"),
            database_url: format!("postgresql://postgres@127.0.0.1:5432/imip_{id}"),
            nats_url: NATS_URL.to_owned(),
            partitions: 4,
        }
    }

    /// Environment variables that point a binary at this test's world.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IMIP_NAMESPACE", self.namespace.clone()),
            ("IMIP_DATABASE_URL", self.database_url.clone()),
            ("IMIP_NATS_URL", self.nats_url.clone()),
            ("IMIP_PARTITIONS", self.partitions.to_string()),
            ("IMIP_LOG", "warn".to_owned()),
            // Tests run many processors at once: none listens for metrics
            // unless the test asks for it (IMIP_METRICS_LISTEN via `extra`).
            ("IMIP_METRICS_LISTEN", String::new()),
        ]
    }

    pub fn command(&self, name: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin(name));
        cmd.envs(self.vars());
        cmd.env_remove("IMIP_CONFIG");
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs a binary to completion with `stdin`, within a minute.
    pub async fn run(&self, name: &str, args: &[&str], stdin: &[u8]) -> Output {
        self.run_with(self.command(name), args, stdin).await
    }

    pub async fn run_with(
        &self,
        mut cmd: tokio::process::Command,
        args: &[&str],
        stdin: &[u8],
    ) -> Output {
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn binary");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        // Feed stdin concurrently: a binary may exit before reading it all.
        let feeder = tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            drop(input);
        });
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("binary did not finish within 60 s")
            .expect("wait for binary");
        let _ = feeder.await;
        out
    }

    /// `imip-ingest` with the given arguments and message.
    pub async fn ingest(&self, args: &[&str], message: &[u8]) -> Output {
        self.run("imip-ingest", args, message).await
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        // A cluster's comma-separated list: async-nats parses a &str as one URL.
        let servers: Vec<async_nats::ServerAddr> = self
            .nats_url
            .split(',')
            .map(|u| u.trim().parse().expect("NATS URL"))
            .collect();
        // async-nats ignores credentials in a URL: hand them over (a test's
        // private server may want a user and password).
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = servers
            .first()
            .and_then(|s| Some((s.username()?, s.password()?)))
        {
            options = options.user_and_password(user.to_owned(), password.to_owned());
        }
        let client = options.connect(servers).await.expect("connect to NATS");
        jetstream::new(client)
    }

    /// Every message currently in a stream of this namespace (`messages`,
    /// `quarantine` or `events`), in stream order, with its headers.
    pub async fn stream_messages(&self, which: &str) -> Vec<StoredMessage> {
        let js = self.jetstream().await;
        let name = format!("{}-{which}", self.namespace);
        let mut stream = js.get_stream(&name).await.expect("stream exists");
        let info = stream.info().await.expect("stream info").clone();
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        // One ordered consumer reads the whole stream in batches (a direct get
        // per message would be a round trip each).
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        use futures::StreamExt;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        {
            let m = m.expect("message");
            let info_m = m.info().expect("info");
            let seq = info_m.stream_sequence;
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned());
            out.push(StoredMessage {
                sequence: seq,
                subject: m.subject.to_string(),
                msg_id,
                json: serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null),
            });
            if seq >= info.state.last_sequence {
                break;
            }
        }
        out
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}

#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub json: serde_json::Value,
}

/// Deletes the namespace's streams and drops the database, on a thread of its
/// own so that it works from `Drop` inside or outside a runtime.
fn cleanup(namespace: String, database: String, nats_url: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(async move {
            if let Ok(client) = async_nats::connect(&nats_url).await {
                let js = jetstream::new(client);
                for which in ["messages", "quarantine", "events"] {
                    let _ = js.delete_stream(format!("{namespace}-{which}")).await;
                }
                // Consumers and any other streams a test made under the prefix.
                let mut names = js.stream_names();
                let mut extra = Vec::new();
                use futures::StreamExt;
                while let Some(Ok(name)) = names.next().await {
                    if name.starts_with(&format!("{namespace}-")) {
                        extra.push(name);
                    }
                }
                for name in extra {
                    let _ = js.delete_stream(name).await;
                }
            }
            if let Ok((client, conn)) =
                tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .await;
            }
        });
    })
    .join();
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        cleanup(
            self.namespace.clone(),
            self.database.clone(),
            self.nats_url.clone(),
        );
    }
}

/// The JSON lines `imip-ingest --print` wrote.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `expected` is a subset of `actual`: every key given must match; arrays must
/// have the same length and match element-wise. Returns the first mismatch's path.
pub fn subset_mismatch(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, v)| {
            let p = format!("{path}.{k}");
            match a.get(k) {
                Some(av) => subset_mismatch(v, av, &p),
                None if v.is_null() => None,
                None => Some(format!("{p}: missing, expected {v}")),
            }
        }),
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{path}: {} elements, expected {}",
                    a.len(),
                    e.len()
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| subset_mismatch(ev, av, &format!("{path}[{i}]")))
        }
        (e, a) if e == a => None,
        (e, a) => Some(format!("{path}: got {a}, expected {e}")),
    }
}

/// A running `imip-processor run`, killed when dropped.
pub struct Processor {
    pub child: tokio::process::Child,
}

impl Processor {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGKILL, no chance to clean up.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM and wait for a graceful exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("processor did not stop within 30 s of SIGTERM")
            .expect("wait")
    }
}

/// A TCP port on 127.0.0.1 that is free right now (bound to port 0, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running `imip-publisher`, killed when dropped.
pub struct Publisher {
    pub child: tokio::process::Child,
    pub port: u16,
}

impl Publisher {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL, no chance to clean up.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM and wait for a graceful exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("publisher did not stop within 30 s of SIGTERM")
            .expect("wait")
    }
}

/// The calendar address [`TestEnv::start_manager_with`] gives the manager.
pub const MANAGER_ADDRESS: &str = "calendar@example.com";

/// The UID of [`invite_to_planning`]'s meeting.
pub const PLANNING_UID: &str = "alices-planning@example.com";

/// The manager tests' invitation (tests/tests/manager.rs and
/// manager_browser.rs): `organizer` (Alice) invites `attendee` (Bob) to
/// "Quarterly planning", 2027-03-16 09:00–10:00 UTC, SEQUENCE 2. Ingested as
/// Alice's own outgoing copy (her record) and as its delivery to Bob (his
/// pending request); returns once both are applied.
pub async fn invite_to_planning(env: &TestEnv, organizer: &str, attendee: &str) {
    let lines = vevent(&[
        &format!("UID:{PLANNING_UID}"),
        "SEQUENCE:2",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270316T090000Z",
        "DTEND:20270316T100000Z",
        "SUMMARY:Quarterly planning",
        &format!("ORGANIZER;CN=Alice:mailto:{organizer}"),
        &format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{organizer}"),
        &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:{attendee}"),
    ]);
    deliver_invitation(env, organizer, attendee, "invite@x", lines).await;
}

/// An invitation of `organizer` to `attendee` (one VEVENT of `lines`),
/// ingested as the organizer's own outgoing copy (their record) and as its
/// delivery to the attendee (a pending request); returns once both are
/// applied. `message_id` must differ per invitation.
pub async fn deliver_invitation(
    env: &TestEnv,
    organizer: &str,
    attendee: &str,
    message_id: &str,
    lines: Vec<String>,
) {
    let mail = imip_mail("REQUEST", organizer, message_id, &[lines]);
    for args in [
        vec!["--sender", organizer],
        vec![
            "--direction",
            "incoming",
            "--sender",
            organizer,
            "--recipient",
            attendee,
        ],
    ] {
        let out = env.ingest(&args, &mail).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.wait_applied().await;
}

/// A running `imip-manager`, killed when dropped.
pub struct Manager {
    pub child: tokio::process::Child,
    pub port: u16,
}

impl Manager {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM and wait for a graceful exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("manager did not stop within 30 s of SIGTERM")
            .expect("wait")
    }
}

impl TestEnv {
    /// Starts `imip-processor run` with this environment (plus `extra` variables).
    pub fn start_processor(&self, extra: &[(&str, &str)]) -> Processor {
        let mut cmd = self.command("imip-processor");
        cmd.arg("run")
            .envs(extra.iter().copied())
            .env("IMIP_LEASE_MS", "5000");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Processor {
            child: cmd.spawn().expect("spawn imip-processor run"),
        }
    }

    /// Starts `imip-publisher` listening on 127.0.0.1:`port` and waits until
    /// it accepts connections (it listens only once NATS and PostgreSQL are
    /// connected and its consumer exists).
    pub async fn start_publisher(&self, port: u16) -> Publisher {
        self.start_publisher_with(port, |_| {}).await
    }

    /// Like [`Self::start_publisher`], after `configure` had its say on the
    /// command (extra settings, resource limits through `pre_exec`, …).
    pub async fn start_publisher_with(
        &self,
        port: u16,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Publisher {
        let mut cmd = self.command("imip-publisher");
        cmd.env("IMIP_PUBLISHER_LISTEN", format!("127.0.0.1:{port}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn imip-publisher");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("imip-publisher exited before listening: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "imip-publisher did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Publisher { child, port }
    }

    /// Starts `imip-manager` listening on 127.0.0.1:`port` (calendar address
    /// `calendar@example.com`, which must also be the processor's
    /// `IMIP_MANAGER_ADDRESSES`) and waits until it accepts connections (it
    /// listens once NATS, its consumer and PostgreSQL are there); `configure`
    /// adds settings (the SMTP URL, trusted proxies, …).
    pub async fn start_manager_with(
        &self,
        port: u16,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Manager {
        let mut cmd = self.command("imip-manager");
        cmd.env("IMIP_MANAGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)
            .env("IMIP_MANAGER_FROM", MANAGER_ADDRESS);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn imip-manager");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("imip-manager exited before listening: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "imip-manager did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Manager { child, port }
    }

    /// `user`'s `message_log` rows, in stream order: (method, outcome).
    pub async fn message_log_of(&self, user: &str) -> Vec<(String, String)> {
        self.pg()
            .await
            .query(
                "SELECT method, outcome FROM message_log WHERE user_addr = $1 ORDER BY stream_seq",
                &[&user],
            )
            .await
            .expect("message_log")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// `imip-ctl ARGS --json`, parsed; panics on failure.
    pub async fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.run("imip-ctl", &all, b"").await;
        assert!(
            out.status.success(),
            "imip-ctl {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "imip-ctl {all:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `imip-ctl freebusy USER --json` over [from, to) as `"start end FBTYPE"` lines.
    pub async fn busy_lines(&self, user: &str, from: &str, to: &str) -> Vec<String> {
        let fb = self
            .ctl_json(&["freebusy", user, "--from", from, "--to", to])
            .await;
        fb["periods"]
            .as_array()
            .expect("periods")
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["start"].as_str().unwrap(),
                    p["end"].as_str().unwrap(),
                    p["fbtype"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// Stream messages that every partition has applied (all lanes caught up).
    pub async fn wait_applied(&self) {
        let js = self.jetstream().await;
        let mut stream = js
            .get_stream(format!("{}-messages", self.namespace))
            .await
            .expect("messages stream");
        let db = self.pg().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let info = stream.info().await.expect("stream info");
            let last = info.state.last_sequence as i64;
            // Each partition's highest stream sequence must be applied; the
            // simplest sufficient check: the max applied position reaches the
            // stream's end and no partition lags behind its own last message.
            let rows = db
                .query("SELECT partition, last_sequence FROM partitions", &[])
                .await
                .unwrap_or_default();
            let applied: std::collections::HashMap<i32, i64> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut caught_up = true;
            for p in 0..self.partitions {
                let subject = format!("{}.msg.{p}.>", self.namespace);
                let last_in_p = match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(m) => m.sequence as i64,
                    Err(_) => 0,
                };
                if applied.get(&(p as i32)).copied().unwrap_or(0) < last_in_p {
                    caught_up = false;
                }
            }
            // And every committed event has been published by the relay.
            let unpublished: i64 = db
                .query_one(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(1);
            if caught_up && unpublished == 0 && (last == 0 || !applied.is_empty()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "processor did not catch up within 180 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Builds an iMIP mail: `method`, From `from`, with the given VEVENT (or other
/// component) bodies, each a list of content lines without CRLF.
pub fn imip_mail(
    method: &str,
    from: &str,
    message_id: &str,
    components: &[Vec<String>],
) -> Vec<u8> {
    let mut ics = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow tests//EN\r\nMETHOD:{method}\r\n"
    );
    for c in components {
        for l in c {
            ics.push_str(l);
            ics.push_str("\r\n");
        }
    }
    ics.push_str("END:VCALENDAR\r\n");
    format!(
        "From: <{from}>\r\nTo: <someone@example.org>\r\nSubject: {method}\r\nMessage-ID: <{message_id}>\r\n\
Date: Mon, 01 Mar 2027 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n{ics}"
    )
    .into_bytes()
}

/// "address PARTSTAT" of each attendee of an `imip-ctl object --json`
/// document, sorted.
/// `attendee`'s PARTSTAT in `organizer`'s stored object `uid` (read with
/// `imip-ctl object --json`); panics, showing the object, when the attendee
/// is not in it.
pub async fn partstat_of(env: &TestEnv, organizer: &str, uid: &str, attendee: &str) -> String {
    let object = env.ctl_json(&["object", organizer, uid]).await;
    object["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == attendee)
        .and_then(|a| a["partstat"].as_str())
        .unwrap_or_else(|| panic!("no {attendee} in {object:#}"))
        .to_owned()
}

pub fn partstats(object: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = object["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["address"].as_str().unwrap(),
                a["partstat"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

/// A VEVENT as content lines: `lines` are inserted between BEGIN and END.
pub fn vevent(lines: &[&str]) -> Vec<String> {
    let mut v = vec!["BEGIN:VEVENT".to_owned()];
    v.extend(lines.iter().map(|l| l.to_string()));
    v.push("END:VEVENT".to_owned());
    v
}

/// Publishes payloads straight onto the messages stream, as `imip-ingest` would
/// (same subject and `Nats-Msg-Id`), for tests that need thousands of messages
/// faster than one process per message allows.
pub async fn publish_payloads(env: &TestEnv, payloads: &[serde_json::Value]) {
    let js = env.jetstream().await;
    let ns = imipflow_schema::Namespace::new(&env.namespace).unwrap();
    let mut acks = Vec::new();
    for p in payloads {
        let user = p["user"].as_str().unwrap();
        let subject = ns.message_subject(
            imipflow_schema::partition(user, env.partitions),
            &imipflow_schema::user_key(user),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", p["dedupe_id"].as_str().unwrap());
        acks.push(
            js.publish_with_headers(subject, headers, serde_json::to_vec(p).unwrap().into())
                .await
                .expect("publish"),
        );
        if acks.len() >= 256 {
            for a in acks.drain(..) {
                a.await.expect("ack");
            }
        }
    }
    for a in acks {
        a.await.expect("ack");
    }
}

/// The payload `imip-ingest --print` makes of `mail` sent by `sender`.
pub async fn payload_of(env: &TestEnv, sender: &str, mail: &[u8]) -> serde_json::Value {
    let out = env.ingest(&["--print", "--sender", sender], mail).await;
    assert!(out.status.success());
    json_lines(&out.stdout).remove(0)
}

/// Every event on the events stream of this namespace, in stream order.
pub async fn all_events(env: &TestEnv) -> Vec<serde_json::Value> {
    env.stream_messages("events")
        .await
        .into_iter()
        .map(|m| m.json)
        .collect()
}

/// Raises this test process's soft descriptor limit to its hard limit (it
/// opens more than a thousand sockets).
pub fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}
