//! A lane's inbox: its durable pull consumer on the messages stream, and the
//! messages delivered but not applied (nor acknowledged) yet, in stream order.

use crate::error::ProcessorError;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures::{FutureExt, StreamExt};
use imipflow_schema::Namespace;
use std::collections::VecDeque;
use std::time::Duration;

/// A message read from the stream.
pub struct Delivered {
    pub seq: i64,
    /// The delivered message's buffer, shared rather than copied.
    pub payload: bytes::Bytes,
}

pub struct Inbox {
    pub messages: pull::Stream,
    /// Consumer sequence of the last first delivery: a gap means a message
    /// was skipped, and the lane starts over from PostgreSQL's position.
    delivered: Option<u64>,
    /// Messages delivered and not applied yet, with their stream sequence,
    /// in stream order: a batch may take fewer than have arrived (it spent
    /// its budget, or a suspect runs alone), and the rest wait here, not
    /// acknowledged.
    waiting: VecDeque<(jetstream::Message, i64)>,
}

impl Inbox {
    /// The partition's consumer for this ownership (`epoch`), from the
    /// message after `last`.
    pub async fn open(
        js: &jetstream::Context,
        ns: &Namespace,
        partition: i32,
        epoch: i64,
        last: i64,
        batch_size: usize,
    ) -> Result<Inbox, ProcessorError> {
        let stream = js
            .get_stream(ns.messages_stream())
            .await
            .map_err(ProcessorError::nats)?;
        // The partition's durable pull consumer, realigned on every takeover
        // with the position PostgreSQL says was applied: whatever the previous
        // owner fetched but did not commit is delivered again, in order.
        //
        // One consumer per ownership, the epoch in its name: a worker that
        // lost the lane while paused (SIGSTOP, VM freeze) and wakes up pulls
        // from a consumer that no longer exists, never from its successor's
        // (where it would take messages away that it cannot commit).
        let base = ns.partition_consumer(partition as u32);
        let name = format!("{base}-e{epoch}");
        let filter = ns.partition_filter(partition as u32);
        let earlier = format!("{base}-e");
        let mut stale = Vec::new();
        let mut names = stream.consumer_names();
        while let Some(n) = names.next().await {
            let n = n.map_err(ProcessorError::nats)?;
            let owned_before = n
                .strip_prefix(&earlier)
                .is_some_and(|e| e.parse::<i64>().is_ok_and(|e| e != epoch));
            if owned_before || n == base {
                stale.push(n);
            }
        }
        for n in stale {
            let _ = stream.delete_consumer(&n).await;
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: (last + 1) as u64,
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(ProcessorError::nats)?;
        // NATS 2.9 accepts `filter_subjects` but drops it; make sure ours held.
        let mut consumer = consumer;
        let held = consumer
            .info()
            .await
            .map_err(ProcessorError::nats)?
            .config
            .filter_subject
            .clone();
        if held != filter {
            return Err(ProcessorError::Nats(format!(
                "consumer {name} has filter {held:?}, expected {filter:?}"
            )));
        }
        // Pulls of two batches' worth: with async-nats' default (200, pulling
        // again at half), a lane under load took ~125 messages per batch,
        // whatever IMIP_BATCH_SIZE said.
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch_size.max(1) * 2)
            .heartbeat(Duration::from_secs(15))
            .messages()
            .await
            .map_err(ProcessorError::nats)?;
        Ok(Inbox {
            messages,
            delivered: None,
            waiting: VecDeque::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Holds a delivered message (or a stream error).
    pub fn receive(
        &mut self,
        m: Option<Result<jetstream::Message, impl std::fmt::Display>>,
    ) -> Result<(), ProcessorError> {
        let Some(m) = m else {
            return Err(ProcessorError::Nats("message stream ended".into()));
        };
        let m = m.map_err(ProcessorError::nats)?;
        let info = m.info().map_err(ProcessorError::nats)?;
        if info.delivered <= 1 {
            if let Some(prev) = self.delivered.filter(|p| info.consumer_sequence != p + 1) {
                return Err(ProcessorError::Nats(format!(
                    "consumer sequence jumped from {prev} to {}",
                    info.consumer_sequence
                )));
            }
            self.delivered = Some(info.consumer_sequence);
        }
        let seq = info.stream_sequence as i64;
        // A re-delivery of one still waiting (its ack_wait ran out
        // behind a slow suspect) is held already.
        if self.waiting.back().is_none_or(|(_, s)| *s < seq) {
            self.waiting.push_back((m, seq));
        }
        Ok(())
    }

    /// Takes what has already arrived, up to `max`, without waiting for
    /// more: a linger (it was 2 ms) adds its whole length to every message's
    /// latency at low rates, while under load messages pile up during the
    /// previous batch anyway, so batches still fill
    /// (bench/results/latency-*.md).
    pub fn fill(&mut self, max: usize) -> Result<(), ProcessorError> {
        while self.waiting.len() < max {
            // Unconstrained: tokio's cooperative budget (128 polls per
            // task turn) otherwise reports a full channel as empty, and
            // batches stopped at ~125 messages.
            match tokio::task::unconstrained(self.messages.next()).now_or_never() {
                Some(Some(m)) => self.receive(Some(m))?,
                Some(None) | None => break,
            }
        }
        Ok(())
    }

    /// Stream sequences of the waiting messages, in order.
    pub fn sequences(&self) -> impl Iterator<Item = i64> + '_ {
        self.waiting.iter().map(|(_, s)| *s)
    }

    /// The first `n` waiting messages not applied yet (after `last`).
    pub fn fresh(&self, n: usize, last: i64) -> Vec<Delivered> {
        self.waiting
            .iter()
            .take(n)
            .filter(|(_, s)| *s > last)
            .map(|(m, seq)| Delivered {
                seq: *seq,
                payload: m.payload.clone(),
            })
            .collect()
    }

    /// Acknowledges and drops the first `n` (AckPolicy::All acknowledges
    /// everything before too); after the commit that applied them.
    pub async fn ack(&mut self, n: usize) -> Result<(), ProcessorError> {
        if n > 0 {
            self.waiting[n - 1]
                .0
                .ack()
                .await
                .map_err(ProcessorError::nats)?;
            self.waiting.drain(..n);
        }
        Ok(())
    }
}
