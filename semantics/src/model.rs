//! The processor's data model: what is stored per (user, UID), the free/busy
//! periods derived from it, and the change events a transition emits.
//!
//! These types are the boundary between the pure method semantics
//! (`semantics`) and the I/O around them (`store`, `worker`): the store loads a
//! [`UidState`], the semantics return an [`Outcome`], the store writes it.

use chrono::{DateTime, Utc};
use imipflow_schema::{Component, Method, Zone};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything stored for one user and one UID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UidState {
    /// The master (no RECURRENCE-ID) first, if present, then overrides by instance.
    pub objects: Vec<StoredObject>,
    /// The pending request-queue entries of this UID, by recurrence: the
    /// series' (`recurrence_id` `None`) and one per instance the organizer
    /// updated on its own. Read by the semantics (who organizes a pending
    /// invitation, whether a REQUEST is newer, what an answer accepts); the
    /// queue itself changes through [`Outcome::queue`], so an outcome
    /// carries this unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
}

impl UidState {
    /// The pending entry of one recurrence key, if any.
    pub fn pending_at(&self, recurrence_id: Option<DateTime<Utc>>) -> Option<&Pending> {
        self.pending
            .iter()
            .find(|p| p.recurrence_id == recurrence_id)
    }
}

/// A pending request (a `request_queue` row, SPEC §3): what the organizer
/// proposed for one recurrence key, waiting for the user's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// `None` for the series (or a single event), else the instance (UTC).
    pub recurrence_id: Option<DateTime<Utc>>,
    /// ORGANIZER of the pending invitation as its message wrote it.
    pub organizer: Option<String>,
    pub sequence: i64,
    pub dtstamp: Option<DateTime<Utc>>,
    /// The proposal: the request's components of this key (a series entry
    /// holds the master and the instances sent with it) and their zones.
    /// What the user's answer stores, so that the calendar keeps the
    /// invitation (organizer, every attendee, times) and not the thin REPLY.
    pub proposal: Proposal,
}

/// The components of a pending request and what they need to be stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub components: Vec<Component>,
    pub timezones: BTreeMap<String, Zone>,
    /// The request's iCalendar text when it was about this UID only (see
    /// `apply::queue_row`); empty otherwise.
    #[serde(default, skip_serializing)]
    pub raw: Raw,
}

/// What a message does to one entry of the user's request queue.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueOp {
    /// The message becomes (or replaces) the pending request of its key: an
    /// incoming REQUEST, which changes nothing else.
    Add(Pending),
    /// The pending request of its key is changed (a CANCEL took an instance
    /// out of a pending series).
    Amend(Pending),
    /// The pending request of this recurrence key (if any) goes.
    Remove(Option<DateTime<Utc>>),
}

/// One stored object: the master of a series or one specific recurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    /// UTC instant of the RECURRENCE-ID; `None` for the master / a single event.
    pub recurrence_id: Option<DateTime<Utc>>,
    /// The component as the user's calendar now has it (attendee answers merged).
    pub component: Component,
    /// The zones its times use, from the payload that brought it.
    pub timezones: BTreeMap<String, Zone>,
    /// Raw iCalendar text of the message that last replaced it. Shared by
    /// every object one message stores, and stored once per (user, UID, text)
    /// in `object_texts`, not in `data` (a series with 300 overrides stored
    /// its mail 301 times); `default` reads rows written before that.
    #[serde(default, skip_serializing)]
    pub raw: Raw,
    /// Per attendee (normalised address): (SEQUENCE, DTSTAMP) of the last answer applied.
    pub answers: BTreeMap<String, AnswerStamp>,
}

/// Raw iCalendar text of a stored object, shared rather than copied: the
/// objects one message stores (a master and its overrides, overrides derived
/// from the master) all hold the same allocation, so 300 overrides of a
/// 1 MiB payload cost 1 MiB, not 300 MiB.
#[derive(Clone, Default)]
pub struct Raw(std::sync::Arc<str>);

impl Raw {
    /// `text` as a `Raw`, the same allocation as the last call on this thread
    /// when the text is the same: the semantics store one message's text into
    /// each object they make of it, one object at a time.
    pub fn shared(text: &str) -> Raw {
        thread_local! {
            static LAST: std::cell::RefCell<Raw> = std::cell::RefCell::default();
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if &*last.0 != text {
                *last = Raw::from(text);
            }
            last.clone()
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether two are the same allocation (then also the same text).
    pub fn same_allocation(&self, other: &Raw) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for Raw {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Raw {
    fn from(s: &str) -> Raw {
        Raw(s.into())
    }
}

impl From<String> for Raw {
    fn from(s: String) -> Raw {
        Raw(s.into())
    }
}

impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        self.same_allocation(other) || self.0 == other.0
    }
}

impl Eq for Raw {}

impl PartialEq<&str> for Raw {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<str> for Raw {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        String::deserialize(d).map(Raw::from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AnswerStamp {
    pub sequence: i64,
    pub dtstamp: Option<DateTime<Utc>>,
}

/// FBTYPE of a busy period; part of the contract (`imipflow_schema::freebusy`).
pub use imipflow_schema::FbType;

/// Busy periods and change events are part of the contract (`imipflow_schema::events`).
pub use imipflow_schema::{Change, EventKind, Period, QueueChange};

/// Context the semantics need besides state and message.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Zone for floating times and all-day events (the user's, else IMIP_DEFAULT_TIMEZONE).
    pub default_tz: chrono_tz::Tz,
    /// Reference instant for the materialisation horizon (the payload's ingest time,
    /// so that a replay computes the same records).
    pub now: DateTime<Utc>,
    /// Materialise instances of series up to `now + horizon`.
    pub horizon: chrono::Duration,
    /// At most this many instances are materialised for one UID.
    pub max_instances: usize,
    /// Manager addresses trusted to act for users (SPEC §3).
    pub managers: Vec<String>,
}

/// What happened to a message; its outcome is part of the contract
/// (`imipflow_schema::outcome`).
pub use imipflow_schema::{Disposition, MessageOutcome};

/// The result of applying one message to one UID's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub disposition: Disposition,
    pub state: UidState,
    /// The complete set of materialised periods of this UID after the message.
    pub periods: Vec<Period>,
    /// Whether the series has instances beyond what `periods` materialises
    /// (an infinite or very long rule); queries past the horizon re-expand it.
    pub open_ended: bool,
    /// When `open_ended`: `periods` holds exactly the periods of instances that
    /// start before this instant; later ones come from `semantics::periods_in_window`.
    pub complete_until: Option<DateTime<Utc>>,
    /// What the message does to the UID's request-queue entries, in order.
    /// A pending request (an incoming REQUEST, SPEC §3) adds entries and
    /// changes nothing else.
    pub queue: Vec<QueueOp>,
    pub changes: Vec<Change>,
}

impl Outcome {
    /// Whether the message is a pending request: it changes only the queue.
    pub fn enqueues(&self) -> bool {
        self.queue.iter().any(|q| matches!(q, QueueOp::Add(_)))
    }
}

/// Message identity the semantics need (user and method come from the payload).
pub fn is_scheduling_method(m: &Method) -> bool {
    matches!(
        m,
        Method::Request | Method::Publish | Method::Reply | Method::Cancel
    )
}
