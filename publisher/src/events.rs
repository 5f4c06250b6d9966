//! Following the change events: the durable pull consumer on `<ns>-events`,
//! CloudEvents parsed into cache [`Event`]s, applied, then acknowledged.
//!
//! The consumer takes every event (`<ns>.events.>`), not only
//! `freebusy.changed`: the per-user `sequence` counts all kinds, so only the
//! full sequence shows whether an event is missing. Being durable, it resumes
//! after a restart where it stopped; what it delivers then belongs to users
//! not yet cached (the cache starts empty) and is acknowledged and ignored.

use crate::cache::{Cache, Event, FreeBusyChange, Step};
use crate::error::PublisherError;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::StreamExt;
use imipflow_schema::{BusyPeriod, Change, CloudEvent, Namespace, Period};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reads one event's JSON (the contract's [`CloudEvent`]): user and
/// sequence always, the periods when it is a `freebusy.changed`. An event
/// that is not a CloudEvent of a known kind with its data is an error: the
/// caller skips it, and the gap it leaves in the user's sequence makes the
/// cache load the user afresh, which is right whatever the event said.
pub fn parse(payload: &[u8]) -> Result<Event, String> {
    let ce: CloudEvent = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let freebusy = match ce.change {
        Change::FreeBusyChanged {
            uid,
            added,
            removed,
        } => {
            let period = |p: Period| BusyPeriod {
                start: p.start,
                end: p.end,
                fbtype: p.fbtype,
                uid: uid.clone(),
                recurrence_id: p.recurrence_id,
            };
            Some(FreeBusyChange {
                added: added.into_iter().map(period).collect(),
                removed: removed.into_iter().map(period).collect(),
            })
        }
        Change::ObjectChanged { .. }
        | Change::ObjectRemoved { .. }
        | Change::QueueChanged { .. } => None,
    };
    Ok(Event {
        user: ce.user,
        sequence: ce.sequence,
        freebusy,
    })
}

/// Whether the follower is consuming, for `/readyz`.
#[derive(Debug)]
pub struct Following(std::sync::Mutex<Result<(), String>>);

impl Default for Following {
    fn default() -> Self {
        Following(std::sync::Mutex::new(Err(
            "events: not consuming yet".into()
        )))
    }
}

impl Following {
    fn set(&self, state: Result<(), String>) {
        *self.0.lock().expect("following lock") = state;
    }

    pub fn ready(&self) -> Result<(), String> {
        self.0.lock().expect("following lock").clone()
    }
}

/// The events stream and the publisher's durable consumer on it.
pub struct Subscription {
    stream: jetstream::stream::Stream,
    name: String,
    filter: String,
}

impl Subscription {
    /// The events stream (for the consumer's info in `/readyz`).
    pub fn stream(&self) -> jetstream::stream::Stream {
        self.stream.clone()
    }

    /// Finds the events stream (created by `imip-processor migrate`) and the
    /// durable consumer, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        ns: &Namespace,
        name: String,
    ) -> Result<(Self, PullConsumer), PublisherError> {
        let stream = js.get_stream(ns.events_stream()).await.map_err(|e| {
            PublisherError::Nats(format!(
                "stream {}: {e} (run `imip-processor migrate` first)",
                ns.events_stream()
            ))
        })?;
        let sub = Subscription {
            stream,
            name,
            filter: ns.events_subjects(),
        };
        let (consumer, _) = sub.consumer().await?;
        Ok((sub, consumer))
    }

    /// The durable consumer, and whether it had to be created (then events
    /// before this moment were never delivered to it).
    async fn consumer(&self) -> Result<(PullConsumer, bool), PublisherError> {
        if let Ok(c) = self.stream.get_consumer::<pull::Config>(&self.name).await {
            if c.cached_info().config.filter_subject == self.filter {
                return Ok((c, false));
            }
            tracing::warn!(consumer = %self.name, "consumer has another filter; recreating it");
            let _ = self.stream.delete_consumer(&self.name).await;
        }
        let c: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(self.name.clone()),
                description: Some("imip-publisher: free/busy cache".into()),
                // One subject, `filter_subject`: NATS 2.9 has no `filter_subjects`.
                filter_subject: self.filter.clone(),
                // Nothing is cached when the consumer is new, so earlier events
                // are already in any snapshot loaded later.
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                // Applying an event to the cache takes microseconds, so a
                // delivery unacknowledged after a few seconds belongs to a
                // publisher that died; redeliver it soon to the next one (the
                // per-user sequence check drops anything already applied).
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(PublisherError::nats)?;
        let held = &c.cached_info().config.filter_subject;
        if *held != self.filter {
            return Err(PublisherError::Nats(format!(
                "consumer {} has filter {held:?}, expected {:?}",
                self.name, self.filter
            )));
        }
        tracing::info!(consumer = %self.name, "created durable consumer");
        Ok((c, true))
    }
}

/// Applies events to the cache until shutdown. When the consumer must be
/// re-opened and turns out to be new (deleted meanwhile), events may have
/// been missed, so the cache is cleared.
pub async fn follow(
    sub: Subscription,
    mut consumer: PullConsumer,
    cache: Arc<Cache>,
    following: Arc<Following>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match consume(&mut consumer, &cache, &following, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "events: consumer stopped; re-opening");
                following.set(Err(format!("events: consumer stopped ({e}); re-opening")));
            }
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            match sub.consumer().await {
                Ok((c, created)) => {
                    if created {
                        cache.clear();
                    }
                    consumer = c;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "events: cannot open the consumer");
                    following.set(Err(format!("events: cannot open the consumer: {e}")));
                }
            }
        }
    }
}

/// One consumer session: returns `Ok` on shutdown, `Err` when the message
/// stream fails or ends.
async fn consume(
    consumer: &mut PullConsumer,
    cache: &Cache,
    following: &Following,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), PublisherError> {
    let mut messages = consumer.messages().await.map_err(PublisherError::nats)?;
    following.set(Ok(()));
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(m) = next else {
            return Err(PublisherError::Nats("message stream ended".into()));
        };
        let m = match m {
            Ok(m) => m,
            // The client renews its pull requests by itself after a missed heartbeat.
            Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                tracing::warn!(error = %e, "events: missed heartbeat");
                continue;
            }
            Err(e) => return Err(PublisherError::nats(e)),
        };
        match parse(&m.payload) {
            Ok(event) => {
                let (user, seq) = (event.user.clone(), event.sequence);
                match cache.apply(event) {
                    Some(Step::Gap) => {
                        tracing::info!(%user, seq, "events: sequence gap; user dropped, reloads on next request")
                    }
                    step => tracing::debug!(%user, seq, ?step, "event"),
                }
            }
            // A user's event we cannot read leaves a gap in their sequence,
            // which the next one detects.
            Err(e) => tracing::warn!(subject = %m.subject, error = %e, "events: unreadable event"),
        }
        m.ack().await.map_err(PublisherError::nats)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imipflow_schema::FbType;

    #[test]
    fn parses_a_freebusy_changed_event() {
        let ev = parse(br#"{"specversion":"1.0","id":"ns:a@x:2","source":"imipflow/ns",
            "type":"org.imipflow.freebusy.changed","subject":"a@x","time":"2027-03-01T12:00:00Z",
            "datacontenttype":"application/json","user":"a@x","sequence":2,
            "data":{"uid":"u1","added":[{"start":"2027-03-16T09:00:00Z","end":"2027-03-16T10:00:00Z",
            "fbtype":"BUSY-TENTATIVE","recurrence_id":"2027-03-16T09:00:00Z"}],"removed":[]}}"#)
        .unwrap();
        assert_eq!(ev.user, "a@x");
        assert_eq!(ev.sequence, 2);
        let fb = ev.freebusy.unwrap();
        assert_eq!(fb.added.len(), 1);
        assert_eq!(fb.added[0].uid, "u1");
        assert_eq!(fb.added[0].fbtype, FbType::BusyTentative);
        assert_eq!(
            fb.added[0].recurrence_id,
            Some("2027-03-16T09:00:00Z".parse().unwrap())
        );
        assert!(fb.removed.is_empty());
    }

    #[test]
    fn other_kinds_only_carry_the_sequence() {
        let event = |kind: &str, data: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"ns:a@x:1","source":"imipflow/ns",
                "type":"org.imipflow.{kind}","subject":"a@x","time":"2027-03-01T12:00:00Z",
                "datacontenttype":"application/json","user":"a@x","sequence":1{data}}}"#
            )
        };
        for (kind, data) in [
            (
                "object.changed",
                r#","data":{"uid":"u1","recurrence_id":null,"sequence":0}"#,
            ),
            (
                "object.removed",
                r#","data":{"uid":"u1","recurrence_id":null}"#,
            ),
            (
                "queue.changed",
                r#","data":{"uid":"u1","change":"removed"}"#,
            ),
        ] {
            let ev = parse(event(kind, data).as_bytes()).unwrap();
            assert_eq!(
                (ev.user.as_str(), ev.sequence, ev.freebusy),
                ("a@x", 1, None)
            );
        }
        assert!(parse(b"{}").is_err());
        // A free/busy change without its data, and a kind nobody defined.
        assert!(parse(event("freebusy.changed", "").as_bytes()).is_err());
        assert!(parse(event("calendar.exploded", r#","data":{}"#).as_bytes()).is_err());
    }
}
