//! `imip-bench processor`: sustained throughput of one `imip-processor run`
//! instance, next to two baselines measured in the same run on the same
//! payloads: a bare JetStream pull consumer that pulls and acks them (same
//! batch size, one consumer per partition), and plain batched SQL that writes
//! the rows the processor wrote to the same tables (multi-row UNNEST inserts,
//! one transaction per batch, one connection per partition).
//!
//! Each case (workload × user shape) gets its own namespace and database:
//! payloads are made by imip-ingest's own planner from generated mails,
//! published to the messages stream first, then the processor is started and
//! timed until it has caught up. The rate is taken between the first and the
//! last poll that saw progress, so the process start is not counted.

use anyhow::{Context, bail};
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use futures::StreamExt;
use imipflow_ingest::plan::{Envelope, Output, RawMail};
use imipflow_schema::{Direction, Namespace, partition, user_key};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::types::Json;

const PG_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

#[derive(clap::Args)]
pub struct ProcessorArgs {
    /// Measured messages per case (default 20000; 60 with --smoke).
    #[arg(long)]
    count: Option<usize>,
    /// Distinct users in the many-users shape.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// IMIP_BATCH_SIZE of the processor, and the batch of both baselines.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// IMIP_PARTITIONS.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Workloads, comma-separated: single, series, replies, mix.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,series,replies,mix"
    )]
    workloads: Vec<Workload>,
    /// User shapes, comma-separated: many, hot.
    #[arg(long, value_delimiter = ',', default_value = "many,hot")]
    shapes: Vec<Shape>,
    /// Runs of each case (figures of every run are reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Where imip-processor is.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Results file (default: bench/results/processor-<timestamp>.md; none with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// CI mode: tiny counts, checks that everything runs, not how fast.
    #[arg(long)]
    smoke: bool,
    /// Extra environment of the processor, KEY=VALUE (repeatable), e.g.
    /// IMIP_APPLY_PER_MESSAGE=1 for the per-message path.
    #[arg(long = "processor-env", value_parser = parse_env)]
    processor_env: Vec<(String, String)>,
    /// Skip the two baselines.
    #[arg(long)]
    no_baselines: bool,
    /// NATS server.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "Connection"
    )]
    nats_url: String,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Workload {
    /// A new single event per message (REQUEST, three attendees).
    Single,
    /// A new weekly series per message, with two RECURRENCE-ID overrides and an EXDATE.
    Series,
    /// Incoming REPLYs from attendees to events the user organizes (seeded first, untimed).
    Replies,
    /// imip-loadgen's realistic traffic (seed 42).
    Mix,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum Shape {
    /// Messages spread over --users users (all partitions busy).
    Many,
    /// Every message for one user (one partition, one lane).
    Hot,
}

/// One generated message: what the stream carries and what it touches.
struct Msg {
    user: String,
    /// `Nats-Msg-Id`: the dedupe id, except for a late re-delivery.
    msg_id: String,
    uids: Vec<String>,
    dedupe_id: String,
    json: Vec<u8>,
}

/// What one case measured.
struct CaseResult {
    workload: Workload,
    shape: Shape,
    run: usize,
    count: usize,
    processor: Rate,
    consumer: Option<Rate>,
    sql: Option<Rate>,
    dead_letters: i64,
    /// Outcomes of the measured messages (applied, stale, ignored, refused).
    outcomes: String,
    loadavg: String,
}

#[derive(Clone, Copy)]
struct Rate {
    msgs: usize,
    secs: f64,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.msgs as f64 / self.secs.max(1e-9)
    }
}

pub fn run(args: ProcessorArgs) -> anyhow::Result<()> {
    let count = args.count.unwrap_or(if args.smoke { 60 } else { 20_000 });
    let processor = args.bin_dir.join("imip-processor");
    if !processor.exists() {
        bail!(
            "{} not found (cargo build --release --bins, or --bin-dir)",
            processor.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for run in 0..args.repeat {
        for &workload in &args.workloads {
            for &shape in &args.shapes {
                let r = rt
                    .block_on(case(&args, workload, shape, count, run))
                    .with_context(|| format!("case {workload:?}/{shape:?} run {run}"))?;
                eprintln!("{}", line(&r));
                results.push(r);
            }
        }
    }
    if args.smoke {
        for r in &results {
            if r.dead_letters > 0 {
                bail!(
                    "{:?}/{:?}: {} dead letters",
                    r.workload,
                    r.shape,
                    r.dead_letters
                );
            }
        }
        eprintln!("processor bench smoke: {} cases ran", results.len());
        return Ok(());
    }
    let md = markdown(&args, count, &results);
    let out = crate::report::write_results("processor", args.out.as_deref(), Utc::now(), &md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn line(r: &CaseResult) -> String {
    let f = |r: Option<Rate>| r.map_or("-".into(), |r| format!("{:.0}", r.per_sec()));
    format!(
        "{:?}/{:?} run {}: processor {:.0} msg/s, consumer {} msg/s, sql {} msg/s ({} msgs: {}; {} dead letters, load {})",
        r.workload,
        r.shape,
        r.run,
        r.processor.per_sec(),
        f(r.consumer),
        f(r.sql),
        r.count,
        r.outcomes,
        r.dead_letters,
        r.loadavg
    )
}

/// A private namespace and database for one case.
struct Sandbox {
    ns: Namespace,
    database: String,
    database_url: String,
}

impl Sandbox {
    fn vars(&self, args: &ProcessorArgs) -> Vec<(&'static str, String)> {
        vec![
            ("IMIP_NAMESPACE", self.ns.as_str().to_owned()),
            ("IMIP_DATABASE_URL", self.database_url.clone()),
            ("IMIP_NATS_URL", args.nats_url.clone()),
            ("IMIP_PARTITIONS", args.partitions.to_string()),
            ("IMIP_BATCH_SIZE", args.batch_size.to_string()),
            ("IMIP_LOG", "warn".to_owned()),
            // No HTTP listener: its fixed default port may be taken.
            ("IMIP_METRICS_LISTEN", String::new()),
        ]
    }

    async fn teardown(&self, js: &jetstream::Context) {
        for s in [
            self.ns.messages_stream(),
            self.ns.quarantine_stream(),
            self.ns.events_stream(),
        ] {
            let _ = js.delete_stream(s).await;
        }
        if let Ok(admin) = pg(PG_ADMIN_URL).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .await;
        }
    }
}

async fn pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

async fn case(
    args: &ProcessorArgs,
    workload: Workload,
    shape: Shape,
    count: usize,
    run: usize,
) -> anyhow::Result<CaseResult> {
    let id = format!(
        "benchp{}x{}{}{}",
        std::process::id(),
        run,
        workload_tag(workload),
        if shape == Shape::Hot { "h" } else { "m" }
    );
    let sandbox = Sandbox {
        ns: Namespace::new(&id)?,
        database: format!("imip_{id}"),
        database_url: format!("postgresql://postgres@127.0.0.1:5432/imip_{id}"),
    };
    let client = async_nats::connect(&args.nats_url)
        .await
        .context("cannot connect to NATS")?;
    let js = jetstream::new(client);
    let result = measure(args, &sandbox, &js, workload, shape, count, run).await;
    sandbox.teardown(&js).await;
    result
}

fn workload_tag(w: Workload) -> &'static str {
    match w {
        Workload::Single => "s",
        Workload::Series => "r",
        Workload::Replies => "p",
        Workload::Mix => "x",
    }
}

async fn measure(
    args: &ProcessorArgs,
    sandbox: &Sandbox,
    js: &jetstream::Context,
    workload: Workload,
    shape: Shape,
    count: usize,
    run: usize,
) -> anyhow::Result<CaseResult> {
    let out = tokio::process::Command::new(args.bin_dir.join("imip-processor"))
        .arg("migrate")
        .envs(sandbox.vars(args))
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "imip-processor migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (seed, measured) = generate(workload, shape, count, args.users)?;
    let db = pg(&sandbox.database_url).await?;
    // Seed (replies only): applied by the processor, untimed.
    if !seed.is_empty() {
        let positions = publish(js, &sandbox.ns, args.partitions, &seed).await?;
        let mut p = start_processor(args, sandbox)?;
        wait_applied(&db, &positions).await?;
        crate::sandbox::stop_processor(&mut p).await;
    }
    let seeded_events: HashMap<String, i64> = db
        .query("SELECT user_addr, last_seq FROM user_events", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let positions = publish(js, &sandbox.ns, args.partitions, &measured).await?;
    let consumer = if args.no_baselines {
        None
    } else {
        Some(bare_consumer(args, sandbox, js, &positions).await?)
    };
    let mut p = start_processor(args, sandbox)?;
    let processor = wait_applied(&db, &positions).await;
    crate::sandbox::stop_processor(&mut p).await;
    let processor = processor?;
    let dead_letters: i64 = db
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get(0);
    let outcomes = db
        .query(
            "SELECT outcome, count(*) FROM message_log WHERE stream_seq > $1 GROUP BY 1 ORDER BY 1",
            &[&(seed.len() as i64)],
        )
        .await?
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = if args.no_baselines {
        None
    } else {
        Some(plain_sql(args, sandbox, &db, &measured, seed.len(), &seeded_events).await?)
    };
    Ok(CaseResult {
        workload,
        shape,
        run,
        count: measured.len(),
        processor,
        consumer,
        sql,
        dead_letters,
        outcomes,
        loadavg: crate::report::loadavg(),
    })
}

// ---------------------------------------------------------------- payloads

fn ical_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

fn mail(method: &str, from: &str, to: &str, n: usize, body: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {method} {n}\r\nMessage-ID: <bench-{n}-{method}@imip-bench.invalid>\r\n\
Date: Mon, 01 Mar 2027 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n\
BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow bench//EN\r\nMETHOD:{method}\r\n{body}END:VCALENDAR\r\n"
    )
    .into_bytes()
}

fn attendees(uid_n: usize, partstat: &str) -> String {
    (0..3)
        .map(|k| {
            format!(
                "ATTENDEE;CN=Guest {k};ROLE=REQ-PARTICIPANT;PARTSTAT={partstat};RSVP=TRUE:mailto:guest{k}-{}@example.org\r\n",
                uid_n % 50
            )
        })
        .collect()
}

/// Start of event `n`: spread over the coming months, office hours.
fn slot(n: usize) -> DateTime<Utc> {
    let base = Utc.with_ymd_and_hms(2027, 1, 4, 8, 0, 0).unwrap();
    base + ChronoDuration::days((n % 280) as i64) + ChronoDuration::hours((n % 9) as i64)
}

fn single_event(user: &str, n: usize, sequence: u32, shift_h: i64, status: &str) -> String {
    let start = slot(n) + ChronoDuration::hours(shift_h);
    format!(
        "BEGIN:VEVENT\r\nUID:single-{n}@bench.example\r\nDTSTAMP:{}\r\nSEQUENCE:{sequence}\r\n\
DTSTART:{}\r\nDTEND:{}\r\nSUMMARY:Bench meeting {n}\r\nSTATUS:{status}\r\nORGANIZER;CN=Owner:mailto:{user}\r\n{}END:VEVENT\r\n",
        ical_time(
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
                + ChronoDuration::minutes(sequence as i64)
        ),
        ical_time(start),
        ical_time(start + ChronoDuration::hours(1)),
        attendees(n, "NEEDS-ACTION"),
    )
}

fn series(user: &str, n: usize) -> String {
    let week = n % 30;
    let first =
        Utc.with_ymd_and_hms(2027, 1, 5, 9, 0, 0).unwrap() + ChronoDuration::weeks(week as i64);
    let local = (first + ChronoDuration::hours(1)).format("%Y%m%dT%H%M%S");
    let stamp = "20270101T000000Z";
    let mut s = format!(
        "BEGIN:VEVENT\r\nUID:series-{n}@bench.example\r\nDTSTAMP:{stamp}\r\nSEQUENCE:0\r\n\
DTSTART;TZID=Europe/Berlin:{local}\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=20\r\n\
EXDATE;TZID=Europe/Berlin:{}\r\nSUMMARY:Weekly {n}\r\nORGANIZER;CN=Owner:mailto:{user}\r\n{}END:VEVENT\r\n",
        (first + ChronoDuration::hours(1) + ChronoDuration::weeks(5)).format("%Y%m%dT%H%M%S"),
        attendees(n, "NEEDS-ACTION"),
    );
    for k in [2i64, 9] {
        let rid = first + ChronoDuration::hours(1) + ChronoDuration::weeks(k);
        let moved = rid + ChronoDuration::hours(4);
        s.push_str(&format!(
            "BEGIN:VEVENT\r\nUID:series-{n}@bench.example\r\nRECURRENCE-ID;TZID=Europe/Berlin:{}\r\n\
DTSTAMP:{stamp}\r\nSEQUENCE:0\r\nDTSTART;TZID=Europe/Berlin:{}\r\nDURATION:PT1H\r\n\
SUMMARY:Weekly {n} (moved)\r\nORGANIZER;CN=Owner:mailto:{user}\r\n{}END:VEVENT\r\n",
            rid.format("%Y%m%dT%H%M%S"),
            moved.format("%Y%m%dT%H%M%S"),
            attendees(n, "NEEDS-ACTION"),
        ));
    }
    s
}

fn reply(organizer: &str, n: usize, guest: usize) -> (String, String) {
    let start = slot(n);
    let from = format!("guest{guest}-{}@example.org", n % 50);
    let body = format!(
        "BEGIN:VEVENT\r\nUID:single-{n}@bench.example\r\nDTSTAMP:20270102T000000Z\r\nSEQUENCE:0\r\n\
DTSTART:{}\r\nDTEND:{}\r\nORGANIZER;CN=Owner:mailto:{organizer}\r\n\
ATTENDEE;CN=Guest {guest};PARTSTAT=ACCEPTED:mailto:{from}\r\nEND:VEVENT\r\n",
        ical_time(start),
        ical_time(start + ChronoDuration::hours(1)),
    );
    (from, body)
}

struct Planner {
    now: DateTime<Utc>,
    limits: imipflow_ingest::Limits,
}

impl Planner {
    fn plan(
        &self,
        direction: Direction,
        sender: &str,
        recipient: &str,
        bytes: &[u8],
    ) -> anyhow::Result<Vec<Msg>> {
        let env = Envelope {
            direction,
            sender: sender.to_owned(),
            recipients: vec![recipient.to_owned()],
        };
        let input = RawMail {
            bytes,
            total_size: bytes.len() as u64,
            calendar_beyond_limit: false,
        };
        let plan = imipflow_ingest::plan(&input, &env, &self.limits, self.now);
        let mut out = Vec::new();
        for o in plan.outputs {
            match o {
                Output::Payload { payload, json } => {
                    let mut uids: Vec<String> = Vec::new();
                    for c in &payload.components {
                        if !uids.contains(&c.uid) {
                            uids.push(c.uid.clone());
                        }
                    }
                    out.push(Msg {
                        user: payload.user.clone(),
                        msg_id: payload.dedupe_id.clone(),
                        uids,
                        dedupe_id: payload.dedupe_id.clone(),
                        json,
                    });
                }
                Output::Quarantine(q) => bail!("generated mail quarantined: {:?}", q.reason),
            }
        }
        if out.is_empty() {
            bail!("generated mail made no payload");
        }
        Ok(out)
    }
}

/// The seed (untimed) and measured messages of a case.
fn generate(
    workload: Workload,
    shape: Shape,
    count: usize,
    users: usize,
) -> anyhow::Result<(Vec<Msg>, Vec<Msg>)> {
    let planner = Planner {
        now: Utc::now(),
        limits: imipflow_ingest::Limits::default(),
    };
    let user_of = |i: usize| match shape {
        Shape::Hot => "hot@bench.example".to_owned(),
        Shape::Many => format!("user{}@bench.example", i % users.max(1)),
    };
    let out = Direction::Outgoing;
    let mut seed = Vec::new();
    let mut measured = Vec::new();
    match workload {
        Workload::Single => {
            for n in 0..count {
                let u = user_of(n);
                let m = mail(
                    "REQUEST",
                    &u,
                    "guest@example.org",
                    n,
                    &single_event(&u, n, 0, 0, "CONFIRMED"),
                );
                measured.extend(planner.plan(out, &u, "", &m)?);
            }
        }
        Workload::Series => {
            for n in 0..count {
                let u = user_of(n);
                let m = mail("REQUEST", &u, "guest@example.org", n, &series(&u, n));
                measured.extend(planner.plan(out, &u, "", &m)?);
            }
        }
        Workload::Replies => {
            // Three guests answer each event: count/3 events, seeded first.
            let events = count.div_ceil(3);
            for n in 0..events {
                let u = user_of(n);
                let m = mail(
                    "REQUEST",
                    &u,
                    "guest@example.org",
                    n,
                    &single_event(&u, n, 0, 0, "CONFIRMED"),
                );
                seed.extend(planner.plan(out, &u, "", &m)?);
            }
            for i in 0..count {
                let (n, guest) = (i % events, i / events);
                let u = user_of(n);
                let (from, body) = reply(&u, n, guest);
                let m = mail("REPLY", &from, &u, count + i, &body);
                measured.extend(planner.plan(Direction::Incoming, &from, &u, &m)?);
            }
        }
        Workload::Mix => {
            // The load generator's traffic (imipflow-loadgen, seed 42): what the
            // broker would drop as a re-delivery is left out.
            let users = if shape == Shape::Hot { 1 } else { users };
            for m in imipflow_loadgen::messages(&imipflow_loadgen::Config::new(42, users, count)) {
                if m.delivery == imipflow_loadgen::Delivery::Redelivery {
                    continue;
                }
                let payload = imipflow_schema::Payload::from_json(&m.json)?;
                let mut uids: Vec<String> = Vec::new();
                for c in &payload.components {
                    if !uids.contains(&c.uid) {
                        uids.push(c.uid.clone());
                    }
                }
                measured.push(Msg {
                    user: m.user,
                    msg_id: m.nats_msg_id,
                    uids,
                    dedupe_id: m.dedupe_id,
                    json: m.json,
                });
            }
        }
    }
    Ok((seed, measured))
}

async fn publish(
    js: &jetstream::Context,
    ns: &Namespace,
    partitions: u32,
    msgs: &[Msg],
) -> anyhow::Result<Vec<Position>> {
    let mut acks = Vec::new();
    let mut positions = Vec::with_capacity(msgs.len());
    let settle = |acks: &mut Vec<(u32, async_nats::jetstream::context::PublishAckFuture)>| {
        let taken = std::mem::take(acks);
        async move {
            let mut out = Vec::new();
            for (p, a) in taken {
                let ack = a.await.context("publish ack")?;
                if !ack.duplicate {
                    out.push(Position {
                        partition: p,
                        seq: ack.sequence,
                    });
                }
            }
            anyhow::Ok(out)
        }
    };
    for m in msgs {
        let p = partition(&m.user, partitions);
        let subject = ns.message_subject(p, &user_key(&m.user));
        acks.push((
            p,
            imipflow_nats::publish_deduped(js, subject, &m.msg_id, m.json.clone().into())
                .await
                .context("publish")?,
        ));
        if acks.len() >= 512 {
            positions.extend(settle(&mut acks).await?);
        }
    }
    positions.extend(settle(&mut acks).await?);
    Ok(positions)
}

/// Where a published message landed.
#[derive(Clone, Copy)]
struct Position {
    partition: u32,
    seq: u64,
}

// ---------------------------------------------------------------- processor

fn start_processor(
    args: &ProcessorArgs,
    sandbox: &Sandbox,
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(args.bin_dir.join("imip-processor"))
        .arg("run")
        .envs(sandbox.vars(args))
        .envs(args.processor_env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start imip-processor run")
}

/// Waits until every lane's stored position has passed the messages in
/// `positions`; the rate runs from the first poll that saw one of them
/// applied to the one that saw all (lanes commit their position with the
/// effects, so this counts exactly what was applied, duplicates included).
async fn wait_applied(db: &tokio_postgres::Client, positions: &[Position]) -> anyhow::Result<Rate> {
    let started = Instant::now();
    let total = positions.len();
    let limit = Duration::from_secs(120 + total as u64 / 100);
    let mut first: Option<(Instant, usize)> = None;
    loop {
        let last: HashMap<i32, i64> = db
            .query("SELECT partition, last_sequence FROM partitions", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let n = positions
            .iter()
            .filter(|p| {
                last.get(&(p.partition as i32))
                    .is_some_and(|&l| l >= p.seq as i64)
            })
            .count();
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= total {
            let (t0, n0) = first.expect("progress seen");
            // All in one poll: count from the start instead.
            let (msgs, secs) = if now > t0 && n > n0 {
                (n - n0, (now - t0).as_secs_f64())
            } else {
                (n, (now - started).as_secs_f64())
            };
            return Ok(Rate { msgs, secs });
        }
        if started.elapsed() > limit {
            bail!("processor applied {n} of {total} messages in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- baseline 1

/// One durable pull consumer per partition, as the lanes have, pulling batches
/// of `batch_size` and acking the last message of each (AckPolicy::All).
async fn bare_consumer(
    args: &ProcessorArgs,
    sandbox: &Sandbox,
    js: &jetstream::Context,
    positions: &[Position],
) -> anyhow::Result<Rate> {
    let mut per_partition = vec![0usize; args.partitions as usize];
    for p in positions {
        per_partition[p.partition as usize] += 1;
    }
    let first_seq = positions.iter().map(|p| p.seq).min().unwrap_or(1);
    let stream = js.get_stream(sandbox.ns.messages_stream()).await?;
    let started = Instant::now();
    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (p, &expected) in per_partition.iter().enumerate() {
        if expected == 0 {
            continue;
        }
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("bench-raw-{p}")),
                filter_subject: sandbox.ns.partition_filter(p as u32),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: first_seq,
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        let batch = args.batch_size;
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await?;
            let mut seen = 0;
            let mut bytes = 0usize;
            while seen < expected {
                let first = messages.next().await.context("consumer ended")??;
                let mut raw = vec![first];
                while raw.len() < batch {
                    match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                        Ok(Some(m)) => raw.push(m?),
                        Ok(None) | Err(_) => break,
                    }
                }
                for m in &raw {
                    let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                    bytes += m.payload.len() + info.stream_sequence as usize % 2;
                }
                seen += raw.len();
                raw.last()
                    .expect("one")
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            total.fetch_add(seen, Ordering::Relaxed);
            anyhow::Ok(bytes)
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    for p in 0..args.partitions {
        let _ = stream.delete_consumer(&format!("bench-raw-{p}")).await;
    }
    Ok(Rate {
        msgs: total.load(Ordering::Relaxed),
        secs,
    })
}

// ---------------------------------------------------------------- baseline 2

/// Messages of one SQL transaction: index into the messages, and the range of
/// the user's events that go with it.
type Batch = Vec<(usize, std::ops::Range<usize>)>;

struct ObjectRow {
    recurrence_key: String,
    recurrence_id: Option<DateTime<Utc>>,
    sequence: i64,
    dtstamp: Option<DateTime<Utc>>,
    status: Option<String>,
    summary: Option<String>,
    organizer: Option<String>,
    dtstart: Option<DateTime<Utc>>,
    dtend: Option<DateTime<Utc>>,
    data: serde_json::Value,
}

struct AttendeeRow {
    recurrence_key: String,
    address: String,
    partstat: String,
    role: String,
    answer_sequence: Option<i64>,
    answer_dtstamp: Option<DateTime<Utc>>,
}

struct BusyRow {
    instance: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    fbtype: String,
    recurrence_id: Option<DateTime<Utc>>,
}

struct LogRow {
    stream_seq: i64,
    method: String,
    outcome: String,
    reason: Option<String>,
}

struct OutboxRow {
    user_seq: i64,
    partition: i32,
    event_id: String,
    kind: String,
    body: serde_json::Value,
}

#[derive(Default)]
struct Rows {
    objects: HashMap<(String, String), Vec<ObjectRow>>,
    attendees: HashMap<(String, String), Vec<AttendeeRow>>,
    busy: HashMap<(String, String), Vec<BusyRow>>,
    log: HashMap<(String, String), LogRow>,
    /// Per user, the measured phase's events in order.
    outbox: HashMap<String, Vec<OutboxRow>>,
}

async fn read_rows(
    db: &tokio_postgres::Client,
    seed: usize,
    seeded: &HashMap<String, i64>,
) -> anyhow::Result<Rows> {
    let mut rows = Rows::default();
    for r in db
        .query(
            "SELECT user_addr, uid, recurrence_key, recurrence_id, sequence, dtstamp, status, summary,
                    organizer, dtstart, dtend, data FROM objects",
            &[],
        )
        .await?
    {
        rows.objects.entry((r.get(0), r.get(1))).or_default().push(ObjectRow {
            recurrence_key: r.get(2),
            recurrence_id: r.get(3),
            sequence: r.get(4),
            dtstamp: r.get(5),
            status: r.get(6),
            summary: r.get(7),
            organizer: r.get(8),
            dtstart: r.get(9),
            dtend: r.get(10),
            data: r.get(11),
        });
    }
    for r in db
        .query(
            "SELECT user_addr, uid, recurrence_key, address, partstat, role, answer_sequence, answer_dtstamp
             FROM attendees",
            &[],
        )
        .await?
    {
        rows.attendees.entry((r.get(0), r.get(1))).or_default().push(AttendeeRow {
            recurrence_key: r.get(2),
            address: r.get(3),
            partstat: r.get(4),
            role: r.get(5),
            answer_sequence: r.get(6),
            answer_dtstamp: r.get(7),
        });
    }
    for r in db
        .query(
            "SELECT user_addr, uid, instance, lower(period), upper(period), fbtype, recurrence_id FROM freebusy",
            &[],
        )
        .await?
    {
        rows.busy.entry((r.get(0), r.get(1))).or_default().push(BusyRow {
            instance: r.get(2),
            start: r.get(3),
            end: r.get(4),
            fbtype: r.get(5),
            recurrence_id: r.get(6),
        });
    }
    for r in db
        .query(
            "SELECT user_addr, dedupe_id, stream_seq, method, outcome, reason FROM message_log WHERE stream_seq > $1",
            &[&(seed as i64)],
        )
        .await?
    {
        rows.log.insert(
            (r.get(0), r.get(1)),
            LogRow {
                stream_seq: r.get(2),
                method: r.get(3),
                outcome: r.get(4),
                reason: r.get(5),
            },
        );
    }
    for r in db
        .query(
            "SELECT user_addr, user_seq, partition, event_id, kind, body FROM outbox ORDER BY user_addr, user_seq",
            &[],
        )
        .await?
    {
        let user: String = r.get(0);
        let seq: i64 = r.get(1);
        if seq <= seeded.get(&user).copied().unwrap_or(0) {
            continue;
        }
        rows.outbox.entry(user).or_default().push(OutboxRow {
            user_seq: seq,
            partition: r.get(2),
            event_id: r.get(3),
            kind: r.get(4),
            body: r.get(5),
        });
    }
    Ok(rows)
}

/// Writes, per partition and in batches of `batch_size` messages, the rows the
/// processor wrote for those messages: the final objects, attendees and
/// free/busy rows of each UID a message touched (upserted), its message_log
/// row, the user's events in order (spread over the user's messages), and one
/// user_events upsert per user and batch.
async fn plain_sql(
    args: &ProcessorArgs,
    sandbox: &Sandbox,
    db: &tokio_postgres::Client,
    msgs: &[Msg],
    seed: usize,
    seeded: &HashMap<String, i64>,
) -> anyhow::Result<Rate> {
    let rows = Arc::new(read_rows(db, seed, seeded).await?);
    // Back to the state before the measured messages.
    if seed == 0 {
        db.batch_execute(
            "TRUNCATE objects, attendees, freebusy, open_series, request_queue, message_log, outbox, user_events",
        )
        .await?;
    } else {
        db.execute(
            "DELETE FROM message_log WHERE stream_seq > $1",
            &[&(seed as i64)],
        )
        .await?;
        db.batch_execute("DELETE FROM outbox; DELETE FROM user_events")
            .await?;
    }
    // The events of each user, spread over that user's messages in order.
    let mut per_user_msgs: HashMap<&str, usize> = HashMap::new();
    for m in msgs {
        *per_user_msgs.entry(&m.user).or_default() += 1;
    }
    let mut cursor: HashMap<&str, (usize, usize)> = HashMap::new(); // (events taken, messages seen)
    let mut lanes: BTreeMap<u32, Vec<Batch>> = BTreeMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let p = partition(&m.user, args.partitions);
        let events = rows.outbox.get(&m.user).map_or(0, Vec::len);
        let (taken, seen) = cursor.entry(&m.user).or_default();
        *seen += 1;
        let remaining_msgs = per_user_msgs[m.user.as_str()] - (*seen - 1);
        let take = (events - *taken).div_ceil(remaining_msgs);
        let range = *taken..*taken + take;
        *taken += take;
        let batches = lanes.entry(p).or_default();
        if batches.last().is_none_or(|b| b.len() >= args.batch_size) {
            batches.push(Vec::new());
        }
        batches.last_mut().expect("batch").push((i, range));
    }
    let msgs: Arc<Vec<(String, Vec<String>, String)>> = Arc::new(
        msgs.iter()
            .map(|m| (m.user.clone(), m.uids.clone(), m.dedupe_id.clone()))
            .collect(),
    );
    // Upserts only when some key is written by more than one message or exists already.
    let mut seen = HashSet::new();
    let upsert = seed > 0
        || msgs
            .iter()
            .flat_map(|(u, uids, _)| uids.iter().map(move |i| (u, i)))
            .any(|k| !seen.insert(k));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (lane, batches) in lanes {
        let (rows, msgs, url) = (rows.clone(), msgs.clone(), sandbox.database_url.clone());
        tasks.push(tokio::spawn(async move {
            let mut db = pg(&url).await?;
            let st = prepare(&db, upsert).await?;
            let mut n = 0;
            for b in batches {
                write_batch(&mut db, &st, &rows, &msgs, lane as i32, &b).await?;
                n += b.len();
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(Rate {
        msgs: total,
        secs: started.elapsed().as_secs_f64(),
    })
}

async fn write_batch(
    db: &mut tokio_postgres::Client,
    st: &[tokio_postgres::Statement],
    rows: &Rows,
    msgs: &[(String, Vec<String>, String)],
    lane: i32,
    batch: &[(usize, std::ops::Range<usize>)],
) -> anyhow::Result<()> {
    // The last write of a key within the batch wins (an upsert may not touch a row twice).
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut log = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut out = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for (i, range) in batch {
        let (user, uids, dedupe) = &msgs[*i];
        for uid in uids {
            let k = (user.clone(), uid.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if let Some(l) = rows.log.get(&(user.clone(), dedupe.clone())) {
            log.0.push(user.clone());
            log.1.push(dedupe.clone());
            log.2.push(l.stream_seq);
            log.3.push(l.method.clone());
            log.4.push(l.outcome.clone());
            log.5.push(l.reason.clone());
        }
        if let Some(events) = rows.outbox.get(user) {
            for e in &events[range.clone()] {
                out.0.push(user.clone());
                out.1.push(e.user_seq);
                out.2.push(e.partition);
                out.3.push(e.event_id.clone());
                out.4.push(e.kind.clone());
                out.5.push(e.body.clone());
                last_seq.insert(user.clone(), e.user_seq);
            }
        }
    }
    let mut o = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut a = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut f = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for k in &keys {
        for r in rows.objects.get(k).into_iter().flatten() {
            o.0.push(k.0.clone());
            o.1.push(k.1.clone());
            o.2.push(r.recurrence_key.clone());
            o.3.push(r.recurrence_id);
            o.4.push(r.sequence);
            o.5.push(r.dtstamp);
            o.6.push(r.status.clone());
            o.7.push(r.summary.clone());
            o.8.push(r.organizer.clone());
            o.9.push(r.dtstart);
            o.10.push(r.dtend);
            o.11.push(Json(r.data.clone()));
        }
        for r in rows.attendees.get(k).into_iter().flatten() {
            a.0.push(k.0.clone());
            a.1.push(k.1.clone());
            a.2.push(r.recurrence_key.clone());
            a.3.push(r.address.clone());
            a.4.push(r.partstat.clone());
            a.5.push(r.role.clone());
            a.6.push(r.answer_sequence);
            a.7.push(r.answer_dtstamp);
        }
        for r in rows.busy.get(k).into_iter().flatten() {
            f.0.push(k.0.clone());
            f.1.push(k.1.clone());
            f.2.push(r.instance);
            f.3.push(r.start);
            f.4.push(r.end);
            f.5.push(r.fbtype.clone());
            f.6.push(r.recurrence_id);
        }
    }
    let (users, seqs): (Vec<String>, Vec<i64>) = last_seq.into_iter().unzip();
    let out_bodies: Vec<Json<serde_json::Value>> = out.5.into_iter().map(Json).collect();
    let tx = db.transaction().await?;
    tx.execute(
        &st[0],
        &[
            &o.0, &o.1, &o.2, &o.3, &o.4, &o.5, &o.6, &o.7, &o.8, &o.9, &o.10, &o.11, &lane,
        ],
    )
    .await?;
    tx.execute(
        &st[1],
        &[&a.0, &a.1, &a.2, &a.3, &a.4, &a.5, &a.6, &a.7, &lane],
    )
    .await?;
    tx.execute(&st[2], &[&f.0, &f.1, &f.2, &f.3, &f.4, &f.5, &f.6, &lane])
        .await?;
    tx.execute(
        &st[3],
        &[&log.0, &log.1, &log.2, &log.3, &log.4, &log.5, &lane],
    )
    .await?;
    tx.execute(
        &st[4],
        &[&out.0, &out.1, &out.2, &out.3, &out.4, &out_bodies],
    )
    .await?;
    tx.execute(&st[5], &[&users, &seqs, &lane]).await?;
    tx.commit().await?;
    Ok(())
}

/// The baseline's statements, prepared once per connection. The calendar
/// rows are upserted only when a run writes a key twice (replies to seeded
/// events, the mix); otherwise they are plain inserts, as rows of new UIDs are.
async fn prepare(
    db: &tokio_postgres::Client,
    upsert: bool,
) -> anyhow::Result<Vec<tokio_postgres::Statement>> {
    let on = |clause: &'static str| if upsert { clause } else { "" };
    let sql = [
        format!(
            "INSERT INTO objects (user_addr, uid, recurrence_key, recurrence_id, sequence, dtstamp, status,
                                  summary, organizer, dtstart, dtend, data, partition)
             SELECT *, $13::int FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
                                  $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                                  $11::timestamptz[], $12::jsonb[]) {}",
            on("ON CONFLICT (partition, user_addr, uid, recurrence_key) DO UPDATE SET data = EXCLUDED.data,
                 sequence = EXCLUDED.sequence, dtstamp = EXCLUDED.dtstamp, status = EXCLUDED.status,
                 summary = EXCLUDED.summary, dtstart = EXCLUDED.dtstart, dtend = EXCLUDED.dtend")
        ),
        format!(
            "INSERT INTO attendees (user_addr, uid, recurrence_key, address, partstat, role, answer_sequence,
                                    answer_dtstamp, partition)
             SELECT *, $9::int FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::bigint[], $8::timestamptz[]) {}",
            on("ON CONFLICT (partition, user_addr, uid, recurrence_key, address) DO UPDATE SET partstat = EXCLUDED.partstat,
                 answer_sequence = EXCLUDED.answer_sequence, answer_dtstamp = EXCLUDED.answer_dtstamp")
        ),
        format!(
            "INSERT INTO freebusy (user_addr, uid, instance, period, fbtype, recurrence_id, partition)
             SELECT u, i, n, tstzrange(s, e, '[)'), t, r, $8::int
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
                         $6::text[], $7::timestamptz[]) AS x(u, i, n, s, e, t, r) {}",
            on("ON CONFLICT (partition, user_addr, uid, instance) DO UPDATE SET period = EXCLUDED.period, fbtype = EXCLUDED.fbtype")
        ),
        "INSERT INTO message_log (user_addr, dedupe_id, stream_seq, method, outcome, reason, partition)
         SELECT *, $7::int FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT (partition, user_addr, dedupe_id) DO NOTHING"
            .to_owned(),
        "INSERT INTO outbox (user_addr, user_seq, partition, event_id, kind, body)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::text[], $6::jsonb[])"
            .to_owned(),
        "INSERT INTO user_events (user_addr, last_seq, partition)
         SELECT *, $3::int FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (partition, user_addr) DO UPDATE SET last_seq = EXCLUDED.last_seq"
            .to_owned(),
    ];
    let mut out = Vec::new();
    for q in &sql {
        out.push(db.prepare(q).await?);
    }
    Ok(out)
}

// ---------------------------------------------------------------- report

fn markdown(args: &ProcessorArgs, count: usize, results: &[CaseResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# imip-bench processor — {}\n\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    s.push_str(&format!(
        "Command: `{}`\n\n",
        crate::report::shell_command(std::env::args())
    ));
    s.push_str("## Machine\n\n");
    for (k, v) in crate::report::machine(&args.bin_dir) {
        s.push_str(&format!("- {k}: {v}\n"));
    }
    s.push_str(&format!(
        "\nSetup: {count} measured messages per case, {} users (many) or 1 (hot), {} partitions, batch {} \
         (IMIP_BATCH_SIZE and both baselines). NATS, PostgreSQL, the processor and the bench share the machine.\n\n",
        args.users, args.partitions, args.batch_size
    ));
    s.push_str("## Results\n\n");
    s.push_str("| workload | users | run | processor msg/s | bare consumer msg/s | plain SQL msg/s | ÷ consumer | ÷ SQL | ÷ lower baseline | target | dead letters | load avg |\n");
    s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|\n");
    for r in results {
        let p = r.processor.per_sec();
        let c = r.consumer.map(|x| x.per_sec());
        let q = r.sql.map(|x| x.per_sec());
        let ratio = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", p / b));
        let lower = match (c, q) {
            (Some(c), Some(q)) => Some(c.min(q)),
            (a, b) => a.or(b),
        };
        let absolute = match r.workload {
            Workload::Single => Some(5000.0),
            Workload::Series => Some(1000.0),
            _ => None,
        };
        let mut target = Vec::new();
        if let Some(l) = lower {
            target.push(format!(
                "½ lower: {}",
                if p >= l / 2.0 { "met" } else { "missed" }
            ));
        }
        if let Some(a) = absolute {
            target.push(format!(
                "≥{a:.0}: {}",
                if p >= a { "met" } else { "missed" }
            ));
        }
        let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.0}"));
        s.push_str(&format!(
            "| {:?} | {:?} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.workload,
            r.shape,
            r.run,
            p,
            f(c),
            f(q),
            ratio(c),
            ratio(q),
            ratio(lower),
            target.join(", "),
            r.dead_letters,
            r.loadavg
        ));
    }
    s.push_str("\nRaw: processor rate = messages applied between the first and the last progress poll (20 ms) ÷ that time; \
bare consumer and plain SQL = all measured messages ÷ wall time.\n\n");
    for r in results {
        s.push_str(&format!(
            "- {:?}/{:?} run {} ({}): processor {} msgs in {:.3} s{}{}\n",
            r.workload,
            r.shape,
            r.run,
            r.outcomes,
            r.processor.msgs,
            r.processor.secs,
            r.consumer.map_or(String::new(), |c| format!(
                "; consumer {} in {:.3} s",
                c.msgs, c.secs
            )),
            r.sql.map_or(String::new(), |c| format!(
                "; sql {} in {:.3} s",
                c.msgs, c.secs
            )),
        ));
    }
    s
}
