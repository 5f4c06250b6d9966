//! Handing a plan to JetStream: publish everything, then wait for every ack.
//!
//! All publishes go out before the first ack is awaited, so a message with
//! several objects costs one round trip, not one per object. Any failure is a
//! temporary failure for the MTA (exit 75): it keeps the message and retries,
//! and `Nats-Msg-Id` makes the retry harmless for what did get through.

use crate::error::IngestError;
use crate::plan::{Output, Plan};
use async_nats::HeaderMap;
use imipflow_schema::{Namespace, partition, user_key};
use std::time::Duration;

pub struct Target<'a> {
    pub url: &'a str,
    pub auth: &'a imipflow_config::NatsAuth,
    pub namespace: &'a Namespace,
    pub partitions: u32,
    pub timeout: Duration,
}

/// The subject an output goes to.
pub fn subject(output: &Output, ns: &Namespace, partitions: u32) -> String {
    match output {
        Output::Payload { payload: p, .. } => {
            ns.message_subject(partition(&p.user, partitions), &user_key(&p.user))
        }
        Output::Quarantine(q) => {
            let who = q
                .users
                .first()
                .map(String::as_str)
                .unwrap_or(q.sender.as_str());
            let who = if who.is_empty() { "unknown" } else { who };
            ns.quarantine_subject(&user_key(who))
        }
    }
}

pub async fn publish(plan: &Plan, target: &Target<'_>) -> Result<(), IngestError> {
    let connect_err = |reason: String| IngestError::Connect {
        url: imipflow_config::redact_url(target.url),
        reason,
    };
    let options = crate::config::connect_options(target.url, target.auth, target.timeout)?;
    let client = tokio::time::timeout(target.timeout, options.connect(target.url))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(imipflow_config::nats::explain(&e)))?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(target.timeout);

    let mut pending = Vec::with_capacity(plan.outputs.len());
    for output in &plan.outputs {
        let subject = subject(output, target.namespace, target.partitions);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", output.dedupe_id());
        let ack = js
            .publish_with_headers(
                subject.clone(),
                headers,
                output.to_json().into_owned().into(),
            )
            .await
            .map_err(|e| IngestError::Publish {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        pending.push((subject, ack));
    }
    for (subject, ack) in pending {
        tokio::time::timeout(target.timeout, ack)
            .await
            .map_err(|_| IngestError::Publish {
                subject: subject.clone(),
                reason: "no acknowledgement in time".into(),
            })?
            .map_err(|e| IngestError::Publish {
                subject,
                reason: e.to_string(),
            })?;
    }
    Ok(())
}
