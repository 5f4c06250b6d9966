//! The bodies of the fuzz targets, as plain functions so that the regression
//! test (`tests/tests/malformed.rs`, which includes this file by path) replays
//! minimised crashers without libFuzzer or a nightly toolchain.
//!
//! Each function panics exactly when the fuzzer should report a finding.

use chrono::{DateTime, Duration, TimeZone, Utc};
use imipflow_ingest::{Envelope, Limits, ical, mime, plan};
use imipflow_schema::{Direction, Payload};
use imipflow_semantics::method as semantics;
use imipflow_semantics::model::{Ctx, UidState};
use std::collections::BTreeMap;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap()
}

fn run_plan(mail: &[u8], env: &Envelope) -> Vec<Payload> {
    let input = plan::RawMail {
        bytes: mail,
        total_size: mail.len() as u64,
        calendar_beyond_limit: false,
    };
    plan::plan_unguarded(&input, env, &Limits::default(), now())
        .outputs
        .into_iter()
        .filter_map(|o| match o {
            plan::Output::Payload { payload, json } => {
                // What ingest publishes, the processor must be able to read.
                let back = Payload::from_json(&json).expect("a published payload must deserialise");
                // PostgreSQL refuses NUL in text and jsonb: one would fail the
                // processor's transaction.
                let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert!(!has_nul(&value), "NUL in a payload");
                assert_eq!(back.dedupe_id, payload.dedupe_id);
                Some(*payload)
            }
            plan::Output::Quarantine(_) => None,
        })
        .collect()
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Target `mime`: a whole raw mail through ingest's pure core.
pub fn mime(data: &[u8]) {
    let _ = mime::calendar_parts(data);
    let env = Envelope {
        direction: Direction::Outgoing,
        sender: "alice@example.com".into(),
        recipients: vec!["bob@example.org".into()],
    };
    run_plan(data, &env);
}

/// Target `ical_plan`: the body of a `text/calendar` part, parsed directly and
/// through the whole plan wrapped in a minimal mail.
pub fn ical_plan(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let limits = Limits::default();
    for block in ical::split_vcalendars(&text) {
        let _ = ical::parse_object(block, Some("REQUEST"), &limits);
    }
    let env = Envelope {
        direction: Direction::Incoming,
        sender: "alice@example.com".into(),
        recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
    };
    run_plan(&wrap(data), &env);
}

fn wrap(ics: &[u8]) -> Vec<u8> {
    let mut mail = b"Message-ID: <f@fuzz>\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n".to_vec();
    mail.extend_from_slice(ics);
    mail
}

const USERS: [&str; 4] = [
    "alice@example.com",
    "bob@example.org",
    "carol@example.org",
    "manager@example.com",
];
const ZONES: [chrono_tz::Tz; 4] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
];

/// Whether PostgreSQL's `timestamptz` can hold `t` (4713 BC to 294276 AD):
/// every instant the semantics return is written by the store.
fn storable(t: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    t.year() > -4712 && t.year() < 294_276
}

fn apply_all(states: &mut BTreeMap<String, UidState>, payload: &Payload, ctx: &Ctx) {
    let mut uids: Vec<&str> = payload.components.iter().map(|c| c.uid.as_str()).collect();
    uids.sort_unstable();
    uids.dedup();
    for uid in uids {
        let state = states.get(uid).cloned().unwrap_or_default();
        let out = semantics::apply(&state, payload, uid, ctx);
        for p in &out.periods {
            assert!(storable(p.start) && storable(p.end), "period {p:?}");
            assert!(p.recurrence_id.is_none_or(storable), "period {p:?}");
        }
        assert!(
            out.complete_until.is_none_or(storable),
            "{:?}",
            out.complete_until
        );
        for o in &out.state.objects {
            assert!(
                o.recurrence_id.is_none_or(storable),
                "{:?}",
                o.recurrence_id
            );
        }
        states.insert(uid.to_owned(), out.state);
    }
}

/// Target `semantics`: one control byte, then two iCalendar texts separated by
/// a NUL byte. The first builds the stored state (its payloads applied, as the
/// user's own outgoing messages, to an empty store); the second is the message
/// applied to it. Payloads come from ingest's plan, so they have the shapes the
/// processor really receives. Then every state is materialised and re-expanded
/// over a window chosen by the control byte, as `imip-ctl freebusy` does.
///
/// Control byte: bit 0 incoming direction, bit 1 sender is the trusted manager,
/// bits 2-3 the user, bits 4-5 the default zone, bits 6-7 the query window.
pub fn semantics(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let user = USERS[usize::from((control >> 2) & 3)];
    let incoming = control & 1 == 1;
    let sender = match (incoming, control & 2 == 2) {
        (false, _) => user,
        (true, true) => "manager@example.com",
        (true, false) => "alice@example.com",
    };
    let env = Envelope {
        direction: if incoming {
            Direction::Incoming
        } else {
            Direction::Outgoing
        },
        sender: sender.into(),
        recipients: vec![user.into()],
    };
    let ctx = Ctx {
        default_tz: ZONES[usize::from((control >> 4) & 3)],
        now: now(),
        horizon: Duration::days(366),
        max_instances: 5000,
        managers: vec!["manager@example.com".into()],
    };
    let own = Envelope {
        direction: Direction::Outgoing,
        sender: user.into(),
        recipients: Vec::new(),
    };
    let mut states = BTreeMap::new();
    for p in run_plan(&wrap(first), &own) {
        apply_all(&mut states, &p, &ctx);
    }
    for p in run_plan(&wrap(second), &env) {
        apply_all(&mut states, &p, &ctx);
    }
    let now = ctx.now;
    let (from, to) = match control >> 6 {
        0 => (now, now + Duration::days(30)),
        1 => (
            now + Duration::days(365 * 50),
            now + Duration::days(365 * 50 + 7),
        ),
        2 => (now - Duration::days(365 * 30), now + Duration::days(365)),
        _ => (
            now + Duration::days(365 * 7000),
            now + Duration::days(365 * 7000 + 2),
        ),
    };
    for state in states.values() {
        let m = semantics::materialise_bounded(state, user, &ctx);
        assert!(m.periods.len() <= ctx.max_instances + state.objects.len() + 1);
        let w = semantics::periods_in_window(state, user, from, to, &ctx);
        assert!(w.len() <= 100_000);
    }
}
