//! The NATS side every part of imipflow shares.
//!
//! [`wire`] is the small blocking client for the one thing `imip-ingest`
//! does per mail (one write, one round trip, no runtime), also used by the
//! processor's pipelined relay and the benchmarks; [`wire_login`] says which
//! login settings it can speak. [`publish_deduped`] is the only place a
//! JetStream publish gets its `Nats-Msg-Id`, the header that makes every
//! retry of ingest, relay, quarantine release, loadgen and bench harmless.
//! [`follow`] (feature `follow`) is the events consumer loop the publisher
//! and the manager share.

#[cfg(feature = "follow")]
pub mod follow;
pub mod login;
pub mod wire;

pub use login::wire_login;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, context::PublishError};

/// The header JetStream deduplicates on, within the stream's window.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes `payload` to `subject` with `msg_id` as its `Nats-Msg-Id`, and
/// returns the acknowledgement to await (publish several, then await them
/// together: one round trip for all).
pub async fn publish_deduped(
    js: &jetstream::Context,
    subject: impl Into<String>,
    msg_id: &str,
    payload: bytes::Bytes,
) -> Result<PublishAckFuture, PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, msg_id);
    js.publish_with_headers(subject.into(), headers, payload)
        .await
}
