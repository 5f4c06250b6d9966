//! `imip-bench`: benchmarks of imipflow's binaries that report ratios to
//! baselines measured in the same run, because the machines are shared and
//! noisy and absolute figures from two runs do not compare.
//!
//! `imip-bench ingest` measures imip-ingest per message (wall time and peak
//! RSS) over the fixture classes, next to spawning a trivial process and to
//! one JetStream publish-with-ack from an already running client. See
//! `bench/README.md` for what each figure means.

mod all;
mod fixtures;
mod growth;
mod latency;
mod measure;
mod processor;
mod report;
mod sandbox;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fixtures::Fixture;
use measure::{Job, Sample, Spawner, Summary};
use report::{Instructions, Report, Row};
use sandbox::Sandbox;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "imip-bench",
    version,
    about = "Benchmarks of imipflow against same-run baselines",
    after_help = "Results go to bench/results (bench/README.md says how to read them).\n\n\
Examples:\n  \
imip-bench all --smoke\n  \
imip-bench ingest --bin-dir target/release\n  \
imip-bench processor --workloads single,series --shapes many"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole suite: ingest, processor, latency, growth, then a summary of their ratios.
    #[command(
        after_help = "Examples:\n  imip-bench all\n  imip-bench all --smoke\n  \
imip-bench all --skip growth,latency --out-dir /tmp/results"
    )]
    All(all::AllArgs),
    /// imip-ingest per message, next to a process spawn and a JetStream publish-with-ack.
    #[command(after_help = "Examples:\n  imip-bench ingest\n  \
imip-bench ingest --ingest target/ingest/imip-ingest --iterations 500")]
    Ingest(IngestArgs),
    /// imip-processor messages/s, next to a bare JetStream consumer and plain batched SQL.
    #[command(after_help = "Examples:\n  imip-bench processor\n  \
imip-bench processor --workloads mix --shapes hot --batch-size 64 --repeat 3")]
    Processor(processor::ProcessorArgs),
    /// Ingest exit to change event, at fixed offered rates and at saturation.
    #[command(
        after_help = "Examples:\n  imip-bench latency\n  imip-bench latency --seconds 30 --users 256"
    )]
    Latency(latency::LatencyArgs),
    /// Free/busy query and apply cost as one user grows to 100,000 events; series instances.
    #[command(
        after_help = "Examples:\n  imip-bench growth\n  imip-bench growth --sizes 10,1000,100000 --queries 50"
    )]
    Growth(growth::GrowthArgs),
    /// Internal: spawns and reaps the measured children (see `measure.rs`).
    #[command(hide = true)]
    SpawnHelper,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Samples per series (default: 200 for the baselines, 100 per ingest class; 5 with --smoke).
    #[arg(long)]
    iterations: Option<usize>,
    /// Where imip-ingest and imip-processor are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The imip-ingest binary to measure (default: <bin-dir>/imip-ingest), e.g.
    /// the statically linked build `bench/run` makes.
    #[arg(long)]
    ingest: Option<PathBuf>,
    /// Folder with typical-outlook.eml, large-recurring.eml and non-calendar.eml
    /// (default: bench/fixtures).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Results file (default: bench/results/ingest-<timestamp>.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// CI mode: checks that the benchmark runs, not how fast (5 samples, no callgrind).
    #[arg(long)]
    smoke: bool,
    /// Skip the callgrind instruction counts even when valgrind is installed.
    #[arg(long)]
    no_callgrind: bool,
    /// NATS server.
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "Connection"
    )]
    nats_url: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::All(args) => all::run(args),
        Cmd::Ingest(args) => ingest(args),
        Cmd::Processor(args) => processor::run(args),
        Cmd::Latency(args) => latency::run(args),
        Cmd::Growth(args) => growth::run(args),
        Cmd::SpawnHelper => measure::helper_main(),
    }
}

/// What one series measures.
enum Kind {
    /// Spawn a program with the typical fixture on stdin.
    Spawn(PathBuf),
    /// One publish-with-ack from the warm client.
    Publish,
    /// Connect a new client, one publish-with-ack (what ingest does on the wire).
    ConnectPublish,
    /// The same with ingest's own plain client (`publish::wire`): the least a
    /// fresh connection's publish-with-ack costs, the floor under ingest's wire time.
    PlainConnectPublish,
    /// imip-ingest on fixture `i`.
    Ingest(usize),
}

struct Series {
    name: String,
    what: String,
    kind: Kind,
    target: usize,
    walls: Vec<Duration>,
    /// Child figures of process series (empty for publish series).
    children: Vec<Sample>,
    /// Samples taken, warm-up included (for unique message ids).
    runs: usize,
}

impl Series {
    fn new(name: &str, what: String, kind: Kind, target: usize) -> Series {
        Series {
            name: name.into(),
            what,
            kind,
            target,
            walls: Vec::with_capacity(target),
            children: Vec::with_capacity(target),
            runs: 0,
        }
    }

    fn summary(&self) -> Summary {
        Summary::of(&self.walls, &self.children)
    }
}

/// Everything the measuring loop needs.
struct Bench<'a> {
    spawner: Spawner,
    rt: &'a tokio::runtime::Runtime,
    js: &'a async_nats::jetstream::Context,
    sandbox: &'a Sandbox,
    ingest_bin: PathBuf,
    fixtures: &'a [Fixture],
    publish_payload: Vec<u8>,
    publish_subject: String,
    nats_url: &'a str,
    pid: u32,
}

impl Bench<'_> {
    /// Takes one sample of `series`; `keep` is false during warm-up.
    fn sample(&mut self, series: &mut Series, keep: bool) -> anyhow::Result<()> {
        let k = series.runs;
        series.runs += 1;
        let (wall, child) = match &series.kind {
            Kind::Spawn(program) => {
                let s = self.spawner.run(&Job {
                    program: &program.to_string_lossy(),
                    args: &[],
                    env: &[],
                    input: &self.fixtures[0].bytes,
                })?;
                (s.wall, Some(s))
            }
            Kind::Publish => (self.publish_once(k)?, None),
            Kind::ConnectPublish => (self.connect_publish_once(k)?, None),
            Kind::PlainConnectPublish => (self.plain_connect_publish_once(k)?, None),
            Kind::Ingest(i) => {
                let fixture = &self.fixtures[*i];
                let id = format!("bench{}-{}-{k}@imip-bench.invalid", self.pid, fixture.class);
                let input = fixture.with_message_id(&id);
                let s = self
                    .spawner
                    .run(&Job {
                        program: &self.ingest_bin.to_string_lossy(),
                        args: &["--sender", "alice@example.com"],
                        env: &[("IMIP_NAMESPACE", self.sandbox.namespace.as_str())],
                        input: &input,
                    })
                    .with_context(|| format!("imip-ingest on {}", fixture.path.display()))?;
                (s.wall, Some(s))
            }
        };
        if keep {
            series.walls.push(wall);
            if let Some(c) = child {
                series.children.push(c);
            }
        }
        Ok(())
    }

    fn plain_connect_publish_once(&self, k: usize) -> anyhow::Result<Duration> {
        use imipflow_nats::wire;
        let id = format!("bench{}-plain-connect-publish-{k}", self.pid);
        let message = wire::Message {
            subject: &self.publish_subject,
            msg_id: &id,
            payload: &self.publish_payload,
        };
        let start = Instant::now();
        wire::publish(
            self.nats_url,
            &wire::Login::None,
            std::slice::from_ref(&message),
            Duration::from_secs(10),
        )
        .map_err(|e| anyhow::anyhow!("plain connect + publish: {e:?}"))?;
        Ok(start.elapsed())
    }

    fn connect_publish_once(&self, k: usize) -> anyhow::Result<Duration> {
        let id = format!("bench{}-connect-publish-{k}", self.pid);
        let payload = self.publish_payload.clone();
        self.rt.block_on(async {
            let start = Instant::now();
            let client = async_nats::ConnectOptions::new()
                .name("imip-bench-fresh")
                .max_reconnects(Some(0))
                .connect(self.nats_url)
                .await
                .context("cannot connect")?;
            let js = async_nats::jetstream::new(client.clone());
            let ack = imipflow_nats::publish_deduped(
                &js,
                self.publish_subject.clone(),
                &id,
                payload.into(),
            )
            .await
            .context("publish failed")?;
            tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .context("no acknowledgement within 10 s")?
                .context("publish not acknowledged")?;
            let wall = start.elapsed();
            drop(js);
            client
                .drain()
                .await
                .context("cannot close the connection")?;
            Ok(wall)
        })
    }

    fn publish_once(&self, k: usize) -> anyhow::Result<Duration> {
        let id = format!("bench{}-publish-{k}", self.pid);
        let payload = self.publish_payload.clone();
        self.rt.block_on(async {
            let start = Instant::now();
            let ack = imipflow_nats::publish_deduped(
                self.js,
                self.publish_subject.clone(),
                &id,
                payload.into(),
            )
            .await
            .context("publish failed")?;
            tokio::time::timeout(Duration::from_secs(10), ack)
                .await
                .context("no acknowledgement within 10 s")?
                .context("publish not acknowledged")?;
            Ok(start.elapsed())
        })
    }
}

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    let command = report::shell_command(std::env::args());
    let (n_base, n_ingest) = match (args.iterations, args.smoke) {
        (Some(n), _) => (n, n),
        (None, true) => (5, 5),
        (None, false) => (200, 100),
    };
    if n_base == 0 {
        bail!("--iterations must be at least 1");
    }
    let warmup = if args.smoke { 1 } else { 3 };
    let ingest_bin = args
        .ingest
        .clone()
        .unwrap_or_else(|| args.bin_dir.join("imip-ingest"));
    for bin in [&ingest_bin, &args.bin_dir.join("imip-processor")] {
        if !bin.is_file() {
            bail!(
                "{} not found: build it first (cargo build --release --bins) or pass --bin-dir",
                bin.display()
            );
        }
    }
    let dir = args.fixtures.clone().unwrap_or_else(fixtures::default_dir);
    let fixtures = fixtures::CLASSES
        .iter()
        .map(|(class, file)| Fixture::load(class, dir.join(file)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The payload ingest publishes for the typical mail: what baseline 2 sends.
    let publish_payload = typical_payload(&ingest_bin, &fixtures[0])?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    // The JetStream context spawns its ack task on the current runtime.
    let _runtime = rt.enter();
    let sandbox = Sandbox::for_this_process()?;
    let client = rt
        .block_on(async {
            let options = async_nats::ConnectOptions::new().name("imip-bench");
            tokio::time::timeout(
                Duration::from_secs(10),
                options.connect(args.nats_url.as_str()),
            )
            .await
        })
        .context("NATS connection timed out")?
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
    let server_version = client.server_info().version;
    let js = async_nats::jetstream::new(client);

    let scratch = std::env::temp_dir().join(format!("imip-bench-{}", std::process::id()));
    let load_start = report::loadavg();
    eprintln!(
        "imip-bench: namespace {}, database {}, {} baseline / {} ingest samples per series",
        sandbox.namespace, sandbox.database, n_base, n_ingest
    );
    let result = (|| -> anyhow::Result<Vec<Series>> {
        sandbox.migrate(&args.bin_dir, &args.nats_url)?;
        let mut series = vec![Series::new(
            "spawn",
            "`/bin/true`, typical mail on stdin".into(),
            Kind::Spawn("/bin/true".into()),
            n_base,
        )];
        if let Some(elf) = fixtures::static_true_elf() {
            let path = write_executable(&scratch, "true-static", &elf)?;
            series.push(Series::new(
                "spawn (static)",
                "static 129-byte ELF that only calls exit(0)".into(),
                Kind::Spawn(path),
                n_base,
            ));
        }
        series.push(Series::new(
            "publish",
            format!(
                "JetStream publish-with-ack, warm client, {} B payload",
                publish_payload.len()
            ),
            Kind::Publish,
            n_base,
        ));
        series.push(Series::new(
            "connect + publish",
            "new NATS connection, then the same publish-with-ack (context only)".into(),
            Kind::ConnectPublish,
            n_base,
        ));
        series.push(Series::new(
            "plain connect + publish",
            "new TCP connection, CONNECT + SUB + HPUB in one write, wait for the ack (ingest's client)".into(),
            Kind::PlainConnectPublish,
            n_base,
        ));
        for (i, f) in fixtures.iter().enumerate() {
            let what = format!(
                "`{}`, {} B",
                f.path.file_name().unwrap_or_default().to_string_lossy(),
                f.bytes.len()
            );
            series.push(Series::new(
                &format!("ingest {}", f.class),
                what,
                Kind::Ingest(i),
                n_ingest,
            ));
        }
        let mut bench = Bench {
            spawner: Spawner::start(&std::env::current_exe()?, &["spawn-helper"])?,
            rt: &rt,
            js: &js,
            sandbox: &sandbox,
            ingest_bin: ingest_bin.clone(),
            fixtures: &fixtures,
            publish_subject: format!("{}.msg.0.bench", sandbox.namespace),
            publish_payload: publish_payload.clone(),
            nats_url: &args.nats_url,
            pid: std::process::id(),
        };
        for s in series.iter_mut() {
            for _ in 0..warmup {
                bench.sample(s, false)?;
            }
        }
        // Interleave the series so that drift in the machine's load hits them
        // alike: in each round every series whose share is due takes a sample.
        let rounds = series.iter().map(|s| s.target).max().unwrap_or(0);
        for r in 0..rounds {
            for s in series.iter_mut() {
                if (r + 1) * s.target / rounds > r * s.target / rounds {
                    bench.sample(s, true)?;
                }
            }
            if (r + 1) % (rounds / 10).max(1) == 0 {
                eprintln!("imip-bench: round {}/{rounds}", r + 1);
            }
        }
        bench.spawner.finish()?;
        Ok(series)
    })();
    let checks = match &result {
        Ok(series) => rt.block_on(stream_checks(&js, &sandbox, series)),
        Err(_) => Ok(Vec::new()),
    };
    let teardown = rt.block_on(sandbox.teardown(Some(&js)));
    let _ = std::fs::remove_dir_all(&scratch);
    let series = result?;
    let checks = checks?;
    if let Err(e) = &teardown {
        eprintln!("imip-bench: cleanup failed: {e:#}");
    }

    let instructions = if args.smoke || args.no_callgrind {
        None
    } else if Command::new("valgrind").arg("--version").output().is_err() {
        Some(Err("valgrind is not installed".to_owned()))
    } else {
        eprintln!("imip-bench: counting instructions with callgrind");
        Some(callgrind(&ingest_bin, &fixtures).map_err(|e| format!("{e:#}")))
    };

    let mut machine = report::machine(&args.bin_dir);
    let line = report::ingest_binary(&ingest_bin);
    machine.retain(|(k, _)| *k != line.0);
    machine.push(line);
    machine.push(("NATS server".into(), server_version));
    let setup = vec![
        (
            "started".into(),
            started.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        ),
        (
            "load average (start → end)".into(),
            format!("{load_start} → {}", report::loadavg()),
        ),
        (
            "samples".into(),
            format!(
                "{n_base} per baseline, {n_ingest} per ingest class, after {warmup} warm-up run(s) each; series interleaved"
            ),
        ),
        (
            "namespace".into(),
            format!(
                "`{}` (streams created by `imip-processor migrate`, deleted after)",
                sandbox.namespace
            ),
        ),
    ];
    let rows: Vec<Row> = series
        .iter()
        .map(|s| Row {
            series: s.name.clone(),
            what: s.what.clone(),
            summary: s.summary(),
        })
        .collect();
    let stat = |name: &str, f: fn(&Summary) -> f64| {
        rows.iter()
            .find(|r| r.series == name)
            .map_or(f64::NAN, |r| f(&r.summary))
    };
    // Wall-time ratios as (of medians, of minimums): numerator series over the
    // sum of the denominator series.
    let time_ratio = |num: &str, den: &[&str]| {
        let of =
            |f: fn(&Summary) -> f64| stat(num, f) / den.iter().map(|d| stat(d, f)).sum::<f64>();
        (of(|s| s.median_us), Some(of(|s| s.min_us)))
    };
    let mut ratios = Vec::new();
    for (num, den) in [
        ("ingest typical", &["spawn", "publish"][..]),
        ("ingest large-recurring", &["spawn", "publish"][..]),
        ("ingest typical", &["spawn"][..]),
        ("ingest large-recurring", &["spawn"][..]),
        ("ingest non-calendar", &["spawn"][..]),
        ("ingest typical", &["spawn", "connect + publish"][..]),
        ("ingest typical", &["spawn", "plain connect + publish"][..]),
        (
            "ingest typical",
            &["spawn (static)", "plain connect + publish"][..],
        ),
        ("publish", &["spawn"][..]),
    ] {
        let label = if den.len() == 1 {
            format!("{num} / {}", den[0])
        } else {
            format!("{num} / ({})", den.join(" + "))
        };
        let (median, min) = time_ratio(num, den);
        ratios.push((label, median, min));
    }
    let rss = |s: &Summary| s.max_rss_kb.map_or(f64::NAN, |k| k as f64);
    ratios.push((
        "peak RSS: ingest typical / spawn".to_owned(),
        stat("ingest typical", rss) / stat("spawn", rss),
        None,
    ));
    let report = Report {
        title: format!(
            "imip-ingest benchmark, {}",
            started.format("%Y-%m-%d %H:%M UTC")
        ),
        command,
        machine,
        setup,
        rows,
        ratios,
        instructions,
        checks,
    };
    let text = report.to_markdown();
    let out = report::write_results("ingest", args.out.as_deref(), started, &text)?;
    print!("{text}");
    eprintln!("imip-bench: results written to {}", out.display());
    teardown
}

/// What `imip-ingest --print` makes of the typical mail: the payload it would publish.
fn typical_payload(ingest_bin: &Path, typical: &Fixture) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(ingest_bin)
        .args(["--print", "--sender", "alice@example.com"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", ingest_bin.display()))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        stdin.write_all(&typical.bytes)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} --print failed on the typical fixture: {}",
            ingest_bin.display(),
            out.status
        );
    }
    let line = out
        .stdout
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .to_vec();
    if line.is_empty() {
        bail!(
            "{} --print produced no payload for {}",
            ingest_bin.display(),
            typical.path.display()
        );
    }
    Ok(line)
}

/// Every calendar run and every baseline publish must have landed in the
/// messages stream, one message each, and nothing in quarantine: otherwise
/// dedupe or a refused fixture made some runs cheaper than they claim.
async fn stream_checks(
    js: &async_nats::jetstream::Context,
    sandbox: &Sandbox,
    series: &[Series],
) -> anyhow::Result<Vec<String>> {
    let runs = |pred: &dyn Fn(&Kind) -> bool| -> u64 {
        series
            .iter()
            .filter(|s| pred(&s.kind))
            .map(|s| s.runs as u64)
            .sum()
    };
    let expected_messages = runs(&|k| {
        matches!(
            k,
            Kind::Publish | Kind::ConnectPublish | Kind::PlainConnectPublish | Kind::Ingest(0 | 1)
        )
    });
    let count = |name: String| async move {
        let mut stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("cannot look up stream {name}"))?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("no info on stream {name}"))?;
        anyhow::Ok(info.state.messages)
    };
    let messages = count(sandbox.namespace.messages_stream()).await?;
    let quarantined = count(sandbox.namespace.quarantine_stream()).await?;
    if messages != expected_messages || quarantined != 0 {
        bail!(
            "stream check failed: {messages} messages (expected {expected_messages}), {quarantined} quarantined (expected 0)"
        );
    }
    Ok(vec![format!(
        "messages stream holds {messages} messages = baseline publishes + calendar ingest runs (warm-up included); \
         quarantine holds 0; every ingest run exited 0"
    )])
}

/// Instruction counts of `/bin/true` and of imip-ingest `--print` per fixture.
fn callgrind(ingest_bin: &Path, fixtures: &[Fixture]) -> anyhow::Result<Vec<Instructions>> {
    let mut list = vec![Instructions {
        what: "`/bin/true`".into(),
        count: measure::callgrind_instructions("/bin/true", &[], &fixtures[0].bytes)?,
    }];
    let bin = ingest_bin.to_string_lossy();
    for f in fixtures {
        list.push(Instructions {
            what: format!("imip-ingest --print, {}", f.class),
            count: measure::callgrind_instructions(
                &bin,
                &["--print", "--sender", "a@example.com"],
                &f.bytes,
            )?,
        });
    }
    Ok(list)
}

fn write_executable(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}
