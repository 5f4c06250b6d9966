//! The outbox relay: publishes a partition's committed change events to
//! JetStream, in per-user order, with the event id as `Nats-Msg-Id`.
//!
//! It runs inside the lane that owns the partition (after each commit and on
//! taking a lane over), so one partition's events are only ever published by
//! one worker at a time and a user's events cannot overtake each other.

use crate::error::ProcessorError;
use async_nats::HeaderMap;
use async_nats::jetstream;
use imipflow_schema::{Namespace, user_key};
use tokio_postgres::Client;

pub async fn flush(
    db: &Client,
    js: &jetstream::Context,
    ns: &Namespace,
    partition: i32,
) -> Result<usize, ProcessorError> {
    let mut total = 0;
    loop {
        let rows = db
            .query(
                "SELECT user_addr, user_seq, event_id, kind, body FROM outbox
                 WHERE partition = $1 AND published_at IS NULL
                 ORDER BY created_at, user_addr, user_seq LIMIT 500",
                &[&partition],
            )
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        // At most one event per user is in flight: the next event of a user is
        // published only after JetStream acknowledged the previous one. A
        // pipelined burst could be reordered when the connection breaks
        // mid-burst (the bytes in flight are lost, the client replays the
        // queued rest after reconnecting, and the lost ones come back later on
        // retry). Different users' events still go out together, one round at
        // a time.
        let mut per_user: Vec<Vec<usize>> = Vec::new();
        let mut slot: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let user: &str = r.get(0);
            let k = *slot.entry(user).or_insert_with(|| {
                per_user.push(Vec::new());
                per_user.len() - 1
            });
            per_user[k].push(i);
        }
        let rounds = per_user.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            let mut acks = Vec::with_capacity(per_user.len());
            for r in per_user
                .iter()
                .filter_map(|q| q.get(round))
                .map(|&i| &rows[i])
            {
                let user: String = r.get(0);
                let id: String = r.get(2);
                let kind: String = r.get(3);
                let body: serde_json::Value = r.get(4);
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let ack = js
                    .publish_with_headers(
                        ns.event_subject(&kind, &user_key(&user)),
                        headers,
                        serde_json::to_vec(&body).expect("json").into(),
                    )
                    .await
                    .map_err(ProcessorError::nats)?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(ProcessorError::nats)?;
            }
        }
        let users: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        db.execute(
            "UPDATE outbox SET published_at = now()
             FROM unnest($1::text[], $2::bigint[]) AS x(u, s)
             WHERE outbox.user_addr = x.u AND outbox.user_seq = x.s",
            &[&users, &seqs],
        )
        .await?;
        total += rows.len();
    }
}
