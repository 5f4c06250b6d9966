//! What one message and one user may cost the processor (docs/hostile-input.md,
//! "Processor"): the free/busy periods one message materialises over all its
//! UIDs, and each user's quota of stored objects and free/busy rows.
//!
//! Pure rules, called once per message by the one write step
//! (`crate::apply`), whoever writes. A message over a limit
//! is refused whole: none of its UIDs is applied, and the refusal names the
//! setting. Removing is never refused, so a user over quota can still cancel.

use crate::model::{Disposition, Outcome};

/// The limits in force (from `Settings::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most free/busy periods the applied UIDs of one message may have
    /// materialised (`IMIP_MAX_PERIODS_PER_MESSAGE`).
    pub max_periods_per_message: usize,
    /// Most stored objects of one user (`IMIP_MAX_OBJECTS_PER_USER`).
    pub max_objects_per_user: i64,
    /// Most free/busy rows of one user (`IMIP_MAX_FREEBUSY_PER_USER`).
    pub max_freebusy_per_user: i64,
}

/// Rows of a user (`user_usage`), or what a message changes them by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: i64,
    pub freebusy: i64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            objects: self.objects + o.objects,
            freebusy: self.freebusy + o.freebusy,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        *self = *self + o;
    }
}

impl Usage {
    /// What writing `objects` and `freebusy` rows in place of `before` changes.
    pub fn change(before: Usage, objects: usize, freebusy: usize) -> Usage {
        Usage {
            objects: objects as i64 - before.objects,
            freebusy: freebusy as i64 - before.freebusy,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// The periods one message has materialised so far, UID by UID. Charged
/// after each UID, so that a message is refused as soon as it is over the
/// limit: its later UIDs are never expanded (1,000 series of 5,000 instances
/// each held 5 million periods in memory before any was written).
#[derive(Debug, Clone, Copy)]
pub struct MessageBudget {
    limit: usize,
    used: usize,
}

impl MessageBudget {
    pub fn new(limits: &Limits) -> MessageBudget {
        MessageBudget {
            limit: limits.max_periods_per_message,
            used: 0,
        }
    }

    /// Counts one UID's outcome: only an applied outcome that writes
    /// free/busy (a pending request writes none) counts. `Err` is the
    /// message's refusal.
    pub fn charge(&mut self, outcome: &Outcome) -> Result<(), Disposition> {
        if outcome.disposition != Disposition::Applied || outcome.enqueues() {
            return Ok(());
        }
        self.used = self.used.saturating_add(outcome.periods.len());
        if self.used > self.limit {
            return Err(Disposition::Refused(format!(
                "message materialises more than {} free/busy periods over its UIDs \
                 (IMIP_MAX_PERIODS_PER_MESSAGE = {}); nothing applied",
                self.limit, self.limit
            )));
        }
        Ok(())
    }
}

/// Whether a message that changes the user's rows by `delta` may be applied
/// to a user who has `before`. Only growth is refused: a message that adds
/// rows of a kind the user is (or would be) over quota on; one that removes
/// or keeps them always passes.
pub fn quota(before: Usage, delta: Usage, limits: &Limits) -> Result<(), Disposition> {
    let after = before + delta;
    let over = |d: i64, a: i64, max: i64, what: &str, setting: &str| {
        (d > 0 && a > max).then(|| {
            Disposition::Refused(format!(
                "over the user's quota: this message would make {a} {what} \
                 ({setting} = {max}); nothing applied"
            ))
        })
    };
    match over(
        delta.objects,
        after.objects,
        limits.max_objects_per_user,
        "stored objects",
        "IMIP_MAX_OBJECTS_PER_USER",
    )
    .or_else(|| {
        over(
            delta.freebusy,
            after.freebusy,
            limits.max_freebusy_per_user,
            "free/busy rows",
            "IMIP_MAX_FREEBUSY_PER_USER",
        )
    }) {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// Free/busy rows `periods` make: one per (UID, instance) key, the key the
/// table is written by.
pub fn freebusy_rows(periods: &[crate::model::Period]) -> usize {
    let keys: std::collections::HashSet<_> = periods
        .iter()
        .map(|p| p.recurrence_id.unwrap_or(p.start))
        .collect();
    keys.len()
}
