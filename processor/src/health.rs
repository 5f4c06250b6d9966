//! `imip-processor run`'s answers to `/readyz` and `/metrics` (the listener
//! itself is `imipflow_telemetry::serve`): readiness means NATS connected,
//! PostgreSQL reachable and migrated to this build's schema, streams present,
//! and no partition stalled (messages waiting, applied position unmoved for
//! `IMIP_STALL_AFTER_SECS`: docs/operations.md, "Stalled partitions").
//! A stall anywhere makes every instance unready: partitions move between
//! instances, and the instance owning a stuck lane may be the one that no
//! longer answers.
//!
//! The probe keeps its own NATS and PostgreSQL connections: it answers for
//! this process's ability to reach both, and a slow scrape never queues behind
//! a lane's transaction.

use crate::config::Settings;
use crate::error::ProcessorError;
use crate::{metrics, migrate, status};
use async_nats::connection::State;
use imipflow_schema::Namespace;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// Longest a readiness check or a scrape's store readings may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Probe {
    settings: Settings,
    ns: Namespace,
    nats: async_nats::Client,
    trouble: crate::connect::NatsTrouble,
    db: Mutex<Option<Client>>,
}

impl Probe {
    /// Never waits for NATS: the client connects (and reconnects) in the
    /// background, and `/readyz` says so until it has.
    pub async fn new(settings: Settings) -> Result<Self, ProcessorError> {
        let ns = settings.namespace()?;
        let (nats, trouble) =
            crate::connect::connect_nats_retrying(&settings, "imip-processor-probe").await?;
        Ok(Probe {
            settings,
            ns,
            nats,
            trouble,
            db: Mutex::new(None),
        })
    }

    /// Runs `f` with a live PostgreSQL connection, connecting when there is none.
    async fn with_db<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, ProcessorError>,
    ) -> Result<T, ProcessorError> {
        let mut guard = self.db.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(migrate::connect(&self.settings).await?);
        }
        let client = guard.as_ref().expect("connected above");
        let result = f(client).await;
        if result.is_err() && client.is_closed() {
            *guard = None;
        }
        result
    }

    async fn check(&self) -> Result<(), String> {
        match self.nats.connection_state() {
            State::Connected => {}
            other => return Err(nats_down(&self.settings, other, &self.trouble).await),
        }
        let want = migrate::latest_version();
        let have = self
            .with_db(async |db| {
                let row = db
                    .query_one(
                        "SELECT max(version)::bigint FROM refinery_schema_history",
                        &[],
                    )
                    .await?;
                Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
            })
            .await
            .map_err(|e| match &e {
                ProcessorError::Db(db)
                    if db.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                {
                    "database not migrated (run imip-processor migrate)".to_owned()
                }
                _ => format!("PostgreSQL: {e}"),
            })?;
        if have < want {
            return Err(format!(
                "database schema at V{have}, this build needs V{want} (run imip-processor migrate)"
            ));
        }
        let js = async_nats::jetstream::new(self.nats.clone());
        for name in [self.ns.messages_stream(), self.ns.events_stream()] {
            if js.get_stream(&name).await.is_err() {
                return Err(format!(
                    "stream {name} missing (run imip-processor migrate)"
                ));
            }
        }
        let status = self
            .with_db(async |db| status::scrape_status(db, &js, &self.settings).await)
            .await
            .map_err(|e| format!("partition status: {e}"))?;
        let stalled: Vec<String> = status
            .partitions
            .iter()
            .filter_map(|p| p.stall_reason())
            .collect();
        if !stalled.is_empty() {
            return Err(stalled.join("; "));
        }
        Ok(())
    }

    async fn readings(&self) -> Result<metrics::StoreReadings, ProcessorError> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let status = self
            .with_db(async |db| status::scrape_status(db, &js, &self.settings).await)
            .await?;
        Ok(metrics::StoreReadings {
            partitions: status
                .partitions
                .iter()
                .map(|p| metrics::PartitionReading {
                    partition: p.partition,
                    applied: p.applied,
                    newest: p.newest,
                    lag: p.lag,
                    owned: p.leased,
                    stalled_for_secs: p.stalled_for_secs,
                    stalled: p.stalled,
                })
                .collect(),
            dead_letters: status.dead_letters,
            unpublished_events: status.unpublished_events,
            quarantined: status.quarantined,
            unread: status.unread,
        })
    }
}

/// What `/readyz` and the worker's log say while NATS is not connected: the
/// state, why (the servers cannot be reached, or the client's last error:
/// credentials, TLS), and that it keeps retrying. The URL without its
/// password.
pub async fn nats_down(
    settings: &Settings,
    state: State,
    trouble: &crate::connect::NatsTrouble,
) -> String {
    let state = match state {
        State::Pending => "not connected yet",
        State::Disconnected => "disconnected",
        State::Connected => "connected",
    };
    let why = match crate::connect::nats_unreachable(settings).await {
        Some(unreachable) => unreachable,
        None => trouble.last().unwrap_or_else(|| "connecting".to_owned()),
    };
    format!(
        "NATS {} {state}: {why}; retrying (IMIP_NATS_URL)",
        imipflow_config::redact_url(&settings.nats_url)
    )
}

impl imipflow_telemetry::Probe for Probe {
    async fn ready(&self) -> Result<(), String> {
        tokio::time::timeout(CHECK_TIMEOUT, self.check())
            .await
            .unwrap_or_else(|_| Err("readiness check timed out".into()))
    }

    async fn refresh(&self) {
        match tokio::time::timeout(CHECK_TIMEOUT, self.readings()).await {
            Ok(Ok(r)) => metrics::set_readings(&r),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: store readings failed");
                metrics::scrape_failed();
            }
            Err(_) => metrics::scrape_failed(),
        }
    }
}
