//! One function per `imip-ctl` command: it connects, does the command's work
//! (through the library's typed reads and the lanes' own write path) and
//! prints the answer, as text or `--json`. `main.rs` only parses the
//! arguments and calls one of these.

pub mod dlq;
pub mod events;
pub mod log;
pub mod lookup;
pub mod quarantine;
pub mod queue;
pub mod repair;
pub mod status;
pub mod users;

use crate::error::CtlError;
use anyhow::Context;
use imipflow_processor::{Settings, connect::connect_nats};
use tokio_postgres::GenericClient;

/// A user address from the command line, in the canonical form the store
/// keys users by.
pub fn user_arg(u: &str) -> anyhow::Result<String> {
    imipflow_schema::normalize_address(u).with_context(|| format!("not an address: {u:?}"))
}

/// A user address from the command line that the store knows (a row of
/// theirs anywhere, [`crate::query::user_known`]), canonical; an unknown one
/// is [`CtlError::NoSuchUser`], so a typo never reads as "(free)".
pub async fn known_user(db: &impl GenericClient, u: &str) -> anyhow::Result<String> {
    let user = user_arg(u)?;
    if !crate::query::user_known(db, &user).await? {
        return Err(CtlError::NoSuchUser(user).into());
    }
    Ok(user)
}

/// JetStream on a new NATS connection with the deployment's login settings.
async fn jetstream(s: &Settings) -> anyhow::Result<async_nats::jetstream::Context> {
    Ok(async_nats::jetstream::new(connect_nats(s).await?))
}
