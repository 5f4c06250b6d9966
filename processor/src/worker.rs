//! `imip-processor run`: one ordered lane per partition, applied exactly once.
//!
//! A lane is owned through a lease row in `partitions` (owner, epoch,
//! lease_until). Every transaction that applies messages first re-asserts the
//! lease by updating that row *with the epoch it acquired*; a worker that lost
//! its lease (paused, partitioned, slow) matches no row and rolls back — that
//! is the fencing. The stream position is stored in the same transaction as the
//! effects, and the lane's durable pull consumer is realigned with that position
//! whenever a lane is taken over (acks follow commits), so PostgreSQL is the
//! single source of truth for what was applied: a crash at any point repeats
//! nothing and loses nothing.
//!
//! No message may stop a lane (docs/reliability.md, "One message never stops
//! a lane"): a batch keeps its transaction alive while it runs (`Pace`), ends
//! early when it spent its time budget, and a message that failed a batch
//! (over its own budget, or the same strain error again and again) is tried
//! alone and then dead-lettered (`Blame`).

use crate::config::Settings;
use crate::error::{LeaseCheck, ProcessorError};
use crate::lane::inbox::{Delivered, Inbox};
use crate::lane::{Blame, Pace, route};
use crate::migrate::connect;
use crate::store::StatementCache;
use async_nats::jetstream;
use futures::StreamExt;
use imipflow_schema::Namespace;
use imipflow_semantics::apply::Msg;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

#[derive(Clone)]
pub struct Lane {
    settings: Arc<Settings>,
    ns: Namespace,
    js: jetstream::Context,
    instance: String,
    partition: i32,
    /// Shared by the lane's restarts (a lost connection restarts it), so
    /// that what it learnt about a message survives them.
    blame: Arc<Mutex<Blame>>,
}

/// Session settings of the connections that run a lane's key-probing
/// statements: nested loops only, and no sequential scan where an index or
/// a TID scan can do (see `Lane::run`).
const KEY_PROBES: &str =
    "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off";

impl Lane {
    async fn acquire(&self, db: &Client) -> Result<Option<(i64, i64)>, ProcessorError> {
        let ttl = self.settings.lease_ms as f64 / 1000.0;
        db.execute(
            "INSERT INTO partitions (partition) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&self.partition],
        )
        .await?;
        let row = db
            .query_opt(
                "UPDATE partitions
                 SET owner = $2, epoch = epoch + 1, lease_until = clock_timestamp() + make_interval(secs => $3)
                 WHERE partition = $1 AND (owner IS NULL OR lease_until < clock_timestamp())
                 RETURNING epoch, last_sequence",
                &[&self.partition, &self.instance, &ttl],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Extends the lease; false when it was lost.
    async fn renew(&self, db: &Client, epoch: i64) -> Result<bool, ProcessorError> {
        let ttl = self.settings.lease_ms as f64 / 1000.0;
        Ok(db
            .execute(
                "UPDATE partitions SET lease_until = clock_timestamp() + make_interval(secs => $4)
                 WHERE partition = $1 AND owner = $2 AND epoch = $3",
                &[&self.partition, &self.instance, &epoch, &ttl],
            )
            .await?
            == 1)
    }

    fn blame(&self) -> MutexGuard<'_, Blame> {
        self.blame.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn release(&self, db: &Client, epoch: i64) {
        let _ = db
            .execute(
                "UPDATE partitions SET owner = NULL, lease_until = NULL
                 WHERE partition = $1 AND owner = $2 AND epoch = $3",
                &[&self.partition, &self.instance, &epoch],
            )
            .await;
    }

    /// Runs the lane until shutdown: acquire, apply, and on losing the lease start over.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ProcessorError> {
        let mut db = connect(&self.settings).await?;
        // Fencing needs this: a worker paused (SIGSTOP, VM freeze) inside a
        // transaction holds its partition row locked, and the instance taking
        // the lane over would wait for it forever. The server aborts such a
        // transaction once it has been idle for a lease, which frees the row;
        // the paused worker's commit then fails when it wakes up.
        //
        // Every statement of a lane probes a set of keys (UNNEST of the
        // batch's users and UIDs joined to a primary key). Left to itself, the
        // planner joins the ~100 rows it assumes an UNNEST gives by hashing
        // and scanning the whole table whenever that looks cheaper than as
        // many index probes, which with default costs is true well into
        // tens of thousands of rows: each batch then read every free/busy row
        // and the whole message log, and got slower as they grew
        // (bench/results/processor-*.md). Nested loops keep each batch's cost
        // to its own keys, whatever the tables' size or statistics. With the
        // partition in every key, a scalar `partition = $1` beside the join
        // let the planner drive the loop from an index scan of the whole
        // partition (fresh tables look small): Single/Hot fell from 5,716 to
        // under 400 msg/s. So each key is probed in a LATERAL subquery that
        // cannot be flattened (OFFSET 0), and the deletes remove the ctids
        // those probes found; `partition = $1` stays inside, where it prunes
        // a LIST-partitioned table to one child. Off seq scans, because a
        // generic plan cached while a table was a few pages would scan it
        // for ever after.
        db.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}; {KEY_PROBES}",
            self.settings.lease_ms.max(1000)
        ))
        .await?;
        let cache = StatementCache::default();
        let retry = Duration::from_millis(self.settings.lease_ms / 4);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            match self.acquire(&db).await? {
                Some((epoch, last)) => {
                    tracing::info!(partition = self.partition, epoch, last, "lane acquired");
                    crate::metrics::lease_acquired(self.partition);
                    let result = self.own(&mut db, &cache, epoch, last, &mut shutdown).await;
                    self.release(&db, epoch).await;
                    crate::metrics::lease_released(self.partition, result.is_err());
                    if let Err(e) = result {
                        tracing::warn!(partition = self.partition, error = %e, "lane stopped; retrying");
                        // Do not spin on a broker or database that is down:
                        // back off before trying to own the lane again.
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    async fn own(
        &self,
        db: &mut Client,
        cache: &StatementCache,
        epoch: i64,
        mut last: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProcessorError> {
        let publisher = crate::relay::Publisher::choose(&self.settings, &self.js, &self.ns).await;
        crate::relay::flush(db, cache, &self.js, &publisher, &self.ns, self.partition).await?;
        let mut relay = Relay::open(&self.settings).await?;
        let mut inbox = Inbox::open(
            &self.js,
            &self.ns,
            self.partition,
            epoch,
            last,
            self.settings.batch_size,
        )
        .await?;
        let renew_every = Duration::from_millis(self.settings.lease_ms / 3);
        // IMIP_APPLY_PER_MESSAGE=1: every batch one message (`lane::per_message`).
        let batch_size = if crate::lane::per_message() {
            1
        } else {
            self.settings.batch_size
        };
        loop {
            // Messages left over from the last batch go first, without waiting
            // (but not past a shutdown: they are not acknowledged, and the
            // next owner gets them again).
            if !inbox.is_empty() && *shutdown.borrow() {
                return relay.wait().await;
            }
            if inbox.is_empty() {
                // Wait for the first message of a batch, renewing the lease while idle.
                tokio::select! {
                    m = inbox.messages.next() => inbox.receive(m)?,
                    _ = tokio::time::sleep(renew_every) => {
                        relay.wait().await?;
                        if !self.renew(db, epoch).await? {
                            return Err(ProcessorError::LeaseLost {
                                partition: self.partition,
                                when: LeaseCheck::Renewal,
                            });
                        }
                        continue;
                    }
                    _ = shutdown.changed() => return relay.wait().await,
                }
            }
            inbox.fill(self.settings.batch_size)?;
            let n = self.blame().batch_len(inbox.sequences(), batch_size);
            let fresh = inbox.fresh(n, last);
            let mut taken = n;
            if !fresh.is_empty() {
                match self.apply_batch(db, cache, epoch, &fresh).await {
                    Ok(applied) => {
                        self.blame().committed(applied);
                        last = last.max(applied);
                        // A batch that spent its budget took only a prefix.
                        taken = inbox.sequences().take(n).take_while(|s| *s <= last).count();
                    }
                    Err(e) => {
                        let seqs: Vec<i64> = fresh.iter().map(|m| m.seq).collect();
                        self.blame().failed(&seqs, &e);
                        if matches!(e, ProcessorError::OverBudget { .. }) && !db.is_closed() {
                            // Rolled back, and the lane still holds its
                            // partition: on with the suspect set apart.
                            tracing::warn!(partition = self.partition, error = %e, "batch rolled back: a message over its budget");
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
            // Ack after commit.
            inbox.ack(taken).await?;
            if !fresh.is_empty() {
                relay.start(self, &publisher).await?;
            }
        }
    }

    /// One transaction: fence, apply each message (dead-lettering failures), store the position.
    async fn apply_batch(
        &self,
        db: &mut Client,
        cache: &StatementCache,
        epoch: i64,
        batch: &[Delivered],
    ) -> Result<i64, ProcessorError> {
        let started = std::time::Instant::now();
        let result = self.apply_batch_inner(db, cache, epoch, batch).await;
        crate::metrics::batch(started.elapsed(), result.is_ok());
        tracing::debug!(
            partition = self.partition,
            messages = batch.len(),
            took_us = started.elapsed().as_micros() as u64,
            "batch"
        );
        result
    }

    async fn apply_batch_inner(
        &self,
        db: &mut Client,
        cache: &StatementCache,
        epoch: i64,
        batch: &[Delivered],
    ) -> Result<i64, ProcessorError> {
        let ttl = self.settings.lease_ms as f64 / 1000.0;
        let mut tx = db.transaction().await?;
        let fenced = tx
            .query_opt(
                "UPDATE partitions SET lease_until = clock_timestamp() + make_interval(secs => $4)
                 WHERE partition = $1 AND owner = $2 AND epoch = $3
                 RETURNING last_sequence",
                &[&self.partition, &self.instance, &epoch, &ttl],
            )
            .await?;
        let Some(row) = fenced else {
            tx.rollback().await?;
            return Err(ProcessorError::LeaseLost {
                partition: self.partition,
                when: LeaseCheck::BatchStart,
            });
        };
        let mut pace = Pace::new(&self.settings, self.partition, &self.instance, epoch);
        let stored_last: i64 = row.get(0);
        let fresh: Vec<&Delivered> = batch.iter().filter(|m| m.seq > stored_last).collect();
        let Some(newest) = fresh.last().map(|m| m.seq) else {
            tx.rollback().await?;
            return Ok(stored_last);
        };
        // Another partition's messages go there first, stored by the stream
        // before this lane's position passes them (`lane::route`).
        let mut todo = Vec::with_capacity(fresh.len());
        for m in fresh {
            match route::misrouted(&m.payload, self.partition, self.settings.partitions) {
                Some((user, to)) => {
                    route::forward(
                        &self.js,
                        &self.ns,
                        self.partition,
                        m.seq,
                        m.payload.clone(),
                        &user,
                        to,
                    )
                    .await?
                }
                None => todo.push(Msg {
                    seq: m.seq,
                    bytes: &m.payload,
                }),
            }
        }
        let apply = Apply {
            cache,
            settings: &self.settings,
            ns: &self.ns,
            partition: self.partition,
            // The limit in the server's INFO (events::fit cuts events to it).
            max_payload: self.js.client().max_payload(),
        };
        // A batch that spent its budget took a prefix: the forwarded ones
        // after it come again, and their copies are deduplicated.
        let last = if todo.is_empty() {
            newest
        } else {
            let taken = self.apply_all(&mut tx, &apply, &todo, &mut pace).await?;
            if taken == todo.len() {
                newest
            } else {
                todo[taken - 1].seq
            }
        };
        // progress_at: when the applied position last moved, what stall
        // detection compares with (docs/operations.md, "Stalled partitions").
        tx.execute(
            "UPDATE partitions SET last_sequence = $2, progress_at = clock_timestamp(),
                    lease_until = clock_timestamp() + make_interval(secs => $3)
             WHERE partition = $1",
            &[&self.partition, &last, &ttl],
        )
        .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// Applies `todo` in `tx`: as one batch under a savepoint, or, when that
    /// fails for a reason of a message's own, message by message under a
    /// savepoint each, so that only the failing ones are dead-lettered.
    /// Returns how many of `todo` it applied (a prefix).
    async fn apply_all(
        &self,
        tx: &mut Transaction<'_>,
        apply: &Apply<'_>,
        todo: &[Msg<'_>],
        pace: &mut Pace,
    ) -> Result<usize, ProcessorError> {
        let condemned = self.blame().condemned(todo[0].seq);
        let fast = tx.savepoint("batch").await?;
        if let Some(reason) = condemned {
            // Failed alone before (`Blame`): never applied again, since that
            // could cost the lane as much once more.
            apply.dead_letter(&fast, todo[0], &reason).await?;
            fast.commit().await?;
            return Ok(1);
        }
        match apply.batch(&fast, todo, Some(pace)).await {
            Ok((taken, _)) => {
                fast.commit().await?;
                return Ok(taken);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "batch failed; applying message by message");
                fast.rollback().await?;
            }
        }
        for (i, m) in todo.iter().enumerate() {
            if i > 0 && pace.batch_spent() {
                return Ok(i);
            }
            pace.keep_alive(tx).await?;
            let began = Instant::now();
            apply.message(tx, m.seq, m.bytes).await?;
            pace.message_done(m.seq, began)?;
        }
        Ok(todo.len())
    }
}

/// The lane's outbox flush, running in the background between commits. At
/// most one runs per lane, and a lane that stops (lease lost, error) aborts it
/// on drop, so two owners never publish a partition's events at once for
/// long; the next owner flushes again on takeover (event ids dedupe repeats).
struct Relay {
    db: Arc<Client>,
    cache: Arc<StatementCache>,
    running: Option<tokio::task::JoinHandle<Result<usize, ProcessorError>>>,
}

impl Relay {
    /// After each commit the relay runs on a connection of its own while
    /// the lane applies the next batch; one flush at a time keeps each
    /// user's events in order.
    async fn open(settings: &Settings) -> Result<Relay, ProcessorError> {
        let db = crate::connect::connect(settings).await?;
        // Its UPDATE joins the flushed keys to the outbox (see `Lane::run`).
        db.batch_execute(KEY_PROBES).await?;
        Ok(Relay {
            db: Arc::new(db),
            cache: Arc::new(StatementCache::default()),
            running: None,
        })
    }

    /// Flushes the lane's outbox in the background, after the flush before.
    async fn start(
        &mut self,
        lane: &Lane,
        publisher: &crate::relay::Publisher,
    ) -> Result<(), ProcessorError> {
        self.wait().await?;
        let (rdb, cache, js, publisher, ns, p) = (
            self.db.clone(),
            self.cache.clone(),
            lane.js.clone(),
            publisher.clone(),
            lane.ns.clone(),
            lane.partition,
        );
        self.running = Some(tokio::spawn(async move {
            crate::relay::flush(&rdb, &cache, &js, &publisher, &ns, p).await
        }));
        Ok(())
    }

    /// Waits for the running flush, if any, and returns its error.
    async fn wait(&mut self) -> Result<(), ProcessorError> {
        if let Some(h) = self.running.take() {
            h.await
                .map_err(|e| ProcessorError::Task(format!("relay flush: {e}")))??;
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(h) = self.running.take() {
            h.abort();
        }
    }
}

// imip-ctl's replay names it here.
pub use crate::lane::Apply;

/// Waits until the client has connected, saying why not every few seconds;
/// false when shutdown came first. The lanes start only then: started
/// without a broker, each would take its lease, fail and give it back in a
/// loop, keeping a lane from an instance that can reach NATS.
async fn wait_for_nats(
    settings: &Settings,
    nats: &async_nats::Client,
    trouble: &crate::connect::NatsTrouble,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    use async_nats::connection::State;
    let started = std::time::Instant::now();
    let mut said = None::<std::time::Instant>;
    loop {
        let state = nats.connection_state();
        if state == State::Connected {
            if said.is_some() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "NATS connected"
                );
            }
            return true;
        }
        if *shutdown.borrow() {
            return false;
        }
        // The first report after a second: a broker that is up connects
        // within milliseconds and says nothing.
        let due = match said {
            None => started.elapsed() >= Duration::from_secs(1),
            Some(t) => t.elapsed() >= Duration::from_secs(10),
        };
        if due {
            let why = crate::health::nats_down(settings, state, trouble).await;
            tracing::warn!(reason = %why, "waiting for NATS before starting the lanes");
            said = Some(std::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Refuses to run lanes with another partition count than the one `migrate`
/// recorded: lanes beyond it read nothing, and a lane's check that each
/// message is its own (`lane::route`) would send users to partitions that
/// are not theirs. Waits (retrying each second, saying why every 10 s) while
/// PostgreSQL is unreachable or not migrated yet; false when shutdown came
/// first. A mismatch is [`ProcessorError::Config`]: exit 78.
async fn same_partitions(
    settings: &Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<bool, ProcessorError> {
    let mut said = None::<Instant>;
    loop {
        let checked = async {
            let db = connect(settings).await?;
            crate::migrate::check_partitions(&db, settings).await
        };
        match checked.await {
            Ok(()) => return Ok(true),
            Err(e @ ProcessorError::Config(_)) => return Err(e),
            Err(e) => {
                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "waiting for PostgreSQL before starting the lanes");
                    said = Some(Instant::now());
                }
            }
        }
        if *shutdown.borrow() {
            return Ok(false);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Starts one lane per partition and waits for shutdown.
pub async fn run(
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let ns = settings.namespace()?;
    settings.default_tz()?;
    let (nats, trouble) = crate::connect::connect_nats_retrying(&settings, "imipflow").await?;
    if !wait_for_nats(&settings, &nats, &trouble, shutdown.clone()).await {
        return Ok(());
    }
    if !same_partitions(&settings, shutdown.clone()).await? {
        return Ok(());
    }
    let js = jetstream::new(nats);
    let instance = settings.instance_id();
    let settings = Arc::new(settings);
    let mut tasks = Vec::new();
    for p in 0..settings.partitions {
        let lane = Lane {
            settings: settings.clone(),
            ns: ns.clone(),
            js: js.clone(),
            instance: instance.clone(),
            partition: p as i32,
            blame: Default::default(),
        };
        let rx = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            // Exponential backoff while PostgreSQL or NATS stay unreachable
            // (250 ms doubling to 5 s), reset once a lane ran for a while.
            let mut backoff = Duration::from_millis(250);
            loop {
                let started = std::time::Instant::now();
                match lane.clone().run(rx.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        if started.elapsed() > Duration::from_secs(30) {
                            backoff = Duration::from_millis(250);
                        }
                        tracing::error!(partition = lane.partition, error = %e, backoff_ms = backoff.as_millis() as u64, "lane failed; restarting");
                        let mut stop = rx.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if *rx.borrow() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    tracing::info!(
        instance,
        partitions = settings.partitions,
        "processor running"
    );
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
