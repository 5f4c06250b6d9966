//! Following the change events (`<ns>-events`) with a durable pull
//! consumer: the one loop the publisher and the manager share. It finds the
//! stream, creates the consumer when missing (or with another filter),
//! hands every event to a [`Follower`] before acknowledging it, re-opens the
//! consumer when its message stream fails, and keeps [`Following`] (what
//! `/readyz` says) true.
//!
//! What a follower does with an event is its own: the publisher applies
//! free/busy changes to its cache, the manager tells open pages to reload.

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A subscriber's durable consumer name: `given` (the `setting`, e.g.
/// `IMIP_PUBLISHER_CONSUMER`), or `<namespace>-<role>`; JetStream takes only
/// `A-Z a-z 0-9 _ -` in one.
pub fn consumer_name(
    given: Option<&str>,
    namespace: &str,
    role: &str,
    setting: &str,
) -> Result<String, String> {
    let name = match given {
        Some(c) => c.to_owned(),
        None => format!("{namespace}-{role}"),
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "{setting}: {name:?} is not a consumer name (A-Z a-z 0-9 _ -)"
        ))
    }
}

/// What a subscriber does with the events.
pub trait Follower: Send + Sync {
    /// One event, before it is acknowledged (an unreadable one too: the
    /// follower logs it and the loop acknowledges it all the same).
    fn event(&self, subject: &str, payload: &[u8]);
    /// The consumer was re-opened and turned out to be new (deleted
    /// meanwhile): events since the last one delivered were never seen.
    fn missed_events(&self) {}
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

/// The events stream and a subscriber's durable consumer on it.
pub struct Subscription {
    stream: jetstream::stream::Stream,
    name: String,
    filter: String,
    description: String,
}

impl Subscription {
    /// The events stream (for the consumer's info in `/readyz`).
    pub fn stream(&self) -> jetstream::stream::Stream {
        self.stream.clone()
    }

    /// Finds the events stream `stream` (created by `imip-processor
    /// migrate`) and the durable consumer `name` on `filter`, creating it
    /// when missing. The consumer takes every event of the filter: the
    /// per-user `sequence` counts all kinds, so only the full sequence shows
    /// whether one is missing.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        filter: String,
        name: String,
        description: &str,
    ) -> Result<(Self, PullConsumer), String> {
        let found = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e} (run `imip-processor migrate` first)"))?;
        let sub = Subscription {
            stream: found,
            name,
            filter,
            description: description.to_owned(),
        };
        let (consumer, _) = sub.consumer().await?;
        Ok((sub, consumer))
    }

    /// The durable consumer, and whether it had to be created (then events
    /// before this moment were never delivered to it).
    async fn consumer(&self) -> Result<(PullConsumer, bool), String> {
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
                description: Some(self.description.clone()),
                // One subject, `filter_subject`: NATS 2.9 has no `filter_subjects`.
                filter_subject: self.filter.clone(),
                // A new subscriber starts from now: whatever it shows or
                // caches is read from PostgreSQL later, and already holds
                // the earlier events' effects.
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                // Handling an event takes microseconds, so a delivery
                // unacknowledged after a few seconds belongs to a subscriber
                // that died; redeliver it soon to the next one.
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let held = &c.cached_info().config.filter_subject;
        if *held != self.filter {
            return Err(format!(
                "consumer {} has filter {held:?}, expected {:?}",
                self.name, self.filter
            ));
        }
        tracing::info!(consumer = %self.name, "created durable consumer");
        Ok((c, true))
    }
}

/// Hands events to `follower` until shutdown, re-opening the consumer when
/// its message stream fails.
pub async fn follow(
    sub: Subscription,
    mut consumer: PullConsumer,
    follower: Arc<dyn Follower>,
    following: Arc<Following>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match consume(&mut consumer, &*follower, &following, &mut shutdown).await {
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
                        follower.missed_events();
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
    follower: &dyn Follower,
    following: &Following,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    following.set(Ok(()));
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(m) = next else {
            return Err("message stream ended".into());
        };
        let m = match m {
            Ok(m) => m,
            // The client renews its pull requests by itself after a missed heartbeat.
            Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                tracing::warn!(error = %e, "events: missed heartbeat");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        follower.event(&m.subject, &m.payload);
        m.ack().await.map_err(|e| e.to_string())?;
    }
}
