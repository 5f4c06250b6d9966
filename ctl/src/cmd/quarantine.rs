//! `imip-ctl quarantine list|show|release|delete`: the records of
//! [`crate::quarantine`] printed one per line, one in full, or as `--json`.

use crate::output::{json_line, table_aligned, time};
use crate::quarantine::{self, Entry};
use imipflow_processor::Settings;
use serde_json::json;

use super::jetstream;

/// `imip-ctl quarantine list [--json]`: every record, oldest first.
pub async fn list(s: &Settings, json: bool) -> anyhow::Result<()> {
    let js = jetstream(s).await?;
    let entries = quarantine::list(&js, s).await?;
    if json {
        let docs: Vec<_> = entries
            .iter()
            .map(|e| {
                let r = &e.record;
                json!({"id": e.id, "reason": r.reason, "detail": r.detail,
                   "users": r.users, "sender": r.sender, "direction": r.direction,
                   "message_id": r.message_id, "ingested_at": r.ingested_at,
                   "size": r.size, "truncated": r.truncated})
            })
            .collect();
        return json_line(&docs);
    }
    if entries.is_empty() {
        println!("no quarantined messages");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let r = &e.record;
            vec![
                e.id.to_string(),
                time(r.ingested_at),
                r.reason.as_str().to_owned(),
                r.sender.clone(),
                r.users.join(", "),
                format!("{}{}", r.size, if r.truncated { " (excerpt)" } else { "" }),
                r.detail.clone(),
            ]
        })
        .collect();
    table_aligned(
        &[
            "ID", "INGESTED", "REASON", "SENDER", "USERS", "BYTES", "DETAIL",
        ],
        &rows,
        &[0],
    );
    Ok(())
}

/// `imip-ctl quarantine show ID [--json]`: one record with the refused data.
pub async fn show(s: &Settings, id: u64, json: bool) -> anyhow::Result<()> {
    let js = jetstream(s).await?;
    let e = quarantine::show(&js, s, id).await?;
    if json {
        return json_line(&json!({"id": e.id, "subject": e.subject, "record": e.record}));
    }
    print_record(&e);
    Ok(())
}

fn print_record(e: &Entry) {
    let r = &e.record;
    println!("id:          {}", e.id);
    println!("reason:      {} ({})", r.reason, r.detail);
    println!(
        "direction:   {}",
        match r.direction {
            imipflow_schema::Direction::Outgoing => "outgoing (sent by the user)",
            imipflow_schema::Direction::Incoming => "incoming (delivered to the user)",
        }
    );
    println!("sender:      {}", r.sender);
    println!("recipients:  {}", r.recipients.join(", "));
    println!("users:       {}", r.users.join(", "));
    println!("message id:  {}", r.message_id.as_deref().unwrap_or("-"));
    println!("ingested at: {}", time(r.ingested_at));
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

/// `imip-ctl quarantine release ID [--json]`: re-plans the record under
/// `limits` and publishes its payloads.
pub async fn release(
    s: &Settings,
    id: u64,
    json: bool,
    limits: &imipflow_ingest::Limits,
) -> anyhow::Result<()> {
    let js = jetstream(s).await?;
    let released = quarantine::release(&js, s, id, limits).await?;
    if json {
        return json_line(&released);
    }
    println!(
        "quarantine record {id} released: {} payload(s) published to the messages stream",
        released.payloads.len()
    );
    Ok(())
}

/// `imip-ctl quarantine delete ID [--json]`.
pub async fn delete(s: &Settings, id: u64, json: bool) -> anyhow::Result<()> {
    let js = jetstream(s).await?;
    quarantine::delete(&js, s, id).await?;
    if json {
        return json_line(&json!({"id": id, "deleted": true}));
    }
    println!("quarantine record {id} deleted");
    Ok(())
}
