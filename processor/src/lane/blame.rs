//! What a lane remembers about messages that made its batches fail, and so
//! which message a batch stops before, runs alone, or dead-letters unapplied
//! (docs/reliability.md, "One message never stops a lane").

use crate::error::{Fault, ProcessorError};

/// How often the same message may begin batches that fail with strain
/// (`Fault::Strain`) before it is blamed: then it is tried alone, and failing
/// alone as well it is dead-lettered with the error.
const STRIKES: u32 = 3;

/// What a lane remembers about messages that made its batches fail.
#[derive(Debug, Default)]
pub struct Blame {
    /// First message of the batches that failed with strain, and how many
    /// did in a row.
    strikes: Option<(i64, u32)>,
    /// The message under suspicion, by stream sequence.
    suspect: Option<(i64, Suspect)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Suspect {
    /// It failed a batch with others: the next batch stops before it, and
    /// the one after holds it alone, so that its own cost is measured.
    Alone,
    /// It failed alone too: dead-lettered with this reason without being
    /// applied again (which could cost the lane as much once more).
    Condemned(String),
}

impl Blame {
    /// How many of the waiting messages (their sequences, in order) the next
    /// batch takes: at most `max`, and a suspect alone.
    pub fn batch_len(&self, waiting: impl Iterator<Item = i64>, max: usize) -> usize {
        let mut n = 0;
        for seq in waiting.take(max.max(1)) {
            if self.suspect.as_ref().is_some_and(|(s, _)| *s == seq) {
                return n.max(1);
            }
            n += 1;
        }
        n
    }

    /// The reason `seq` is dead-lettered without being applied, if it is.
    pub fn condemned(&self, seq: i64) -> Option<String> {
        match &self.suspect {
            Some((s, Suspect::Condemned(reason))) if *s == seq => Some(reason.clone()),
            _ => None,
        }
    }

    /// A batch of `batch` (sequences, in order) was rolled back with `e`.
    pub fn failed(&mut self, batch: &[i64], e: &ProcessorError) {
        let alone = batch.len() == 1;
        match e {
            ProcessorError::OverBudget { seq, .. } => {
                let verdict = if alone {
                    Suspect::Condemned(e.to_string())
                } else {
                    Suspect::Alone
                };
                self.suspect = Some((*seq, verdict));
            }
            e if e.fault() == Fault::Strain => {
                let Some(&first) = batch.first() else { return };
                let n = match self.strikes {
                    Some((s, n)) if s == first => n + 1,
                    _ => 1,
                };
                self.strikes = Some((first, n));
                if n >= STRIKES {
                    let verdict = if alone {
                        Suspect::Condemned(format!("failed {n} times in a row: {e}"))
                    } else {
                        Suspect::Alone
                    };
                    self.suspect = Some((first, verdict));
                }
            }
            // An outage says nothing about the message; neither does it break
            // a run of strikes.
            _ => {}
        }
    }

    /// Messages up to `last` were committed.
    pub fn committed(&mut self, last: i64) {
        self.strikes = None;
        if self.suspect.as_ref().is_some_and(|(s, _)| *s <= last) {
            self.suspect = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn over(seq: i64) -> ProcessorError {
        ProcessorError::OverBudget {
            seq,
            took: Duration::from_millis(3_400),
            budget: Duration::from_millis(300),
        }
    }

    fn not_strain() -> ProcessorError {
        ProcessorError::Config("stand-in".into())
    }

    #[test]
    fn a_message_over_budget_runs_alone_then_is_condemned() {
        let mut b = Blame::default();
        assert_eq!(b.batch_len([1, 2, 3, 4].into_iter(), 256), 4);
        b.failed(&[1, 2, 3, 4], &over(3));
        // The messages before it first, then it alone.
        assert_eq!(b.batch_len([1, 2, 3, 4].into_iter(), 256), 2);
        b.committed(2);
        assert_eq!(b.batch_len([3, 4].into_iter(), 256), 1);
        assert_eq!(b.condemned(3), None);
        b.failed(&[3], &over(3));
        assert_eq!(
            b.condemned(3).as_deref(),
            Some("took 3.4 s, over the 300 ms budget per message")
        );
        b.committed(3);
        assert_eq!(b.condemned(3), None);
        assert_eq!(b.batch_len([4].into_iter(), 256), 1);
    }

    #[test]
    fn only_repeated_strain_blames_the_first_message() {
        let mut b = Blame::default();
        // Neither an outage nor the message's own error counts as a strike.
        for _ in 0..10 {
            b.failed(&[5, 6], &not_strain());
        }
        assert_eq!(b.batch_len([5, 6].into_iter(), 256), 2);
        assert_eq!(b.suspect, None);
    }

    #[test]
    fn a_suspect_waits_behind_the_batch_limit() {
        let mut b = Blame::default();
        b.failed(&[1, 2, 3, 4, 5], &over(5));
        assert_eq!(b.batch_len([1, 2, 3, 4, 5].into_iter(), 2), 2);
        assert_eq!(b.batch_len([3, 4, 5].into_iter(), 2), 2);
        assert_eq!(b.batch_len([5].into_iter(), 2), 1);
    }
}
