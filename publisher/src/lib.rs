//! `imip-publisher`: each user's free/busy over HTTP, the reference subscriber
//! of imipflow's change events (SPEC §4; `docs/subscribers.md`).
//!
//! [`cache`] holds the rules (snapshot + events by per-user sequence), [`store`]
//! reads a user's snapshot from PostgreSQL, [`events`] follows the events
//! stream with a durable consumer, [`http`] serves `/freebusy/<user>.ifb` and
//! `.json` from the cache.

pub mod cache;
pub mod config;
pub mod error;
pub mod events;
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
    let client =
        imipflow_config::nats::connect(&settings.nats_url, &settings.nats_auth, "imip-publisher")
            .await
            .map_err(PublisherError::nats)?;
    let js = async_nats::jetstream::new(client);
    let (subscription, consumer) = events::Subscription::open(&js, &ns, name.clone()).await?;
    let db = store::Db::open(settings.database()?, settings.db_connections).await?;
    let cache = Arc::new(cache::Cache::new(settings.max_users));
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, consumer = %name, "imip-publisher serving");
    let follower = tokio::spawn(events::follow(
        subscription,
        consumer,
        cache.clone(),
        shutdown.clone(),
    ));
    let app = Arc::new(http::App {
        cache: cache.clone(),
        db,
    });
    http::serve(listener, app, shutdown).await?;
    let _ = follower.await;
    let stats = cache.stats();
    tracing::info!(?stats, "imip-publisher stopped");
    Ok(())
}
