//! `imip-ctl queue`: a user's pending requests (the `request_queue` rows of
//! their partition), one per UID and recurrence (the series, and each
//! instance the organizer updated on its own), each with its components and
//! the user's answer so far.

use crate::output::json_line;
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
    }
    for d in &docs {
        let which = match d["recurrence_id"].as_str() {
            Some(rid) => format!("instance {rid}"),
            None => "series".to_owned(),
        };
        println!(
            "{} ({which}) from {}: {}",
            d["uid"], d["organizer"], d["summary"]
        );
        for i in d["instances"].as_array().into_iter().flatten() {
            println!(
                "    {} – {}  your answer: {}",
                i["start"], i["end"], i["partstat"]
            );
        }
    }
    Ok(())
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
