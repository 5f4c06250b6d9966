//! `imip-ctl users`: every user the store knows ([`crate::query::users`]),
//! with their counts, as a table or one JSON array.

use crate::output::{json_line, table_aligned};
use crate::query;
use imipflow_processor::{Settings, connect::connect};

/// `imip-ctl users [--json]`.
pub async fn run(s: &Settings, json: bool) -> anyhow::Result<()> {
    let db = connect(s).await?;
    let users = query::users(&db).await?;
    if json {
        return json_line(&users);
    }
    if users.is_empty() {
        println!("no users yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.user.clone(),
                u.partition.to_string(),
                u.objects.to_string(),
                u.freebusy.to_string(),
                u.pending_requests.to_string(),
                u.last_event_sequence.to_string(),
                u.dead_letters.to_string(),
            ]
        })
        .collect();
    table_aligned(
        &[
            "USER",
            "PARTITION",
            "OBJECTS",
            "FREEBUSY",
            "PENDING",
            "LAST EVENT",
            "DEAD LETTERS",
        ],
        &rows,
        &[1, 2, 3, 4, 5, 6],
    );
    Ok(())
}
