//! `imip-publisher`: each user's free/busy over HTTP, the reference subscriber
//! of imipflow's change events (SPEC §4; `docs/subscribers.md`).
//!
//! [`cache`] holds the rules (snapshot + events by per-user sequence), [`store`]
//! reads a user's snapshot from PostgreSQL, [`events`] follows the events
//! stream with a durable consumer, [`http`] serves `/freebusy/<user>.ifb` and
//! `.json` from the cache, within the bounds of [`connections`] and [`fds`];
//! [`health`] answers `/readyz` and `/metrics`.

pub mod cache;
pub mod cli;
pub mod config;
pub use imipflow_telemetry::connections;
pub mod error;
pub mod events;
pub mod fds;
pub mod health;
pub mod http;
pub mod store;

pub use config::Settings;
pub use error::PublisherError;

use std::sync::Arc;
use tokio::sync::watch;

/// Runs the publisher until `shutdown` turns true: connects to NATS (and opens
/// the durable consumer) and PostgreSQL first, so that the port only accepts
/// once both are there.
pub async fn run(
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PublisherError> {
    let ns = settings.namespace()?;
    let name = settings.consumer_name()?;
    let (before, nofile) = fds::raise_nofile()?;
    let limit = settings.connection_limit(nofile)?;
    tracing::info!(
        nofile,
        raised_from = before,
        max_connections = limit,
        "descriptor limit"
    );
    let client =
        imipflow_config::nats::connect(&settings.nats_url, &settings.nats_auth, "imip-publisher")
            .await
            .map_err(PublisherError::nats)?;
    let js = async_nats::jetstream::new(client.clone());
    let (subscription, consumer) = events::subscribe(&js, &ns, name.clone()).await?;
    let db = store::Db::open(settings.database()?, settings.db_connections).await?;
    let probe_db = store::Db::open(settings.database()?, 1).await?;
    let cache = Arc::new(cache::Cache::new(settings.max_users, settings.cache_bytes));
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, consumer = %name, "imip-publisher serving");
    let following = Arc::new(imipflow_nats::follow::Following::default());
    let conns = connections::Connections::new(limit);
    let health = Arc::new(health::Health::new(
        cache.clone(),
        Arc::new(http::ConnectionCounters::default()),
        conns.clone(),
        client,
        probe_db,
        following.clone(),
        subscription.stream(),
        name.clone(),
    ));
    let follower = tokio::spawn(imipflow_nats::follow::follow(
        subscription,
        consumer,
        cache.clone(),
        following,
        shutdown.clone(),
    ));
    let app = Arc::new(http::App {
        cache: cache.clone(),
        db,
        limits: http::Limits {
            max_periods: settings.max_periods.max(1),
            max_cached_periods: settings.max_cached_periods,
            max_window: chrono::Duration::days(i64::from(settings.max_window_days.max(1))),
            unknown_users: settings.unknown_users,
        },
        health,
        etag_key: (settings.unknown_users == config::UnknownUsers::Empty)
            .then(std::hash::RandomState::new),
    });
    let timeouts = http::Timeouts {
        header_read: std::time::Duration::from_millis(settings.header_read_timeout_ms.max(1)),
        idle: std::time::Duration::from_millis(settings.idle_timeout_ms.max(1)),
    };
    http::serve(listener, app, conns, timeouts, shutdown).await?;
    let _ = follower.await;
    let stats = cache.stats();
    tracing::info!(?stats, "imip-publisher stopped");
    Ok(())
}
