//! Change events as CloudEvents 1.0 JSON (SPEC §4).
//!
//! The id is the user's address and per-user sequence, which is unique within a
//! namespace and identical when a crash makes the relay publish an event again,
//! so the broker's dedupe drops the repeat.

use crate::model::Change;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub fn event_id(namespace: &str, user: &str, seq: i64) -> String {
    format!("{namespace}:{user}:{seq}")
}

pub fn cloud_event(
    namespace: &str,
    user: &str,
    seq: i64,
    time: DateTime<Utc>,
    change: &Change,
) -> Value {
    let mut data = serde_json::to_value(change).expect("change serialises");
    if let Some(obj) = data.as_object_mut() {
        obj.remove("kind");
    }
    json!({
        "specversion": "1.0",
        "id": event_id(namespace, user, seq),
        "source": format!("imipflow/{namespace}"),
        "type": format!("org.imipflow.{}", change.kind()),
        "subject": user,
        "time": time,
        "datacontenttype": "application/json",
        "user": user,
        "sequence": seq,
        "data": data,
    })
}
