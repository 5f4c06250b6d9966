//! Change events as CloudEvents 1.0 JSON (SPEC §4), and the rule that makes
//! every event fit in one NATS message.
//!
//! The id is the user's address and per-user sequence, which is unique within a
//! namespace and identical when a crash makes the relay publish an event again,
//! so the broker's dedupe drops the repeat.
//!
//! Size: the server refuses a message larger than the `max_payload` it
//! announces in its INFO (headers included; 1 MiB by default), and an event
//! that can never be published would hold its partition's relay, and so the
//! whole lane, for ever. Moving an hourly series of 5,000 instances by a
//! minute is a 1.25 MB change. [`fit`] therefore splits a `freebusy.changed`
//! that would not fit into parts (removals first, then additions), before the
//! events get their sequence numbers (in [`crate::apply`], the one place that
//! numbers events). The split depends only on the change and `max_payload`
//! (namespace and address lengths are counted at their maximum), so two runs
//! of the same messages emit the same events.
//!
//! The event types themselves are the contract's (`imipflow_schema::events`):
//! this module builds and measures them.

use crate::error::SemanticsError;
use crate::model::{Change, EventKind, Period, QueueChange};
use chrono::{DateTime, Utc};
use imipflow_schema::CloudEvent;
pub use imipflow_schema::event_id;
use serde_json::{Map, Value};

/// nats-server's default `max_payload`, for writers that have no server
/// connection to ask (`imip-ctl rebuild`, `dlq replay`).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes kept free below `max_payload` beyond the envelope and header,
/// which are measured: slack for a server that counts a little differently.
pub const HEADROOM: usize = 512;

/// Lengths the envelope is measured with at least, so that the split of a
/// change does not depend on the namespace (at most 32 bytes) or on an
/// address of ordinary length (RFC 5321 allows 254).
const NAMESPACE_RESERVE: usize = 32;
const USER_RESERVE: usize = 254;

/// One event before it gets its sequence number: a whole change, or one part
/// of a change split to fit the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub change: Change,
    pub part: Option<Part>,
}

/// Which part of a split change an event carries: `index` of `count`, from 1.
/// Published as the extension attributes `part` and `parts`; the parts of one
/// change have consecutive sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Event {
    pub fn whole(change: Change) -> Self {
        Event { change, part: None }
    }
}

/// The event's JSON as the outbox stores it: the contract's [`CloudEvent`].
pub fn cloud_event(
    namespace: &str,
    user: &str,
    seq: i64,
    time: DateTime<Utc>,
    event: &Event,
) -> Value {
    let part = event.part.map(|p| (p.index, p.count));
    let ce = CloudEvent::new(namespace, user, seq, time, event.change.clone(), part);
    serde_json::to_value(ce).expect("an event serialises")
}

/// The CloudEvent `data` of `change`.
fn data(change: &Change) -> Value {
    match serde_json::to_value(change).expect("change serialises") {
        Value::Object(mut typed) => typed.remove("data").unwrap_or_default(),
        other => other,
    }
}

/// A change of `kind` with nothing in it, to measure an envelope by.
fn empty(kind: EventKind) -> Change {
    let uid = String::new();
    match kind {
        EventKind::ObjectChanged => Change::ObjectChanged {
            uid,
            recurrence_id: None,
            sequence: 0,
        },
        EventKind::ObjectRemoved => Change::ObjectRemoved {
            uid,
            recurrence_id: None,
        },
        EventKind::FreeBusyChanged => Change::FreeBusyChanged {
            uid,
            added: Vec::new(),
            removed: Vec::new(),
        },
        EventKind::QueueChanged => Change::QueueChanged {
            uid,
            recurrence_id: None,
            change: QueueChange::Added,
        },
    }
}

/// Bytes of the NATS message that carries an event: the `Nats-Msg-Id`
/// header block and the body. This is what `max_payload` bounds.
pub fn wire_len(event_id: &str, body_len: usize) -> usize {
    "NATS/1.0\r\nNats-Msg-Id: \r\n\r\n".len() + event_id.len() + body_len
}

/// Length of `v` as PostgreSQL prints a `jsonb` (what the relay publishes, it
/// sends `body::text`): compact JSON with a space after every `:` and `,`
/// (key order differs, length does not).
pub fn published_len(v: &Value) -> usize {
    let separators = |n: usize| 2 * n.saturating_sub(1);
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => string_len(s),
        Value::Array(a) => 2 + a.iter().map(published_len).sum::<usize>() + separators(a.len()),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| string_len(k) + 2 + published_len(v))
                .sum::<usize>()
                + separators(o.len())
        }
    }
}

/// A JSON string with PostgreSQL's escapes (the same set serde_json uses).
fn string_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Measures events of one user as the relay will publish them, at the
/// largest sequence number and time stamp they can have.
struct Frame {
    namespace: String,
    user: String,
}

impl Frame {
    fn new(namespace: &str, user: &str) -> Self {
        let pad = |s: &str, n: usize| format!("{s}{}", "x".repeat(n.saturating_sub(s.len())));
        Frame {
            namespace: pad(namespace, NAMESPACE_RESERVE),
            user: pad(user, USER_RESERVE),
        }
    }

    /// More than the wire bytes of `change` as one event, without
    /// serialising anything: most changes are a few periods, far below any
    /// limit, and need no measuring. Every string counted as if each
    /// character were escaped (six bytes), every period at 192 bytes (four
    /// keys, three time stamps and an FBTYPE take about 130).
    fn bound(&self, change: &Change) -> usize {
        let envelope = 640 + 6 * (3 * self.namespace.len() + 4 * self.user.len());
        let data = match change {
            Change::FreeBusyChanged {
                uid,
                added,
                removed,
            } => 6 * uid.len() + 192 * (added.len() + removed.len()),
            Change::ObjectChanged { uid, .. } | Change::ObjectRemoved { uid, .. } => 6 * uid.len(),
            // `"recurrence_id":"…"` with the longest time stamp chrono writes.
            Change::QueueChanged { uid, .. } => 6 * uid.len() + 64,
        };
        envelope + 192 + data
    }

    /// Wire bytes of an event of `kind` with `part`, less its `data`.
    fn overhead(&self, kind: EventKind, part: Option<Part>) -> usize {
        // Nanoseconds make the longest time stamp chrono writes.
        let time = DateTime::from_timestamp(4_102_444_799, 999_999_999).expect("a valid instant");
        let event = Event {
            change: empty(kind),
            part,
        };
        let mut empty = cloud_event(&self.namespace, &self.user, i64::MAX, time, &event);
        empty["data"] = Value::Object(Map::new());
        let id = event_id(&self.namespace, &self.user, i64::MAX);
        wire_len(&id, published_len(&empty) - 2)
    }
}

/// The events that carry `changes` of `user`, each within `max_payload`
/// (less [`HEADROOM`]) on the wire: a change that fits is one event as
/// before; a `freebusy.changed` that does not becomes consecutive parts of
/// the same UID, the removed periods first, then the added ones, so that a
/// subscriber applying them in order (each event's `removed` before its
/// `added`) ends exactly where the whole change would have left it.
///
/// An error when even one period, or a change of another kind, cannot fit:
/// the message is then dead-lettered rather than stall the lane.
pub fn fit(
    namespace: &str,
    user: &str,
    changes: Vec<Change>,
    max_payload: usize,
) -> Result<Vec<Event>, SemanticsError> {
    let limit = max_payload.saturating_sub(HEADROOM);
    let frame = Frame::new(namespace, user);
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        if frame.bound(&change) <= limit {
            out.push(Event::whole(change));
            continue;
        }
        let whole = frame.overhead(change.kind(), None) + published_len(&data(&change));
        if whole <= limit {
            out.push(Event::whole(change));
            continue;
        }
        let too_large = |what: &str, bytes: usize| {
            SemanticsError::TooLarge(format!(
                "{what} needs {bytes} bytes in one event, more than the {max_payload} \
                 the NATS server accepts (max_payload, less {HEADROOM} bytes of headroom)"
            ))
        };
        let Change::FreeBusyChanged {
            uid,
            added,
            removed,
        } = change
        else {
            return Err(too_large(&format!("a {} change", change.kind()), whole));
        };
        let n = added.len() + removed.len();
        // Every part is measured as if it were the last of the most parts
        // there can be, and each period with a separator.
        let skeleton = Change::FreeBusyChanged {
            uid: uid.clone(),
            added: Vec::new(),
            removed: Vec::new(),
        };
        let fixed = frame.overhead(skeleton.kind(), Some(Part { index: n, count: n }))
            + published_len(&data(&skeleton));
        let cost = |p: &Period| published_len(&serde_json::to_value(p).expect("period")) + 2;
        enum Side {
            Removed,
            Added,
        }
        let mut parts: Vec<(Vec<Period>, Vec<Period>)> = Vec::new();
        let mut used = limit; // forces a first part
        for (side, p) in removed
            .into_iter()
            .map(|p| (Side::Removed, p))
            .chain(added.into_iter().map(|p| (Side::Added, p)))
        {
            let c = cost(&p);
            if fixed + c > limit {
                let short: String = uid.chars().take(64).collect();
                return Err(too_large(
                    &format!("a free/busy period of UID {short:?}"),
                    fixed + c,
                ));
            }
            if used + c > limit {
                parts.push((Vec::new(), Vec::new()));
                used = fixed;
            }
            used += c;
            let (r, a) = parts.last_mut().expect("a part");
            match side {
                Side::Removed => r.push(p),
                Side::Added => a.push(p),
            }
        }
        let count = parts.len();
        out.extend(
            parts
                .into_iter()
                .enumerate()
                .map(|(i, (removed, added))| Event {
                    change: Change::FreeBusyChanged {
                        uid: uid.clone(),
                        added,
                        removed,
                    },
                    part: Some(Part {
                        index: i + 1,
                        count,
                    }),
                }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FbType;
    use serde_json::json;
    use std::collections::BTreeMap;

    const NS: &str = "imip";
    const USER: &str = "alice@example.com";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// `n` hourly half-hour instances from 4 January 2027, `minute` past the hour.
    fn hourly(n: usize, minute: i64) -> Vec<Period> {
        (0..n as i64)
            .map(|i| {
                let instance = t("2027-01-04T00:00:00Z") + chrono::Duration::hours(i);
                let start = instance + chrono::Duration::minutes(minute);
                Period {
                    start,
                    end: start + chrono::Duration::minutes(30),
                    fbtype: FbType::Busy,
                    recurrence_id: Some(instance),
                }
            })
            .collect()
    }

    fn moved(n: usize) -> Change {
        Change::FreeBusyChanged {
            uid: "hourly@example.com".into(),
            added: hourly(n, 1),
            removed: hourly(n, 0),
        }
    }

    /// The bytes an event takes on the wire, measured on the JSON text
    /// PostgreSQL would print (spaces after `:` and `,`).
    fn wire(seq: i64, e: &Event) -> usize {
        let body = cloud_event(NS, USER, seq, Utc::now(), e);
        let text = serde_json::to_string(&body).unwrap();
        wire_len(&event_id(NS, USER, seq), pg_text_len(&text))
    }

    /// Length after inserting a space after each `:` and `,` outside strings.
    fn pg_text_len(compact: &str) -> usize {
        let (mut n, mut in_str, mut esc) = (0, false, false);
        for c in compact.chars() {
            n += c.len_utf8();
            if in_str {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
            } else if c == '"' {
                in_str = true;
            } else if c == ':' || c == ',' {
                n += 1;
            }
        }
        n
    }

    /// The periods a subscriber holds after applying `events` to `start`.
    fn replay(start: &[Period], events: &[Event]) -> BTreeMap<DateTime<Utc>, Period> {
        let key = |p: &Period| p.recurrence_id.unwrap_or(p.start);
        let mut held: BTreeMap<_, _> = start.iter().map(|p| (key(p), *p)).collect();
        for e in events {
            let Change::FreeBusyChanged { added, removed, .. } = &e.change else {
                continue;
            };
            for p in removed {
                held.remove(&key(p));
            }
            for p in added {
                held.insert(key(p), *p);
            }
        }
        held
    }

    #[test]
    fn published_len_is_postgresql_jsonb_text() {
        let v = json!({"a": [1, "x\"y", null, {"b": true}], "é\n": false});
        let pg = r#"{"a": [1, "x\"y", null, {"b": true}], "é\n": false}"#;
        assert_eq!(published_len(&v), pg.len());
        assert_eq!(published_len(&v), pg_text_len(&v.to_string()));
    }

    #[test]
    fn the_quick_bound_is_above_the_measured_size() {
        let frame = Frame::new(NS, USER);
        let odd = "\u{1}\"é".repeat(20);
        for change in [
            moved(1),
            moved(300),
            Change::FreeBusyChanged {
                uid: odd.clone(),
                added: hourly(2, 0),
                removed: vec![],
            },
            Change::ObjectChanged {
                uid: odd.clone(),
                recurrence_id: Some(t("2027-01-04T00:00:00.123456789Z")),
                sequence: i64::MIN,
            },
            Change::QueueChanged {
                uid: odd,
                recurrence_id: Some(t("2027-01-04T00:00:00.123456789Z")),
                change: QueueChange::Added,
            },
        ] {
            let measured = frame.overhead(change.kind(), None) + published_len(&data(&change));
            assert!(frame.bound(&change) >= measured, "{change:?}");
        }
    }

    #[test]
    fn small_changes_stay_whole() {
        let changes = vec![
            Change::ObjectChanged {
                uid: "u".into(),
                recurrence_id: None,
                sequence: 1,
            },
            Change::FreeBusyChanged {
                uid: "u".into(),
                added: hourly(3, 0),
                removed: vec![],
            },
            Change::QueueChanged {
                uid: "u".into(),
                recurrence_id: None,
                change: QueueChange::Removed,
            },
        ];
        let events = fit(NS, USER, changes.clone(), DEFAULT_MAX_PAYLOAD).unwrap();
        let want: Vec<Event> = changes.into_iter().map(Event::whole).collect();
        assert_eq!(events, want);
        assert!(
            cloud_event(NS, USER, 1, Utc::now(), &events[1])
                .get("part")
                .is_none()
        );
    }

    #[test]
    fn moving_5000_instances_is_split_to_fit_one_mib() {
        let change = moved(5_000);
        let whole = wire(1, &Event::whole(change.clone()));
        assert!(whole > DEFAULT_MAX_PAYLOAD, "{whole} bytes");
        eprintln!("5,000 instances moved: {whole} bytes as one event");
        let events = fit(NS, USER, vec![change], DEFAULT_MAX_PAYLOAD).unwrap();
        assert!(events.len() >= 2, "{} events", events.len());
        for (i, e) in events.iter().enumerate() {
            assert!(wire(i as i64 + 1, e) <= DEFAULT_MAX_PAYLOAD - HEADROOM);
            assert_eq!(
                e.part,
                Some(Part {
                    index: i + 1,
                    count: events.len()
                })
            );
            let Change::FreeBusyChanged { uid, .. } = &e.change else {
                panic!("{e:?}")
            };
            assert_eq!(uid, "hourly@example.com");
        }
        let after = replay(&hourly(5_000, 0), &events);
        let want: BTreeMap<_, _> = hourly(5_000, 1)
            .into_iter()
            .map(|p| (p.recurrence_id.unwrap(), p))
            .collect();
        assert_eq!(after, want);
    }

    #[test]
    fn parts_take_every_removal_before_any_addition() {
        let events = fit(NS, USER, vec![moved(2_000)], 65_536).unwrap();
        assert!(events.len() > 4, "{} events", events.len());
        let mut seen_added = false;
        let (mut removed, mut added) = (0, 0);
        for e in &events {
            assert!(wire(i64::MAX, e) <= 65_536 - HEADROOM);
            let Change::FreeBusyChanged {
                added: a,
                removed: r,
                ..
            } = &e.change
            else {
                panic!()
            };
            assert!(r.is_empty() || !seen_added, "a removal after an addition");
            seen_added |= !a.is_empty();
            assert!(!a.is_empty() || !r.is_empty(), "an empty part");
            removed += r.len();
            added += a.len();
        }
        assert_eq!((removed, added), (2_000, 2_000));
        assert_eq!(replay(&hourly(2_000, 0), &events).len(), 2_000);
    }

    #[test]
    fn the_split_does_not_depend_on_the_namespace() {
        let a = fit("t1x2", USER, vec![moved(2_000)], 65_536).unwrap();
        let b = fit("t12345x6789abcx17", "b@x.org", vec![moved(2_000)], 65_536).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn what_cannot_fit_at_all_is_an_error() {
        let huge = Change::ObjectRemoved {
            uid: "u".repeat(70_000),
            recurrence_id: None,
        };
        let e = fit(NS, USER, vec![huge], 65_536).unwrap_err();
        assert!(matches!(e, crate::SemanticsError::TooLarge(_)));
        assert!(e.to_string().contains("max_payload"), "{e}");
        // One period with a UID that leaves no room for it.
        let e = fit(
            NS,
            USER,
            vec![Change::FreeBusyChanged {
                uid: "u".repeat(65_000),
                added: hourly(1, 0),
                removed: vec![],
            }],
            65_536,
        )
        .unwrap_err();
        assert!(e.to_string().contains("period"), "{e}");
    }
}
