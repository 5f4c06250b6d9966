//! The publisher's PostgreSQL reads: one user's snapshot, when the user is
//! first asked for (or asked for again after being dropped), and one window
//! of a user with too many periods to cache.
//!
//! The `freebusy` rows and `user_events.last_seq` are read in one REPEATABLE
//! READ transaction, so the periods are exactly those of that sequence: the
//! processor writes both in the transaction that emits the events.
//!
//! Every read is bounded by a LIMIT: a snapshot reads at most the periods the
//! cache keeps for one user (a count over `LIMIT n + 1` rows finds out first,
//! without fetching them), a window at most one answer's periods plus one.

use crate::cache::{Loaded, Snapshot};
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

    /// Runs `f` on one of the connections, (re)connecting it when needed.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, PublisherError>,
    ) -> Result<T, PublisherError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.target.connect().await?);
        }
        let client = slot.as_mut().expect("connected");
        let result = f(client).await;
        if result.is_err() && client.is_closed() {
            *slot = None;
        }
        result
    }

    /// The user's busy periods and the event sequence they reflect, or
    /// [`Loaded::Large`] when they have more than `max_periods`.
    pub async fn load(&self, user: &str, max_periods: usize) -> Result<Loaded, PublisherError> {
        self.with(async |c| load_on(c, user, max_periods).await)
            .await
    }

    /// The user's event sequence and their periods intersecting [from, to),
    /// at most `limit` of them by start (with PostgreSQL doing the choosing),
    /// sorted.
    pub async fn window(
        &self,
        user: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<(i64, Vec<BusyPeriod>), PublisherError> {
        self.with(async |c| window_on(c, user, from, to, limit).await)
            .await
    }

    /// `SELECT 1` on one of the connections: does PostgreSQL answer?
    pub async fn ping(&self) -> Result<(), PublisherError> {
        self.with(async |c| {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }
}

fn period(r: &tokio_postgres::Row) -> BusyPeriod {
    BusyPeriod {
        start: r.get::<_, DateTime<Utc>>(0),
        end: r.get::<_, DateTime<Utc>>(1),
        fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
        uid: r.get(3),
        recurrence_id: r.get(4),
    }
}

async fn last_seq(tx: &tokio_postgres::Transaction<'_>, user: &str) -> Result<i64, PublisherError> {
    Ok(tx
        .query_opt(
            "SELECT last_seq FROM user_events WHERE user_addr = $1",
            &[&user],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}

async fn load_on(
    client: &mut Client,
    user: &str,
    max_periods: usize,
) -> Result<Loaded, PublisherError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sequence = last_seq(&tx, user).await?;
    let over = i64::try_from(max_periods).unwrap_or(i64::MAX - 1) + 1;
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM freebusy
             WHERE user_addr = $1 AND NOT isempty(period) LIMIT $2) s",
            &[&user, &over],
        )
        .await?
        .get(0);
    if count >= over {
        tx.commit().await?;
        return Ok(Loaded::Large);
    }
    let rows = tx
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE user_addr = $1 AND NOT isempty(period) LIMIT $2",
            &[&user, &over],
        )
        .await?;
    tx.commit().await?;
    let periods = rows.iter().map(period).collect();
    Ok(Loaded::Snapshot(Snapshot { sequence, periods }))
}

async fn window_on(
    client: &mut Client,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Result<(i64, Vec<BusyPeriod>), PublisherError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sequence = last_seq(&tx, user).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // `freebusy_user_period` (GiST on user and period) finds the window; the
    // sort keeps only `limit` rows at a time (a top-N heap sort).
    let rows = tx
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE user_addr = $1 AND period && tstzrange($2, $3) AND NOT isempty(period)
             ORDER BY lower(period) LIMIT $4",
            &[&user, &from, &to, &limit],
        )
        .await?;
    tx.commit().await?;
    let mut periods: Vec<BusyPeriod> = rows.iter().map(period).collect();
    periods.sort();
    Ok((sequence, periods))
}
