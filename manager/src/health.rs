//! `/healthz`, `/readyz` and `/metrics` of the manager (answered by
//! `imipflow_telemetry::answer`, as the publisher's are). Ready means:
//! PostgreSQL answers, NATS is connected, the event follower is consuming.

use crate::store::Db;
use async_nats::connection::State;
use imipflow_nats::follow::Following;
use std::sync::Arc;
use std::time::Duration;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Health {
    pub nats: async_nats::Client,
    pub probe_db: Db,
    pub following: Arc<Following>,
}

impl Health {
    async fn check(&self) -> Result<(), String> {
        self.probe_db
            .ping()
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        match self.nats.connection_state() {
            State::Connected => {}
            other => return Err(format!("NATS: {other:?}")),
        }
        self.following.ready()
    }
}

impl imipflow_telemetry::Probe for Health {
    async fn ready(&self) -> Result<(), String> {
        tokio::time::timeout(CHECK_TIMEOUT, self.check())
            .await
            .unwrap_or_else(|_| Err("readiness check timed out".into()))
    }

    async fn refresh(&self) {}
}
