//! `imip-bench latency`: how long after ingest hands a message over does its
//! change event appear on the events stream, at fixed offered rates and at
//! saturation, with one release `imip-processor run`.
//!
//! Each message is a new event with a UID of its own; a core subscription on
//! `<ns>.events.>` timestamps the first `object.changed` event carrying that
//! UID. The clock starts when the message is durably in JetStream: the
//! publish ack of the bench's warm client, or, in the `ingest` phase, the
//! moment the `imip-ingest` process has exited (so it includes nothing of
//! ingest's own run time: that is `imip-bench ingest`'s figure).
//!
//! Baseline, sampled at the same rate and interleaved with the measured
//! messages: the serial floor of what the pipeline must do for one message,
//! from a warm client — a JetStream publish-with-ack, one committed one-row
//! PostgreSQL INSERT, and a second JetStream publish-with-ack (durable in,
//! durable commit, durable out).

use crate::report;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use imipflow_ingest::{Envelope, Output, plan::RawMail};
use imipflow_schema::{Direction, Namespace};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct LatencyArgs {
    /// Where imip-processor is.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The imip-ingest binary for the `ingest` phase (default: <bin-dir>/imip-ingest).
    #[arg(long)]
    pub ingest: Option<PathBuf>,
    /// Seconds per fixed-rate phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Messages in the saturation phase.
    #[arg(long, default_value_t = 5000)]
    pub saturation: usize,
    /// Distinct users the messages are spread over.
    #[arg(long, default_value_t = 64)]
    pub users: usize,
    /// Results file (default: bench/results/latency-<timestamp>.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CI mode: 1 s phases at 20 and 100 msg/s, 100 messages at saturation.
    #[arg(long)]
    pub smoke: bool,
    /// Extra environment of the processor, KEY=VALUE (repeatable), e.g.
    /// IMIP_METRICS_LISTEN=127.0.0.1:9465 to watch its batch histograms.
    #[arg(long = "processor-env", value_parser = parse_env)]
    pub processor_env: Vec<(String, String)>,
    /// NATS server.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "Connection"
    )]
    pub nats_url: String,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Row ids of the baseline's INSERTs, unique over the run.
static BASELINE_ROW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

const PG_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

/// How a phase hands messages over.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// Publish-with-ack from the bench's warm client; clock starts at the ack.
    Publish,
    /// One `imip-ingest` process per message; clock starts at its exit.
    Ingest,
}

struct Phase {
    name: String,
    source: Source,
    /// Offered messages per second; `None` is saturation.
    rate: Option<f64>,
    count: usize,
}

pub struct PhaseResult {
    pub name: String,
    pub offered: Option<f64>,
    pub achieved: f64,
    pub latency: Vec<Duration>,
    pub baseline: Vec<Duration>,
    pub lost: usize,
}

impl PhaseResult {
    pub fn p(&self, q: f64) -> f64 {
        percentile_ms(&self.latency, q)
    }
    pub fn base(&self, q: f64) -> f64 {
        percentile_ms(&self.baseline, q)
    }
}

/// Nearest-rank percentile in ms (`q` in 0..=1).
pub fn percentile_ms(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let out = run_to_file(&args)?;
    eprintln!("imip-bench: results written to {}", out.display());
    Ok(())
}

/// Runs the phases and writes the results file; returns its path.
pub fn run_to_file(args: &LatencyArgs) -> anyhow::Result<PathBuf> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load_before = report::loadavg();
    let started = Utc::now();
    let results = rt.block_on(async {
        let env: Vec<(&str, String)> = args
            .processor_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let pipe = Pipeline::start(&args.bin_dir, &args.nats_url, "l", &env).await?;
        let r = measure(args, &pipe).await;
        pipe.stop().await;
        r
    })?;
    let md = markdown(args, &results, started, &load_before);
    let path = crate::report::write_results("latency", args.out.as_deref(), started, &md)?;
    print!("{md}");
    let lost: usize = results.iter().map(|r| r.lost).sum();
    if lost > 0 {
        bail!("{lost} message(s) produced no change event in time");
    }
    Ok(path)
}

fn phases(args: &LatencyArgs) -> Vec<Phase> {
    let (secs, rates, sat) = if args.smoke {
        (1.0, vec![20.0, 100.0], 100)
    } else {
        (args.seconds as f64, vec![100.0, 1000.0], args.saturation)
    };
    let mut v = vec![Phase {
        name: format!("imip-ingest processes, {} msg/s", rates[0]),
        source: Source::Ingest,
        rate: Some(rates[0]),
        count: (rates[0] * secs) as usize,
    }];
    for r in rates {
        v.push(Phase {
            name: format!("{r} msg/s"),
            source: Source::Publish,
            rate: Some(r),
            count: (r * secs) as usize,
        });
    }
    v.push(Phase {
        name: "saturation".into(),
        source: Source::Publish,
        rate: None,
        count: sat,
    });
    v
}

/// A private namespace and database, migrated, with one `imip-processor
/// run` on them and a subscriber timestamping each UID's first change event.
pub(crate) struct Pipeline {
    pub ns: Namespace,
    pub database: String,
    pub js: async_nats::jetstream::Context,
    /// On the pipeline's database (also holds the baseline's table).
    pub db: tokio_postgres::Client,
    pub insert: tokio_postgres::Statement,
    /// When each UID's first change event arrived.
    pub arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    child: Option<tokio::process::Child>,
    listener: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    /// `tag` keeps concurrent benchmarks' namespaces apart; `env` adds
    /// processor settings.
    pub async fn start(
        bin_dir: &Path,
        nats_url: &str,
        tag: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Pipeline> {
        let pid = std::process::id();
        let ns = Namespace::new(&format!("bench{tag}{pid}"))?;
        let database = format!("imip_bench{tag}{pid}");
        let database_url = format!("postgresql://postgres@127.0.0.1:5432/{database}");
        let client = async_nats::connect(nats_url)
            .await
            .context("cannot connect to NATS")?;
        let js = async_nats::jetstream::new(client.clone());
        let processor = bin_dir.join("imip-processor");
        let mut vars: Vec<(&str, String)> = vec![
            ("IMIP_NAMESPACE", ns.as_str().to_owned()),
            ("IMIP_DATABASE_URL", database_url.clone()),
            ("IMIP_NATS_URL", nats_url.to_owned()),
            ("IMIP_LOG", "warn".to_owned()),
            // No HTTP listener: its fixed default port may be taken.
            ("IMIP_METRICS_LISTEN", String::new()),
        ];
        vars.extend(env.iter().cloned());
        let out = tokio::process::Command::new(&processor)
            .arg("migrate")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .await
            .with_context(|| format!("cannot run {}", processor.display()))?;
        if !out.status.success() {
            bail!(
                "{} migrate failed: {}",
                processor.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (db, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        db.batch_execute(
            "CREATE TABLE bench_baseline (id bigint PRIMARY KEY, body jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let insert = db
            .prepare("INSERT INTO bench_baseline (id, body) VALUES ($1, $2)")
            .await?;
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut sub = client
            .subscribe(format!("{}.events.>", ns.as_str()))
            .await
            .context("cannot subscribe to the events")?;
        client.flush().await?;
        let seen = arrivals.clone();
        let listener = tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(m) = sub.next().await {
                let now = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload)
                    && let Some(uid) = v["data"]["uid"].as_str()
                {
                    seen.lock()
                        .expect("not poisoned")
                        .entry(uid.to_owned())
                        .or_insert(now);
                }
            }
        });
        let child = tokio::process::Command::new(&processor)
            .arg("run")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start imip-processor run")?;
        Ok(Pipeline {
            ns,
            database,
            js,
            db,
            insert,
            arrivals,
            child: Some(child),
            listener,
        })
    }

    /// Stops the processor, deletes the streams and drops the database.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            crate::sandbox::stop_processor(&mut child).await;
        }
        self.listener.abort();
        for s in [
            self.ns.messages_stream(),
            self.ns.quarantine_stream(),
            self.ns.events_stream(),
        ] {
            let _ = self.js.delete_stream(s).await;
        }
        if let Ok((admin, conn)) =
            tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .await;
        }
    }

    /// Waits until every UID in `uids` has had a change event.
    pub async fn wait_for<'a>(
        &self,
        uids: impl Iterator<Item = &'a str> + Clone,
        limit: Duration,
    ) -> anyhow::Result<()> {
        wait_for(&self.arrivals, uids, limit).await
    }
}

async fn measure(args: &LatencyArgs, pipe: &Pipeline) -> anyhow::Result<Vec<PhaseResult>> {
    let (js, ns, db, insert, arrivals) =
        (&pipe.js, &pipe.ns, &pipe.db, &pipe.insert, &pipe.arrivals);
    let now = Utc::now();
    let mails = Mails {
        now,
        tag: format!("l{}", std::process::id()),
        users: args.users.max(1),
    };
    // Warm-up: the processor is ready once a message comes out the other end.
    let warm = mails.payloads("warm", 0..args.users.max(1))?;
    for (_, m) in &warm {
        publish(js, ns, m, None).await?;
    }
    wait_for(
        arrivals,
        warm.iter().map(|(u, _)| u.as_str()),
        Duration::from_secs(60),
    )
    .await
    .context("the processor did not apply the warm-up messages")?;

    let ingest = args
        .ingest
        .clone()
        .unwrap_or_else(|| args.bin_dir.join("imip-ingest"));
    let mut results = Vec::new();
    for (k, phase) in phases(args).into_iter().enumerate() {
        let r = run_phase(
            &phase,
            &format!("p{k}"),
            &mails,
            js,
            ns,
            db,
            insert,
            arrivals,
            &ingest,
        )
        .await
        .with_context(|| format!("phase {}", phase.name))?;
        results.push(r);
    }
    Ok(results)
}

/// Message generator: a one-off REQUEST per message, with its own UID.
struct Mails {
    now: DateTime<Utc>,
    tag: String,
    users: usize,
}

pub(crate) struct Payload {
    pub user: String,
    pub subject_user_key: String,
    pub dedupe_id: String,
    pub json: Vec<u8>,
}

impl Mails {
    fn uid(&self, phase: &str, i: usize) -> String {
        format!("{}-{phase}-{i}@bench.example", self.tag)
    }

    fn user(&self, i: usize) -> String {
        format!("lat{}@bench.example", i % self.users)
    }

    fn mail(&self, phase: &str, i: usize) -> Vec<u8> {
        let user = self.user(i);
        let uid = self.uid(phase, i);
        let start = (self.now + ChronoDuration::days(7) + ChronoDuration::minutes(i as i64 * 30))
            .format("%Y%m%dT%H%M00Z");
        let end =
            (self.now + ChronoDuration::days(7) + ChronoDuration::minutes(i as i64 * 30 + 30))
                .format("%Y%m%dT%H%M00Z");
        format!(
            "From: {user}\r\nTo: guest@bench.example\r\nSubject: latency {i}\r\n\
Message-ID: <{uid}>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n\
BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imip-bench//latency//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20270101T000000Z\r\nSEQUENCE:0\r\n\
DTSTART:{start}\r\nDTEND:{end}\r\nSUMMARY:latency {i}\r\n\
ORGANIZER:mailto:{user}\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@bench.example\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n"
        )
        .into_bytes()
    }

    /// What ingest would publish for each message: (uid, payload).
    fn payloads(
        &self,
        phase: &str,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<Vec<(String, Payload)>> {
        range
            .map(|i| {
                let p = plan_one(&self.mail(phase, i), &self.user(i), self.now)
                    .with_context(|| format!("latency mail {i}"))?;
                Ok((self.uid(phase, i), p))
            })
            .collect()
    }
}

/// What imip-ingest would publish for `mail` sent by `sender` (one payload).
pub(crate) fn plan_one(mail: &[u8], sender: &str, now: DateTime<Utc>) -> anyhow::Result<Payload> {
    let env = Envelope {
        direction: Direction::Outgoing,
        sender: sender.to_owned(),
        recipients: vec![],
    };
    let input = RawMail {
        bytes: mail,
        total_size: mail.len() as u64,
        calendar_beyond_limit: false,
    };
    let plan = imipflow_ingest::plan(&input, &env, &imipflow_ingest::Limits::default(), now);
    match plan.outputs.into_iter().next() {
        Some(Output::Payload { payload, json }) => Ok(Payload {
            subject_user_key: imipflow_schema::user_key(&payload.user),
            user: payload.user,
            dedupe_id: payload.dedupe_id,
            json,
        }),
        Some(Output::Quarantine(q)) => bail!("quarantined: {:?}", q.reason),
        None => bail!("no payload"),
    }
}

pub(crate) async fn publish(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    p: &Payload,
    subject: Option<String>,
) -> anyhow::Result<()> {
    let ack = publish_start(js, ns, p, subject).await?;
    ack.await.context("no publish ack")?;
    Ok(())
}

pub(crate) async fn publish_start(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    p: &Payload,
    subject: Option<String>,
) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
    let subject = subject.unwrap_or_else(|| {
        ns.message_subject(
            imipflow_schema::partition(&p.user, imipflow_schema::DEFAULT_PARTITIONS),
            &p.subject_user_key,
        )
    });
    imipflow_nats::publish_deduped(js, subject, &p.dedupe_id, p.json.clone().into())
        .await
        .context("publish failed")
}

async fn wait_for<'a>(
    arrivals: &Mutex<HashMap<String, Instant>>,
    uids: impl Iterator<Item = &'a str> + Clone,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let missing = {
            let seen = arrivals.lock().expect("not poisoned");
            uids.clone().filter(|u| !seen.contains_key(*u)).count()
        };
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{missing} change event(s) missing after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    phase: &Phase,
    tag: &str,
    mails: &Mails,
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    db: &tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    arrivals: &Arc<Mutex<HashMap<String, Instant>>>,
    ingest: &Path,
) -> anyhow::Result<PhaseResult> {
    let payloads = mails.payloads(tag, 0..phase.count)?;
    let inputs: Vec<Vec<u8>> = if phase.source == Source::Ingest {
        (0..phase.count).map(|i| mails.mail(tag, i)).collect()
    } else {
        Vec::new()
    };
    // A baseline sample every 10th message (every message at saturation would
    // double the load it measures): publish, commit, publish, serially.
    let baseline_every = 10;
    let baseline_subject = |i: usize| ns.event_subject("benchbaseline", &format!("b{i}"));
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut baseline = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    let window = Arc::new(tokio::sync::Semaphore::new(1000));
    for (i, (uid, p)) in payloads.iter().enumerate() {
        if let Some(rate) = phase.rate {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        match phase.source {
            Source::Ingest => {
                let t = run_ingest(ingest, ns, &mails.user(i), &inputs[i]).await?;
                started.lock().expect("not poisoned").insert(uid.clone(), t);
            }
            Source::Publish => {
                let permit = window.clone().acquire_owned().await?;
                let ack = publish_start(js, ns, p, None).await?;
                let started = started.clone();
                let uid = uid.clone();
                acks.spawn(async move {
                    let r = ack.await;
                    let t = Instant::now();
                    drop(permit);
                    r.map(|_| {
                        started.lock().expect("not poisoned").insert(uid, t);
                    })
                });
            }
        }
        if i % baseline_every == 0 && phase.rate.is_some() {
            baseline.push(baseline_sample(js, db, insert, p, baseline_subject(i), i).await?);
        }
    }
    while let Some(r) = acks.join_next().await {
        r?.context("publish ack")?;
    }
    let sent = t0.elapsed();
    let uids: Vec<&str> = payloads.iter().map(|(u, _)| u.as_str()).collect();
    let limit = Duration::from_secs(30 + phase.count as u64 / 100);
    let waited = wait_for(arrivals, uids.iter().copied(), limit).await;
    if phase.rate.is_none() {
        // Saturation: the baseline is sampled after the burst, on a quiet pipeline.
        for (i, (_, p)) in payloads.iter().enumerate().take(50) {
            baseline.push(
                baseline_sample(
                    js,
                    db,
                    insert,
                    p,
                    baseline_subject(1_000_000 + i),
                    1_000_000 + i,
                )
                .await?,
            );
        }
    }
    let seen = arrivals.lock().expect("not poisoned");
    let started = started.lock().expect("not poisoned");
    let mut latency = Vec::with_capacity(uids.len());
    let mut lost = 0;
    let mut last = t0;
    for u in &uids {
        match (started.get(*u), seen.get(*u)) {
            (Some(s), Some(a)) => {
                latency.push(a.saturating_duration_since(*s));
                last = last.max(*a);
            }
            _ => lost += 1,
        }
    }
    if let Err(e) = waited {
        eprintln!("imip-bench latency: {}: {e}", phase.name);
    }
    let achieved = if phase.rate.is_some() {
        phase.count as f64 / sent.as_secs_f64().max(1e-9)
    } else {
        phase.count as f64 / (last - t0).as_secs_f64().max(1e-9)
    };
    Ok(PhaseResult {
        name: phase.name.clone(),
        offered: phase.rate,
        achieved,
        latency,
        baseline,
        lost,
    })
}

/// Durable in, durable commit, durable out, serially, from warm clients.
pub(crate) async fn baseline_sample(
    js: &async_nats::jetstream::Context,
    db: &tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    p: &Payload,
    subject: String,
    _i: usize,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    // Into the events stream (its subjects take any kind), not the messages
    // stream: the processor must not see these.
    imipflow_nats::publish_deduped(
        js,
        subject.clone(),
        &format!("{subject}-in"),
        p.json.clone().into(),
    )
    .await?
    .await
    .context("baseline publish")?;
    let body: serde_json::Value = serde_json::from_slice(&p.json)?;
    let id = BASELINE_ROW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    db.execute(insert, &[&id, &body])
        .await
        .context("baseline insert")?;
    imipflow_nats::publish_deduped(
        js,
        subject.clone(),
        &format!("{subject}-out"),
        p.json.clone().into(),
    )
    .await?
    .await
    .context("baseline publish")?;
    Ok(t.elapsed())
}

/// Runs imip-ingest on `mail`; returns the instant it had exited.
async fn run_ingest(
    ingest: &Path,
    ns: &Namespace,
    sender: &str,
    mail: &[u8],
) -> anyhow::Result<Instant> {
    let ingest = ingest.to_owned();
    let ns = ns.as_str().to_owned();
    let sender = sender.to_owned();
    let mail = mail.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(&ingest)
            .args(["--sender", &sender])
            .env("IMIP_NAMESPACE", &ns)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", ingest.display()))?;
        child.stdin.take().context("no stdin")?.write_all(&mail)?;
        let out = child.wait_with_output()?;
        let t = Instant::now();
        if !out.status.success() {
            bail!(
                "imip-ingest failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t)
    })
    .await?
}

pub(crate) fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn markdown(
    args: &LatencyArgs,
    results: &[PhaseResult],
    started: DateTime<Utc>,
    load_before: &str,
) -> String {
    let mut s = String::new();
    s += &format!(
        "# imip-processor latency benchmark, {}\n\nCommand:\n\n```\n{}\n```\n\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        report::shell_command(std::env::args())
    );
    s += "## Machine\n\n| | |\n|---|---|\n";
    let mut machine = report::machine(&args.bin_dir);
    let line = report::ingest_binary(
        &args
            .ingest
            .clone()
            .unwrap_or_else(|| args.bin_dir.join("imip-ingest")),
    );
    machine.retain(|(k, _)| *k != line.0);
    machine.push(line);
    for (k, v) in machine {
        s += &format!("| {k} | {v} |\n");
    }
    if !args.processor_env.is_empty() {
        let env: Vec<String> = args
            .processor_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s += &format!("| processor environment | `{}` |\n", env.join(" "));
    }
    s += &format!(
        "| load average (start → end) | {} → {} |\n\n",
        load_before,
        report::loadavg()
    );
    s += "## Latency\n\nFrom the message being durably in JetStream (publish ack of a warm client; for the \
`imip-ingest processes` phase, the process's exit) to its `object.changed` event arriving at a \
subscriber of the events stream; one release `imip-processor run`, messages spread over ";
    s += &format!(
        "{} users. Baseline: publish-with-ack + one-row INSERT commit + publish-with-ack, serially from warm \
clients, sampled every 10th message during the phase (after it, for saturation). Times in ms.\n\n",
        args.users
    );
    s += "| phase | offered msg/s | achieved msg/s | n | p50 | p99 | max | baseline p50 | baseline p99 | p50 / baseline | p99 / baseline p99 |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        s += &format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
            r.name,
            r.offered.map_or("max".into(), |o| format!("{o:.0}")),
            r.achieved,
            r.latency.len(),
            ms(r.p(0.5)),
            ms(r.p(0.99)),
            ms(r.p(1.0)),
            ms(r.base(0.5)),
            ms(r.base(0.99)),
            r.p(0.5) / r.base(0.5),
            r.p(0.99) / r.base(0.99),
        );
    }
    s += "\n## Ratios\n\n| ratio | value |\n|---|---:|\n";
    for r in results {
        s += &format!(
            "| {}: p99 / baseline p99 | {:.2} |\n",
            r.name,
            r.p(0.99) / r.base(0.99)
        );
    }
    if let Some(r) = results
        .iter()
        .find(|r| r.offered == Some(100.0) && !r.name.contains("ingest"))
    {
        s += &format!(
            "\nTarget p99 < 25 ms at 100 msg/s: {} ({} ms).\n",
            if r.p(0.99) < 25.0 { "met" } else { "not met" },
            ms(r.p(0.99))
        );
    }
    let lost: usize = results.iter().map(|r| r.lost).sum();
    s += &format!("\n## Checks\n\n- messages without a change event: {lost}\n");
    s
}
