//! Following the change events: the durable pull consumer on `<ns>-events`
//! (the loop the manager shares, `imipflow_nats::follow`), CloudEvents
//! parsed into cache [`Event`]s, applied, then acknowledged.
//!
//! The consumer takes every event (`<ns>.events.>`), not only
//! `freebusy.changed`: the per-user `sequence` counts all kinds, so only the
//! full sequence shows whether an event is missing. Being durable, it resumes
//! after a restart where it stopped; what it delivers then belongs to users
//! not yet cached (the cache starts empty) and is acknowledged and ignored.

use crate::cache::{Cache, Event, FreeBusyChange, Step};
use crate::error::PublisherError;
use async_nats::jetstream::consumer::PullConsumer;
use imipflow_nats::follow::{Follower, Subscription};
use imipflow_schema::{BusyPeriod, Change, CloudEvent, Namespace, Period};

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

/// The publisher's [`Follower`]: each event applied to the cache. A user's
/// event that cannot be read leaves a gap in their sequence, which the next
/// one detects; a consumer found new on re-opening may have missed events,
/// so the cache is cleared.
impl Follower for Cache {
    fn event(&self, subject: &str, payload: &[u8]) {
        match parse(payload) {
            Ok(event) => {
                let (user, seq) = (event.user.clone(), event.sequence);
                match self.apply(event) {
                    Some(Step::Gap) => {
                        tracing::info!(%user, seq, "events: sequence gap; user dropped, reloads on next request")
                    }
                    step => tracing::debug!(%user, seq, ?step, "event"),
                }
            }
            Err(e) => tracing::warn!(subject, error = %e, "events: unreadable event"),
        }
    }

    fn missed_events(&self) {
        self.clear();
    }
}

/// The events stream and the publisher's durable consumer `name` on it.
/// Being durable, it resumes after a restart where it stopped; what it
/// delivers then belongs to users not yet cached (the cache starts empty)
/// and is acknowledged and ignored.
pub async fn subscribe(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    name: String,
) -> Result<(Subscription, PullConsumer), PublisherError> {
    Subscription::open(
        js,
        &ns.events_stream(),
        ns.events_subjects(),
        name,
        "imip-publisher: free/busy cache",
    )
    .await
    .map_err(PublisherError::Nats)
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
