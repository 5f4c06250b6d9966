//! `imip-ctl log USER`: what became of each of a user's messages, from
//! `message_log` (applied, stale, ignored, refused, with the reason) and
//! `dead_letters` (could not be applied, with the error), in stream order.

use crate::output::{json_line, table_aligned, time, uid};
use chrono::{DateTime, Utc};
use imipflow_processor::{Settings, connect::connect};
use imipflow_schema::MessageOutcome;
use serde::Serialize;
use serde_json::Value;

use super::known_user;

/// One message of the user's history.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub stream_seq: i64,
    /// When the lane decided (or filed the dead letter).
    pub time: DateTime<Utc>,
    pub method: Option<String>,
    /// The UID of the message's first component and its RECURRENCE-ID
    /// (`null` for the series, and for rows logged before migration V8).
    pub uid: Option<String>,
    pub recurrence_id: Option<String>,
    pub outcome: String,
    /// Why it was not applied, in words (`null` when applied).
    pub reason: Option<String>,
    /// For a dead letter: its id (`imip-ctl dlq replay|delete ID`) and when
    /// it was resolved by a replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
}

/// `imip-ctl log USER [--since TIME] [--outcome O] [--json]`.
pub async fn run(
    s: &Settings,
    user: &str,
    since: Option<DateTime<Utc>>,
    outcome: Option<MessageOutcome>,
    json: bool,
) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let entries = history(&db, &user, since, outcome).await?;
    if json {
        return json_line(&entries);
    }
    if entries.is_empty() {
        println!("no messages for {user}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let outcome = match e.dead_letter {
                Some(id) if e.replayed_at.is_some() => format!("{} #{id}, replayed", e.outcome),
                Some(id) => format!("{} #{id}", e.outcome),
                None => e.outcome.clone(),
            };
            let rid = e.recurrence_id.as_deref().map(|r| {
                DateTime::parse_from_rfc3339(r)
                    .map(|t| time(t.with_timezone(&Utc)))
                    .unwrap_or_else(|_| r.to_owned())
            });
            vec![
                time(e.time),
                e.stream_seq.to_string(),
                dash(&e.method),
                e.uid.as_deref().map_or_else(|| "-".to_owned(), uid),
                dash(&rid),
                outcome,
                dash(&e.reason),
            ]
        })
        .collect();
    table_aligned(
        &[
            "TIME",
            "SEQ",
            "METHOD",
            "UID",
            "RECURRENCE",
            "OUTCOME",
            "REASON",
        ],
        &rows,
        &[1],
    );
    Ok(())
}

/// The user's history, oldest first: the `message_log` rows and the dead
/// letters, from `since` on, of `outcome` only when given (`duplicate`
/// matches nothing: a re-delivery is not logged again).
pub async fn history(
    db: &tokio_postgres::Client,
    user: &str,
    since: Option<DateTime<Utc>>,
    outcome: Option<MessageOutcome>,
) -> anyhow::Result<Vec<LogEntry>> {
    let partition = crate::query::partition_of(db, user).await?;
    let mut out = Vec::new();
    let wanted = outcome.map(|o| o.as_str());
    if outcome != Some(MessageOutcome::DeadLettered) {
        let rows = db
            .query(
                "SELECT stream_seq, applied_at, method, uid, recurrence_id, outcome, reason
                 FROM message_log
                 WHERE partition = $1 AND user_addr = $2
                   AND ($3::timestamptz IS NULL OR applied_at >= $3)
                   AND ($4::text IS NULL OR outcome = $4)",
                &[&partition, &user, &since, &wanted],
            )
            .await?;
        out.extend(rows.iter().map(|r| LogEntry {
            stream_seq: r.get(0),
            time: r.get(1),
            method: r.get(2),
            uid: r.get(3),
            recurrence_id: r.get(4),
            outcome: r.get(5),
            reason: r.get(6),
            dead_letter: None,
            replayed_at: None,
        }));
    }
    if outcome.is_none() || outcome == Some(MessageOutcome::DeadLettered) {
        let rows = db
            .query(
                "SELECT id, stream_seq, created_at, payload, error, replayed_at FROM dead_letters
                 WHERE partition = $1 AND user_addr = $2
                   AND ($3::timestamptz IS NULL OR created_at >= $3)",
                &[&partition, &user, &since],
            )
            .await?;
        out.extend(rows.iter().map(|r| {
            let payload: Value =
                serde_json::from_slice(&r.get::<_, Vec<u8>>(3)).unwrap_or(Value::Null);
            let first = &payload["components"][0];
            let rid = &first["recurrence_id"]["time"];
            let text = |v: &Value| v.as_str().map(str::to_owned);
            LogEntry {
                stream_seq: r.get(1),
                time: r.get(2),
                method: text(&payload["method"]),
                uid: text(&first["uid"]),
                recurrence_id: text(&rid["utc"]).or_else(|| text(&rid["local"])),
                outcome: MessageOutcome::DeadLettered.as_str().to_owned(),
                reason: Some(r.get(4)),
                dead_letter: Some(r.get(0)),
                replayed_at: r.get(5),
            }
        }));
    }
    out.sort_by_key(|e| (e.stream_seq, e.time));
    Ok(out)
}
