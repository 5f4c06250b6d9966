//! What became of a message, spelled once: the semantics decide a
//! [`Disposition`] (with its reason), and every message ends as one
//! [`MessageOutcome`], which is the `message_log.outcome` column, the
//! `outcome` label of `imipflow_messages_total` and what `imip-ctl replay`
//! reports.

use serde::{Deserialize, Serialize};

/// What the semantics decided for a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Disposition {
    /// Effects applied (possibly none, e.g. a CANCEL of something unknown).
    Applied,
    /// Older than what is stored (SEQUENCE, DTSTAMP): recorded, nothing changed.
    Stale(String),
    /// Method or component type without effect on the user's records.
    Ignored(String),
    /// Sender not entitled (trust rules, SPEC §2).
    Refused(String),
}

impl Disposition {
    pub fn outcome(&self) -> MessageOutcome {
        match self {
            Disposition::Applied => MessageOutcome::Applied,
            Disposition::Stale(_) => MessageOutcome::Stale,
            Disposition::Ignored(_) => MessageOutcome::Ignored,
            Disposition::Refused(_) => MessageOutcome::Refused,
        }
    }

    /// Why it was not applied (`message_log.reason`); `None` when applied.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Disposition::Applied => None,
            Disposition::Stale(r) | Disposition::Ignored(r) | Disposition::Refused(r) => Some(r),
        }
    }
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageOutcome {
    /// Already in the message log: nothing done again.
    Duplicate,
    Applied,
    Stale,
    Ignored,
    Refused,
    /// Not applicable at all: a dead letter, no effect.
    DeadLettered,
}

impl MessageOutcome {
    /// In the order reports list them (nothing done, decided, failed).
    pub const ALL: [MessageOutcome; 6] = [
        MessageOutcome::Duplicate,
        MessageOutcome::Applied,
        MessageOutcome::Stale,
        MessageOutcome::Ignored,
        MessageOutcome::Refused,
        MessageOutcome::DeadLettered,
    ];

    /// The `message_log.outcome` value and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Applied => "applied",
            MessageOutcome::Stale => "stale",
            MessageOutcome::Ignored => "ignored",
            MessageOutcome::Refused => "refused",
            MessageOutcome::Duplicate => "duplicate",
            MessageOutcome::DeadLettered => "dead_lettered",
        }
    }
}

impl std::fmt::Display for MessageOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`MessageOutcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome(pub String);

impl std::fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown message outcome {:?}", self.0)
    }
}

impl std::error::Error for UnknownOutcome {}

impl std::str::FromStr for MessageOutcome {
    type Err = UnknownOutcome;

    /// From [`MessageOutcome::as_str`] (a `message_log.outcome` value).
    fn from_str(s: &str) -> Result<MessageOutcome, UnknownOutcome> {
        MessageOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_from_its_name() {
        let names: Vec<&str> = MessageOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "duplicate",
                "applied",
                "stale",
                "ignored",
                "refused",
                "dead_lettered"
            ]
        );
        assert!(MessageOutcome::ALL.is_sorted());
        for o in MessageOutcome::ALL {
            assert_eq!(o.as_str().parse::<MessageOutcome>(), Ok(o));
            assert_eq!(o.to_string(), o.as_str());
        }
        for bad in ["", "Applied", "dead-lettered", "pending"] {
            assert_eq!(
                bad.parse::<MessageOutcome>(),
                Err(UnknownOutcome(bad.into()))
            );
        }
    }

    #[test]
    fn a_disposition_gives_its_outcome_and_reason() {
        let why = || "older".to_owned();
        for (d, outcome, reason) in [
            (Disposition::Applied, MessageOutcome::Applied, None),
            (
                Disposition::Stale(why()),
                MessageOutcome::Stale,
                Some("older"),
            ),
            (
                Disposition::Ignored(why()),
                MessageOutcome::Ignored,
                Some("older"),
            ),
            (
                Disposition::Refused(why()),
                MessageOutcome::Refused,
                Some("older"),
            ),
        ] {
            assert_eq!((d.outcome(), d.reason()), (outcome, reason), "{d:?}");
        }
    }
}
