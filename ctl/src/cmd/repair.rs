//! `imip-ctl rebuild` and `replay` as commands: a progress bar, the library's
//! [`crate::rebuild`] / [`crate::replay`] on the lanes' own write path, the
//! events they committed published at once, and the report.

use crate::output::{self, json_line, progress};
use crate::rebuild;
use crate::replay::{self, ReplayOutcome};
use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull, pull::OrderedConfig};
use futures::StreamExt;
use imipflow_processor::relay::{self, Publisher};
use imipflow_processor::{Settings, connect::connect};
use imipflow_schema::{Namespace, user_key};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{jetstream, user_arg};

/// `imip-ctl rebuild USER [--json]`.
pub async fn rebuild(s: &Settings, user: &str, json: bool) -> anyhow::Result<()> {
    let mut db = connect(s).await?;
    let user = super::known_user(&db, user).await?;
    let bar = progress(json, "rebuild");
    let work = rebuild::rebuild(&mut db, s, &user, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    let report = tokio::select! {
        r = work => r?,
        _ = tokio::signal::ctrl_c() => output::interrupted(
            &bar,
            &format!("rebuild of {user} stopped before committing: nothing changed; run it again"),
        ),
    };
    bar.finish_and_clear();
    if report.events > 0 {
        flush_events(&db, s, &user).await?;
    }
    if json {
        return json_line(&report);
    }
    println!(
        "rebuilt {user}: {} UID(s), {} changed ({} period(s) added, {} removed), {} event(s)",
        report.uids,
        report.changed.len(),
        report.periods_added,
        report.periods_removed,
        report.events
    );
    for u in &report.changed {
        println!("  changed: {}", output::uid(u));
    }
    Ok(())
}

/// Publishes the events a ctl command committed for `user` (the lane would
/// also publish them, but only after its next batch).
async fn flush_events(db: &tokio_postgres::Client, s: &Settings, user: &str) -> anyhow::Result<()> {
    let ns = s.namespace()?;
    let js = jetstream(s).await?;
    let partition = imipflow_schema::partition(user, s.partitions) as i32;
    relay::flush(
        db,
        &Default::default(),
        &js,
        &Publisher::Serial,
        &ns,
        partition,
    )
    .await?;
    Ok(())
}

/// What a replay did: messages by outcome.
type Counts = BTreeMap<ReplayOutcome, u64>;

/// `imip-ctl replay --from [--to] [--user] [--json]`: reads the range from
/// the messages stream and re-applies each message with
/// [`replay::replay_one`] (see there for the rules).
pub async fn replay(
    s: &Settings,
    from: u64,
    to: Option<u64>,
    user: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(to) = to.filter(|&to| to < from) {
        return Err(crate::error::CtlError::Usage(format!(
            "--from ({from}) is after --to ({to}): give a start before the end"
        ))
        .into());
    }
    let user = user.map(user_arg).transpose()?;
    let user = user.as_deref();
    let ns = s.namespace()?;
    let js = jetstream(s).await?;
    let mut stream = js.get_stream(ns.messages_stream()).await?;
    let last = stream.info().await?.state.last_sequence;
    let to = to.unwrap_or(last).min(last);
    let from = from.max(1);
    let mut counts = Counts::default();
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
        let messages = consumer.messages().await?;
        let mut db = connect(s).await?;
        let range = Range { from, to, json };
        let work = replay_range(&mut db, s, &ns, messages, range, &bar, &mut counts);
        let touched = tokio::select! {
            r = work => r?,
            // Messages before the one in hand are done (each in its own
            // transaction); the one in hand is rolled back. The lanes
            // publish the events already committed after their next batch.
            _ = tokio::signal::ctrl_c() => {
                let next = from + bar.position();
                output::interrupted(
                    &bar,
                    &format!("stopped at stream sequence {next}; resume with --from {next}"),
                )
            }
        };
        for p in &touched {
            relay::flush(&db, &Default::default(), &js, &Publisher::Serial, &ns, *p).await?;
        }
    }
    bar.finish_and_clear();
    print_replay(&counts, from, to, user, json)
}

/// The stream sequences a replay covers, and how it reports.
#[derive(Clone, Copy)]
struct Range {
    from: u64,
    to: u64,
    json: bool,
}

/// Re-applies the `messages` up to `range.to`, counting outcomes;
/// returns the partitions whose rows it may have changed (their events are
/// to be published).
async fn replay_range(
    db: &mut tokio_postgres::Client,
    s: &Settings,
    ns: &Namespace,
    mut messages: pull::Ordered,
    range: Range,
    bar: &indicatif::ProgressBar,
    counts: &mut Counts,
) -> anyhow::Result<BTreeSet<i32>> {
    let mut touched = BTreeSet::new();
    // A filtered range may end before `to` with nothing more to deliver:
    // stop after a quiet second.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
        let m = m?;
        let seq = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        if seq > range.to {
            break;
        }
        let partition: i32 = ns
            .message_partition(&m.subject)
            .and_then(|p| i32::try_from(p).ok())
            .with_context(|| format!("message {seq}: unexpected subject {}", m.subject))?;
        let outcome = replay::replay_one(db, s, partition, seq as i64, &m.payload).await?;
        *counts.entry(outcome).or_default() += 1;
        if !matches!(outcome, ReplayOutcome::DUPLICATE | ReplayOutcome::Pending) {
            touched.insert(partition);
        }
        if outcome != ReplayOutcome::DUPLICATE && !range.json {
            bar.suspend(|| println!("seq {seq} (partition {partition}): {}", outcome.as_str()));
        }
        bar.set_position(seq - range.from + 1);
        if seq >= range.to {
            break;
        }
    }
    Ok(touched)
}

fn print_replay(
    counts: &Counts,
    from: u64,
    to: u64,
    user: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let total: u64 = counts.values().sum();
    if json {
        let outcomes: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
            .collect();
        return json_line(
            &json!({"from": from, "to": to, "user": user, "messages": total, "outcomes": outcomes}),
        );
    }
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
    Ok(())
}
