//! Submitting a user's answer by SMTP, and the outbox that retries it.
//!
//! An answer is two messages: the REPLY to the organizer from the user, and
//! the same REPLY to the user from the calendar address (`IMIP_MANAGER_FROM`),
//! which the processor applies as the user's own (SPEC §3). Each is sent at
//! most once: a retry after a failure sends only what is not sent yet. The
//! outbox is in memory: a failed answer is tried again with a doubling wait
//! (1 s, 2 s, 4 s …, at most 5 min) up to `IMIP_MANAGER_SMTP_ATTEMPTS`
//! times, and the page shows each answer's state; a restart forgets what was
//! not sent (the request is still pending then, so the user answers again).

use crate::error::ManagerError;
use chrono::{DateTime, Utc};
use imipflow_config::SecretUrl;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The SMTP transport of `IMIP_MANAGER_SMTP_URL` (lettre's URL form:
/// `smtp://` plain or `?tls=required` for STARTTLS, `smtps://`, `user:pass@`).
pub fn transport(url: &SecretUrl) -> Result<Transport, ManagerError> {
    Transport::from_url(url.as_ref())
        .map(|b| b.timeout(Some(Duration::from_secs(30))).build())
        .map_err(|e| {
            ManagerError::Config(format!("IMIP_MANAGER_SMTP_URL: {} ({e})", url.redacted()))
        })
}

/// Where one answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Submitted; waiting for the processor to apply it.
    Sent,
    /// The processor applied it (a `queue.changed` for its UID arrived).
    Applied,
    /// An attempt failed; the next one is at `retry_at`.
    Retrying {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// Every attempt failed.
    Failed { error: String },
}

/// One answer as the page shows it.
#[derive(Debug, Clone)]
pub struct Status {
    pub uid: String,
    pub recurrence_id: Option<DateTime<Utc>>,
    pub summary: String,
    pub partstat: String,
    pub state: State,
    pub at: DateTime<Utc>,
}

/// An answer's messages; `None` once sent.
struct Job {
    messages: Vec<Option<Message>>,
}

/// The answers of this process, per user (the newest few kept).
pub struct Outbox {
    transport: Transport,
    attempts: u32,
    statuses: Mutex<HashMap<String, Vec<Status>>>,
}

/// Answers kept per user for the page.
const KEPT: usize = 20;

impl Outbox {
    pub fn new(transport: Transport, attempts: u32) -> Arc<Self> {
        Arc::new(Outbox {
            transport,
            attempts: attempts.max(1),
            statuses: Mutex::new(HashMap::new()),
        })
    }

    /// The user's answers, newest first.
    pub fn statuses(&self, user: &str) -> Vec<Status> {
        let map = self.statuses.lock().expect("outbox lock");
        map.get(user).cloned().unwrap_or_default()
    }

    fn set(&self, user: &str, uid: &str, rid: Option<DateTime<Utc>>, state: State) {
        let mut map = self.statuses.lock().expect("outbox lock");
        if let Some(s) = map.get_mut(user).and_then(|v| {
            v.iter_mut()
                .find(|s| s.uid == uid && s.recurrence_id == rid)
        }) {
            s.state = state;
        }
    }

    /// A change event for `user`'s `uid` arrived: answers sent for it are applied.
    pub fn applied(&self, user: &str, uid: &str) {
        let mut map = self.statuses.lock().expect("outbox lock");
        for s in map.get_mut(user).into_iter().flatten() {
            if s.uid == uid && s.state == State::Sent {
                s.state = State::Applied;
            }
        }
    }

    /// Sends an answer's messages now; on failure, keeps trying in the
    /// background. Returns the state after the first attempt.
    pub async fn submit(
        self: &Arc<Self>,
        user: &str,
        status: Status,
        messages: Vec<Message>,
    ) -> State {
        let (uid, rid) = (status.uid.clone(), status.recurrence_id);
        {
            let mut map = self.statuses.lock().expect("outbox lock");
            let list = map.entry(user.to_owned()).or_default();
            list.retain(|s| !(s.uid == uid && s.recurrence_id == rid));
            list.insert(0, status);
            list.truncate(KEPT);
        }
        let mut job = Job {
            messages: messages.into_iter().map(Some).collect(),
        };
        let state = match self.attempt(&mut job).await {
            Ok(()) => State::Sent,
            Err(error) if self.attempts > 1 => State::Retrying {
                error,
                retry_at: Utc::now() + chrono::Duration::seconds(1),
            },
            Err(error) => State::Failed { error },
        };
        self.set(user, &uid, rid, state.clone());
        if matches!(state, State::Retrying { .. }) {
            let me = self.clone();
            let user = user.to_owned();
            tokio::spawn(async move { me.retry(user, uid, rid, job).await });
        }
        state
    }

    async fn retry(
        self: Arc<Self>,
        user: String,
        uid: String,
        rid: Option<DateTime<Utc>>,
        mut job: Job,
    ) {
        let mut wait = Duration::from_secs(1);
        for attempt in 2..=self.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
            match self.attempt(&mut job).await {
                Ok(()) => {
                    tracing::info!(%user, %uid, attempt, "answer sent after retrying");
                    self.set(&user, &uid, rid, State::Sent);
                    return;
                }
                Err(error) if attempt < self.attempts => {
                    tracing::warn!(%user, %uid, attempt, %error, "answer not sent; retrying");
                    let retry_at = Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
                    self.set(&user, &uid, rid, State::Retrying { error, retry_at });
                }
                Err(error) => {
                    tracing::error!(%user, %uid, attempt, %error, "answer not sent; giving up");
                    metrics::counter!("imip_manager_replies_total", "outcome" => "failed")
                        .increment(1);
                    self.set(&user, &uid, rid, State::Failed { error });
                }
            }
        }
    }

    /// Sends what of `job` is not sent yet, in order; stops at the first failure.
    async fn attempt(&self, job: &mut Job) -> Result<(), String> {
        for slot in job.messages.iter_mut() {
            if let Some(m) = slot {
                self.transport
                    .send(m.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                *slot = None;
            }
        }
        metrics::counter!("imip_manager_replies_total", "outcome" => "sent").increment(1);
        Ok(())
    }
}

/// Characters of a subject at most: the organizer's SUMMARY is in it, and a
/// 100 KB one would make a header line no MTA takes.
const SUBJECT_CHARS: usize = 200;

/// `subject` as one header line: control characters (a CR LF the organizer
/// put in the SUMMARY, to add a `Bcc:`) become spaces, runs of white space
/// one, and it is cut at [`SUBJECT_CHARS`].
pub fn subject_line(subject: &str) -> String {
    let mut out = String::new();
    for word in subject
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    match out.char_indices().nth(SUBJECT_CHARS) {
        Some((at, _)) => format!("{}…", &out[..at]),
        None => out,
    }
}

/// The two messages of an answer: to the organizer from the user, and to
/// the user from the calendar address.
pub fn messages(
    user: &str,
    organizer: &str,
    calendar: &str,
    subject: &str,
    ics: &str,
) -> Result<Vec<Message>, ManagerError> {
    let subject = subject_line(subject);
    let content_type = ContentType::parse("text/calendar; method=REPLY; charset=UTF-8")
        .map_err(|e| ManagerError::Smtp(e.to_string()))?;
    let one = |from: &str, to: &str| -> Result<Message, ManagerError> {
        let bad = |e: lettre::address::AddressError| ManagerError::Smtp(format!("{e}"));
        Message::builder()
            .from(from.parse().map_err(bad)?)
            .to(to.parse().map_err(bad)?)
            .subject(subject.clone())
            .message_id(None)
            .header(content_type.clone())
            .body(ics.to_owned())
            .map_err(|e| ManagerError::Smtp(e.to_string()))
    };
    Ok(vec![one(user, organizer)?, one(calendar, user)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_one_short_line() {
        assert_eq!(
            subject_line("Accepted: Hi\r\nBcc: victim@evil.example\n\tX: y"),
            "Accepted: Hi Bcc: victim@evil.example X: y"
        );
        let long = subject_line(&"é".repeat(100_000));
        assert_eq!(long.chars().count(), SUBJECT_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
