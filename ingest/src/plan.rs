//! The pure core of ingest: one raw message in, payloads and quarantine records out.
//!
//! No I/O happens here, so the whole decision (what to publish, under which
//! dedupe id, what to quarantine and why) is testable and fuzzable on its own.

use crate::config::Limits;
use crate::ical::{self, Refusal};
use crate::mime;
use chrono::{DateTime, Utc};
use imipflow_schema::{
    Direction, MAX_ADDRESS_BYTES, PAYLOAD_VERSION, Payload, QUARANTINE_VERSION, QuarantineReason,
    QuarantineRecord, normalize_address,
};
use sha2::{Digest, Sha256};

/// What the MTA told us about the message.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub direction: Direction,
    pub sender: String,
    pub recipients: Vec<String>,
}

/// One thing to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A payload and its JSON, serialised once (the size limit needs it anyway).
    Payload {
        payload: Box<Payload>,
        json: Vec<u8>,
    },
    Quarantine(Box<QuarantineRecord>),
}

impl Output {
    pub fn dedupe_id(&self) -> &str {
        match self {
            Output::Payload { payload, .. } => &payload.dedupe_id,
            Output::Quarantine(q) => &q.dedupe_id,
        }
    }

    pub fn to_json(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Output::Payload { json, .. } => std::borrow::Cow::Borrowed(json),
            Output::Quarantine(q) => {
                std::borrow::Cow::Owned(serde_json::to_vec(q).expect("contract types serialise"))
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    pub outputs: Vec<Output>,
}

/// The raw message as read, possibly cut at the size limit.
pub struct RawMail<'a> {
    pub bytes: &'a [u8],
    /// Full size of the message (more than `bytes.len()` when it was cut).
    pub total_size: u64,
    /// Whether the part beyond `bytes` contained calendar markers.
    pub calendar_beyond_limit: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefix each field so that field boundaries cannot shift.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Digest of the text with line endings unified, so that the same object
/// carried inline and as an attachment (with different line endings) counts
/// once. Equal to `sha256(&[text.replace("\r\n", "\n").trim()])`, computed
/// without copying the text (it may be many MiB).
fn canonical_digest(text: &str) -> [u8; 32] {
    let t = text.trim().as_bytes();
    let is_crlf = |i: usize| t.get(i + 1) == Some(&b'\n');
    let mut crlf = 0;
    mime::any_at(t, b'\r', |i| {
        crlf += is_crlf(i) as usize;
        false
    });
    let mut h = Sha256::new();
    h.update(((t.len() - crlf) as u64).to_be_bytes());
    let mut from = 0;
    mime::any_at(t, b'\r', |i| {
        if is_crlf(i) {
            h.update(&t[from..i]);
            from = i + 1;
        }
        false
    });
    h.update(&t[from..]);
    h.finalize().into()
}

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

struct Ctx<'a> {
    env: &'a Envelope,
    sender: String,
    recipients: Vec<String>,
    users: Vec<String>,
    message_id: Option<String>,
    /// Identity of the message across MTA re-deliveries: its Message-ID, or the
    /// digest of its bytes when it has none.
    message_key: Vec<u8>,
    now: DateTime<Utc>,
    limits: &'a Limits,
}

impl Ctx<'_> {
    fn quarantine(
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

/// Decides what a message becomes. An empty plan means: nothing calendar-related.
///
/// Never panics: should a bug in ingest or in a parser it uses panic on some
/// input (the fuzz targets exist so that none does), the message is
/// quarantined as `invalid_calendar` with the panic in the detail, so that the
/// MTA still gets exit 0 and delivers the mail instead of bouncing it.
pub fn plan(mail: &RawMail<'_>, env: &Envelope, limits: &Limits, now: DateTime<Utc>) -> Plan {
    let run = std::panic::AssertUnwindSafe(|| plan_unguarded(mail, env, limits, now));
    match std::panic::catch_unwind(run) {
        Ok(plan) => plan,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let mut ctx = Ctx::new(env, limits, now);
            ctx.message_key = [b"sha:".as_slice(), &sha256(&[mail.bytes])].concat();
            let q = ctx.quarantine(
                QuarantineReason::InvalidCalendar,
                format!("internal error while reading this message: {what}"),
                None,
                mail.bytes,
                mail.total_size,
            );
            Plan { outputs: vec![q] }
        }
    }
}

impl<'a> Ctx<'a> {
    fn new(env: &'a Envelope, limits: &'a Limits, now: DateTime<Utc>) -> Self {
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
        Ctx {
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

/// [`plan`] without the panic guard: what the fuzz targets call, so that a
/// panic is reported as a finding instead of becoming a quarantine record.
pub fn plan_unguarded(
    mail: &RawMail<'_>,
    env: &Envelope,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Plan {
    let raw = mail.bytes;
    let too_large = mail.total_size > limits.max_message_bytes as u64;
    let calendar = mime::looks_calendar(raw) || (too_large && mail.calendar_beyond_limit);
    if !calendar {
        return Plan::default();
    }

    let mut ctx = Ctx::new(env, limits, now);
    if too_large {
        return refuse_too_large(&mut ctx, mail);
    }
    let delimiters = mime::delimiter_lines(raw);
    if delimiters > mime::MAX_MIME_PARTS {
        ctx.message_key = [b"sha:".as_slice(), &sha256(&[raw])].concat();
        let detail = format!(
            "{delimiters} MIME delimiter lines, limit {}",
            mime::MAX_MIME_PARTS
        );
        return ctx.refuse_message(QuarantineReason::TooManyMimeParts, detail, raw);
    }

    let parts = mime::calendar_parts(raw);
    ctx.message_id = parts.message_id.clone();
    ctx.message_key = match &parts.message_id {
        Some(id) if !id.is_empty() => [b"id:".as_slice(), id.as_bytes()].concat(),
        _ => [b"sha:".as_slice(), &sha256(&[raw])].concat(),
    };

    let objects = calendar_objects(&parts);
    if objects.is_empty() {
        return Plan::default();
    }
    if objects.len() > limits.max_calendar_parts {
        let detail = format!(
            "{} calendar objects, limit {}",
            objects.len(),
            limits.max_calendar_parts
        );
        return ctx.refuse_message(QuarantineReason::TooManyCalendarParts, detail, raw);
    }

    // Parse first, so that objects without METHOD (not iMIP) drop out before indexing.
    let parsed: Vec<ParsedObject<'_>> = objects
        .iter()
        .filter_map(|o| {
            let result = match ical::parse_object(o.text, o.method, limits) {
                Ok(Some(p)) => Ok(p),
                Ok(None) => return None,
                Err(r) => Err(r),
            };
            Some(ParsedObject {
                text: o.text,
                lossy: o.lossy,
                digest: o.digest,
                result,
            })
        })
        .collect();
    if let Some((reason, detail)) = message_cost_refusal(&parsed, limits, now) {
        return ctx.refuse_message(reason, detail, raw);
    }
    let count = parsed.len() as u32;
    let mut outputs = Vec::new();
    for (index, object) in parsed.into_iter().enumerate() {
        object_outputs(&ctx, index as u32, count, object, &mut outputs);
    }
    Plan { outputs }
}

/// A message over the size limit: one quarantine record, keyed by what was
/// read and the full size (the cut message has no reliable Message-ID).
fn refuse_too_large(ctx: &mut Ctx<'_>, mail: &RawMail<'_>) -> Plan {
    ctx.message_key = sha256(&[mail.bytes, &mail.total_size.to_be_bytes()]).to_vec();
    let detail = format!(
        "message of {} bytes, limit {}",
        mail.total_size, ctx.limits.max_message_bytes
    );
    let q = ctx.quarantine(
        QuarantineReason::MessageTooLarge,
        detail,
        None,
        mail.bytes,
        mail.total_size,
    );
    Plan { outputs: vec![q] }
}

/// One calendar object of the message, in MIME order.
struct CalendarObject<'t> {
    text: &'t str,
    /// The Content-Type's `method=` of the part it came in.
    method: Option<&'t str>,
    lossy: bool,
    digest: [u8; 32],
}

/// The message's calendar objects in MIME order; the same object carried
/// twice (inline and as invite.ics, as Thunderbird and Google do) is kept
/// once. A part without any VCALENDAR block stays one object, for the parser
/// to refuse.
fn calendar_objects(mail: &mime::Mail) -> Vec<CalendarObject<'_>> {
    let mut objects = Vec::new();
    // A BTreeSet: a HashSet's RandomState would cost a getrandom call.
    let mut seen = std::collections::BTreeSet::new();
    for part in &mail.parts {
        let blocks = ical::split_vcalendars(&part.text);
        let method = part.method_param.as_deref();
        if blocks.is_empty() {
            let digest = canonical_digest(&part.text);
            objects.push(CalendarObject {
                text: part.text.as_str(),
                method,
                lossy: part.lossy,
                digest,
            });
        }
        for b in blocks {
            let digest = canonical_digest(b);
            if seen.insert(digest) {
                objects.push(CalendarObject {
                    text: b,
                    method,
                    lossy: part.lossy,
                    digest,
                });
            }
        }
    }
    objects
}

/// A calendar object with METHOD (iMIP), parsed or refused.
struct ParsedObject<'t> {
    text: &'t str,
    lossy: bool,
    digest: [u8; 32],
    result: Result<ical::Parsed, Refusal>,
}

/// What the whole message would cost: refused as one, before any payload.
fn message_cost_refusal(
    parsed: &[ParsedObject<'_>],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Option<(QuarantineReason, String)> {
    let ok = || parsed.iter().filter_map(|o| o.result.as_ref().ok());
    let values: usize = ok().flat_map(|p| &p.series).map(|s| s.values).sum();
    let instances: u64 = ok()
        .flat_map(|p| &p.series)
        .map(|s| s.instances(now))
        .fold(0, u64::saturating_add);
    if values > limits.max_message_recurrence_values {
        Some((
            QuarantineReason::TooManyRecurrenceValues,
            format!(
                "{values} RRULE/RDATE/EXDATE values in the message, limit {}",
                limits.max_message_recurrence_values
            ),
        ))
    } else if instances > limits.max_message_instances {
        Some((
            QuarantineReason::TooManyInstances,
            format!(
                "the message's events make about {instances} instances (each series counted \
                 up to {} a year ahead), limit {}",
                ical::ASSUMED_MAX_INSTANCES,
                limits.max_message_instances
            ),
        ))
    } else {
        None
    }
}

/// What object number `index` (of `count`) becomes: its quarantine record,
/// or one payload per user (each refused on its own when too large).
fn object_outputs(
    ctx: &Ctx<'_>,
    index: u32,
    count: u32,
    object: ParsedObject<'_>,
    outputs: &mut Vec<Output>,
) {
    let ParsedObject {
        text,
        lossy,
        digest,
        result,
    } = object;
    let quarantine = |reason, detail| {
        ctx.quarantine(
            reason,
            detail,
            Some(index),
            text.as_bytes(),
            text.len() as u64,
        )
    };
    let mut parsed = match result {
        Ok(p) => p,
        Err(r) => {
            outputs.push(quarantine(r.reason, r.detail));
            return;
        }
    };
    if ctx.users.is_empty() {
        let detail = match ctx.env.direction {
            Direction::Outgoing => {
                format!(
                    "envelope sender {:?} is not an address",
                    ical::shown(&ctx.env.sender)
                )
            }
            Direction::Incoming => "no envelope recipient is an address".to_owned(),
        };
        outputs.push(quarantine(QuarantineReason::InvalidAddress, detail));
        return;
    }
    if lossy {
        parsed
            .warnings
            .push("calendar part was not valid in its charset; bytes were replaced".to_owned());
    }
    for user in &ctx.users {
        let payload = ctx.payload(user, index, count, text, &digest, &parsed);
        let json = serde_json::to_vec(&payload).expect("contract types serialise");
        let size = json.len();
        if size > ctx.limits.max_payload_bytes {
            let detail = format!(
                "payload of {size} bytes, limit {}",
                ctx.limits.max_payload_bytes
            );
            outputs.push(quarantine(QuarantineReason::PayloadTooLarge, detail));
        } else {
            outputs.push(Output::Payload {
                payload: Box::new(payload),
                json,
            });
        }
    }
}

impl Ctx<'_> {
    /// The payload of one parsed object for one user.
    fn payload(
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
    fn refuse_message(&self, reason: QuarantineReason, detail: String, raw: &[u8]) -> Plan {
        let q = self.quarantine(reason, detail, None, raw, raw.len() as u64);
        Plan { outputs: vec![q] }
    }
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

    #[test]
    fn dedupe_ids_tell_envelope_senders_apart() {
        let mail =
            b"From: alice@example.com\r\nMessage-ID: <m@x>\r\nContent-Type: text/calendar\r\n\r\n\
BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u\r\nDTSTART:20270315T090000Z\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
        let mail = RawMail {
            bytes: mail,
            total_size: mail.len() as u64,
            calendar_beyond_limit: false,
        };
        let id = |sender: &str| {
            let env = Envelope {
                direction: Direction::Incoming,
                sender: sender.into(),
                recipients: vec!["bob@example.org".into()],
            };
            let plan = plan(&mail, &env, &Limits::default(), Utc::now());
            plan.outputs[0].dedupe_id().to_owned()
        };
        assert_ne!(id("list-bounces@lists.example"), id("alice@example.com"));
        assert_eq!(id("Alice@Example.com"), id("alice@example.com"));
    }

    #[test]
    fn canonical_digest_unifies_line_endings_without_copying() {
        for text in [
            "",
            "a",
            "\r\n a\r\nb\nc\r\n\r\n ",
            "x\r",
            "\r\r\n\n",
            "é\r\nü",
        ] {
            let copy = text.replace("\r\n", "\n");
            assert_eq!(
                canonical_digest(text),
                sha256(&[copy.trim().as_bytes()]),
                "{text:?}"
            );
        }
        assert_eq!(canonical_digest("a\r\nb"), canonical_digest("a\nb"));
    }
}
