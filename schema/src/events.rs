//! The change events (SPEC §4) as types: what a transition changed
//! ([`Change`]), its kind ([`EventKind`]) and the CloudEvent that carries it
//! ([`CloudEvent`]), as the processor writes it and every subscriber reads it.
//!
//! docs/subscribers.md is the contract these types spell out. The CloudEvent
//! `type` and `data` are the serde representation of [`Change`] itself (an
//! adjacently tagged enum), so the producer cannot write a `type` its `data`
//! does not match, and a reader gets the typed change or an error.

use crate::FbType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Prefix of every CloudEvent `type`; the rest is the kind.
pub const CLOUD_TYPE_PREFIX: &str = "org.imipflow.";

/// The CloudEvents version the events are written in.
pub const SPEC_VERSION: &str = "1.0";

/// `datacontenttype` of every event.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// One busy period of one UID. Key: (user, UID, instance start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fbtype: FbType,
    /// The instance this period belongs to (its original start), `None` for a
    /// non-recurring event.
    pub recurrence_id: Option<DateTime<Utc>>,
}

/// What a `queue.changed` says happened to a UID's pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueChange {
    Added,
    Removed,
}

/// A change event (SPEC §4), before it gets its id and per-user sequence.
///
/// Serialised as the CloudEvent's `type` and `data`: the variant names are
/// [`EventKind::cloud_type`] (a unit test holds them equal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Change {
    #[serde(rename = "org.imipflow.object.changed")]
    ObjectChanged {
        uid: String,
        recurrence_id: Option<DateTime<Utc>>,
        sequence: i64,
    },
    #[serde(rename = "org.imipflow.object.removed")]
    ObjectRemoved {
        uid: String,
        recurrence_id: Option<DateTime<Utc>>,
    },
    #[serde(rename = "org.imipflow.freebusy.changed")]
    FreeBusyChanged {
        uid: String,
        // A reader takes a missing list as empty, as the publisher always did.
        #[serde(default)]
        added: Vec<Period>,
        #[serde(default)]
        removed: Vec<Period>,
    },
    #[serde(rename = "org.imipflow.queue.changed")]
    QueueChanged {
        uid: String,
        /// The pending entry's instance; absent for the series (or a single
        /// event), as in events written before entries were per instance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recurrence_id: Option<DateTime<Utc>>,
        change: QueueChange,
    },
}

impl Change {
    pub fn kind(&self) -> EventKind {
        match self {
            Change::ObjectChanged { .. } => EventKind::ObjectChanged,
            Change::ObjectRemoved { .. } => EventKind::ObjectRemoved,
            Change::FreeBusyChanged { .. } => EventKind::FreeBusyChanged,
            Change::QueueChanged { .. } => EventKind::QueueChanged,
        }
    }

    /// The UID the change is about.
    pub fn uid(&self) -> &str {
        match self {
            Change::ObjectChanged { uid, .. }
            | Change::ObjectRemoved { uid, .. }
            | Change::FreeBusyChanged { uid, .. }
            | Change::QueueChanged { uid, .. } => uid,
        }
    }
}

/// The kind of a change event: the two subject tokens after `<ns>.events.`,
/// the `outbox.kind` column, and (prefixed) the CloudEvent `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    ObjectChanged,
    ObjectRemoved,
    FreeBusyChanged,
    QueueChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::ObjectChanged,
        EventKind::ObjectRemoved,
        EventKind::FreeBusyChanged,
        EventKind::QueueChanged,
    ];

    /// `object.changed`, …: the subject tokens and the `outbox.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ObjectChanged => "object.changed",
            EventKind::ObjectRemoved => "object.removed",
            EventKind::FreeBusyChanged => "freebusy.changed",
            EventKind::QueueChanged => "queue.changed",
        }
    }

    /// The CloudEvent `type`: `org.imipflow.` + the kind.
    pub fn cloud_type(self) -> &'static str {
        match self {
            EventKind::ObjectChanged => "org.imipflow.object.changed",
            EventKind::ObjectRemoved => "org.imipflow.object.removed",
            EventKind::FreeBusyChanged => "org.imipflow.freebusy.changed",
            EventKind::QueueChanged => "org.imipflow.queue.changed",
        }
    }

    /// The kind of a CloudEvent `type`, `None` for any other type.
    pub fn from_cloud_type(cloud_type: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.cloud_type() == cloud_type)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`EventKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl std::fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown event kind {:?}", self.0)
    }
}

impl std::error::Error for UnknownKind {}

impl std::str::FromStr for EventKind {
    type Err = UnknownKind;

    /// From [`EventKind::as_str`] (the `outbox.kind` column).
    fn from_str(s: &str) -> Result<EventKind, UnknownKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// `<namespace>:<user>:<sequence>`: the event's id and its `Nats-Msg-Id`,
/// the same when the relay publishes an event again, so the broker drops
/// the repeat.
pub fn event_id(namespace: &str, user: &str, seq: i64) -> String {
    format!("{namespace}:{user}:{seq}")
}

/// One change event as published: CloudEvents 1.0, structured JSON mode,
/// with the extension attributes `user`, `sequence` and, on the parts of a
/// split change, `part` and `parts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    /// `type` and `data`.
    #[serde(flatten)]
    pub change: Change,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub user: String,
    pub sequence: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
}

impl CloudEvent {
    /// Event number `seq` of `user` in `namespace`, carrying `change` (or
    /// part `index` of `count` of it).
    pub fn new(
        namespace: &str,
        user: &str,
        seq: i64,
        time: DateTime<Utc>,
        change: Change,
        part: Option<(usize, usize)>,
    ) -> CloudEvent {
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: event_id(namespace, user, seq),
            source: format!("imipflow/{namespace}"),
            change,
            subject: user.to_owned(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            user: user.to_owned(),
            sequence: seq,
            part: part.map(|p| p.0),
            parts: part.map(|p| p.1),
        }
    }

    pub fn kind(&self) -> EventKind {
        self.change.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn period(start: &str, end: &str, recurrence_id: Option<&str>) -> Period {
        Period {
            start: t(start),
            end: t(end),
            fbtype: FbType::BusyTentative,
            recurrence_id: recurrence_id.map(t),
        }
    }

    /// The envelope as the processor wrote it with `json!` before these
    /// types (semantics/src/events.rs), for comparison.
    fn old_shape(kind: &str, seq: i64, data: Value, part: Option<(usize, usize)>) -> Value {
        let mut v = json!({
            "specversion": "1.0",
            "id": format!("imip:alice@example.com:{seq}"),
            "source": "imipflow/imip",
            "type": format!("org.imipflow.{kind}"),
            "subject": "alice@example.com",
            "time": "2027-03-01T12:00:00.123456789Z",
            "datacontenttype": "application/json",
            "user": "alice@example.com",
            "sequence": seq,
            "data": data,
        });
        if let Some((index, count)) = part {
            v["part"] = index.into();
            v["parts"] = count.into();
        }
        v
    }

    fn event(seq: i64, change: Change, part: Option<(usize, usize)>) -> CloudEvent {
        let time = t("2027-03-01T12:00:00.123456789Z");
        CloudEvent::new("imip", "alice@example.com", seq, time, change, part)
    }

    /// One event of each kind, and the JSON it must be, written out.
    fn one_of_each() -> Vec<(CloudEvent, Value)> {
        vec![
            (
                event(
                    1,
                    Change::ObjectChanged {
                        uid: "u1".into(),
                        recurrence_id: None,
                        sequence: 3,
                    },
                    None,
                ),
                old_shape(
                    "object.changed",
                    1,
                    json!({"uid": "u1", "recurrence_id": null, "sequence": 3}),
                    None,
                ),
            ),
            (
                event(
                    2,
                    Change::ObjectRemoved {
                        uid: "u1".into(),
                        recurrence_id: Some(t("2027-03-16T09:00:00Z")),
                    },
                    None,
                ),
                old_shape(
                    "object.removed",
                    2,
                    json!({"uid": "u1", "recurrence_id": "2027-03-16T09:00:00Z"}),
                    None,
                ),
            ),
            (
                event(
                    3,
                    Change::FreeBusyChanged {
                        uid: "weekly-1".into(),
                        added: vec![period(
                            "2027-03-16T09:00:00Z",
                            "2027-03-16T10:00:00Z",
                            Some("2027-03-16T09:00:00Z"),
                        )],
                        removed: vec![period("2027-03-09T09:00:00Z", "2027-03-09T10:00:00Z", None)],
                    },
                    Some((2, 3)),
                ),
                old_shape(
                    "freebusy.changed",
                    3,
                    json!({"uid": "weekly-1",
                        "added": [{"start": "2027-03-16T09:00:00Z", "end": "2027-03-16T10:00:00Z",
                            "fbtype": "BUSY-TENTATIVE", "recurrence_id": "2027-03-16T09:00:00Z"}],
                        "removed": [{"start": "2027-03-09T09:00:00Z", "end": "2027-03-09T10:00:00Z",
                            "fbtype": "BUSY-TENTATIVE", "recurrence_id": null}]}),
                    Some((2, 3)),
                ),
            ),
            (
                event(
                    4,
                    Change::QueueChanged {
                        uid: "u2".into(),
                        recurrence_id: None,
                        change: QueueChange::Added,
                    },
                    None,
                ),
                old_shape(
                    "queue.changed",
                    4,
                    json!({"uid": "u2", "change": "added"}),
                    None,
                ),
            ),
        ]
    }

    #[test]
    fn the_cloud_event_is_the_old_json_shape() {
        let all = one_of_each();
        let kinds: Vec<EventKind> = all.iter().map(|(e, _)| e.kind()).collect();
        assert_eq!(kinds, EventKind::ALL);
        for (event, want) in all {
            let got = serde_json::to_value(&event).unwrap();
            assert_eq!(got, want, "{:?}", event.kind());
            // Also as text: no key besides the old ones, none twice.
            let text = serde_json::to_string(&event).unwrap();
            assert_eq!(text.len(), want.to_string().len(), "{text}");
        }
    }

    #[test]
    fn the_cloud_event_reads_back() {
        for (event, want) in one_of_each() {
            let back: CloudEvent = serde_json::from_value(want).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn a_reader_rejects_a_type_without_its_data_and_unknown_types() {
        let (_, mut v) = one_of_each().remove(2);
        v.as_object_mut().unwrap().remove("data");
        assert!(serde_json::from_value::<CloudEvent>(v.clone()).is_err());
        v["type"] = "org.imipflow.calendar.exploded".into();
        v["data"] = json!({"uid": "u"});
        assert!(serde_json::from_value::<CloudEvent>(v).is_err());
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(k.cloud_type(), format!("{CLOUD_TYPE_PREFIX}{}", k.as_str()));
            assert_eq!(EventKind::from_cloud_type(k.cloud_type()), Some(k));
            assert_eq!(EventKind::from_cloud_type(k.as_str()), None);
            assert!(k.cloud_type().parse::<EventKind>().is_err());
        }
        assert_eq!(
            "object.moved".parse::<EventKind>(),
            Err(UnknownKind("object.moved".into()))
        );
        // Two subject tokens each (docs/subscribers.md).
        assert!(
            EventKind::ALL
                .iter()
                .all(|k| k.as_str().split('.').count() == 2)
        );
    }

    #[test]
    fn the_serde_tags_are_the_cloud_types() {
        for (event, _) in one_of_each() {
            let v = serde_json::to_value(&event.change).unwrap();
            assert_eq!(v["type"], event.kind().cloud_type());
        }
    }
}
