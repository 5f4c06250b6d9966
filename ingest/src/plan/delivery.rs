//! What every output of one message shares: its envelope normalised (whose
//! records change), its identity across MTA re-deliveries, when it was read,
//! and the limits; and how a payload or a quarantine record is made of it.

use super::digest::{hex, sha256};
use super::{Envelope, Output, Plan};
use crate::config::Limits;
use crate::ical;
use chrono::{DateTime, Utc};
use imipflow_schema::{
    Direction, MAX_ADDRESS_BYTES, PAYLOAD_VERSION, Payload, QUARANTINE_VERSION, QuarantineReason,
    QuarantineRecord, normalize_address,
};

fn excerpt(bytes: &[u8], limit: usize) -> (String, bool) {
    let cut = bytes.len() > limit;
    let mut end = bytes.len().min(limit);
    // Don't split a UTF-8 sequence.
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    // No NUL: quarantine records may end up in PostgreSQL, which refuses it.
    let text = String::from_utf8_lossy(&bytes[..end]).replace('\0', "\u{FFFD}");
    (text, cut)
}

/// One message as the MTA handed it over: what all its outputs share.
pub(super) struct Delivery<'a> {
    pub(super) env: &'a Envelope,
    pub(super) sender: String,
    pub(super) recipients: Vec<String>,
    pub(super) users: Vec<String>,
    pub(super) message_id: Option<String>,
    /// Identity of the message across MTA re-deliveries: its Message-ID, or the
    /// digest of its bytes when it has none.
    pub(super) message_key: Vec<u8>,
    pub(super) now: DateTime<Utc>,
    pub(super) limits: &'a Limits,
}

impl<'a> Delivery<'a> {
    pub(super) fn new(env: &'a Envelope, limits: &'a Limits, now: DateTime<Utc>) -> Self {
        let sender = envelope_address(&env.sender).unwrap_or_default();
        let recipients: Vec<String> = env
            .recipients
            .iter()
            .filter_map(|r| envelope_address(r))
            .collect();
        let users = match env.direction {
            Direction::Outgoing if !sender.is_empty() => vec![sender.clone()],
            Direction::Outgoing => Vec::new(),
            Direction::Incoming => recipients.clone(),
        };
        Delivery {
            env,
            sender,
            recipients,
            users,
            message_id: None,
            message_key: Vec::new(),
            now,
            limits,
        }
    }
}

impl Delivery<'_> {
    pub(super) fn quarantine(
        &self,
        reason: QuarantineReason,
        detail: String,
        object_index: Option<u32>,
        data: &[u8],
        size: u64,
    ) -> Output {
        let idx = object_index.map(|i| i.to_string()).unwrap_or_default();
        let id = sha256(&[
            b"q",
            direction_tag(self.env.direction),
            self.sender.as_bytes(),
            self.recipients.join(",").as_bytes(),
            &self.message_key,
            reason.as_str().as_bytes(),
            idx.as_bytes(),
        ]);
        let (excerpt, truncated) = excerpt(data, self.limits.excerpt_bytes);
        Output::Quarantine(Box::new(QuarantineRecord {
            version: QUARANTINE_VERSION,
            reason,
            detail,
            users: self.users.clone(),
            direction: self.env.direction,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            message_id: self.message_id.clone(),
            dedupe_id: format!("q-{}", &hex(&id)[..40]),
            object_index,
            ingested_at: self.now,
            size,
            excerpt,
            truncated,
        }))
    }
}

impl Delivery<'_> {
    /// The payload of one parsed object for one user.
    pub(super) fn payload(
        &self,
        user: &str,
        index: u32,
        count: u32,
        text: &str,
        text_digest: &[u8; 32],
        parsed: &ical::Parsed,
    ) -> Payload {
        // The envelope sender is part of the identity: a mailing list's
        // copy (sender `list-bounces@…`) and the organizer's own copy
        // share Message-ID and bytes, and the refused list copy must not
        // make the genuine one a duplicate (JetStream's Nats-Msg-Id, the
        // processor's message_log).
        let id = sha256(&[
            direction_tag(self.env.direction),
            user.as_bytes(),
            self.sender.as_bytes(),
            &self.message_key,
            text_digest,
        ]);
        Payload {
            version: PAYLOAD_VERSION,
            method: parsed.method.clone(),
            user: user.to_owned(),
            direction: self.env.direction,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            message_id: self.message_id.clone(),
            dedupe_id: hex(&id)[..40].to_owned(),
            object_index: index,
            object_count: count,
            ingested_at: self.now,
            components: parsed.components.clone(),
            timezones: parsed.timezones.clone(),
            warnings: parsed.warnings.clone(),
            raw: text.to_owned(),
        }
    }

    /// The whole message refused as one: a single quarantine record.
    pub(super) fn refuse_message(
        &self,
        reason: QuarantineReason,
        detail: String,
        raw: &[u8],
    ) -> Plan {
        let q = self.quarantine(reason, detail, None, raw, raw.len() as u64);
        Plan { outputs: vec![q] }
    }
}

fn direction_tag(d: Direction) -> &'static [u8] {
    match d {
        Direction::Outgoing => b"out",
        Direction::Incoming => b"in",
    }
}

/// An envelope address as the MTA passes it (`${sender}`, `${recipient}`),
/// normalised; `None` unless it has the shape `local@domain` with no space or
/// control character. Postfix and Exim always qualify envelope addresses, so
/// anything else (`<>` of a bounce, a bare local name, a quoting mistake in
/// `master.cf`) is a configuration problem: the message is quarantined with
/// `invalid_address` rather than filed under a user that cannot exist.
/// Longer than an RFC 5321 path allows ([`MAX_ADDRESS_BYTES`]) is not an
/// address either: it also would not fit in a NATS subject (a 4 KB sender
/// made the control line too long, exit 75 on every MTA retry).
pub fn envelope_address(raw: &str) -> Option<String> {
    if raw.len() > 4 * MAX_ADDRESS_BYTES {
        return None;
    }
    let a = normalize_address(raw)?;
    let (local, domain) = a.rsplit_once('@')?;
    let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    (clean(local) && clean(domain) && a.len() <= MAX_ADDRESS_BYTES).then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_addresses_must_be_local_at_domain() {
        assert_eq!(
            envelope_address("<Alice@Example.COM>").as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "",
            "<>",
            "MAILER DAEMON",
            "nobody",
            "@example.com",
            "a@",
            "a b@c.d",
            "a@b\u{1}",
            &format!("{}@example.com", "a".repeat(243)),
            &format!("{}@example.com", "a".repeat(4096)),
        ] {
            assert_eq!(envelope_address(bad), None, "{bad:?}");
        }
    }
}
