//! `imip-ctl quarantine list|show|release` over the quarantine stream, where
//! `imip-ingest` puts calendar data it refused (malformed, over a limit).
//!
//! A record is identified by its stream sequence. Release re-plans the kept
//! data with ingest's own pure planner (`imipflow_ingest::plan`) under the
//! limits in force now, publishes the resulting payloads to the messages
//! stream as ingest would (same subject, same `Nats-Msg-Id`, so a
//! release repeated or raced with an MTA re-delivery is applied once), and
//! then deletes the record. It releases nothing when the record only holds an
//! excerpt (`truncated`), or when the data is still refused.

use async_nats::jetstream;
use futures::StreamExt;
use imipflow_ingest::{Envelope, Limits, Output, plan::RawMail};
use imipflow_processor::ProcessorError;
use imipflow_processor::config::Settings;
use imipflow_schema::QuarantineRecord;
use std::time::Duration;

/// One record with its stream position.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub id: u64,
    pub subject: String,
    pub record: QuarantineRecord,
}

async fn stream(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<jetstream::stream::Stream, ProcessorError> {
    js.get_stream(settings.namespace()?.quarantine_stream())
        .await
        .map_err(ProcessorError::nats)
}

fn parse(id: u64, subject: &str, payload: &[u8]) -> Result<Entry, ProcessorError> {
    let record = serde_json::from_slice(payload).map_err(|e| {
        ProcessorError::Payload(format!("quarantine record {id} is unreadable: {e}"))
    })?;
    Ok(Entry {
        id,
        subject: subject.to_owned(),
        record,
    })
}

/// Every record in the stream, oldest first.
pub async fn list(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Vec<Entry>, ProcessorError> {
    let mut s = stream(js, settings).await?;
    let info = s.info().await.map_err(ProcessorError::nats)?.clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(ProcessorError::nats)?;
    let mut messages = consumer.messages().await.map_err(ProcessorError::nats)?;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let m = m.map_err(ProcessorError::nats)?;
        let seq = m.info().map_err(ProcessorError::nats)?.stream_sequence;
        out.push(parse(seq, &m.subject, &m.payload)?);
        if seq >= info.state.last_sequence {
            break;
        }
    }
    Ok(out)
}

/// One record.
pub async fn show(
    js: &jetstream::Context,
    settings: &Settings,
    id: u64,
) -> Result<Entry, ProcessorError> {
    let s = stream(js, settings).await?;
    let m = s
        .get_raw_message(id)
        .await
        .map_err(|e| ProcessorError::Payload(format!("no quarantine record {id}: {e}")))?;
    parse(id, &m.subject, &m.payload)
}

/// What a release published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Released {
    pub id: u64,
    /// `Nats-Msg-Id` of each payload published to the messages stream.
    pub payloads: Vec<String>,
}

/// The bytes to re-plan: the whole message for a message-level refusal, or
/// the one calendar object wrapped in a minimal mail carrying the original
/// Message-ID (so that the payload's dedupe id is the one the original
/// delivery would have had).
fn input_of(r: &QuarantineRecord) -> Vec<u8> {
    match r.object_index {
        None => r.excerpt.clone().into_bytes(),
        Some(_) => {
            let mut mail = String::new();
            if let Some(id) = &r.message_id {
                mail.push_str(&format!("Message-ID: <{id}>\r\n"));
            }
            mail.push_str(
                "MIME-Version: 1.0\r\nContent-Type: text/calendar; charset=UTF-8\r\n\r\n",
            );
            mail.push_str(&r.excerpt);
            mail.into_bytes()
        }
    }
}

/// Re-plans the record under `limits`, publishes its payloads, deletes the record.
pub async fn release(
    js: &jetstream::Context,
    settings: &Settings,
    id: u64,
    limits: &Limits,
) -> Result<Released, ProcessorError> {
    let entry = show(js, settings, id).await?;
    let r = &entry.record;
    if r.truncated {
        return Err(ProcessorError::Payload(format!(
            "quarantine record {id} keeps only the first {} of {} bytes ({}); it cannot be \
             released. The mail itself was delivered: ask {} to send it again (with limits \
             raised if it was refused for its size), then delete this record with \
             `imip-ctl quarantine delete {id}`",
            r.excerpt.len(),
            r.size,
            r.reason,
            r.sender
        )));
    }
    let bytes = input_of(r);
    let input = RawMail {
        bytes: &bytes,
        total_size: bytes.len() as u64,
        calendar_beyond_limit: false,
    };
    let envelope = Envelope {
        direction: r.direction,
        sender: r.sender.clone(),
        recipients: r.recipients.clone(),
    };
    let plan = imipflow_ingest::plan(&input, &envelope, limits, r.ingested_at);
    let refused: Vec<String> = plan
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Quarantine(q) => Some(format!("{}: {}", q.reason, q.detail)),
            Output::Payload { .. } => None,
        })
        .collect();
    if !refused.is_empty() {
        return Err(ProcessorError::Payload(format!(
            "quarantine record {id} is still refused under the current limits, nothing \
             published: {}",
            refused.join("; ")
        )));
    }
    if plan.outputs.is_empty() {
        return Err(ProcessorError::Payload(format!(
            "quarantine record {id}: its data holds no iMIP calendar object, nothing to release"
        )));
    }
    // Published as ingest publishes (ingest's own subject rule, the payload's
    // dedupe id as Nats-Msg-Id), each acknowledged before the record goes.
    let ns = settings.namespace()?;
    let mut acks = Vec::new();
    for o in &plan.outputs {
        let ack = imipflow_nats::publish_deduped(
            js,
            imipflow_ingest::publish::subject(o, &ns, settings.partitions),
            o.dedupe_id(),
            o.to_json().into_owned().into(),
        )
        .await
        .map_err(ProcessorError::nats)?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(ProcessorError::nats)?;
    }
    delete(js, settings, id).await?;
    Ok(Released {
        id,
        payloads: plan
            .outputs
            .iter()
            .map(|o| o.dedupe_id().to_owned())
            .collect(),
    })
}

/// Removes a record (after release, or when an operator has dealt with it).
pub async fn delete(
    js: &jetstream::Context,
    settings: &Settings,
    id: u64,
) -> Result<(), ProcessorError> {
    let s = stream(js, settings).await?;
    s.delete_message(id).await.map_err(|e| {
        ProcessorError::Payload(format!("cannot delete quarantine record {id}: {e}"))
    })?;
    Ok(())
}
