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
//!
//! Every read names the user's partition (the shard key, docs/scaling.md),
//! computed with the deployment's partition count, which [`Db::open`] reads
//! from the `deployment` table: the processor's lanes and ingest route by
//! that count, and the publisher must find the rows where they wrote them.

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
    partitions: u32,
    connections: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl Db {
    /// Opens the first connection now, so that a wrong URL or a database
    /// `imip-processor migrate` has not prepared fails at start.
    pub async fn open(target: Database, connections: usize) -> Result<Self, PublisherError> {
        let first = target.connect().await?;
        let partitions = partitions(&first).await?;
        let mut slots: Vec<Mutex<Option<Client>>> = vec![Mutex::new(Some(first))];
        slots.extend((1..connections.max(1)).map(|_| Mutex::new(None)));
        Ok(Db {
            target,
            partitions,
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
        let at = self.at(user);
        self.with(async |c| load_on(c, at, max_periods).await).await
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
        let at = self.at(user);
        self.with(async |c| window_on(c, at, from, to, limit).await)
            .await
    }

    fn at<'u>(&self, user: &'u str) -> At<'u> {
        At {
            partition: imipflow_schema::partition(user, self.partitions) as i32,
            user,
        }
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

/// The deployment's partition count (`deployment`, key `partitions`).
async fn partitions(client: &Client) -> Result<u32, PublisherError> {
    let row = client
        .query_opt("SELECT value FROM deployment WHERE key = 'partitions'", &[])
        .await
        .map_err(|e| not_migrated(&e).unwrap_or(PublisherError::Db(e)))?
        .ok_or_else(|| {
            PublisherError::Deployment(
                "the database has no partition count (run imip-processor migrate)".into(),
            )
        })?;
    let value: String = row.get(0);
    value.parse().map_err(|_| {
        PublisherError::Deployment(format!(
            "the deployment's partition count is not a number: {value:?}"
        ))
    })
}

fn not_migrated(e: &tokio_postgres::Error) -> Option<PublisherError> {
    (e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)).then(|| {
        PublisherError::Deployment(
            "the database is not migrated (run imip-processor migrate)".into(),
        )
    })
}

/// A user and the partition their rows are in.
#[derive(Clone, Copy)]
struct At<'u> {
    partition: i32,
    user: &'u str,
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

async fn last_seq(tx: &tokio_postgres::Transaction<'_>, at: At<'_>) -> Result<i64, PublisherError> {
    Ok(tx
        .query_opt(
            "SELECT last_seq FROM user_events WHERE partition = $1 AND user_addr = $2",
            &[&at.partition, &at.user],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}

async fn load_on(
    client: &mut Client,
    at: At<'_>,
    max_periods: usize,
) -> Result<Loaded, PublisherError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sequence = last_seq(&tx, at).await?;
    let over = i64::try_from(max_periods).unwrap_or(i64::MAX - 1) + 1;
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM freebusy
             WHERE partition = $1 AND user_addr = $2 AND NOT isempty(period) LIMIT $3) s",
            &[&at.partition, &at.user, &over],
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
             WHERE partition = $1 AND user_addr = $2 AND NOT isempty(period) LIMIT $3",
            &[&at.partition, &at.user, &over],
        )
        .await?;
    tx.commit().await?;
    let periods = rows.iter().map(period).collect();
    Ok(Loaded::Snapshot(Snapshot { sequence, periods }))
}

async fn window_on(
    client: &mut Client,
    at: At<'_>,
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
    let sequence = last_seq(&tx, at).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // `freebusy_user_period` (GiST on user and period) finds the window; the
    // sort keeps only `limit` rows at a time (a top-N heap sort).
    let rows = tx
        .query(
            "SELECT lower(period), upper(period), fbtype, uid, recurrence_id FROM freebusy
             WHERE partition = $1 AND user_addr = $2 AND period && tstzrange($3, $4)
               AND NOT isempty(period)
             ORDER BY lower(period) LIMIT $5",
            &[&at.partition, &at.user, &from, &to, &limit],
        )
        .await?;
    tx.commit().await?;
    let mut periods: Vec<BusyPeriod> = rows.iter().map(period).collect();
    periods.sort();
    Ok((sequence, periods))
}
