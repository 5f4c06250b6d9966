//! Handing a plan to JetStream: publish everything, then wait for every ack.
//!
//! All publishes go out before the first ack is awaited, so a message with
//! several objects costs one round trip, not one per object. Any failure is a
//! temporary failure for the MTA (exit 75): it keeps the message and retries,
//! and `Nats-Msg-Id` makes the retry harmless for what did get through.
//!
//! [`publish`] uses the small blocking client in [`wire`] (one write, one
//! round trip, no async runtime) whenever the settings allow it: plain TCP
//! with no login, user/password or a token. TLS, nkeys and credentials files
//! go through async-nats ([`publish_async`]), and so does a server whose INFO
//! asks for TLS.

use crate::error::IngestError;
use crate::plan::{Output, Plan};
use imipflow_schema::{Namespace, partition, user_key};
use std::time::Duration;

pub use imipflow_nats::{wire, wire_login};

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

/// Publishes every output and waits for its acknowledgement.
pub fn publish(plan: &Plan, target: &Target<'_>) -> Result<(), IngestError> {
    if let Some(login) = plain_login(target)? {
        let subjects: Vec<String> = plan
            .outputs
            .iter()
            .map(|o| subject(o, target.namespace, target.partitions))
            .collect();
        let payloads: Vec<_> = plan.outputs.iter().map(Output::to_json).collect();
        let messages: Vec<wire::Message<'_>> = plan
            .outputs
            .iter()
            .zip(&subjects)
            .zip(&payloads)
            .map(|((o, subject), payload)| wire::Message {
                subject,
                msg_id: o.dedupe_id(),
                payload,
            })
            .collect();
        match wire::publish(target.url, &login, &messages, target.timeout) {
            Ok(()) => return Ok(()),
            Err(wire::WireError::Unsupported(_)) => {}
            Err(wire::WireError::Connect(reason)) => {
                return Err(IngestError::Connect {
                    url: imipflow_config::redact_url(target.url),
                    reason,
                });
            }
            Err(wire::WireError::Publish { index, reason }) => {
                return Err(IngestError::Publish {
                    subject: subjects[index].clone(),
                    reason,
                });
            }
            Err(wire::WireError::NoStream { index }) => {
                return Err(IngestError::NoStream {
                    subject: subjects[index].clone(),
                    partitions: target.partitions,
                });
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IngestError::Runtime)?;
    runtime.block_on(publish_async(plan, target))
}

/// The login for [`wire`], or `None` when the settings need async-nats
/// (TLS, nkey, credentials file). Reads password and token files.
fn plain_login(target: &Target<'_>) -> Result<Option<wire::Login>, IngestError> {
    let refused = |e: imipflow_config::ConfigError| IngestError::Connect {
        url: imipflow_config::redact_url(target.url),
        reason: e.to_string(),
    };
    target.auth.validate().map_err(refused)?;
    wire_login(target.auth).map_err(refused)
}

/// The same through async-nats, for what [`wire`] does not speak.
pub async fn publish_async(plan: &Plan, target: &Target<'_>) -> Result<(), IngestError> {
    let connect_err = |reason: String| IngestError::Connect {
        url: imipflow_config::redact_url(target.url),
        reason,
    };
    let (options, url) = crate::config::connect_options(target.url, target.auth, target.timeout)?;
    let servers =
        imipflow_config::nats::server_addrs(&url).map_err(|e| connect_err(e.to_string()))?;
    let client = tokio::time::timeout(target.timeout, options.connect(servers))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(imipflow_config::nats::explain(&e)))?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(target.timeout);

    let refused = |subject: String, e: async_nats::jetstream::context::PublishError| {
        if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
            IngestError::NoStream {
                subject,
                partitions: target.partitions,
            }
        } else {
            IngestError::Publish {
                subject,
                reason: e.to_string(),
            }
        }
    };
    let mut pending = Vec::with_capacity(plan.outputs.len());
    for output in &plan.outputs {
        let subject = subject(output, target.namespace, target.partitions);
        let ack = imipflow_nats::publish_deduped(
            &js,
            subject.clone(),
            output.dedupe_id(),
            output.to_json().into_owned().into(),
        )
        .await
        .map_err(|e| refused(subject.clone(), e))?;
        pending.push((subject, ack));
    }
    for (subject, ack) in pending {
        tokio::time::timeout(target.timeout, ack)
            .await
            .map_err(|_| IngestError::Publish {
                subject: subject.clone(),
                reason: "no acknowledgement in time".into(),
            })?
            .map_err(|e| refused(subject, e))?;
    }
    Ok(())
}
