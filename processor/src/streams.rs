//! The JetStream streams imipflow owns, and their configuration.
//!
//! Created (or updated) by `imip-processor migrate`, never by ingest: the mail
//! path only publishes, and a publish to a missing stream is a temporary failure.

use crate::config::Settings;
use crate::error::ProcessorError;
use async_nats::jetstream::{self, stream};
use imipflow_schema::Namespace;
use std::time::Duration;

fn base(
    name: String,
    subjects: Vec<String>,
    settings: &Settings,
    max_age: Duration,
) -> stream::Config {
    stream::Config {
        name,
        subjects,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: settings.replicas,
        duplicate_window: settings.dedupe_window(),
        max_age,
        ..Default::default()
    }
}

/// The three streams of a namespace. The messages stream takes exactly the
/// deployment's partitions (`settings.partitions`, which `migrate` has
/// checked against the recorded count), so a publish elsewhere gets no ack.
pub fn configs(ns: &Namespace, settings: &Settings) -> Vec<stream::Config> {
    vec![
        base(
            ns.messages_stream(),
            ns.messages_stream_subjects(settings.partitions),
            settings,
            settings.retention(),
        ),
        base(
            ns.quarantine_stream(),
            vec![ns.quarantine_subjects()],
            settings,
            Duration::from_secs(30 * 86_400),
        ),
        base(
            ns.events_stream(),
            vec![ns.events_subjects()],
            settings,
            settings.retention(),
        ),
    ]
}

/// Creates missing streams and brings existing ones to the configured settings.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Vec<String>, ProcessorError> {
    let ns = settings.namespace()?;
    let mut done = Vec::new();
    for config in configs(&ns, settings) {
        let name = config.name.clone();
        match js.get_stream(&name).await {
            Ok(mut existing) => {
                let before = existing
                    .info()
                    .await
                    .map_err(ProcessorError::nats)?
                    .config
                    .subjects
                    .clone();
                let after = config.subjects.clone();
                js.update_stream(config)
                    .await
                    .map_err(ProcessorError::nats)?;
                if before == after {
                    done.push(format!("stream {name}: up to date"));
                } else {
                    done.push(format!(
                        "stream {name}: subjects {} (were {})",
                        after.join(" "),
                        before.join(" ")
                    ));
                }
            }
            Err(_) => {
                js.create_stream(config)
                    .await
                    .map_err(ProcessorError::nats)?;
                done.push(format!("stream {name}: created"));
            }
        }
    }
    Ok(done)
}
