//! A lane's write path and its helpers: [`Apply`] runs a batch as
//! `store::load` → `imipflow_semantics::apply` (message by message, the
//! batch's [`Pace`] between them) → `store::write`; the per-message fallback,
//! `imip-ctl replay` and `dlq replay` run the same three calls on a batch of
//! one. [`pace`] keeps the lease alive and the budgets; [`blame`] remembers
//! which message made batches fail. The loop that owns a lane is `worker`.

pub mod blame;
pub mod inbox;
pub mod pace;
pub mod route;

pub use blame::Blame;
pub use pace::Pace;

use crate::config::Settings;
use crate::error::ProcessorError;
use crate::store::{self, StatementCache};
use imipflow_schema::Namespace;
use imipflow_semantics::apply::{self, Applier, Loaded, Msg, Parsed, Rules, Verdict, Writes};
use std::time::Instant;
use tokio_postgres::Transaction;

/// Whether every batch holds one message (`IMIP_APPLY_PER_MESSAGE=1`): the
/// cost of the write path without batching, for before/after measurements
/// (`imip-bench processor`, tests/tests/batching.rs).
pub fn per_message() -> bool {
    static PER_MESSAGE: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("IMIP_APPLY_PER_MESSAGE").is_ok_and(|v| v == "1")
    });
    *PER_MESSAGE
}

/// What applying messages needs besides the transaction it runs in.
pub struct Apply<'a> {
    pub cache: &'a StatementCache,
    pub settings: &'a Settings,
    pub ns: &'a Namespace,
    pub partition: i32,
    /// Largest NATS message an event may make (`events::fit`).
    pub max_payload: usize,
}

impl Apply<'_> {
    /// The rules a batch starting now applies under.
    fn rules(&self) -> Result<Rules, ProcessorError> {
        let now = chrono::Utc::now();
        Ok(Rules {
            semantics: self.settings.ctx(now)?,
            limits: self.settings.limits(),
            namespace: self.ns.as_str().to_owned(),
            max_payload: self.max_payload,
            event_time: now,
        })
    }

    /// Applies `batch` in `tx` (the caller holds the partition and a
    /// savepoint): one read, the messages in memory, one write. Returns how
    /// many of `batch` it applied: a prefix, all of it unless the batch
    /// spent its time budget (`pace`, when the caller holds a lease).
    pub async fn batch(
        &self,
        tx: &Transaction<'_>,
        batch: &[Msg<'_>],
        mut pace: Option<&mut Pace>,
    ) -> Result<(usize, Vec<Verdict>), ProcessorError> {
        let started = Instant::now();
        let parsed: Vec<Parsed> = batch.iter().map(|m| apply::parse(*m)).collect();
        let loaded = store::load(tx, self.cache, self.partition, &apply::keys(&parsed)).await?;
        let rules = self.rules()?;
        let mut applier = Applier::new(&loaded, &rules);
        let mut taken = parsed.len();
        for (i, m) in parsed.iter().enumerate() {
            if let Some(p) = pace.as_deref_mut() {
                if i > 0 && p.batch_spent() {
                    taken = i;
                    break;
                }
                p.keep_alive(tx).await?;
            }
            let began = Instant::now();
            applier.message(m);
            if let Some(p) = pace.as_deref() {
                p.message_done(m.msg.seq, began)?;
            }
        }
        let writes = applier.finish();
        store::write(tx, self.cache, self.partition, &writes).await?;
        self.report(&parsed, &writes, started);
        Ok((
            taken,
            writes.outcomes.into_iter().map(|h| h.verdict).collect(),
        ))
    }

    /// Applies one message under a savepoint: if that fails for a reason of
    /// its own, its partial effects are undone and it is dead-lettered with
    /// the error, and the lane continues.
    pub async fn message(
        &self,
        tx: &mut Transaction<'_>,
        seq: i64,
        bytes: &[u8],
    ) -> Result<Verdict, ProcessorError> {
        let msg = Msg { seq, bytes };
        let sp = tx.savepoint("message").await?;
        match self.batch(&sp, &[msg], None).await {
            Ok((_, mut verdicts)) => {
                sp.commit().await?;
                Ok(verdicts.pop().unwrap_or(Verdict::Duplicate))
            }
            // Never dead-letter for a fault of the infrastructure: the caller
            // rolls the batch back and retries it after a backoff.
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                sp.rollback().await?;
                let error = e.to_string();
                self.dead_letter(tx, msg, &error).await?;
                Ok(Verdict::DeadLettered(error))
            }
        }
    }

    /// Files `msg` as a dead letter with `error`, without applying it.
    pub async fn dead_letter(
        &self,
        tx: &Transaction<'_>,
        msg: Msg<'_>,
        error: &str,
    ) -> Result<(), ProcessorError> {
        let (loaded, rules) = (Loaded::default(), self.rules()?);
        let mut applier = Applier::new(&loaded, &rules);
        applier.dead_letter(msg, error);
        let writes = applier.finish();
        store::write(tx, self.cache, self.partition, &writes).await?;
        self.report(&[], &writes, Instant::now());
        Ok(())
    }

    /// Logs and counts what became of each message, once it is written.
    fn report(&self, parsed: &[Parsed<'_>], writes: &Writes, started: Instant) {
        let partition = self.partition;
        for d in &writes.dead_letters {
            tracing::warn!(partition, seq = d.seq, user = %d.user, error = %d.error, "message dead-lettered");
            crate::metrics::dead_lettered(&d.payload);
        }
        for (h, m) in writes.outcomes.iter().zip(parsed) {
            let Ok(payload) = &m.payload else { continue };
            match &h.verdict {
                Verdict::Done(d) => {
                    crate::metrics::message_done(partition, h.seq, payload, d, started)
                }
                Verdict::Duplicate => crate::metrics::message_duplicate(partition, h.seq, payload),
                Verdict::DeadLettered(_) => {}
            }
        }
    }
}
