//! `imip-bench growth`: does a user's size make their messages or their
//! free/busy slower? And does a series cost in proportion to its instances?
//!
//! One user's stored events grow 10 → 100 → … → 100,000. The rows are
//! bulk-loaded with SQL into the processor's own tables (objects, attendees,
//! freebusy, through their real indexes), cloned from one event the
//! processor stored itself, so they look like its rows; their `data` still
//! names the template (nothing reads another UID's data when a message
//! applies). Events lie at a constant density of 1,000 a year, going back in
//! time from the end of the queried year: a user who keeps their history,
//! so a one-year window holds min(N, 1,000) events whatever N is.
//!
//! At each size: the one-year free/busy query (`imip-ctl freebusy`'s SQL,
//! prepared) and the apply latency of a new event for that user through the
//! running processor (publish ack → change event). Then one series at a
//! time, HOURLY with COUNT n = 10 … 5,000 instances (all inside the horizon),
//! applied through the processor: its latency should grow linearly with n.
//!
//! Baselines, same run: a PostgreSQL round trip (`SELECT 1`, prepared) for the
//! query, and publish-with-ack + one-row commit + publish-with-ack for the
//! apply latencies (see `latency.rs`).

use crate::latency::{Pipeline, baseline_sample, ms, percentile_ms, plan_one, publish};
use crate::report;
use anyhow::{Context, bail};
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct GrowthArgs {
    /// Where imip-processor is.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Stored-event counts of the user, in increasing order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,100,1000,10000,100000"
    )]
    pub sizes: Vec<usize>,
    /// Instance counts of the series cases.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,5000")]
    pub instances: Vec<usize>,
    /// Query samples per size.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Applied messages per size / per series case.
    #[arg(long, default_value_t = 20)]
    pub applies: usize,
    /// Results file (default: bench/results/growth-<timestamp>.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// CI mode: sizes 10,100, series 10,100, few samples.
    #[arg(long)]
    pub smoke: bool,
    /// NATS server.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "Connection"
    )]
    pub nats_url: String,
}

const USER: &str = "grow@bench.example";
const SERIES_USER: &str = "series@bench.example";
/// Events per year in the user's calendar (about four a working day).
const PER_YEAR: f64 = 1000.0;

pub struct SizeResult {
    pub size: usize,
    pub in_window: i64,
    pub query: Vec<Duration>,
    pub roundtrip: Vec<Duration>,
    pub apply: Vec<Duration>,
    pub baseline: Vec<Duration>,
    pub load_secs: f64,
}

pub struct SeriesResult {
    pub instances: usize,
    pub rows: i64,
    pub apply: Vec<Duration>,
    pub baseline: Vec<Duration>,
}

pub fn run(args: GrowthArgs) -> anyhow::Result<()> {
    let out = run_to_file(&args)?;
    eprintln!("imip-bench: results written to {}", out.display());
    Ok(())
}

pub fn run_to_file(args: &GrowthArgs) -> anyhow::Result<PathBuf> {
    let mut args = args.clone();
    if args.smoke {
        args.sizes = vec![10, 100];
        args.instances = vec![10, 100];
        args.queries = 10;
        args.applies = 3;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let load_before = report::loadavg();
    let started = Utc::now();
    let (sizes, series) = rt.block_on(async {
        let pipe = Pipeline::start(&args.bin_dir, &args.nats_url, "g", &[]).await?;
        let r = measure(&args, &pipe).await;
        pipe.stop().await;
        r
    })?;
    let md = markdown(&args, &sizes, &series, started, &load_before);
    let path = crate::report::write_results("growth", args.out.as_deref(), started, &md)?;
    print!("{md}");
    Ok(path)
}

/// The queried year: from 00:00 UTC a week from now, 365 days.
fn window(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = (now + ChronoDuration::days(7))
        .duration_trunc(ChronoDuration::days(1))
        .expect("in range");
    (from, from + ChronoDuration::days(365))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

fn mail(user: &str, uid: &str, start: DateTime<Utc>, rrule: Option<String>) -> Vec<u8> {
    let rrule = rrule.map(|r| format!("RRULE:{r}\r\n")).unwrap_or_default();
    format!(
        "From: {user}\r\nTo: guest@bench.example\r\nSubject: growth\r\n\
Message-ID: <{uid}>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n\
BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imip-bench//growth//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20270101T000000Z\r\nSEQUENCE:0\r\n\
DTSTART:{}\r\nDTEND:{}\r\n{rrule}SUMMARY:growth\r\n\
ORGANIZER:mailto:{user}\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@bench.example\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n",
        stamp(start),
        stamp(start + ChronoDuration::minutes(30)),
    )
    .into_bytes()
}

/// Publishes one message and waits for its change event; the latency.
async fn apply_one(
    pipe: &Pipeline,
    user: &str,
    uid: &str,
    start: DateTime<Utc>,
    rrule: Option<String>,
    now: DateTime<Utc>,
) -> anyhow::Result<Duration> {
    let p = plan_one(&mail(user, uid, start, rrule), user, now)?;
    publish(&pipe.js, &pipe.ns, &p, None).await?;
    let acked = Instant::now();
    pipe.wait_for(std::iter::once(uid), Duration::from_secs(120))
        .await?;
    let arrived = pipe.arrivals.lock().expect("not poisoned")[uid];
    Ok(arrived.saturating_duration_since(acked))
}

async fn measure(
    args: &GrowthArgs,
    pipe: &Pipeline,
) -> anyhow::Result<(Vec<SizeResult>, Vec<SeriesResult>)> {
    let now = Utc::now();
    let (from, to) = window(now);
    let db = &pipe.db;
    let spacing = ChronoDuration::milliseconds((365.25 * 86_400_000.0 / PER_YEAR) as i64);

    // The template: one event the processor stored itself, at the window's end.
    let template = "growth-template@bench.example";
    apply_one(pipe, USER, template, to - spacing, None, now)
        .await
        .context("the processor did not apply the template event")?;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM freebusy WHERE user_addr = $1 AND uid = $2",
            &[&USER, &template],
        )
        .await?
        .get(0);
    if n != 1 {
        bail!("template event has {n} free/busy rows, expected 1");
    }

    // The queries imip-ctl freebusy runs, within the user's partition (the
    // function migration V6 keeps in the database, equal to the lanes').
    let part: i32 = db
        .query_one(
            "SELECT imipflow_partition($1, value::integer) FROM deployment WHERE key = 'partitions'",
            &[&USER],
        )
        .await?
        .get(0);
    let query = db
        .prepare(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE partition = $4 AND user_addr = $1 AND period && tstzrange($2, $3, '[)')",
        )
        .await?;
    let open = db
        .prepare(
            "SELECT uid, materialised_until FROM open_series
             WHERE partition = $3 AND user_addr = $1 AND materialised_until < $2",
        )
        .await?;
    let ping = db.prepare("SELECT 1").await?;

    let mut sizes = Vec::new();
    let mut have: usize = 1;
    let mut applied = 0usize;
    for &size in &args.sizes {
        // Events k = have..size, going back from the window's end.
        let load = Instant::now();
        if size > have {
            bulk_load(db, template, have as i64, size as i64, to, spacing).await?;
            // What autovacuum would do soon after such a load (statistics,
            // visibility map), and the checkpoint its WAL would trigger, now,
            // so that neither lands in the middle of the measurements.
            // (Separate calls: several statements in one are one transaction,
            // and VACUUM refuses to run inside one.)
            db.batch_execute("VACUUM ANALYZE objects, attendees, freebusy")
                .await?;
            db.batch_execute("CHECKPOINT").await?;
            have = size;
        }
        let load_secs = load.elapsed().as_secs_f64();
        let stored: i64 = db
            .query_one(
                "SELECT count(*) FROM objects WHERE user_addr = $1",
                &[&USER],
            )
            .await?
            .get(0);
        let mut r = SizeResult {
            size: stored as usize,
            in_window: 0,
            query: Vec::new(),
            roundtrip: Vec::new(),
            apply: Vec::new(),
            baseline: Vec::new(),
            load_secs,
        };
        for _ in 0..args.queries {
            let t = Instant::now();
            let rows = db.query(&query, &[&USER, &from, &to, &part]).await?;
            let _ = db.query(&open, &[&USER, &to, &part]).await?;
            r.query.push(t.elapsed());
            r.in_window = rows.len() as i64;
            let t = Instant::now();
            db.query_one(&ping, &[]).await?;
            r.roundtrip.push(t.elapsed());
        }
        for k in 0..args.applies {
            applied += 1;
            let uid = format!("growth-new-{applied}@bench.example");
            // Inside the window, between the loaded events.
            let start = from + ChronoDuration::hours(1 + 3 * k as i64);
            r.apply
                .push(apply_one(pipe, USER, &uid, start, None, now).await?);
            let p = plan_one(&mail(USER, &uid, start, None), USER, now)?;
            r.baseline.push(
                baseline_sample(
                    &pipe.js,
                    &pipe.db,
                    &pipe.insert,
                    &p,
                    pipe.ns
                        .event_subject("benchbaseline", &format!("g{applied}")),
                    applied,
                )
                .await?,
            );
        }
        sizes.push(r);
    }

    let mut series = Vec::new();
    let samples = args.applies.clamp(1, 5);
    for &n in &args.instances {
        let mut r = SeriesResult {
            instances: n,
            rows: 0,
            apply: Vec::new(),
            baseline: Vec::new(),
        };
        for k in 0..samples {
            applied += 1;
            let uid = format!("growth-series-{n}-{k}@bench.example");
            let start = from + ChronoDuration::minutes(7 * k as i64);
            r.apply.push(
                apply_one(
                    pipe,
                    SERIES_USER,
                    &uid,
                    start,
                    Some(format!("FREQ=HOURLY;COUNT={n}")),
                    now,
                )
                .await?,
            );
            r.rows = db
                .query_one(
                    "SELECT count(*) FROM freebusy WHERE user_addr = $1 AND uid = $2",
                    &[&SERIES_USER, &uid],
                )
                .await?
                .get(0);
            let p = plan_one(&mail(SERIES_USER, &uid, start, None), SERIES_USER, now)?;
            r.baseline.push(
                baseline_sample(
                    &pipe.js,
                    &pipe.db,
                    &pipe.insert,
                    &p,
                    pipe.ns
                        .event_subject("benchbaseline", &format!("g{applied}")),
                    applied,
                )
                .await?,
            );
        }
        series.push(r);
    }
    Ok((sizes, series))
}

/// Clones the template event into events `from..to` (event k starts k
/// spacings before the template), in objects, attendees and freebusy.
async fn bulk_load(
    db: &tokio_postgres::Client,
    template: &str,
    from: i64,
    to: i64,
    end: DateTime<Utc>,
    spacing: ChronoDuration,
) -> anyhow::Result<()> {
    let step = format!("{} milliseconds", spacing.num_milliseconds());
    let last = end - spacing;
    let sql = format!(
        "BEGIN;
         INSERT INTO objects (partition, user_addr, uid, recurrence_key, recurrence_id, sequence, dtstamp,
                              status, summary, organizer, dtstart, dtend, data)
         SELECT o.partition, o.user_addr, 'growth-' || k || '@bench.example', o.recurrence_key, o.recurrence_id,
                o.sequence, o.dtstamp, o.status, o.summary, o.organizer,
                o.dtstart - k * interval '{step}', o.dtend - k * interval '{step}', o.data
           FROM objects o, generate_series({from}, {to} - 1) k
          WHERE o.user_addr = '{USER}' AND o.uid = '{template}';
         INSERT INTO attendees (partition, user_addr, uid, recurrence_key, address, partstat, role,
                                answer_sequence, answer_dtstamp)
         SELECT a.partition, a.user_addr, 'growth-' || k || '@bench.example', a.recurrence_key, a.address,
                a.partstat, a.role, a.answer_sequence, a.answer_dtstamp
           FROM attendees a, generate_series({from}, {to} - 1) k
          WHERE a.user_addr = '{USER}' AND a.uid = '{template}';
         INSERT INTO freebusy (partition, user_addr, uid, instance, period, fbtype, recurrence_id)
         SELECT f.partition, f.user_addr, 'growth-' || k || '@bench.example', f.instance - k * interval '{step}',
                tstzrange(lower(f.period) - k * interval '{step}', upper(f.period) - k * interval '{step}', '[)'),
                f.fbtype, f.recurrence_id
           FROM freebusy f, generate_series({from}, {to} - 1) k
          WHERE f.user_addr = '{USER}' AND f.uid = '{template}';
         COMMIT;"
    );
    let _ = last;
    db.batch_execute(&sql)
        .await
        .context("bulk load of the user's events")?;
    Ok(())
}

fn markdown(
    args: &GrowthArgs,
    sizes: &[SizeResult],
    series: &[SeriesResult],
    started: DateTime<Utc>,
    load_before: &str,
) -> String {
    let mut s = String::new();
    s += &format!(
        "# Growth benchmark, {}\n\nCommand:\n\n```\n{}\n```\n\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        report::shell_command(std::env::args())
    );
    s += "## Machine\n\n| | |\n|---|---|\n";
    for (k, v) in report::machine(&args.bin_dir) {
        s += &format!("| {k} | {v} |\n");
    }
    s += &format!(
        "| load average (start → end) | {} → {} |\n\n",
        load_before,
        report::loadavg()
    );
    s += &format!(
        "## One user's stored events\n\nEvents at {PER_YEAR} a year back from the end of the queried year \
(bulk-loaded clones of one processor-stored event). Query: `imip-ctl freebusy`'s two statements for \
a one-year window, prepared, {} samples; its baseline a prepared `SELECT 1` round trip. Apply: a new \
event for the same user through the running processor, publish ack → change event, {} samples; its \
baseline publish-with-ack + one-row commit + publish-with-ack. Times in ms. \"query × ref\" divides \
by the query at the first size that fills the window (the same rows in it from there on), \
\"apply × first\" by the apply at the smallest size: flat is 1.\n\n",
        args.queries, args.applies
    );
    s += "| stored events | in window | load s | query p50 | query p99 | round trip p50 | query / round trip | query × ref | apply p50 | apply p99 | apply baseline p50 | apply / baseline | apply × first |\n";
    s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    // The query's cost follows the rows in the window, which stop growing at
    // PER_YEAR: compare with the first size that fills the window.
    let q_ref = sizes
        .iter()
        .find(|r| r.in_window as f64 >= PER_YEAR)
        .or(sizes.first());
    let q0 = q_ref.map_or(f64::NAN, |r| percentile_ms(&r.query, 0.5));
    let q0_size = q_ref.map_or(0, |r| r.size);
    let a0 = sizes
        .first()
        .map_or(f64::NAN, |r| percentile_ms(&r.apply, 0.5));
    for r in sizes {
        let q = percentile_ms(&r.query, 0.5);
        let a = percentile_ms(&r.apply, 0.5);
        s += &format!(
            "| {} | {} | {:.1} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.2} | {:.2} |\n",
            r.size,
            r.in_window,
            r.load_secs,
            ms(q),
            ms(percentile_ms(&r.query, 0.99)),
            ms(percentile_ms(&r.roundtrip, 0.5)),
            q / percentile_ms(&r.roundtrip, 0.5),
            q / q0,
            ms(a),
            ms(percentile_ms(&r.apply, 0.99)),
            ms(percentile_ms(&r.baseline, 0.5)),
            a / percentile_ms(&r.baseline, 0.5),
            a / a0,
        );
    }
    s += "\n## One series' instances\n\nA new `FREQ=HOURLY;COUNT=n` event (all instances inside the horizon) \
for another user, through the running processor, publish ack → change event; median of up to 5. \
\"per instance\" is (apply − apply at the smallest n) / (n − smallest n).\n\n";
    s += "| instances | free/busy rows | apply p50 | apply baseline p50 | apply / baseline | per instance µs |\n";
    s += "|---:|---:|---:|---:|---:|---:|\n";
    let first = series
        .first()
        .map(|r| (r.instances, percentile_ms(&r.apply, 0.5)));
    for r in series {
        let a = percentile_ms(&r.apply, 0.5);
        let per = match first {
            Some((n0, a0)) if r.instances > n0 => {
                format!("{:.1}", (a - a0) * 1e3 / (r.instances - n0) as f64)
            }
            _ => "–".into(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {:.2} | {} |\n",
            r.instances,
            r.rows,
            ms(a),
            ms(percentile_ms(&r.baseline, 0.5)),
            a / percentile_ms(&r.baseline, 0.5),
            per
        );
    }
    s += "\n## Ratios\n\n| ratio | value |\n|---|---:|\n";
    if let Some(last) = sizes.last() {
        s += &format!(
            "| free/busy query p50 at {} events / at {} (same rows in the window) | {:.2} |\n",
            last.size,
            q0_size,
            percentile_ms(&last.query, 0.5) / q0
        );
        s += &format!(
            "| apply p50 at {} events / at {} | {:.2} |\n",
            last.size,
            sizes[0].size,
            percentile_ms(&last.apply, 0.5) / a0
        );
        s += &format!(
            "| free/busy query p50 at {} events / PostgreSQL round trip | {:.2} |\n",
            last.size,
            percentile_ms(&last.query, 0.5) / percentile_ms(&last.roundtrip, 0.5)
        );
    }
    if let Some(r) = sizes.iter().find(|r| r.size >= 100_000) {
        let q = percentile_ms(&r.query, 0.5);
        s += &format!(
            "\nTarget: free/busy one-year query < 5 ms at 100,000 events: {} (p50 {} ms, p99 {} ms).\n",
            if q < 5.0 { "met" } else { "not met" },
            ms(q),
            ms(percentile_ms(&r.query, 0.99))
        );
    }
    s
}
