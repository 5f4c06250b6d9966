//! What the pure step reads: the stream messages of a batch ([`Msg`],
//! [`parse`]), the keys they touch ([`keys`]) and what one pipelined read
//! returned for those keys ([`Loaded`]).

use crate::limits::Usage;
use crate::model::{Pending, Period, StoredObject};
use chrono::{DateTime, Utc};
use imipflow_schema::{PAYLOAD_VERSION, Payload};
use std::collections::{BTreeSet, HashMap, HashSet};

/// SHA-256 of a raw text, its key in `object_texts`.
pub type Digest = Vec<u8>;

/// One (user, UID): the key of everything stored per UID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UidKey {
    pub user: String,
    pub uid: String,
}

impl UidKey {
    pub fn new(user: &str, uid: &str) -> UidKey {
        UidKey {
            user: user.to_owned(),
            uid: uid.to_owned(),
        }
    }
}

/// What one pipelined read returned for a batch's keys.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// (user, dedupe id) of the batch's messages already in `message_log`.
    pub logged: HashSet<(String, String)>,
    /// The stored rows of each (user, UID) that has any.
    pub uids: HashMap<UidKey, StoredUid>,
    /// Each user's row counts (`user_usage`), for the quotas.
    pub usage: HashMap<String, Usage>,
    /// Each user's last event sequence (`user_events`).
    pub last_seq: HashMap<String, i64>,
}

/// The stored rows of one (user, UID).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredUid {
    /// The readable objects, by recurrence key, with their raw texts.
    pub objects: Vec<StoredObject>,
    /// Whether a stored object could not be read: then all the UID's object
    /// and attendee rows are replaced when it is saved.
    pub unreadable: bool,
    /// Object rows, readable or not (what the quota counts).
    pub rows: usize,
    /// Digests the object rows refer to, readable or not.
    pub referenced: BTreeSet<Digest>,
    /// Digests of its rows in `object_texts`.
    pub texts: BTreeSet<Digest>,
    /// Its rows in `freebusy`.
    pub busy: BTreeSet<Period>,
    /// `open_series.materialised_until`, if it has a row.
    pub open_until: Option<DateTime<Utc>>,
    /// Its pending requests (`request_queue`), one per recurrence key.
    pub pending: Vec<Pending>,
}

impl StoredUid {
    /// Whether it has any object or free/busy row.
    pub fn is_stored(&self) -> bool {
        self.rows > 0 || !self.busy.is_empty()
    }
}

/// One stream message as the lane read it.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub seq: i64,
    pub bytes: &'a [u8],
}

/// A message and its payload, or why it cannot be read.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    pub msg: Msg<'a>,
    pub payload: Result<Payload, String>,
}

/// Reads and checks a payload; the error is what its dead letter says.
pub fn parse(msg: Msg<'_>) -> Parsed<'_> {
    let payload = match Payload::from_json(msg.bytes) {
        Err(e) => Err(format!("unreadable payload: {e}")),
        Ok(p) if p.version != PAYLOAD_VERSION => Err(format!(
            "payload version {} (this processor knows {PAYLOAD_VERSION})",
            p.version
        )),
        Ok(p) => Ok(p),
    };
    Parsed { msg, payload }
}

/// The user a dead letter is filed under: the payload's, if it has one.
pub fn user_hint(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What the read for a batch asks for, each key once, in message order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// (user, dedupe id) of every readable message.
    pub logged: Vec<(String, String)>,
    pub uids: Vec<UidKey>,
    pub users: Vec<String>,
}

/// The keys [`Loaded`] must hold for `batch`.
pub fn keys(batch: &[Parsed<'_>]) -> Keys {
    let mut k = Keys::default();
    let mut seen: HashSet<UidKey> = HashSet::new();
    for p in batch.iter().filter_map(|m| m.payload.as_ref().ok()) {
        k.logged.push((p.user.clone(), p.dedupe_id.clone()));
        if !k.users.contains(&p.user) {
            k.users.push(p.user.clone());
        }
        for c in &p.components {
            let key = UidKey::new(&p.user, &c.uid);
            if seen.insert(key.clone()) {
                k.uids.push(key);
            }
        }
    }
    k
}
