//! `/healthz`, `/readyz` and `/metrics` of the publisher (answered by
//! `imipflow_telemetry::answer` on the publisher's own listener, as the
//! processor's are on its metrics listener).
//!
//! Ready means: PostgreSQL answers (on the probe's own connection, so that a
//! check never queues behind a user's load), NATS is connected, the event
//! follower is consuming and the durable consumer answers JetStream's info
//! request. A publisher that is not ready still serves what it has cached,
//! but cannot promise it is current.

use crate::cache::Cache;
use crate::http::ConnectionCounters;
use crate::store::Db;
use async_nats::connection::State;
use imipflow_nats::follow::Following;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Longest a readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one check's result answers `/readyz`: a flood of probes costs
/// PostgreSQL and JetStream one round trip a second, not one each.
const CHECK_REUSE: Duration = Duration::from_secs(1);

pub struct Health {
    pub cache: Arc<Cache>,
    pub connections: Arc<ConnectionCounters>,
    pub open_connections: Arc<imipflow_telemetry::connections::Connections>,
    pub nats: async_nats::Client,
    pub db: Db,
    pub following: Arc<Following>,
    pub events: async_nats::jetstream::stream::Stream,
    pub consumer: String,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: Arc<Cache>,
        connections: Arc<ConnectionCounters>,
        open_connections: Arc<imipflow_telemetry::connections::Connections>,
        nats: async_nats::Client,
        db: Db,
        following: Arc<Following>,
        events: async_nats::jetstream::stream::Stream,
        consumer: String,
    ) -> Self {
        Health {
            cache,
            connections,
            open_connections,
            nats,
            db,
            following,
            events,
            consumer,
            last: Mutex::new(None),
        }
    }

    async fn check(&self) -> Result<(), String> {
        self.db
            .ping()
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        match self.nats.connection_state() {
            State::Connected => {}
            other => return Err(format!("NATS: {other:?}")),
        }
        self.following.ready()?;
        self.events
            .consumer_info(&self.consumer)
            .await
            .map_err(|e| format!("events consumer {}: {e}", self.consumer))?;
        Ok(())
    }
}

impl imipflow_telemetry::Probe for Health {
    async fn ready(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < CHECK_REUSE
        {
            return result.clone();
        }
        let result = tokio::time::timeout(CHECK_TIMEOUT, self.check())
            .await
            .unwrap_or_else(|_| Err("readiness check timed out".into()));
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn refresh(&self) {
        crate::http::set_metrics(&self.cache, &self.open_connections, &self.connections);
    }
}
