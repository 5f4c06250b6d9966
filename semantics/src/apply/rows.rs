//! The rows a batch writes ([`Writes`]), typed one struct per table, and the
//! pure helpers that make them: recurrence keys, text digests, queue entries.
//!
//! Only what changed is written: every row written costs index entries (the
//! GiST index on free/busy periods above all), and an update of a series
//! usually leaves most of its objects and instances as they were.

use super::{Digest, Handled, StoredUid, UidKey};
use crate::limits::Usage;
use crate::model::{Disposition, EventKind, Period, Raw, StoredObject};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// Everything a batch writes, in the order the store runs it: deletes
/// before inserts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// UIDs all of whose object and attendee rows go (one was unreadable).
    pub uids_cleared: Vec<UidKey>,
    /// Objects (and their attendee rows) removed or replaced.
    pub objects_removed: Vec<ObjectKey>,
    pub texts_removed: Vec<(UidKey, Digest)>,
    /// Free/busy rows removed or replaced, by instance.
    pub busy_removed: Vec<(UidKey, DateTime<Utc>)>,
    pub open_removed: Vec<UidKey>,
    pub queue_removed: Vec<QueueKey>,
    /// Objects written (each with its attendee rows).
    pub objects: Vec<ObjectRow>,
    pub texts: Vec<TextRow>,
    pub busy: Vec<(UidKey, Period)>,
    /// `open_series.materialised_until` of open-ended series.
    pub open: Vec<(UidKey, DateTime<Utc>)>,
    /// Pending requests, replacing any of the same UID and recurrence key.
    pub queue: Vec<(UidKey, QueueEntry)>,
    /// What each user's row counts change by.
    pub usage: Vec<(String, Usage)>,
    /// Each user's new last event sequence.
    pub last_seq: Vec<(String, i64)>,
    pub outbox: Vec<OutboxRow>,
    pub log: Vec<LogRow>,
    pub dead_letters: Vec<DeadLetter>,
    /// One per message, in message order (not a row).
    pub outcomes: Vec<Handled>,
}

/// An `objects` row by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub key: UidKey,
    pub recurrence_key: String,
}

/// An `objects` row; its `attendees` rows are its component's attendees.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    pub key: UidKey,
    pub recurrence_key: String,
    pub object: StoredObject,
    /// Of its raw text in `object_texts`.
    pub digest: Digest,
}

/// An `object_texts` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    pub key: UidKey,
    pub digest: Digest,
    pub raw: Raw,
}

/// A `request_queue` row by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKey {
    pub key: UidKey,
    /// [`recurrence_key`] of the entry's RECURRENCE-ID ("" for the series).
    pub recurrence_key: String,
}

/// A `request_queue` row: one recurrence key of an incoming REQUEST (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub recurrence_key: String,
    pub recurrence_id: Option<DateTime<Utc>>,
    pub organizer: Option<String>,
    pub summary: Option<String>,
    pub data: serde_json::Value,
    pub sequence: i64,
    pub dtstamp: Option<DateTime<Utc>>,
}

/// An `outbox` row: one event, numbered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub user: String,
    pub seq: i64,
    pub event_id: String,
    pub kind: EventKind,
    pub body: serde_json::Value,
}

/// A `message_log` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub user: String,
    pub dedupe_id: String,
    pub seq: i64,
    pub method: String,
    /// The UID of the message's first component, and its RECURRENCE-ID (RFC
    /// 3339 UTC, or as written when it has no instant): what `imip-ctl log`
    /// shows the message was about.
    pub uid: Option<String>,
    pub recurrence_id: Option<String>,
    pub disposition: Disposition,
}

/// A `dead_letters` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub user: String,
    pub seq: i64,
    pub payload: Vec<u8>,
    pub error: String,
}

impl Writes {
    /// The rows that bring one saved UID from `loaded` to its new objects,
    /// periods and open-series horizon.
    pub(super) fn uid_rows(
        &mut self,
        key: &UidKey,
        loaded: &StoredUid,
        objects: &[StoredObject],
        busy: &BTreeSet<Period>,
        open_until: Option<DateTime<Utc>>,
    ) {
        if loaded.unreadable {
            self.uids_cleared.push(key.clone());
        } else {
            for l in loaded.objects.iter().filter(|l| !objects.contains(l)) {
                self.objects_removed.push(ObjectKey {
                    key: key.clone(),
                    recurrence_key: recurrence_key(l.recurrence_id),
                });
            }
        }
        // The UID's texts go from those stored to those its objects refer to
        // (each text once, whatever number of objects share it).
        let (digests, distinct) = texts_of(objects);
        let wanted: BTreeSet<&Digest> = distinct.iter().map(|(d, _)| d).collect();
        for d in loaded.texts.iter().filter(|d| !wanted.contains(d)) {
            self.texts_removed.push((key.clone(), d.clone()));
        }
        for (d, raw) in distinct.iter().filter(|(d, _)| !loaded.texts.contains(d)) {
            self.texts.push(TextRow {
                key: key.clone(),
                digest: d.clone(),
                raw: (*raw).clone(),
            });
        }
        // StoredObject compares its recurrence id first, so `contains` is a
        // cheap search by instance before any deep comparison.
        let unchanged = |o: &StoredObject| !loaded.unreadable && loaded.objects.contains(o);
        for (o, digest) in objects.iter().zip(digests).filter(|(o, _)| !unchanged(o)) {
            self.objects.push(ObjectRow {
                key: key.clone(),
                recurrence_key: recurrence_key(o.recurrence_id),
                object: o.clone(),
                digest,
            });
        }
        self.busy_rows(key, &loaded.busy, busy);
        if loaded.open_until != open_until {
            if loaded.open_until.is_some() {
                self.open_removed.push(key.clone());
            }
            if let Some(until) = open_until {
                self.open.push((key.clone(), until));
            }
        }
    }

    /// Free/busy rows from `before` to `after`: only the difference.
    pub(super) fn busy_rows(
        &mut self,
        key: &UidKey,
        before: &BTreeSet<Period>,
        after: &BTreeSet<Period>,
    ) {
        for p in before.difference(after) {
            self.busy_removed.push((key.clone(), instance(p)));
        }
        for p in after.difference(before) {
            self.busy.push((key.clone(), *p));
        }
    }
}

/// The key of a free/busy row within its UID: the instance's original start.
pub fn instance(p: &Period) -> DateTime<Utc> {
    p.recurrence_id.unwrap_or(p.start)
}

/// `objects.recurrence_key`: the RECURRENCE-ID in UTC, empty for the master.
pub fn recurrence_key(r: Option<DateTime<Utc>>) -> String {
    r.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The key of a raw text in `object_texts`: its SHA-256.
pub fn text_digest(raw: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(raw.as_bytes()).to_vec()
}

/// The digest of each object's raw text, and each distinct text once (the
/// rows `object_texts` needs). Hashed once per shared text.
pub fn texts_of(objects: &[StoredObject]) -> (Vec<Digest>, Vec<(Digest, &Raw)>) {
    let mut distinct: Vec<(Digest, &Raw)> = Vec::new();
    let digests = objects
        .iter()
        .map(|o| {
            if let Some((d, _)) = distinct
                .iter()
                .find(|(_, r)| r.same_allocation(&o.raw) || **r == o.raw)
            {
                return d.clone();
            }
            let d = text_digest(&o.raw);
            distinct.push((d.clone(), &o.raw));
            d
        })
        .collect();
    (digests, distinct)
}

/// The `request_queue` row of a pending request that `payload` brought (or
/// amended). `data` is what `imip-ctl queue` and the manager read: the
/// method and sender of the message, the proposal's components and zones,
/// and the message's text when it was about this UID only.
pub fn queue_row(payload: &imipflow_schema::Payload, p: &crate::model::Pending) -> QueueEntry {
    let comps = &p.proposal.components;
    let master = comps
        .iter()
        .find(|c| c.recurrence_id.is_none())
        .or(comps.first());
    let raw = if p.proposal.raw.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(p.proposal.raw.to_string())
    };
    QueueEntry {
        recurrence_key: recurrence_key(p.recurrence_id),
        recurrence_id: p.recurrence_id,
        organizer: p.organizer.clone(),
        summary: master.and_then(|c| c.summary.clone()),
        sequence: p.sequence,
        dtstamp: p.dtstamp,
        data: serde_json::json!({
            "method": payload.method,
            "sender": payload.sender,
            "components": comps,
            "timezones": p.proposal.timezones,
            "raw": raw,
        }),
    }
}
