//! Following the change events with a durable pull consumer on
//! `<ns>-events` (as the publisher does), and handing each user's
//! `queue.changed`, `object.changed`, `object.removed` and
//! `freebusy.changed` to the pages they have open (Server-Sent Events).
//!
//! Nothing is cached from the events: a page reads PostgreSQL when it is
//! loaded, so an event only says "reload". The consumer delivers new events
//! only (a page opened later reads the state they led to).

use crate::error::ManagerError;
use crate::mail::Outbox;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::StreamExt;
use imipflow_schema::{Change, CloudEvent, Namespace};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What an open page is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub user: String,
    /// `queue.changed`, `object.changed` (also for a removal) or `freebusy.changed`.
    pub kind: &'static str,
    pub uid: String,
}

/// Reads one event's JSON into a notice.
pub fn notice(payload: &[u8]) -> Result<Notice, String> {
    let ce: CloudEvent = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let kind = match &ce.change {
        Change::QueueChanged { .. } => "queue.changed",
        Change::ObjectChanged { .. } | Change::ObjectRemoved { .. } => "object.changed",
        Change::FreeBusyChanged { .. } => "freebusy.changed",
    };
    Ok(Notice {
        uid: ce.change.uid().to_owned(),
        user: ce.user,
        kind,
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

/// The events stream and the manager's durable consumer on it.
pub struct Subscription {
    stream: jetstream::stream::Stream,
    name: String,
    filter: String,
}

impl Subscription {
    pub fn stream(&self) -> jetstream::stream::Stream {
        self.stream.clone()
    }

    /// Finds the events stream (created by `imip-processor migrate`) and the
    /// durable consumer, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        ns: &Namespace,
        name: String,
    ) -> Result<(Self, PullConsumer), ManagerError> {
        let stream = js.get_stream(ns.events_stream()).await.map_err(|e| {
            ManagerError::Nats(format!(
                "stream {}: {e} (run `imip-processor migrate` first)",
                ns.events_stream()
            ))
        })?;
        let sub = Subscription {
            stream,
            name,
            filter: ns.events_subjects(),
        };
        let consumer = sub.consumer().await?;
        Ok((sub, consumer))
    }

    async fn consumer(&self) -> Result<PullConsumer, ManagerError> {
        if let Ok(c) = self.stream.get_consumer::<pull::Config>(&self.name).await {
            if c.cached_info().config.filter_subject == self.filter {
                return Ok(c);
            }
            tracing::warn!(consumer = %self.name, "consumer has another filter; recreating it");
            let _ = self.stream.delete_consumer(&self.name).await;
        }
        let c = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(self.name.clone()),
                description: Some("imip-manager: live page updates".into()),
                filter_subject: self.filter.clone(),
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                // A notice takes microseconds; an unacknowledged one belongs
                // to a manager that died.
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(ManagerError::nats)?;
        tracing::info!(consumer = %self.name, "created durable consumer");
        Ok(c)
    }
}

/// Hands events to `notices` until shutdown, re-opening the consumer when
/// its message stream fails.
pub async fn follow(
    sub: Subscription,
    mut consumer: PullConsumer,
    notices: broadcast::Sender<Notice>,
    outbox: Arc<Outbox>,
    following: Arc<Following>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match consume(&mut consumer, &notices, &outbox, &following, &mut shutdown).await {
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
                Ok(c) => {
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

async fn consume(
    consumer: &mut PullConsumer,
    notices: &broadcast::Sender<Notice>,
    outbox: &Outbox,
    following: &Following,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ManagerError> {
    let mut messages = consumer.messages().await.map_err(ManagerError::nats)?;
    following.set(Ok(()));
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(m) = next else {
            return Err(ManagerError::Nats("message stream ended".into()));
        };
        let m = match m {
            Ok(m) => m,
            Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                tracing::warn!(error = %e, "events: missed heartbeat");
                continue;
            }
            Err(e) => return Err(ManagerError::nats(e)),
        };
        match notice(&m.payload) {
            Ok(n) => {
                if n.kind == "queue.changed" {
                    outbox.applied(&n.user, &n.uid);
                }
                // No page open is no error.
                let _ = notices.send(n);
            }
            Err(e) => tracing::warn!(subject = %m.subject, error = %e, "events: unreadable event"),
        }
        m.ack().await.map_err(ManagerError::nats)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_notices_of_their_user() {
        let n = notice(
            br#"{"specversion":"1.0","id":"ns:a@x:1","source":"imipflow/ns",
            "type":"org.imipflow.queue.changed","subject":"a@x","time":"2027-03-01T12:00:00Z",
            "datacontenttype":"application/json","user":"a@x","sequence":1,
            "data":{"uid":"u1","change":"removed"}}"#,
        )
        .unwrap();
        assert_eq!(
            n,
            Notice {
                user: "a@x".into(),
                kind: "queue.changed",
                uid: "u1".into()
            }
        );
        assert!(notice(b"{}").is_err());
    }
}
