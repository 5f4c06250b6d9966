//! The deployment's status: every partition's lane, lag, dead letters and
//! stalls, and the instances that scrape them; read by `/readyz`, the gauges
//! and `imip-ctl status`.

use crate::config::Settings;
use crate::error::ProcessorError;
use chrono::{DateTime, Utc};

/// One partition in `imip-ctl status` and in the lag metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// Stream position the lane has applied.
    pub applied: u64,
    /// Stream position of the partition's newest message.
    pub newest: u64,
    /// Messages of this partition after the applied position: waiting to be
    /// applied (counted by JetStream, not a difference of stream positions,
    /// which other partitions' messages interleave).
    pub lag: u64,
    /// Instance holding (or last holding) the lease: `<IMIP_INSTANCE or host>:<pid>`.
    pub owner: Option<String>,
    pub epoch: i64,
    /// Whether the owner's lease is current (a live instance owns the lane).
    pub leased: bool,
    pub lease_until: Option<DateTime<Utc>>,
    /// When the applied position last moved (none yet: never since V5).
    pub progress_at: Option<DateTime<Utc>>,
    /// How long the lane has had messages waiting without its applied
    /// position moving, in seconds: since the later of `progress_at` and the
    /// arrival of the oldest waiting message; 0 when nothing waits.
    pub stalled_for_secs: u64,
    /// `stalled_for_secs` reached `IMIP_STALL_AFTER_SECS`.
    pub stalled: bool,
}

impl PartitionStatus {
    /// Why the partition counts as stalled, for `/readyz` and `imip-ctl
    /// status`; none when it does not.
    pub fn stall_reason(&self) -> Option<String> {
        if !self.stalled {
            return None;
        }
        let owner = match (&self.owner, self.leased) {
            (Some(o), true) => format!("owned by {o}"),
            _ => "no live owner".to_owned(),
        };
        Some(format!(
            "partition {} stalled: {} message(s) waiting, applied position {} unchanged for {} s ({owner})",
            self.partition, self.lag, self.applied, self.stalled_for_secs
        ))
    }
}

/// Everything `imip-ctl status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub partitions: Vec<PartitionStatus>,
    pub lag: u64,
    pub dead_letters: u64,
    pub quarantined: u64,
    /// Messages refused by the trust rules (SPEC §2 "Trust"), from `message_log`
    /// (not counted for a metrics scrape: it reads the whole log).
    pub refused: u64,
    /// Change events committed but not yet published by a lane's relay.
    pub unpublished_events: u64,
    /// Messages in the messages stream on a partition no lane reads (see
    /// [`unread_messages`]); 0 in any deployment whose stream `migrate`
    /// created or updated since it takes only the deployment's partitions.
    pub unread: u64,
    /// The messages stream takes subjects other than the deployment's
    /// partitions (`migrate` has not run since an upgrade): a publish with
    /// another `IMIP_PARTITIONS` would be stored for no lane.
    pub stream_subjects_stale: bool,
    /// Live instances and how many partitions each owns.
    pub instances: Vec<InstanceStatus>,
    /// Partitions no live instance holds the lease of (never owned, or the
    /// owner's lease expired): their messages wait until an
    /// `imip-processor run` takes them.
    pub unowned: Vec<u32>,
    /// `IMIP_STALL_AFTER_SECS`: a partition waiting this long is stalled.
    pub stall_after_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub partitions: usize,
}

/// Lanes, owners, lag, dead letters, quarantine: from PostgreSQL and the streams.
pub async fn status(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
) -> Result<Status, ProcessorError> {
    status_of(db, js, settings, true).await
}

/// [`status`] without the reads that grow with the message log, for the
/// processor's `/metrics` (scraped every few seconds).
pub async fn scrape_status(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
) -> Result<Status, ProcessorError> {
    status_of(db, js, settings, false).await
}

async fn status_of(
    db: &tokio_postgres::Client,
    js: &async_nats::jetstream::Context,
    settings: &Settings,
    count_refused: bool,
) -> Result<Status, ProcessorError> {
    let ns = settings.namespace()?;
    let rows = db
        .query(
            "SELECT partition, last_sequence, owner, epoch,
                    coalesce(lease_until > clock_timestamp(), false), lease_until,
                    progress_at, clock_timestamp()
             FROM partitions ORDER BY partition",
            &[],
        )
        .await?;
    // The database's clock, which wrote progress_at (a partition without a
    // row has none: read it apart).
    let now: DateTime<Utc> = match rows.first() {
        Some(r) => r.get(7),
        None => db.query_one("SELECT clock_timestamp()", &[]).await?.get(0),
    };
    let dead_letters: i64 = db
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let refused: i64 = if count_refused {
        db.query_one(
            "SELECT count(*) FROM message_log WHERE outcome = 'refused'",
            &[],
        )
        .await?
        .get(0)
    } else {
        0
    };
    // Served by the partial index outbox_unpublished: cheap while the relay keeps up.
    let unpublished: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let stream = js
        .get_stream(ns.messages_stream())
        .await
        .map_err(ProcessorError::nats)?;
    let stream_subjects_stale =
        stream.cached_info().config.subjects != ns.messages_stream_subjects(settings.partitions);
    let unread = unread_messages(db, &stream, &ns, settings.partitions).await?;
    // The partitions' newest positions, asked for all at once.
    let newest = futures::future::join_all((0..settings.partitions).map(|p| {
        let stream = &stream;
        let filter = ns.partition_filter(p);
        async move {
            stream
                .get_last_raw_message_by_subject(&filter)
                .await
                .map(|m| m.sequence)
                .unwrap_or(0)
        }
    }))
    .await;
    let mut partitions = Vec::new();
    let applied_of = |p: u32| {
        let row = rows.iter().find(|r| r.get::<_, i32>(0) == p as i32);
        row.map(|r| r.get::<_, i64>(1)).unwrap_or(0).max(0) as u64
    };
    // Messages waiting, counted by the server; asked only where the
    // partition's newest position is past the applied one (a quiet lane
    // costs nothing).
    let waiting = futures::future::join_all(newest.iter().enumerate().map(|(p, &newest)| {
        let stream = &stream;
        let filter = ns.partition_filter(p as u32);
        let applied = applied_of(p as u32);
        async move {
            if newest <= applied {
                return Ok(0);
            }
            pending_after(stream, filter, applied).await
        }
    }))
    .await;
    for (p, (newest, waiting)) in newest.into_iter().zip(waiting).enumerate() {
        let row = rows.iter().find(|r| r.get::<_, i32>(0) == p as i32);
        let applied = applied_of(p as u32);
        let progress_at: Option<DateTime<Utc>> = row.and_then(|r| r.get(6));
        partitions.push(PartitionStatus {
            partition: p as u32,
            applied,
            newest,
            lag: waiting?,
            owner: row.and_then(|r| r.get(2)),
            epoch: row.map(|r| r.get(3)).unwrap_or(0),
            leased: row.map(|r| r.get(4)).unwrap_or(false),
            lease_until: row.and_then(|r| r.get(5)),
            progress_at,
            stalled_for_secs: 0,
            stalled: false,
        });
    }
    stalls(&stream, &ns, &mut partitions, now, settings.stall_after()).await;
    let mut quarantine = js
        .get_stream(ns.quarantine_stream())
        .await
        .map_err(ProcessorError::nats)?;
    let quarantined = quarantine
        .info()
        .await
        .map_err(ProcessorError::nats)?
        .state
        .messages;
    let mut instances: std::collections::BTreeMap<String, usize> = Default::default();
    for p in partitions.iter().filter(|p| p.leased) {
        if let Some(o) = &p.owner {
            *instances.entry(o.clone()).or_default() += 1;
        }
    }
    let unowned = partitions
        .iter()
        .filter(|p| !(p.leased && p.owner.is_some()))
        .map(|p| p.partition)
        .collect();
    Ok(Status {
        lag: partitions.iter().map(|p| p.lag).sum(),
        unowned,
        partitions,
        dead_letters: dead_letters.max(0) as u64,
        quarantined,
        refused: refused.max(0) as u64,
        unpublished_events: unpublished.max(0) as u64,
        unread,
        stream_subjects_stale,
        instances: instances
            .into_iter()
            .map(|(instance, partitions)| InstanceStatus {
                instance,
                partitions,
            })
            .collect(),
        stall_after_secs: settings.stall_after().as_secs(),
    })
}

/// Fills in how long each partition with messages waiting has not advanced
/// (docs/operations.md, "Stalled partitions"): since the later of its
/// `progress_at` and the arrival of its oldest waiting message, so that
/// neither a lane working through a backlog (it advances) nor one that just
/// received a message after a quiet night (it has not waited) counts. The
/// oldest waiting message is read only where the position has not moved for
/// a second; both times are taken against the database's clock.
async fn stalls(
    stream: &async_nats::jetstream::stream::Stream,
    ns: &imipflow_schema::Namespace,
    partitions: &mut [PartitionStatus],
    now: DateTime<Utc>,
    after: std::time::Duration,
) {
    let since = |t: DateTime<Utc>| (now - t).num_seconds().max(0) as u64;
    let suspects: Vec<usize> = partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.lag > 0 && p.progress_at.is_none_or(|t| since(t) >= 1))
        .map(|(i, _)| i)
        .collect();
    let arrived = futures::future::join_all(suspects.iter().map(|&i| {
        let p = &partitions[i];
        let filter = ns.partition_filter(p.partition);
        let from = p.applied + 1;
        async move {
            let m = stream
                .get_first_raw_message_by_subject(&filter, from)
                .await
                .ok()?;
            DateTime::<Utc>::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
        }
    }))
    .await;
    for (i, arrived) in suspects.into_iter().zip(arrived) {
        let p = &mut partitions[i];
        // Unreadable (the message expired meanwhile): judged by progress alone.
        let waiting = arrived.map_or(u64::MAX, since);
        let unmoved = p.progress_at.map_or(u64::MAX, since);
        let secs = waiting.min(unmoved);
        if secs == u64::MAX {
            continue;
        }
        p.stalled_for_secs = secs;
        p.stalled = secs >= after.as_secs();
    }
}

/// Messages in the messages stream on a partition no lane reads (one at or
/// beyond `partitions`). The stream takes only the deployment's partitions
/// (`streams::configs`), so none can arrive once `migrate` has narrowed its
/// subjects; this finds what a stream created before that (subjects
/// `<ns>.msg.>`) still holds from an ingest with another `IMIP_PARTITIONS`.
/// Reads the count of every stored subject (one per user): for `migrate`
/// and `imip-ctl status`, not for a metrics scrape.
pub async fn unread(
    stream: &async_nats::jetstream::stream::Stream,
    ns: &imipflow_schema::Namespace,
    partitions: u32,
) -> Result<u64, ProcessorError> {
    use futures::TryStreamExt;
    let mut subjects = stream
        .info_with_subjects(ns.messages_subjects())
        .await
        .map_err(ProcessorError::nats)?;
    let mut unread = 0;
    while let Some((subject, count)) = subjects.try_next().await.map_err(ProcessorError::nats)? {
        if ns
            .message_partition(&subject)
            .is_none_or(|p| p >= partitions)
        {
            unread += count as u64;
        }
    }
    Ok(unread)
}

/// How many messages on `filter` the stream holds after sequence `applied`:
/// the `num_pending` of a short-lived consumer starting there (NATS 2.9 has
/// no cheaper count of one subject filter from a position).
async fn pending_after(
    stream: &async_nats::jetstream::stream::Stream,
    filter: String,
    applied: u64,
) -> Result<u64, ProcessorError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: applied + 1,
            },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            // Gone by itself should the delete below not arrive.
            inactive_threshold: std::time::Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .map_err(ProcessorError::nats)?;
    let info = consumer.cached_info();
    let pending = info.num_pending;
    let _ = stream.delete_consumer(&info.name).await;
    Ok(pending)
}

/// Key of the `deployment` row `migrate` writes when the messages stream
/// still holds unread messages from before it took only the deployment's
/// partitions: the stream's last sequence then. None of them can be newer.
pub const UNREAD_BEFORE: &str = "unread_before_seq";

/// [`unread`], read only when some can exist: the stream still takes other
/// subjects, or it still holds messages from before `migrate` narrowed it
/// (the [`UNREAD_BEFORE`] row). Otherwise 0 without a look, so that the
/// metrics scrape stays cheap.
pub async fn unread_messages(
    db: &tokio_postgres::Client,
    stream: &async_nats::jetstream::stream::Stream,
    ns: &imipflow_schema::Namespace,
    partitions: u32,
) -> Result<u64, ProcessorError> {
    let info = stream.cached_info();
    let exact = info.config.subjects == ns.messages_stream_subjects(partitions);
    if exact {
        let before: Option<String> = db
            .query_opt(
                "SELECT value FROM deployment WHERE key = $1",
                &[&UNREAD_BEFORE],
            )
            .await?
            .map(|r| r.get(0));
        let before: u64 = match before.and_then(|v| v.parse().ok()) {
            Some(b) => b,
            None => return Ok(0),
        };
        if info.state.messages == 0 || info.state.first_sequence > before {
            return Ok(0);
        }
    }
    unread(stream, ns, partitions).await
}
