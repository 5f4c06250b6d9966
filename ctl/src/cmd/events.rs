//! `imip-ctl events`: change events read back from the events stream, all
//! of them or one user's, from the start (an ordered consumer), optionally
//! following new ones. As text, a table with each change as a sentence
//! ("freebusy changed: +3 busy, −1"); `--json`: one array, or with
//! `--follow` one event per line.

use crate::output::{json_line, row, table_aligned, time, uid};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use imipflow_processor::Settings;
use imipflow_schema::{Change, CloudEvent, FbType, Period, QueueChange, user_key};
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
    // Without --follow the answer is a list: one JSON array, or one table;
    // with it, a stream: one document or one row per line as each event
    // arrives (the columns' widths fixed up front).
    let mut listed = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let widths = follow_widths();
    if follow && !json {
        println!("{}", row(&HEADER.map(str::to_owned), &widths, &[0]));
    }
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
            match (json, follow) {
                (true, true) => json_line(&ev)?,
                (false, true) => println!("{}", row(&cells(key, &ev), &widths, &[0])),
                (true, false) => listed.push(ev),
                (false, false) => rows.push(cells(key, &ev)),
            }
        }
        if !follow && seq >= pending {
            pending = 0;
        }
    }
    if follow {
        return Ok(());
    }
    if json {
        return json_line(&listed);
    }
    if rows.is_empty() {
        println!("no events");
        return Ok(());
    }
    table_aligned(&HEADER, &rows, &[0]);
    Ok(())
}

/// The columns of the human output. SEQ is the number `--since` takes: the
/// user's event sequence with `--user`, the stream sequence without.
const HEADER: [&str; 4] = ["SEQ", "TIME", "USER", "EVENT"];

/// Column widths of `--follow`'s rows, which cannot wait for the widest
/// cell: a sequence, a time (with its offset under `--tz`), a typical
/// address.
fn follow_widths() -> [usize; 4] {
    [6, time(chrono::Utc::now()).chars().count(), 24, 0]
}

/// An event's row: SEQ, TIME, USER and the change as a sentence.
fn cells(key: u64, ev: &serde_json::Value) -> Vec<String> {
    let (when, who) = match (ev["time"].as_str(), ev["user"].as_str()) {
        (Some(t), Some(u)) => (
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| time(t.with_timezone(&chrono::Utc)))
                .unwrap_or_else(|_| t.to_owned()),
            u.to_owned(),
        ),
        _ => ("-".to_owned(), "-".to_owned()),
    };
    vec![key.to_string(), when, who, sentence(ev)]
}

/// What an event says, in words: "freebusy changed: +3 busy, −1 (UID x)",
/// "queue changed: added x (instance …)", "object changed: x updated
/// (sequence 2)". An event this version does not know is shown by its type.
pub fn sentence(ev: &serde_json::Value) -> String {
    let Ok(ce) = serde_json::from_value::<CloudEvent>(ev.clone()) else {
        let kind = ev["type"].as_str().unwrap_or("unknown event");
        return format!("{} (not understood by this imip-ctl)", kind);
    };
    let instance = |rid: &Option<chrono::DateTime<chrono::Utc>>| {
        rid.map(|r| format!(" (instance {})", time(r)))
            .unwrap_or_default()
    };
    let mut text = match &ce.change {
        Change::ObjectChanged {
            uid: u,
            recurrence_id,
            sequence,
        } => format!(
            "object changed: {}{} updated (sequence {sequence})",
            uid(u),
            instance(recurrence_id)
        ),
        Change::ObjectRemoved {
            uid: u,
            recurrence_id,
        } => format!("object removed: {}{}", uid(u), instance(recurrence_id)),
        Change::FreeBusyChanged {
            uid: u,
            added,
            removed,
        } => format!("freebusy changed: {} ({})", counts(added, removed), uid(u)),
        Change::QueueChanged {
            uid: u,
            recurrence_id,
            change,
        } => format!(
            "queue changed: {} {}{}",
            match change {
                QueueChange::Added => "added",
                QueueChange::Removed => "removed",
            },
            uid(u),
            instance(recurrence_id)
        ),
    };
    if let (Some(part), Some(parts)) = (ce.part, ce.parts) {
        text.push_str(&format!(", part {part} of {parts}"));
    }
    text
}

/// "+3 busy, +1 tentative, −2": the periods added by their type and the
/// periods removed (a minus sign, U+2212, as the operators read
/// it); "no change" when neither.
fn counts(added: &[Period], removed: &[Period]) -> String {
    let mut parts = Vec::new();
    for (fbtype, name) in [
        (FbType::Busy, "busy"),
        (FbType::BusyTentative, "tentative"),
        (FbType::BusyUnavailable, "unavailable"),
    ] {
        let n = added.iter().filter(|p| p.fbtype == fbtype).count();
        if n > 0 {
            parts.push(format!("+{n} {name}"));
        }
    }
    if !removed.is_empty() {
        parts.push(format!("\u{2212}{}", removed.len()));
    }
    if parts.is_empty() {
        "no change".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::sentence;
    use serde_json::json;

    fn event(kind: &str, data: serde_json::Value) -> serde_json::Value {
        json!({"specversion": "1.0", "id": "ns:a@x:1", "source": "imipflow", "type": kind,
               "data": data, "subject": "a@x", "time": "2027-03-02T09:00:00Z",
               "datacontenttype": "application/json", "user": "a@x", "sequence": 1})
    }

    #[test]
    fn each_kind_of_change_reads_as_a_sentence() {
        let p = |fbtype: &str| {
            json!({"start": "2027-03-02T09:00:00Z", "end": "2027-03-02T10:00:00Z",
                   "fbtype": fbtype, "recurrence_id": null})
        };
        let fb = event(
            "org.imipflow.freebusy.changed",
            json!({"uid": "u", "added": [p("BUSY"), p("BUSY"), p("BUSY-TENTATIVE")],
                   "removed": [p("BUSY")]}),
        );
        assert_eq!(
            sentence(&fb),
            "freebusy changed: +2 busy, +1 tentative, \u{2212}1 (u)"
        );
        let q = event(
            "org.imipflow.queue.changed",
            json!({"uid": "u", "recurrence_id": "2027-03-09T09:00:00Z", "change": "removed"}),
        );
        assert_eq!(
            sentence(&q),
            "queue changed: removed u (instance 2027-03-09 09:00:00Z)"
        );
        let o = event(
            "org.imipflow.object.removed",
            json!({"uid": "u", "recurrence_id": null}),
        );
        assert_eq!(sentence(&o), "object removed: u");
        let unknown = event("org.imipflow.calendar.moved", json!({}));
        assert!(sentence(&unknown).starts_with("org.imipflow.calendar.moved"));
    }
}
