//! The pure core of ingest: one raw message in, payloads and quarantine records out.
//!
//! No I/O happens here, so the whole decision (what to publish, under which
//! dedupe id, what to quarantine and why) is testable and fuzzable on its own.
//! [`plan_unguarded`] is the order of the decisions; [`delivery`] makes the
//! outputs, [`digest`] the digests their dedupe ids come from.

mod delivery;
mod digest;

pub use delivery::envelope_address;

use crate::config::Limits;
use crate::ical::{self, Refusal};
use crate::mime;
use chrono::{DateTime, Utc};
use delivery::Delivery;
use digest::{canonical_digest, sha256};
use imipflow_schema::{Direction, Payload, QuarantineReason, QuarantineRecord};

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
            let mut delivery = Delivery::new(env, limits, now);
            delivery.message_key = [b"sha:".as_slice(), &sha256(&[mail.bytes])].concat();
            let q = delivery.quarantine(
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

    let mut delivery = Delivery::new(env, limits, now);
    if too_large {
        return refuse_too_large(&mut delivery, mail);
    }
    let delimiters = mime::delimiter_lines(raw);
    if delimiters > mime::MAX_MIME_PARTS {
        delivery.message_key = [b"sha:".as_slice(), &sha256(&[raw])].concat();
        let detail = format!(
            "{delimiters} MIME delimiter lines, limit {}",
            mime::MAX_MIME_PARTS
        );
        return delivery.refuse_message(QuarantineReason::TooManyMimeParts, detail, raw);
    }

    let parts = mime::calendar_parts(raw);
    delivery.message_id = parts.message_id.clone();
    delivery.message_key = match &parts.message_id {
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
        return delivery.refuse_message(QuarantineReason::TooManyCalendarParts, detail, raw);
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
        return delivery.refuse_message(reason, detail, raw);
    }
    let count = parsed.len() as u32;
    let mut outputs = Vec::new();
    for (index, object) in parsed.into_iter().enumerate() {
        object_outputs(&delivery, index as u32, count, object, &mut outputs);
    }
    Plan { outputs }
}

/// A message over the size limit: one quarantine record, keyed by what was
/// read and the full size (the cut message has no reliable Message-ID).
fn refuse_too_large(delivery: &mut Delivery<'_>, mail: &RawMail<'_>) -> Plan {
    delivery.message_key = sha256(&[mail.bytes, &mail.total_size.to_be_bytes()]).to_vec();
    let detail = format!(
        "message of {} bytes, limit {}",
        mail.total_size, delivery.limits.max_message_bytes
    );
    let q = delivery.quarantine(
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
    delivery: &Delivery<'_>,
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
        delivery.quarantine(
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
    if delivery.users.is_empty() {
        let detail = match delivery.env.direction {
            Direction::Outgoing => {
                format!(
                    "envelope sender {:?} is not an address",
                    ical::shown(&delivery.env.sender)
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
    for user in &delivery.users {
        let payload = delivery.payload(user, index, count, text, &digest, &parsed);
        let json = serde_json::to_vec(&payload).expect("contract types serialise");
        let size = json.len();
        if size > delivery.limits.max_payload_bytes {
            let detail = format!(
                "payload of {size} bytes, limit {}",
                delivery.limits.max_payload_bytes
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
