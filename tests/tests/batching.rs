//! Batches of many (one load / apply / write per batch) against batches of
//! one (`IMIP_APPLY_PER_MESSAGE=1`, the lane's fallback): the same messages,
//! published before the processor starts
//! so that lanes take them in large batches, must leave identical tables and
//! identical change events whichever path applied them.
//!
//! The traffic packs into one batch what interacts across messages: a series
//! and its overrides, an update, a stale re-send, a duplicate (same dedupe id,
//! different broker id), replies, queue entries replaced and cleared, cancels,
//! and an unreadable payload that goes to the dead-letter table.

use imipflow_tests::{TestEnv, imip_mail, json_lines, vevent};
use serde_json::Value;

const USERS: usize = 6;
const ORGANIZER: &str = "orga@example.net";

/// The payloads of one mail, planned by the real `imip-ingest --print`.
async fn plan(
    env: &TestEnv,
    method: &str,
    from: &str,
    to: Option<&str>,
    comps: &[&[&str]],
) -> Vec<Value> {
    let comps: Vec<Vec<String>> = comps.iter().map(|c| vevent(c)).collect();
    let mail = imip_mail(method, from, &format!("{method}-{}@x", comps.len()), &comps);
    let args: Vec<&str> = match to {
        Some(to) => vec![
            "--print",
            "--direction",
            "incoming",
            "--sender",
            from,
            "--recipient",
            to,
        ],
        None => vec!["--print", "--sender", from],
    };
    let out = env.ingest(&args, &mail).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

/// Templates for user "u0@example.com"; each user gets them with the address replaced.
async fn templates(env: &TestEnv) -> Vec<Value> {
    let me = "u0@example.com";
    let org = format!("ORGANIZER:mailto:{me}");
    let mut t = Vec::new();
    let series: &[&str] = &[
        "UID:s",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART;TZID=Europe/Berlin:20270302T100000",
        "DTEND;TZID=Europe/Berlin:20270302T110000",
        "RRULE:FREQ=WEEKLY;COUNT=6",
        &org,
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.org",
    ];
    let moved: &[&str] = &[
        "UID:s",
        "RECURRENCE-ID;TZID=Europe/Berlin:20270316T100000",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART;TZID=Europe/Berlin:20270316T140000",
        "DTEND;TZID=Europe/Berlin:20270316T150000",
        &org,
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.org",
    ];
    let single = |seq: &'static str, start: &'static str, end: &'static str| -> Vec<String> {
        vec![
            "UID:a".into(),
            format!("SEQUENCE:{seq}"),
            "DTSTAMP:20270101T000000Z".into(),
            format!("DTSTART:{start}"),
            format!("DTEND:{end}"),
            org.clone(),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.org".into(),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:other@example.org".into(),
        ]
    };
    let a0 = single("0", "20270305T090000Z", "20270305T100000Z");
    let a1 = single("1", "20270305T130000Z", "20270305T140000Z");
    let a0s: Vec<&str> = a0.iter().map(String::as_str).collect();
    let a1s: Vec<&str> = a1.iter().map(String::as_str).collect();
    // 0: a series with one moved instance, in one message.
    t.extend(plan(env, "REQUEST", me, None, &[series, moved]).await);
    // 1: a single event; 2: its update; 3: the first version again (stale).
    t.extend(plan(env, "REQUEST", me, None, &[&a0s]).await);
    t.extend(plan(env, "REQUEST", me, None, &[&a1s]).await);
    t.extend(plan(env, "REQUEST", me, None, &[&a0s]).await);
    // 4: a guest's reply to it.
    let reply: &[&str] = &[
        "UID:a",
        "SEQUENCE:1",
        "DTSTAMP:20270102T000000Z",
        &org,
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:guest@example.org",
    ];
    t.extend(plan(env, "REPLY", "guest@example.org", Some(me), &[reply]).await);
    // 5, 6, 7: an invitation to the user, a newer version, an older one (queue).
    let invite = |seq: &'static str, stamp: &'static str| -> Vec<String> {
        vec![
            "UID:q".into(),
            format!("SEQUENCE:{seq}"),
            format!("DTSTAMP:{stamp}"),
            "DTSTART:20270310T090000Z".into(),
            "DTEND:20270310T100000Z".into(),
            format!("ORGANIZER:mailto:{ORGANIZER}"),
            format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{me}"),
        ]
    };
    for (seq, stamp) in [
        ("0", "20270101T000000Z"),
        ("2", "20270103T000000Z"),
        ("1", "20270102T000000Z"),
    ] {
        let v = invite(seq, stamp);
        let vs: Vec<&str> = v.iter().map(String::as_str).collect();
        t.extend(plan(env, "REQUEST", ORGANIZER, Some(me), &[&vs]).await);
    }
    // 8: the user accepts (clears the queue entry, the event becomes busy).
    let answer: Vec<String> = vec![
        "UID:q".into(),
        "SEQUENCE:2".into(),
        "DTSTAMP:20270104T000000Z".into(),
        "DTSTART:20270310T090000Z".into(),
        "DTEND:20270310T100000Z".into(),
        format!("ORGANIZER:mailto:{ORGANIZER}"),
        format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{me}"),
    ];
    let answer: Vec<&str> = answer.iter().map(String::as_str).collect();
    t.extend(plan(env, "REPLY", me, None, &[&answer]).await);
    // 9: cancel one instance of the series; 10: cancel the single event.
    let cancel_one: &[&str] = &[
        "UID:s",
        "RECURRENCE-ID;TZID=Europe/Berlin:20270323T100000",
        "SEQUENCE:1",
        "DTSTAMP:20270105T000000Z",
        &org,
        "STATUS:CANCELLED",
    ];
    t.extend(plan(env, "CANCEL", me, None, &[cancel_one]).await);
    let cancel_a: &[&str] = &[
        "UID:a",
        "SEQUENCE:2",
        "DTSTAMP:20270105T000000Z",
        &org,
        "STATUS:CANCELLED",
    ];
    t.extend(plan(env, "CANCEL", me, None, &[cancel_a]).await);
    assert_eq!(t.len(), 11, "every template makes one payload");
    t
}

/// Every user's messages, interleaved across users, with a duplicate and a poison message.
fn traffic(templates: &[Value]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, tpl) in templates.iter().enumerate() {
        for u in 0..USERS {
            let user = format!("u{u}@example.com");
            let text = tpl.to_string().replace("u0@example.com", &user);
            let mut p: Value = serde_json::from_str(&text).unwrap();
            p["dedupe_id"] = format!("{user}-{k}").into();
            let json = serde_json::to_vec(&p).unwrap();
            out.push((format!("{user}-{k}"), json.clone()));
            if k == 1 {
                // The same message again under another broker id: applied once.
                out.push((format!("{user}-{k}-again"), json));
            }
            if k == 4 && u == 0 {
                let mut bad = p.clone();
                bad["version"] = 999.into();
                bad["dedupe_id"] = "poison".into();
                out.push(("poison".into(), serde_json::to_vec(&bad).unwrap()));
            }
        }
    }
    out
}

async fn publish(env: &TestEnv, msgs: &[(String, Vec<u8>)]) {
    let js = env.jetstream().await;
    let ns = imipflow_schema::Namespace::new(&env.namespace).unwrap();
    let mut acks = Vec::new();
    for (id, json) in msgs {
        let user = serde_json::from_slice::<Value>(json).unwrap()["user"]
            .as_str()
            .unwrap()
            .to_owned();
        let subject = ns.message_subject(
            imipflow_schema::partition(&user, env.partitions),
            &imipflow_schema::user_key(&user),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        acks.push(
            js.publish_with_headers(subject, headers, json.clone().into())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Everything the processor writes, without what legitimately differs
/// between runs (timestamps, namespace, dead-letter ids).
async fn snapshot(env: &TestEnv) -> Vec<String> {
    let db = env.pg().await;
    let mut out = Vec::new();
    for q in [
        "SELECT concat_ws(' ', user_addr, uid, recurrence_key, recurrence_id, sequence, dtstamp, status, summary,
                organizer, dtstart, dtend, data::text) FROM objects ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, uid, recurrence_key, address, partstat, role, answer_sequence,
                answer_dtstamp) FROM attendees ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, uid, instance, period, fbtype, recurrence_id) FROM freebusy ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, uid, materialised_until) FROM open_series ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, uid, recurrence_key, organizer, summary, sequence, dtstamp, data::text)
         FROM request_queue ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, dedupe_id, stream_seq, method, outcome, reason) FROM message_log ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, last_seq) FROM user_events ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, user_seq, partition, event_id, kind, (body - 'time')::text,
                published_at IS NOT NULL) FROM outbox ORDER BY 1",
        "SELECT concat_ws(' ', user_addr, partition, stream_seq, length(payload), error) FROM dead_letters ORDER BY 1",
    ] {
        for r in db.query(q, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0).replace(&env.namespace, "NS"));
        }
    }
    out
}

#[tokio::test]
async fn batched_and_per_message_paths_leave_identical_tables_and_events() {
    let per_message = TestEnv::new().await;
    let batched = TestEnv::new().await;
    // Batches of three: most messages find their UID's state in the database
    // (written by an earlier batch), so the batch writes only differences.
    let small = TestEnv::new().await;
    let msgs = traffic(&templates(&per_message).await);
    let mut snaps = Vec::new();
    for (env, extra) in [
        (&per_message, vec![("IMIP_APPLY_PER_MESSAGE", "1")]),
        (&batched, vec![]),
        (&small, vec![("IMIP_BATCH_SIZE", "3")]),
    ] {
        publish(env, &msgs).await;
        let p = env.start_processor(&extra);
        env.wait_applied().await;
        assert!(p.terminate().await.success());
        snaps.push(snapshot(env).await);
    }
    let a = &snaps[0];
    for (b, what) in [(&snaps[1], "batched"), (&snaps[2], "batches of three")] {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x, y, "per-message (left) and {what} (right) differ");
        }
        assert_eq!(a.len(), b.len(), "per-message and {what}");
    }
    let text = a.join("\n");
    // The traffic did what it is for (so the comparison means something).
    for needle in [
        " applied",
        " stale",
        "queue.changed",
        "freebusy.changed",
        "payload version 999",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    let logged = a
        .iter()
        .filter(|l| l.contains(" applied") || l.contains(" stale"))
        .count();
    assert!(logged >= USERS * 10, "{logged} log lines");
}
