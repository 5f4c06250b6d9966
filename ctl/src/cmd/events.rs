//! `imip-ctl events`: change events read back from the events stream, all
//! of them or one user's, from the start (an ordered consumer), optionally
//! following new ones. `--json`: one array, or with `--follow` one event
//! per line.

use crate::output::json_line;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use imipflow_processor::Settings;
use imipflow_schema::user_key;
use std::time::Duration;

use super::{jetstream, known_user, user_arg};
use imipflow_processor::connect::connect;

/// How long a reader without `--follow` waits for the next event before it
/// takes the stream as read.
const QUIET: Duration = Duration::from_millis(500);

/// `imip-ctl events [--user] [--since] [--follow] [--json]`. `since` is a
/// per-user sequence with `--user`, a stream sequence without.
pub async fn run(
    s: &Settings,
    user: Option<&str>,
    since: u64,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    // Following waits for events to come, a new user's first ones too; a
    // read of what is there names a user the store knows.
    let user = match user {
        Some(u) if follow => Some(user_arg(u)?),
        Some(u) => Some(known_user(&connect(s).await?, u).await?),
        None => None,
    };
    let ns = s.namespace()?;
    let js = jetstream(s).await?;
    let stream = js.get_stream(ns.events_stream()).await?;
    let filter = match &user {
        Some(u) => ns.user_events_filter(&user_key(u)),
        None => ns.events_subjects(),
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    // Without --follow, read up to the stream's last message as of now.
    let mut pending = stream.clone().info().await?.state.last_sequence;
    let mut messages = consumer.messages().await?;
    // Without --follow the answer is a list: one JSON array; with it, a
    // stream: one document per line as each event arrives.
    let mut listed = Vec::new();
    loop {
        let next = if follow {
            messages.next().await
        } else {
            if pending == 0 {
                break;
            }
            match tokio::time::timeout(QUIET, messages.next()).await {
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
            if json && !follow {
                listed.push(ev);
            } else {
                print_event(&ev, json)?;
            }
        }
        if !follow && seq >= pending {
            pending = 0;
        }
    }
    if json && !follow {
        json_line(&listed)?;
    }
    Ok(())
}

fn print_event(ev: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        return json_line(ev);
    }
    println!(
        "#{} {} {} {} {}",
        ev["sequence"], ev["time"], ev["subject"], ev["type"], ev["data"]
    );
    Ok(())
}
