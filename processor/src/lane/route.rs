//! A lane's check that each message it reads is its own: the payload's user
//! belongs to the lane's partition under the deployment's count. The stream
//! refuses a partition beyond the count (`streams::configs`), but an
//! `imip-ingest` with a *smaller* `IMIP_PARTITIONS` publishes to a partition
//! that exists, only the wrong one for the user: applied there, the user's
//! records would sit in a partition nobody reads for them (`imip-ctl`, the
//! publisher and the user's later mail all look in the right one), and the
//! user's order would be split across two lanes. Such a message is
//! forwarded, unchanged, to its user's partition, and the lane moves past it
//! only once the stream has stored the copy (docs/operations.md,
//! "Partition count").

use crate::error::ProcessorError;
use imipflow_schema::{Namespace, partition, user_key};

/// The user and the partition a message read by lane `lane` belongs to when
/// that is another one; none for the lane's own, and for a payload without a
/// readable user (the write path dead-letters it with the reason).
pub fn misrouted(payload: &[u8], lane: i32, partitions: u32) -> Option<(String, u32)> {
    #[derive(serde::Deserialize)]
    struct Who<'a> {
        #[serde(borrow)]
        user: std::borrow::Cow<'a, str>,
    }
    let who: Who = serde_json::from_slice(payload).ok()?;
    let owner = partition(&who.user, partitions);
    (i64::from(owner) != i64::from(lane)).then(|| (who.user.into_owned(), owner))
}

/// Publishes the message at stream sequence `seq` of `lane` to `to`, its
/// user's partition, and waits for the stream to store it. The `Nats-Msg-Id`
/// is the original's position, so that forwarding it again (the lane
/// restarted before its commit) stores nothing twice.
pub async fn forward(
    js: &async_nats::jetstream::Context,
    ns: &Namespace,
    lane: i32,
    seq: i64,
    payload: bytes::Bytes,
    user: &str,
    to: u32,
) -> Result<(), ProcessorError> {
    let subject = ns.message_subject(to, &user_key(user));
    let id = format!("{}-forward-p{lane}-s{seq}", ns.as_str());
    imipflow_nats::publish_deduped(js, subject, &id, payload)
        .await
        .map_err(ProcessorError::nats)?
        .await
        .map_err(ProcessorError::nats)?;
    tracing::warn!(
        partition = lane,
        seq,
        user,
        to,
        "message forwarded to its user's partition: it was published by an imip-ingest \
         with another IMIP_PARTITIONS than the deployment's (docs/operations.md, \"Partition count\")"
    );
    crate::metrics::message_forwarded(lane);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_partitions_user_is_misrouted() {
        let user = "alice@example.com";
        let own = partition(user, 4) as i32;
        let payload = format!(r#"{{"version":1,"user":"{user}","raw":"x"}}"#);
        assert_eq!(misrouted(payload.as_bytes(), own, 4), None);
        let other = (own + 1) % 4;
        assert_eq!(
            misrouted(payload.as_bytes(), other, 4),
            Some((user.to_owned(), own as u32))
        );
        assert_eq!(misrouted(b"not json", other, 4), None);
        // An escaped address is read as the address it stands for.
        let escaped = r#"{"user":"alice\u0040example.com"}"#;
        assert_eq!(
            misrouted(escaped.as_bytes(), other, 4),
            Some((user.to_owned(), own as u32))
        );
    }
}
