//! Following the change events with a durable pull consumer on
//! `<ns>-events` (the loop the publisher shares, `imipflow_nats::follow`),
//! and handing each user's
//! `queue.changed`, `object.changed`, `object.removed` and
//! `freebusy.changed` to the pages they have open (Server-Sent Events).
//!
//! Nothing is cached from the events: a page reads PostgreSQL when it is
//! loaded, so an event only says "reload". The consumer delivers new events
//! only (a page opened later reads the state they led to).

use crate::error::ManagerError;
use crate::mail::Outbox;
use async_nats::jetstream::consumer::PullConsumer;
use imipflow_nats::follow::{Follower, Subscription};
use imipflow_schema::{Change, CloudEvent, Namespace};
use std::sync::Arc;
use tokio::sync::broadcast;

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

/// The manager's [`Follower`]: a `queue.changed` settles the answer the
/// outbox sent ("sent, waiting to apply" becomes applied), and every notice
/// goes to the user's open pages.
pub struct Pages {
    pub notices: broadcast::Sender<Notice>,
    pub outbox: Arc<Outbox>,
}

impl Follower for Pages {
    fn event(&self, subject: &str, payload: &[u8]) {
        match notice(payload) {
            Ok(n) => {
                if n.kind == "queue.changed" {
                    self.outbox.applied(&n.user, &n.uid);
                }
                // No page open is no error.
                let _ = self.notices.send(n);
            }
            Err(e) => tracing::warn!(subject, error = %e, "events: unreadable event"),
        }
    }
}

/// The events stream and the manager's durable consumer `name` on it.
pub async fn subscribe(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    name: String,
) -> Result<(Subscription, PullConsumer), ManagerError> {
    Subscription::open(
        js,
        &ns.events_stream(),
        ns.events_subjects(),
        name,
        "imip-manager: live page updates",
    )
    .await
    .map_err(ManagerError::Nats)
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
