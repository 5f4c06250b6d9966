//! The publisher's only PostgreSQL read: one user's snapshot, when the user is
//! first asked for (or asked for again after being dropped).
//!
//! The `freebusy` rows and `user_events.last_seq` are read in one REPEATABLE
//! READ transaction, so the periods are exactly those of that sequence: the
//! processor writes both in the transaction that emits the events.

use crate::cache::Snapshot;
use crate::error::PublisherError;
use chrono::{DateTime, Utc};
use imipflow_config::Database;
use imipflow_schema::{BusyPeriod, FbType};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;
use tokio_postgres::{Client, IsolationLevel};

/// A few connections, (re)connected when needed; a load takes one for its
/// transaction.
pub struct Db {
    target: Database,
    connections: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl Db {
    /// Opens the first connection now, so that a wrong URL fails at start.
    pub async fn open(target: Database, connections: usize) -> Result<Self, PublisherError> {
        let first = target.connect().await?;
        let mut slots: Vec<Mutex<Option<Client>>> = vec![Mutex::new(Some(first))];
        slots.extend((1..connections.max(1)).map(|_| Mutex::new(None)));
        Ok(Db {
            target,
            connections: slots,
            next: AtomicUsize::new(0),
        })
    }

    /// The user's busy periods and the event sequence they reflect.
    pub async fn load(&self, user: &str) -> Result<Snapshot, PublisherError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.target.connect().await?);
        }
        let client = slot.as_mut().expect("connected");
        let result = load_on(client, user).await;
        if result.is_err() && client.is_closed() {
            *slot = None;
        }
        result
    }
}

async fn load_on(client: &mut Client, user: &str) -> Result<Snapshot, PublisherError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sequence: i64 = tx
        .query_opt(
            "SELECT last_seq FROM user_events WHERE user_addr = $1",
            &[&user],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let rows = tx
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE user_addr = $1 AND NOT isempty(period)",
            &[&user],
        )
        .await?;
    tx.commit().await?;
    let periods = rows
        .iter()
        .map(|r| BusyPeriod {
            start: r.get::<_, DateTime<Utc>>(0),
            end: r.get::<_, DateTime<Utc>>(1),
            fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
            uid: r.get(3),
            recurrence_id: r.get(4),
        })
        .collect();
    Ok(Snapshot { sequence, periods })
}
