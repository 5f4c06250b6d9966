//! `imip-loadgen`: generates deterministic iMIP traffic (see the library) and
//! prints it, writes it as mails, publishes it straight onto the messages
//! stream, or pipes every mail through `imip-ingest` as an MTA would
//! (retrying exit 75 like an MTA's deferred queue).

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use imipflow_loadgen::{Config, Delivery, mails, messages, namespace, publish};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Payload JSON lines on stdout.
    Print,
    /// Payloads published on the messages stream (fast path, no ingest process).
    Publish,
    /// Every mail piped through `imip-ingest`, retried while it exits 75.
    Ingest,
    /// Mails written as `<out>/<n>.eml` plus `<out>/<n>.args` (ingest arguments).
    Eml,
}

#[derive(Parser)]
#[command(
    name = "imip-loadgen",
    version,
    about = "Deterministic realistic iMIP traffic",
    after_help = "Examples:\n  \
imip-loadgen --messages 10 | head -1\n  \
imip-loadgen --mode eml --out /tmp/mails --messages 500\n  \
imip-loadgen --mode ingest --ingest-bin target/release/imip-ingest --users 1000 --messages 20000\n  \
IMIP_NAMESPACE=load imip-loadgen --mode publish --seed 7"
)]
struct Cli {
    /// Seed of the generator: the same seed gives the same mails.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct users the mails are spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Mails to generate, re-deliveries included.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// What to do with the generated traffic.
    #[arg(long, value_enum, default_value = "print")]
    mode: Mode,
    /// Skip the first N mails (resume a run).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Directory for `--mode eml`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `imip-ingest` binary for `--mode ingest`.
    #[arg(long, default_value = "imip-ingest")]
    ingest_bin: PathBuf,
    /// Give up on a mail that still exits 75 after this many seconds.
    #[arg(long, default_value_t = 300)]
    retry_secs: u64,
    /// NATS server URL (`--mode publish`).
    #[arg(
        long,
        env = "IMIP_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "Connection"
    )]
    nats_url: String,
    /// Prefix of every stream and subject (`--mode publish` and `ingest`).
    #[arg(
        long,
        env = "IMIP_NAMESPACE",
        default_value = "imip",
        help_heading = "Connection"
    )]
    namespace: String,
    /// Number of partitions (must match the processors').
    #[arg(long, env = "IMIP_PARTITIONS", default_value_t = imipflow_schema::DEFAULT_PARTITIONS, help_heading = "Connection")]
    partitions: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::new(cli.seed, cli.users, cli.messages);
    match cli.mode {
        Mode::Print => {
            let mut out = std::io::stdout().lock();
            for m in messages(&config).iter().skip(cli.skip) {
                out.write_all(&m.json)?;
                out.write_all(b"\n")?;
            }
        }
        Mode::Publish => {
            let ns = namespace(&cli.namespace)?;
            let client = async_nats::connect(&cli.nats_url)
                .await
                .context("connect to NATS")?;
            let js = async_nats::jetstream::new(client);
            let all = messages(&config);
            let report = publish(&js, &ns, cli.partitions, &all[cli.skip.min(all.len())..]).await?;
            eprintln!(
                "imip-loadgen: {} stored, {} dropped as duplicates",
                report.stored, report.duplicates
            );
        }
        Mode::Eml => {
            let dir = cli.out.context("--mode eml needs --out DIR")?;
            std::fs::create_dir_all(&dir)?;
            for (i, m) in mails(&config).iter().enumerate().skip(cli.skip) {
                std::fs::write(dir.join(format!("{i:07}.eml")), &m.bytes)?;
                std::fs::write(
                    dir.join(format!("{i:07}.args")),
                    m.ingest_args().join("\n") + "\n",
                )?;
            }
        }
        Mode::Ingest => {
            let (mut ok, mut deferred) = (0usize, 0usize);
            for m in mails(&config).iter().skip(cli.skip) {
                let mut wait = Duration::from_millis(100);
                let started = std::time::Instant::now();
                loop {
                    let code = run_ingest(&cli.ingest_bin, m).await?;
                    match code {
                        0 => break,
                        75 if started.elapsed() < Duration::from_secs(cli.retry_secs) => {
                            deferred += 1;
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                        other => bail!("imip-ingest exited {other} for {}#{}", m.user, m.number),
                    }
                }
                ok += 1;
                if m.delivery == Delivery::First && ok.is_multiple_of(1000) {
                    eprintln!("imip-loadgen: {ok} mails ingested");
                }
            }
            eprintln!("imip-loadgen: {ok} mails ingested, {deferred} deferrals (exit 75) retried");
        }
    }
    Ok(())
}

async fn run_ingest(bin: &PathBuf, mail: &imipflow_loadgen::Mail) -> anyhow::Result<i32> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin)
        .args(mail.ingest_args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let _ = stdin.write_all(&mail.bytes).await;
    drop(stdin);
    let status = child.wait().await?;
    Ok(status.code().unwrap_or(-1))
}
