//! The outbox relay: publishes a partition's committed change events to
//! JetStream, in per-user order, with the event id as `Nats-Msg-Id`.
//!
//! It runs inside the lane that owns the partition (after each commit and on
//! taking a lane over), so one partition's events are only ever published by
//! one worker at a time and a user's events cannot overtake each other.
//!
//! Order is the hard part. A user's event `k+1` must never be stored before
//! event `k`, even when a connection breaks in the middle of a flush. Two ways
//! keep that ([`Publisher`]):
//!
//! - **Pipelined** (the default where it is safe): every event of a flush goes
//!   out in one write on a fresh plain connection (ingest's wire client), and
//!   the acks are awaited together. On one connection to a standalone server
//!   the stream stores messages in the order they were sent, and when the
//!   connection breaks, what was lost is a suffix of what was sent: nothing is
//!   re-sent on another connection behind the relay's back. The next flush
//!   starts again from the first unpublished event, and the event ids dedupe
//!   whatever had been stored. So whatever is stored is always a prefix of a
//!   user's events, in order, whatever breaks — and a hot user's events cost
//!   one round trip per flush instead of one per event
//!   (bench/results/processor-*.md).
//! - **Serial**, at most one event per user in flight, through async-nats:
//!   where the prefix argument does not hold. In a cluster, a message sent
//!   while the stream leader changes can be dropped while later ones reach
//!   the new leader; and async-nats, after a reconnect, re-sends the commands
//!   it had queued while the bytes in flight on the broken connection are
//!   lost (a full CI run once stored a user's event 5 before 1–4 that way).
//!   TLS, nkeys and credentials files also take this path: the wire client
//!   speaks plain TCP with no auth, user/password or token only.
//!
//! Size: events are cut to fit the server's `max_payload` when they are
//! written (`events::fit`). A row that is too large all the same (written by
//! a version before that, or before the server's limit was lowered) can
//! never be published, and its sequence number cannot be split any more: it
//! is skipped, logged as an error with its id and counted
//! ([`crate::metrics::EVENTS_SKIPPED`]), instead of holding the lane for ever. Subscribers
//! see a gap at its sequence and resynchronise that user, as
//! docs/subscribers.md tells them to for any gap.

use crate::config::Settings;
use crate::error::ProcessorError;
use async_nats::jetstream;
use imipflow_nats::wire;
use imipflow_schema::{Namespace, user_key};
use std::time::Duration;
use tokio_postgres::Client;

/// How long a pipelined flush waits for all its acknowledgements.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a lane's relay publishes (see the module documentation).
#[derive(Clone, Debug)]
pub enum Publisher {
    Pipelined { urls: String, login: wire::Login },
    Serial,
}

impl Publisher {
    /// Pipelined where it keeps per-user order, serial elsewhere: plain
    /// connection settings, a standalone server, and a one-replica events
    /// stream.
    pub async fn choose(settings: &Settings, js: &jetstream::Context, ns: &Namespace) -> Self {
        let pipelined = async {
            let login =
                imipflow_nats::wire_login(&settings.nats_auth).map_err(|e| e.to_string())?;
            let Some(login) = login else {
                return Err("TLS, nkey or credentials file configured".to_owned());
            };
            if let Some(cluster) = js.client().server_info().cluster {
                return Err(format!("the server is part of cluster {cluster}"));
            }
            let mut stream = js
                .get_stream(ns.events_stream())
                .await
                .map_err(|e| format!("events stream: {e}"))?;
            let info = stream
                .info()
                .await
                .map_err(|e| format!("events stream: {e}"))?;
            if info.config.num_replicas > 1 {
                return Err(format!(
                    "the events stream has {} replicas",
                    info.config.num_replicas
                ));
            }
            Ok(login)
        };
        match pipelined.await {
            Ok(login) => {
                tracing::debug!(publisher = "pipelined", "outbox relay");
                Publisher::Pipelined {
                    urls: (*settings.nats_url).to_owned(),
                    login,
                }
            }
            Err(why) => {
                tracing::debug!(publisher = "serial", reason = %why, "outbox relay");
                Publisher::Serial
            }
        }
    }
}

/// One unpublished event, as the outbox holds it.
struct Event {
    user: String,
    seq: i64,
    kind: String,
    subject: String,
    id: String,
    body: Vec<u8>,
}

/// Marks the flushed events published: each (user, seq) probed by key, the
/// row updated by the ctid the probe found (see `store::StatementCache::get`).
const MARK_PUBLISHED: &str = "UPDATE outbox t SET published_at = now()
     WHERE t.partition = $3 AND t.ctid = ANY(ARRAY(
         SELECT o.ctid FROM unnest($1::text[], $2::bigint[]) AS k(u, s)
         CROSS JOIN LATERAL (SELECT ctid FROM outbox o
             WHERE o.partition = $3 AND o.user_addr = k.u AND o.user_seq = k.s OFFSET 0) AS o))";

/// Publishes every unpublished event of `partition`, oldest first.
pub async fn flush(
    db: &Client,
    cache: &crate::store::StatementCache,
    js: &jetstream::Context,
    publisher: &Publisher,
    ns: &Namespace,
    partition: i32,
) -> Result<usize, ProcessorError> {
    let mut total = 0;
    loop {
        let rows = db
            .query(
                "SELECT user_addr, user_seq, event_id, kind, body::text FROM outbox
                 WHERE partition = $1 AND published_at IS NULL
                 ORDER BY created_at, user_addr, user_seq LIMIT 500",
                &[&partition],
            )
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let events: Vec<Event> = rows
            .iter()
            .map(|r| {
                let user: String = r.get(0);
                let kind: String = r.get(3);
                // The CloudEvent as PostgreSQL prints the jsonb: no parse
                // and re-serialisation per event.
                let body: String = r.get(4);
                Event {
                    subject: ns.event_subject(&kind, &user_key(&user)),
                    kind,
                    seq: r.get(1),
                    id: r.get(2),
                    body: body.into_bytes(),
                    user,
                }
            })
            .collect();
        // Read for every flush: a reconnect may have reached a server that
        // announces another limit.
        let max_payload = js.client().max_payload();
        let (events, oversized): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| crate::events::wire_len(&e.id, e.body.len()) <= max_payload);
        for e in &oversized {
            tracing::error!(
                partition,
                event = %e.id,
                user = %e.user,
                bytes = crate::events::wire_len(&e.id, e.body.len()),
                max_payload,
                "event larger than the NATS server's max_payload: skipped, never published; \
                 subscribers see a gap at its sequence and resynchronise the user"
            );
            metrics::counter!(crate::metrics::EVENTS_SKIPPED, "kind" => e.kind.clone())
                .increment(1);
        }
        let events = match publisher {
            _ if events.is_empty() => events,
            Publisher::Pipelined { urls, login } => {
                pipelined(urls.clone(), login.clone(), events).await?
            }
            Publisher::Serial => serial(js, events).await?,
        };
        let done = || events.iter().chain(&oversized);
        let users: Vec<&str> = done().map(|e| e.user.as_str()).collect();
        let seqs: Vec<i64> = done().map(|e| e.seq).collect();
        db.execute(
            &cache.get(db, MARK_PUBLISHED).await?,
            &[&users, &seqs, &partition],
        )
        .await?;
        total += events.len() + oversized.len();
    }
}

/// All of `events` in one write on a connection of their own; returns them
/// once every one is acknowledged. The blocking client runs off the runtime.
async fn pipelined(
    urls: String,
    login: wire::Login,
    events: Vec<Event>,
) -> Result<Vec<Event>, ProcessorError> {
    tokio::task::spawn_blocking(move || {
        let messages: Vec<wire::Message<'_>> = events
            .iter()
            .map(|e| wire::Message {
                subject: &e.subject,
                msg_id: &e.id,
                payload: &e.body,
            })
            .collect();
        let result = wire::publish(&urls, &login, &messages, PIPELINE_TIMEOUT);
        drop(messages);
        match result {
            Ok(()) => Ok(events),
            Err(wire::WireError::Publish { index, reason }) => Err(ProcessorError::Nats(format!(
                "event {} not acknowledged: {reason}",
                events[index].id
            ))),
            Err(wire::WireError::NoStream { index }) => Err(ProcessorError::Nats(format!(
                "event {} not acknowledged: no stream takes {} (run imip-processor migrate)",
                events[index].id, events[index].subject
            ))),
            Err(wire::WireError::Connect(reason) | wire::WireError::Unsupported(reason)) => {
                Err(ProcessorError::Nats(format!("relay connection: {reason}")))
            }
        }
    })
    .await
    .map_err(|e| ProcessorError::Task(format!("relay publish: {e}")))?
}

/// At most one event per user in flight: the next event of a user is
/// published only after JetStream acknowledged the previous one. Different
/// users' events go out together, one round at a time.
async fn serial(js: &jetstream::Context, events: Vec<Event>) -> Result<Vec<Event>, ProcessorError> {
    let mut per_user: Vec<Vec<usize>> = Vec::new();
    let mut slot: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let k = *slot.entry(e.user.as_str()).or_insert_with(|| {
            per_user.push(Vec::new());
            per_user.len() - 1
        });
        per_user[k].push(i);
    }
    let rounds = per_user.iter().map(Vec::len).max().unwrap_or(0);
    for round in 0..rounds {
        let mut acks = Vec::with_capacity(per_user.len());
        for e in per_user
            .iter()
            .filter_map(|q| q.get(round))
            .map(|&i| &events[i])
        {
            let ack =
                imipflow_nats::publish_deduped(js, e.subject.clone(), &e.id, e.body.clone().into())
                    .await
                    .map_err(ProcessorError::nats)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(ProcessorError::nats)?;
        }
    }
    Ok(events)
}
