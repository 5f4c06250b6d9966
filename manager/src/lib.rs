//! `imip-manager`: the web page where a user sees their pending invitations
//! and agenda and answers them (SPEC §3, `docs/manager.md`).
//!
//! [`auth`] says who the user is (a trusted proxy's header) and checks CSRF
//! tokens; [`store`] reads their queue, objects and busy time; [`reply`]
//! composes the iMIP REPLY and [`mail`] submits it (to the organizer, and to
//! the user from the calendar address) with retries; [`events`] follows the
//! change events for live updates; [`web`] serves the pages; [`health`]
//! answers `/readyz`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod mail;
pub mod reply;
pub mod store;
pub mod web;

pub use config::Settings;
pub use error::ManagerError;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Runs the manager until `shutdown` turns true: NATS (and the durable
/// consumer) first, so that the port only accepts once live updates work.
pub async fn run(settings: Settings, shutdown: watch::Receiver<bool>) -> Result<(), ManagerError> {
    if let Some(p) = settings.problems().into_iter().next() {
        return Err(ManagerError::Config(p));
    }
    let ns = settings.namespace()?;
    let name = settings.consumer_name()?;
    let header = axum::http::HeaderName::try_from(settings.user_header.as_str())
        .map_err(|e| ManagerError::Config(format!("IMIP_MANAGER_USER_HEADER: {e}")))?;
    if settings.dev_pick_user {
        tracing::warn!(
            "IMIP_MANAGER_DEV_PICK_USER is on: DEVELOPMENT MODE, anyone reaching the port \
             can act as any user with ?as=<address>; never use it in production"
        );
    }
    let trust = auth::Trust::new(
        header,
        settings.trusted()?,
        settings.dev_pick_user,
        settings.csrf_secret.as_deref(),
    );
    let client =
        imipflow_config::nats::connect(&settings.nats_url, &settings.nats_auth, "imip-manager")
            .await
            .map_err(ManagerError::nats)?;
    let js = async_nats::jetstream::new(client.clone());
    let (subscription, consumer) = events::subscribe(&js, &ns, name.clone()).await?;
    let db = store::Db::new(settings.database()?);
    db.ping().await?;
    let outbox = mail::Outbox::new(mail::transport(&settings.smtp_url)?, settings.smtp_attempts);
    let following = Arc::new(imipflow_nats::follow::Following::default());
    let (notices, _) = broadcast::channel(1024);
    let pages = Arc::new(events::Pages {
        notices: notices.clone(),
        outbox: outbox.clone(),
    });
    let follower = tokio::spawn(imipflow_nats::follow::follow(
        subscription,
        consumer,
        pages,
        following.clone(),
        shutdown.clone(),
    ));
    let health = Arc::new(health::Health {
        nats: client,
        probe_db: store::Db::new(settings.database()?),
        following,
    });
    let app = Arc::new(web::App {
        db,
        trust,
        outbox,
        calendar: settings.calendar_address()?,
        tz: settings.tz()?,
        publisher_url: settings.publisher_url.clone(),
        agenda_weeks: settings.agenda_weeks,
        notices,
        health,
        shutdown: shutdown.clone(),
        streams: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, consumer = %name, "imip-manager serving");
    let limits = imipflow_telemetry::Limits {
        max_connections: settings.max_connections.max(1),
        header_read: std::time::Duration::from_millis(settings.header_timeout_ms.max(1)),
        drain: std::time::Duration::from_secs(10),
    };
    let router = web::router(app);
    imipflow_telemetry::serve_with(listener, limits, shutdown.clone(), move |peer| {
        let router = router.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // What `User` checks against the trusted proxies.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
            tower::ServiceExt::oneshot(router.clone(), req)
        })
    })
    .await;
    let _ = follower.await;
    tracing::info!("imip-manager stopped");
    Ok(())
}
