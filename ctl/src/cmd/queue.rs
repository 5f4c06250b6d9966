//! `imip-ctl queue`: a user's pending requests (the `request_queue` rows of
//! their partition), one per UID and recurrence (the series, and each
//! instance the organizer updated on its own), each with its components and
//! the user's answer so far.

use crate::output::{json_line, table, time, uid};
use chrono::{DateTime, Utc};
use imipflow_processor::{Settings, connect::connect};
use serde_json::{Value, json};

use super::known_user;

/// `imip-ctl queue USER [--json]`.
pub async fn run(s: &Settings, user: &str, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let user = known_user(&db, user).await?;
    let docs = pending(&db, &user).await?;
    if json {
        return json_line(&docs);
    }
    if docs.is_empty() {
        println!("no pending requests for {user}");
        return Ok(());
    }
    table(
        &[
            "UID",
            "FOR",
            "ORGANIZER",
            "START",
            "END",
            "YOUR ANSWER",
            "SUMMARY",
        ],
        &rows(&docs),
    );
    Ok(())
}

/// One table row per component of each pending request (the series, or
/// the instance the request is about), with the user's answer so far.
fn rows(docs: &[Value]) -> Vec<Vec<String>> {
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let when = |v: &Value| {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(|| "-".to_owned(), |t| time(t.with_timezone(&Utc)))
    };
    let mut rows = Vec::new();
    for d in docs {
        let which = match d["recurrence_id"].as_str() {
            Some(_) => format!("instance {}", when(&d["recurrence_id"])),
            None => "series".to_owned(),
        };
        let instances = d["instances"].as_array().cloned().unwrap_or_default();
        if instances.is_empty() {
            rows.push(vec![
                uid(&text(&d["uid"])),
                which.clone(),
                text(&d["organizer"]),
                "-".into(),
                "-".into(),
                "-".into(),
                text(&d["summary"]),
            ]);
        }
        for i in &instances {
            // A request can carry the series and an instance of it.
            let which = match i["recurrence_id"].as_str() {
                Some(_) => format!("instance {}", when(&i["recurrence_id"])),
                None => which.clone(),
            };
            rows.push(vec![
                uid(&text(&d["uid"])),
                which,
                text(&d["organizer"]),
                when(&i["start"]),
                when(&i["end"]),
                text(&i["partstat"]),
                text(&d["summary"]),
            ]);
        }
    }
    rows
}

/// The user's pending requests, oldest first, as the JSON documents
/// `--json` prints; read from the user's partition only.
pub async fn pending(db: &tokio_postgres::Client, user: &str) -> anyhow::Result<Vec<Value>> {
    let partition = crate::query::partition_of(db, user).await?;
    let rows = db
        .query(
            "SELECT uid, organizer, summary, added_at, sequence, data, recurrence_id
             FROM request_queue WHERE partition = $1 AND user_addr = $2
             ORDER BY added_at, uid, recurrence_key",
            &[&partition, &user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({"uid": r.get::<_, String>(0),
                   "recurrence_id": r.get::<_, Option<DateTime<Utc>>>(6),
                   "organizer": r.get::<_, Option<String>>(1),
                   "summary": r.get::<_, Option<String>>(2), "added_at": r.get::<_, DateTime<Utc>>(3),
                   "sequence": r.get::<_, i64>(4), "instances": instances(&r.get(5), user)})
        })
        .collect())
}

/// Each component of a pending request: its times and the user's own
/// answer so far (NEEDS-ACTION until they reply).
fn instances(data: &Value, user: &str) -> Vec<Value> {
    data["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let partstat = c["attendees"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["address"] == user)
                .map(|a| a["partstat"].clone())
                .unwrap_or(Value::Null);
            json!({"recurrence_id": c["recurrence_id"]["time"]["utc"],
                   "start": c["start"]["utc"], "end": c["end"]["utc"],
                   "rrule": c["rrule"], "partstat": partstat})
        })
        .collect()
}
