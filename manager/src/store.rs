//! Reading a user's pending requests, stored objects and busy time from
//! PostgreSQL, each statement naming the user's partition: the pinned
//! partition function (`imipflow_schema::partition`) with the count the
//! deployment was created with. The one table the manager writes is
//! `freebusy_shares` (migration V9): whether a user shares their free/busy.

use crate::error::ManagerError;
use chrono::{DateTime, Utc};
use imipflow_config::Database;
use imipflow_schema::{Component, FbType};
use imipflow_semantics::apply::recurrence_key;
use imipflow_semantics::model::Proposal;
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::Client;

/// Most busy periods one page reads.
pub const MAX_PERIODS: i64 = 2000;

/// One connection, re-opened when it breaks (the manager's reads are few and
/// small; a pool would be idle).
pub struct Db {
    database: Database,
    client: Mutex<Option<Client>>,
    partitions: OnceCell<u32>,
}

/// A stored object's (start, end), either absent for an open-ended or
/// undated component.
pub type Span = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A `request_queue` row.
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub uid: String,
    pub recurrence_id: Option<DateTime<Utc>>,
    pub organizer: Option<String>,
    pub summary: Option<String>,
    pub sequence: i64,
    pub components: Vec<Component>,
    /// The user's stored object of the same UID and recurrence, when the
    /// request updates one: its (start, end) as the calendar has them.
    pub stored: Option<Span>,
}

impl PendingRow {
    /// The component the entry is about: its own recurrence's, else the first.
    pub fn main(&self) -> Option<&Component> {
        self.components
            .iter()
            .find(|c| c.recurrence_id.as_ref().and_then(|r| r.time.utc) == self.recurrence_id)
            .or(self.components.first())
    }
}

/// A busy period with what it belongs to.
#[derive(Debug, Clone)]
pub struct Busy {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fbtype: FbType,
    pub uid: String,
    pub summary: Option<String>,
}

impl Db {
    pub fn new(database: Database) -> Self {
        Db {
            database,
            client: Mutex::new(None),
            partitions: OnceCell::new(),
        }
    }

    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.database.connect().await?);
        }
        let client = guard.as_ref().expect("connected");
        let out = f(client).await;
        if client.is_closed() {
            *guard = None;
        }
        out
    }

    pub async fn ping(&self) -> Result<(), ManagerError> {
        self.with(async |c| {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    async fn partition(&self, user: &str) -> Result<i32, ManagerError> {
        let n = *self
            .partitions
            .get_or_try_init(|| self.with(async |c| deployment_partitions(c).await))
            .await?;
        Ok(imipflow_schema::partition(user, n) as i32)
    }

    /// The user's pending requests, oldest first (as `imip-ctl queue`).
    pub async fn pending(&self, user: &str) -> Result<Vec<PendingRow>, ManagerError> {
        let p = self.partition(user).await?;
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT q.uid, q.recurrence_id, q.organizer, q.summary, q.sequence, q.data,
                        o.dtstart, o.dtend, o.uid IS NOT NULL
                     FROM request_queue q LEFT JOIN objects o
                       ON o.partition = q.partition AND o.user_addr = q.user_addr
                      AND o.uid = q.uid AND o.recurrence_key = q.recurrence_key
                     WHERE q.partition = $1 AND q.user_addr = $2
                     ORDER BY q.added_at, q.uid, q.recurrence_key",
                    &[&p, &user],
                )
                .await?;
            Ok(rows.iter().map(pending_row).collect())
        })
        .await
    }

    /// One pending entry of the user's, by UID and recurrence.
    pub async fn pending_one(
        &self,
        user: &str,
        uid: &str,
        recurrence_id: Option<DateTime<Utc>>,
    ) -> Result<Option<PendingRow>, ManagerError> {
        let p = self.partition(user).await?;
        let key = recurrence_key(recurrence_id);
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT q.uid, q.recurrence_id, q.organizer, q.summary, q.sequence, q.data,
                        o.dtstart, o.dtend, o.uid IS NOT NULL
                     FROM request_queue q LEFT JOIN objects o
                       ON o.partition = q.partition AND o.user_addr = q.user_addr
                      AND o.uid = q.uid AND o.recurrence_key = q.recurrence_key
                     WHERE q.partition = $1 AND q.user_addr = $2
                     AND q.uid = $3 AND q.recurrence_key = $4",
                    &[&p, &user, &uid, &key],
                )
                .await?;
            Ok(row.as_ref().map(pending_row))
        })
        .await
    }

    /// The user's busy periods in [from, to), by start, with the summary of
    /// the stored object they come from (the instance's own, else the
    /// series'). Materialised periods only: an open-ended series past the
    /// processor's horizon shows up to it.
    pub async fn busy(
        &self,
        user: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Busy>, ManagerError> {
        let p = self.partition(user).await?;
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT lower(f.period), upper(f.period), f.fbtype, f.uid,
                        (SELECT o.summary FROM objects o
                         WHERE o.partition = f.partition AND o.user_addr = f.user_addr
                           AND o.uid = f.uid
                         ORDER BY (o.recurrence_id IS NOT DISTINCT FROM f.recurrence_id) DESC,
                                  o.recurrence_key
                         LIMIT 1)
                     FROM freebusy f
                     WHERE f.partition = $1 AND f.user_addr = $2
                       AND f.period && tstzrange($3, $4, '[)')
                     ORDER BY lower(f.period), f.uid LIMIT $5",
                    &[&p, &user, &from, &to, &MAX_PERIODS],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Busy {
                    start: r.get(0),
                    end: r.get(1),
                    fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
                    uid: r.get(3),
                    summary: r.get(4),
                })
                .collect())
        })
        .await
    }
}

/// A busy period and nothing else: what a colleague's shared week shows
/// (never the UID or summary it comes from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fbtype: FbType,
}

impl Db {
    /// Whether `user` shares their free/busy with the calendar's other users
    /// (a row in `freebusy_shares`). An address nobody uses has no row: it
    /// answers as one that does not share.
    pub async fn shares(&self, user: &str) -> Result<bool, ManagerError> {
        let p = self.partition(user).await?;
        self.with(async |c| {
            Ok(c.query_opt(
                "SELECT 1 FROM freebusy_shares WHERE partition = $1 AND user_addr = $2",
                &[&p, &user],
            )
            .await?
            .is_some())
        })
        .await
    }

    /// Turns `user`'s sharing on (a row) or off (no row); doing it twice
    /// changes nothing more.
    pub async fn set_shares(&self, user: &str, on: bool) -> Result<(), ManagerError> {
        let p = self.partition(user).await?;
        self.with(async |c| {
            if on {
                c.execute(
                    "INSERT INTO freebusy_shares (partition, user_addr) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&p, &user],
                )
                .await?;
            } else {
                c.execute(
                    "DELETE FROM freebusy_shares WHERE partition = $1 AND user_addr = $2",
                    &[&p, &user],
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// `user`'s busy periods in [from, to), by start: times and types only,
    /// which is all a shared week may show. Overlapping periods of different
    /// events stay apart (as in a VFREEBUSY, each is a period).
    pub async fn periods(
        &self,
        user: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Period>, ManagerError> {
        let p = self.partition(user).await?;
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT lower(f.period), upper(f.period), f.fbtype
                     FROM freebusy f
                     WHERE f.partition = $1 AND f.user_addr = $2
                       AND f.period && tstzrange($3, $4, '[)')
                     ORDER BY lower(f.period), upper(f.period) LIMIT $5",
                    &[&p, &user, &from, &to, &MAX_PERIODS],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Period {
                    start: r.get(0),
                    end: r.get(1),
                    fbtype: FbType::parse(r.get::<_, &str>(2)).unwrap_or(FbType::Busy),
                })
                .collect())
        })
        .await
    }
}

fn pending_row(r: &tokio_postgres::Row) -> PendingRow {
    let data: serde_json::Value = r.get(5);
    let components = serde_json::from_value::<Proposal>(data)
        .map(|p| p.components)
        .unwrap_or_default();
    PendingRow {
        uid: r.get(0),
        recurrence_id: r.get(1),
        organizer: r.get(2),
        summary: r.get(3),
        sequence: r.get(4),
        components,
        stored: r.get::<_, bool>(8).then(|| (r.get(6), r.get(7))),
    }
}

/// The deployment's partition count (`deployment`, key `partitions`).
async fn deployment_partitions(c: &Client) -> Result<u32, ManagerError> {
    let row = c
        .query_opt("SELECT value FROM deployment WHERE key = 'partitions'", &[])
        .await?
        .ok_or_else(|| {
            ManagerError::Deployment(
                "the database has no partition count (run imip-processor migrate)".into(),
            )
        })?;
    let value: String = row.get(0);
    value.parse().map_err(|_| {
        ManagerError::Deployment(format!(
            "the deployment's partition count is not a number: {value:?}"
        ))
    })
}
