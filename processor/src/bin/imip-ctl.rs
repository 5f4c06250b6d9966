//! `imip-ctl`: read and operate the store (SPEC §1.3). Human-readable output by
//! default, `--json` for scripts; the queries are in `imipflow_processor::ctl`.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use imipflow_processor::{Settings, connect::connect, connect::connect_nats, ctl, worker};
use imipflow_schema::{normalize_address, user_key};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "imip-ctl",
    version,
    about = "Inspect and operate imipflow's store"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A user's busy periods in a window.
    Freebusy {
        user: String,
        #[arg(long)]
        from: DateTime<Utc>,
        #[arg(long)]
        to: DateTime<Utc>,
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        #[arg(long)]
        ics: bool,
    },
    /// One stored object (the master, or one recurrence).
    Object {
        user: String,
        uid: String,
        #[arg(long)]
        recurrence_id: Option<DateTime<Utc>>,
        #[arg(long, conflicts_with = "ics")]
        json: bool,
        #[arg(long)]
        ics: bool,
    },
    /// All of a user's stored objects.
    Objects {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// A user's pending requests.
    Queue {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Change events from the events stream.
    Events {
        #[arg(long)]
        user: Option<String>,
        /// Start after this per-user sequence (with --user) or stream sequence.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list, or replay one.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Partitions, owners, positions, DLQ count.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    List {
        #[arg(long)]
        json: bool,
    },
    Replay {
        id: i64,
    },
}

fn user_arg(u: &str) -> anyhow::Result<String> {
    normalize_address(u).with_context(|| format!("not an address: {u:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = imipflow_config::layered::parse_or_exit::<Cli>(Settings::augment_args).cli;
    let s = cli.settings;
    match cli.command {
        Command::Freebusy {
            user,
            from,
            to,
            json,
            ics,
        } => {
            let user = user_arg(&user)?;
            let mut db = connect(&s).await?;
            let periods = ctl::freebusy(&mut db, &s, &user, from, to).await?;
            if json {
                println!(
                    "{}",
                    json!({"user": user, "from": from, "to": to, "periods": periods})
                );
            } else if ics {
                let doc = imipflow_schema::VFreeBusy {
                    prodid: "-//imipflow//imip-ctl//EN",
                    user: &user,
                    from,
                    to,
                    dtstamp: Utc::now(),
                    periods: &periods,
                };
                print!("{}", doc.to_ics());
            } else {
                println!("free/busy of {user} from {from} to {to}:");
                for p in &periods {
                    println!(
                        "  {} – {}  {:<16} {}",
                        p.start,
                        p.end,
                        p.fbtype.as_str(),
                        p.uid
                    );
                }
                if periods.is_empty() {
                    println!("  (free)");
                }
            }
        }
        Command::Object {
            user,
            uid,
            recurrence_id,
            json,
            ics,
        } => {
            let user = user_arg(&user)?;
            let db = connect(&s).await?;
            let objs = ctl::objects(&db, &user, Some(&uid)).await?;
            let Some((_, o)) = objs
                .into_iter()
                .find(|(_, o)| o.recurrence_id == recurrence_id)
            else {
                bail!("no object {uid} for {user}");
            };
            if ics {
                print!("{}", o.raw);
            } else {
                let c = &o.component;
                let doc = json!({
                    "user": user, "uid": uid, "recurrence_id": o.recurrence_id,
                    "sequence": c.sequence, "dtstamp": c.dtstamp, "status": c.status,
                    "summary": c.summary, "start": c.start, "end": c.end, "rrule": c.rrule,
                    "exdate": c.exdate, "transp": c.transp,
                    "organizer": c.organizer.as_ref().map(|p| p.address.clone()),
                    "attendees": c.attendees.iter().map(|a| json!({"address": a.address, "partstat": a.partstat})).collect::<Vec<_>>(),
                });
                if json {
                    println!("{doc}");
                } else {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
            }
        }
        Command::Objects { user, json } => {
            let user = user_arg(&user)?;
            let db = connect(&s).await?;
            let objs = ctl::objects(&db, &user, None).await?;
            let docs: Vec<_> = objs
                .iter()
                .map(|(uid, o)| {
                    json!({"uid": uid, "recurrence_id": o.recurrence_id, "sequence": o.component.sequence,
                           "summary": o.component.summary, "start": o.component.start.as_ref().and_then(|t| t.utc),
                           "status": o.component.status})
                })
                .collect();
            if json {
                println!("{}", json!({"user": user, "objects": docs}));
            } else {
                for d in docs {
                    println!(
                        "{} {} seq={} {} {}",
                        d["uid"], d["recurrence_id"], d["sequence"], d["start"], d["summary"]
                    );
                }
            }
        }
        Command::Queue { user, json } => {
            let user = user_arg(&user)?;
            let db = connect(&s).await?;
            let rows = db
                .query(
                    "SELECT uid, organizer, summary, added_at, sequence, data FROM request_queue
                     WHERE user_addr = $1 ORDER BY added_at, uid",
                    &[&user],
                )
                .await?;
            let docs: Vec<_> = rows
                .iter()
                .map(|r| {
                    let data: serde_json::Value = r.get(5);
                    // Each component of the pending request: its times and the
                    // user's own answer so far (NEEDS-ACTION until they reply).
                    let instances: Vec<_> = data["components"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let partstat = c["attendees"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|a| a["address"] == user.as_str())
                                .map(|a| a["partstat"].clone())
                                .unwrap_or(serde_json::Value::Null);
                            json!({"recurrence_id": c["recurrence_id"]["time"]["utc"],
                                   "start": c["start"]["utc"], "end": c["end"]["utc"],
                                   "rrule": c["rrule"], "partstat": partstat})
                        })
                        .collect();
                    json!({"uid": r.get::<_, String>(0), "organizer": r.get::<_, Option<String>>(1),
                           "summary": r.get::<_, Option<String>>(2), "added_at": r.get::<_, DateTime<Utc>>(3),
                           "sequence": r.get::<_, i64>(4), "instances": instances})
                })
                .collect();
            if json {
                println!("{}", json!({"user": user, "queue": docs}));
            } else if docs.is_empty() {
                println!("no pending requests for {user}");
            } else {
                for d in &docs {
                    println!("{} from {}: {}", d["uid"], d["organizer"], d["summary"]);
                    for i in d["instances"].as_array().into_iter().flatten() {
                        println!(
                            "    {} – {}  your answer: {}",
                            i["start"], i["end"], i["partstat"]
                        );
                    }
                }
            }
        }
        Command::Events {
            user,
            since,
            follow,
            json,
        } => {
            let ns = s.namespace()?;
            let js = async_nats::jetstream::new(connect_nats(&s).await?);
            let stream = js.get_stream(ns.events_stream()).await?;
            let filter = match &user {
                Some(u) => format!("{}.events.*.*.{}", ns, user_key(&user_arg(u)?)),
                None => ns.events_subjects(),
            };
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: filter,
                    deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let mut pending = stream.clone().info().await?.state.last_sequence;
            let mut messages = consumer.messages().await?;
            loop {
                let next = if follow {
                    messages.next().await
                } else {
                    if pending == 0 {
                        break;
                    }
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        messages.next(),
                    )
                    .await
                    {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                };
                let Some(m) = next else { break };
                let m = m?;
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                let ev: serde_json::Value = serde_json::from_slice(&m.payload)?;
                let key = if user.is_some() {
                    ev["sequence"].as_u64().unwrap_or(0)
                } else {
                    seq
                };
                if key > since {
                    if json {
                        println!("{ev}");
                    } else {
                        println!(
                            "#{} {} {} {} {}",
                            ev["sequence"], ev["time"], ev["subject"], ev["type"], ev["data"]
                        );
                    }
                }
                if !follow && seq >= pending {
                    pending = 0;
                }
            }
        }
        Command::Dlq { action } => {
            let mut db = connect(&s).await?;
            match action {
                DlqAction::List { json } => {
                    let rows = db
                        .query(
                            "SELECT id, user_addr, partition, stream_seq, error, created_at, replayed_at
                             FROM dead_letters ORDER BY id",
                            &[],
                        )
                        .await?;
                    for r in rows {
                        let doc = json!({"id": r.get::<_, i64>(0), "user": r.get::<_, String>(1),
                            "partition": r.get::<_, i32>(2), "stream_seq": r.get::<_, i64>(3),
                            "error": r.get::<_, String>(4), "created_at": r.get::<_, DateTime<Utc>>(5),
                            "replayed_at": r.get::<_, Option<DateTime<Utc>>>(6)});
                        if json {
                            println!("{doc}");
                        } else {
                            println!(
                                "{} {} p{} seq {}: {}",
                                doc["id"],
                                doc["user"],
                                doc["partition"],
                                doc["stream_seq"],
                                doc["error"]
                            );
                        }
                    }
                }
                DlqAction::Replay { id } => {
                    let ns = s.namespace()?;
                    let row = db
                        .query_opt(
                            "SELECT user_addr, partition, stream_seq, payload FROM dead_letters
                             WHERE id = $1 AND replayed_at IS NULL",
                            &[&id],
                        )
                        .await?
                        .with_context(|| format!("no pending dead letter {id}"))?;
                    let (user, partition, seq, payload): (String, i32, i64, Vec<u8>) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    let mut tx = db.transaction().await?;
                    let before: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM dead_letters WHERE user_addr = $1",
                            &[&user],
                        )
                        .await?
                        .get(0);
                    let cache = imipflow_processor::store::StatementCache::default();
                    let apply = worker::Apply {
                        cache: &cache,
                        settings: &s,
                        ns: &ns,
                        partition,
                    };
                    apply.message(&mut tx, seq, &payload).await?;
                    let after: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM dead_letters WHERE user_addr = $1",
                            &[&user],
                        )
                        .await?
                        .get(0);
                    if after > before {
                        tx.rollback().await?;
                        bail!("dead letter {id} failed again; left in place");
                    }
                    tx.execute(
                        "UPDATE dead_letters SET replayed_at = now() WHERE user_addr = $1 AND id = $2",
                        &[&user, &id],
                    )
                    .await?;
                    tx.commit().await?;
                    let js = async_nats::jetstream::new(connect_nats(&s).await?);
                    imipflow_processor::relay::flush(&db, &js, &ns, partition).await?;
                    println!("dead letter {id} applied");
                }
            }
        }
        Command::Status { json } => {
            let ns = s.namespace()?;
            let db = connect(&s).await?;
            let js = async_nats::jetstream::new(connect_nats(&s).await?);
            let mut stream = js.get_stream(ns.messages_stream()).await?;
            let rows = db
                .query(
                    "SELECT partition, last_sequence, owner, epoch, coalesce(lease_until > now(), false)
                     FROM partitions ORDER BY partition",
                    &[],
                )
                .await?;
            let dlq: i64 = db
                .query_one(
                    "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL",
                    &[],
                )
                .await?
                .get(0);
            let mut parts = Vec::new();
            let mut total_lag = 0u64;
            for p in 0..s.partitions as i32 {
                let row = rows.iter().find(|r| r.get::<_, i32>(0) == p);
                let applied = row.map(|r| r.get::<_, i64>(1)).unwrap_or(0) as u64;
                // Lag in stream positions: the partition's newest message minus
                // the position its lane has applied (0 when caught up).
                let newest = stream
                    .get_last_raw_message_by_subject(&ns.partition_filter(p as u32))
                    .await
                    .map(|m| m.sequence)
                    .unwrap_or(0);
                let lag = newest.saturating_sub(applied);
                total_lag += lag;
                parts.push(
                    json!({"partition": p, "applied": applied, "newest": newest, "lag": lag,
                    "owner": row.and_then(|r| r.get::<_, Option<String>>(2)),
                    "epoch": row.map(|r| r.get::<_, i64>(3)).unwrap_or(0),
                    "leased": row.map(|r| r.get::<_, bool>(4)).unwrap_or(false)}),
                );
            }
            let quarantined = js
                .get_stream(ns.quarantine_stream())
                .await?
                .info()
                .await?
                .state
                .messages;
            let _ = stream.info().await?;
            if json {
                println!(
                    "{}",
                    json!({"partitions": parts, "lag": total_lag, "dead_letters": dlq, "quarantined": quarantined})
                );
            } else {
                for p in &parts {
                    println!(
                        "partition {:>3}  applied {:>8}  lag {:>6}  owner {} (epoch {})",
                        p["partition"], p["applied"], p["lag"], p["owner"], p["epoch"]
                    );
                }
                println!("lag {total_lag}, dead letters {dlq}, quarantined {quarantined}");
            }
        }
    }
    Ok(())
}
