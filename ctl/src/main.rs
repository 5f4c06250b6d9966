//! `imip-ctl`: read and operate the store (SPEC §1.3). Human-readable output by
//! default, `--json` for scripts; the commands are in the library (`imipflow_ctl`).

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use imipflow_ctl::{quarantine, query, rebuild, replay};
use imipflow_processor::relay::Publisher;
use imipflow_processor::status;
use imipflow_processor::{Settings, connect::connect, connect::connect_nats, worker};
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
    /// Recompute a user's free/busy rows from their stored objects (emits
    /// freebusy.changed where they differed).
    Rebuild {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-apply a range of the messages stream, idempotently: messages already
    /// applied change nothing; messages past a partition's applied position
    /// are left to its lane.
    Replay {
        /// First stream sequence.
        #[arg(long)]
        from: u64,
        /// Last stream sequence (default: the stream's last message now).
        #[arg(long)]
        to: Option<u64>,
        /// Only this user's messages.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Calendar data imip-ingest refused: list, show, release, delete.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Every record (ID = stream sequence), oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One record, with the refused data.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Re-plan the record under the current limits (IMIP_MAX_*), publish the
    /// payloads to the messages stream, delete the record.
    Release {
        id: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: imipflow_ingest::Limits,
    },
    /// Delete a record without releasing it.
    Delete { id: u64 },
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
    imipflow_telemetry::init_logging("warn")?;
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
            let query::FreeBusy { periods, truncated } =
                query::freebusy(&mut db, &s, &user, from, to).await?;
            if truncated {
                eprintln!(
                    "imip-ctl: answer truncated to the first {} periods (IMIP_MAX_QUERY_PERIODS); \
                     complete only before {}",
                    periods.len(),
                    periods.last().map_or(from, |p| p.start)
                );
            }
            if json {
                println!(
                    "{}",
                    json!({"user": user, "from": from, "to": to, "periods": periods, "truncated": truncated})
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
                if truncated {
                    println!("  (truncated: more periods follow)");
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
            let objs = query::objects(&db, &user, Some(&uid)).await?;
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
            let objs = query::objects(&db, &user, None).await?;
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
                        max_payload: imipflow_processor::events::DEFAULT_MAX_PAYLOAD,
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
                    imipflow_processor::relay::flush(&db, &js, &Publisher::Serial, &ns, partition)
                        .await?;
                    println!("dead letter {id} applied");
                }
            }
        }
        Command::Status { json } => {
            let db = connect(&s).await?;
            let js = async_nats::jetstream::new(connect_nats(&s).await?);
            let st = status::status(&db, &js, &s).await?;
            if json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                for p in &st.partitions {
                    let owner = match (&p.owner, p.leased) {
                        (Some(o), true) => o.clone(),
                        (Some(o), false) => format!("none (lease of {o} expired)"),
                        (None, _) => "none".to_owned(),
                    };
                    let waiting = if p.stalled_for_secs > 0 {
                        format!("  not advanced for {} s", p.stalled_for_secs)
                    } else {
                        String::new()
                    };
                    println!(
                        "partition {:>3}  applied {:>8}  newest {:>8}  lag {:>6}  owner {} (epoch {}){waiting}",
                        p.partition, p.applied, p.newest, p.lag, owner, p.epoch
                    );
                }
                for i in &st.instances {
                    println!("instance {} owns {} partition(s)", i.instance, i.partitions);
                }
                println!(
                    "lag {}, dead letters {}, quarantined {}, refused {}, unpublished events {}",
                    st.lag, st.dead_letters, st.quarantined, st.refused, st.unpublished_events
                );
                for reason in st.partitions.iter().filter_map(|p| p.stall_reason()) {
                    println!(
                        "WARNING: {reason}; stalled after {} s (IMIP_STALL_AFTER_SECS)",
                        st.stall_after_secs
                    );
                }
            }
        }
        Command::Rebuild { user, json } => {
            let user = user_arg(&user)?;
            let mut db = connect(&s).await?;
            let bar = progress(json, "rebuild");
            let report = rebuild::rebuild(&mut db, &s, &user, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            if report.events > 0 {
                flush_events(&db, &s, &user).await?;
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "rebuilt {user}: {} UID(s), {} changed ({} period(s) added, {} removed), {} event(s)",
                    report.uids,
                    report.changed.len(),
                    report.periods_added,
                    report.periods_removed,
                    report.events
                );
                for uid in &report.changed {
                    println!("  changed: {uid}");
                }
            }
        }
        Command::Replay {
            from,
            to,
            user,
            json,
        } => {
            let user = user.map(|u| user_arg(&u)).transpose()?;
            replay(&s, from, to, user.as_deref(), json).await?;
        }
        Command::Quarantine { action } => {
            let js = async_nats::jetstream::new(connect_nats(&s).await?);
            match action {
                QuarantineAction::List { json } => {
                    for e in quarantine::list(&js, &s).await? {
                        let r = &e.record;
                        if json {
                            println!(
                                "{}",
                                json!({"id": e.id, "reason": r.reason, "detail": r.detail,
                                       "users": r.users, "sender": r.sender, "direction": r.direction,
                                       "message_id": r.message_id, "ingested_at": r.ingested_at,
                                       "size": r.size, "truncated": r.truncated})
                            );
                        } else {
                            println!(
                                "{:>6}  {}  {:<26} {} ({}){}: {}",
                                e.id,
                                r.ingested_at.format("%Y-%m-%dT%H:%M:%SZ"),
                                r.reason.as_str(),
                                r.sender,
                                r.users.join(","),
                                if r.truncated { " [excerpt]" } else { "" },
                                r.detail
                            );
                        }
                    }
                }
                QuarantineAction::Show { id, json } => {
                    let e = quarantine::show(&js, &s, id).await?;
                    if json {
                        println!(
                            "{}",
                            json!({"id": e.id, "subject": e.subject, "record": e.record})
                        );
                    } else {
                        let r = &e.record;
                        println!("id:          {}", e.id);
                        println!("reason:      {} ({})", r.reason, r.detail);
                        println!("direction:   {:?}", r.direction);
                        println!("sender:      {}", r.sender);
                        println!("recipients:  {}", r.recipients.join(", "));
                        println!("users:       {}", r.users.join(", "));
                        println!("message id:  {}", r.message_id.as_deref().unwrap_or("-"));
                        println!("ingested at: {}", r.ingested_at);
                        println!(
                            "size:        {} bytes{}",
                            r.size,
                            if r.truncated {
                                " (excerpt below, truncated: cannot be released)"
                            } else {
                                ""
                            }
                        );
                        println!(
                            "object:      {}",
                            r.object_index
                                .map(|i| i.to_string())
                                .unwrap_or_else(|| "whole message".into())
                        );
                        println!("--");
                        print!("{}", r.excerpt);
                        if !r.excerpt.ends_with('\n') {
                            println!();
                        }
                    }
                }
                QuarantineAction::Release { id, json, limits } => {
                    let released = quarantine::release(&js, &s, id, &limits).await?;
                    if json {
                        println!("{}", serde_json::to_string(&released)?);
                    } else {
                        println!(
                            "quarantine record {id} released: {} payload(s) published to the messages stream",
                            released.payloads.len()
                        );
                    }
                }
                QuarantineAction::Delete { id } => {
                    quarantine::delete(&js, &s, id).await?;
                    println!("quarantine record {id} deleted");
                }
            }
        }
    }
    Ok(())
}

/// A progress bar on stderr; hidden with --json or when stderr is not a terminal.
fn progress(json: bool, what: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(what);
    bar
}

/// Publishes the events a ctl command committed for `user` (the lane would
/// also publish them, but only after its next batch).
async fn flush_events(db: &tokio_postgres::Client, s: &Settings, user: &str) -> anyhow::Result<()> {
    let ns = s.namespace()?;
    let js = async_nats::jetstream::new(connect_nats(s).await?);
    let partition = imipflow_schema::partition(user, s.partitions) as i32;
    imipflow_processor::relay::flush(db, &js, &Publisher::Serial, &ns, partition).await?;
    Ok(())
}

/// `imip-ctl replay`: reads the range from the messages stream and re-applies
/// each message with `replay::replay_one` (see there for the rules).
async fn replay(
    s: &Settings,
    from: u64,
    to: Option<u64>,
    user: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let ns = s.namespace()?;
    let js = async_nats::jetstream::new(connect_nats(s).await?);
    let mut stream = js.get_stream(ns.messages_stream()).await?;
    let last = stream.info().await?.state.last_sequence;
    let to = to.unwrap_or(last).min(last);
    let from = from.max(1);
    let mut counts: std::collections::BTreeMap<replay::ReplayOutcome, u64> = Default::default();
    let mut touched: std::collections::BTreeSet<i32> = Default::default();
    let bar = progress(json, "replay");
    if from <= to {
        bar.set_length(to - from + 1);
        let filter = match user {
            Some(u) => {
                ns.message_subject(imipflow_schema::partition(u, s.partitions), &user_key(u))
            }
            None => ns.messages_subjects(),
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut db = connect(s).await?;
        let prefix = format!("{ns}.msg.");
        // A filtered range may end before `to` with nothing more to deliver:
        // stop after a quiet second.
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), messages.next()).await
        {
            let m = m?;
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            if seq > to {
                break;
            }
            let partition: i32 = m
                .subject
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next())
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("message {seq}: unexpected subject {}", m.subject))?;
            let outcome = replay::replay_one(&mut db, s, partition, seq as i64, &m.payload).await?;
            *counts.entry(outcome).or_default() += 1;
            if !matches!(
                outcome,
                replay::ReplayOutcome::Duplicate | replay::ReplayOutcome::Pending
            ) {
                touched.insert(partition);
            }
            if !json && !matches!(outcome, replay::ReplayOutcome::Duplicate) {
                bar.suspend(|| println!("seq {seq} (partition {partition}): {}", outcome.as_str()));
            }
            bar.set_position(seq - from + 1);
            if seq >= to {
                break;
            }
        }
        for p in &touched {
            imipflow_processor::relay::flush(&db, &js, &Publisher::Serial, &ns, *p).await?;
        }
    }
    bar.finish_and_clear();
    let total: u64 = counts.values().sum();
    if json {
        let outcomes: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
            .collect();
        println!(
            "{}",
            json!({"from": from, "to": to, "user": user, "messages": total, "outcomes": outcomes})
        );
    } else {
        let parts: Vec<String> = counts
            .iter()
            .map(|(k, v)| format!("{} {v}", k.as_str()))
            .collect();
        println!(
            "replayed {total} message(s) from {from} to {to}: {}",
            if parts.is_empty() {
                "none".to_owned()
            } else {
                parts.join(", ")
            }
        );
    }
    Ok(())
}
