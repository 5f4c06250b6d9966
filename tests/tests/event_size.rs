//! Change events never exceed what the broker accepts (issue 12), through the
//! real binaries: an hourly series with thousands of stored instances is
//! moved by one minute, which changes every instance at once. The change is
//! published as several `freebusy.changed` events, each within the server's
//! `max_payload`, at consecutive per-user sequences; replaying them gives
//! the free/busy `imip-ctl` reads from PostgreSQL, the publisher's cache ends
//! right, and a later message of another user in the same partition is still
//! applied and published (the lane did not stall on the big event). An
//! outbox row too large to publish, as an older version wrote them, is
//! skipped and does not block the relay either.

use async_nats::jetstream;
use imipflow_tests::servers::{NatsServer, TempDir, spawn_processor};
use imipflow_tests::{TestEnv, free_port, imip_mail, vevent};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const FROM: &str = "2027-01-01T00:00:00Z";
const TO: &str = "2028-01-01T00:00:00Z";

/// Alice's hourly series of `count` half-hour instances from 4 January 2027,
/// `minute` minutes past each hour, as version `seq`.
fn series(uid: &str, seq: u32, minute: u32, count: usize) -> Vec<u8> {
    let lines = [
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:20270101T12{seq:02}00Z"),
        format!("DTSTART:20270104T00{minute:02}00Z"),
        format!("DTEND:20270104T00{:02}00Z", minute + 30),
        format!("RRULE:FREQ=HOURLY;COUNT={count}"),
        "SUMMARY:hourly".to_owned(),
        format!("ORGANIZER:mailto:{ALICE}"),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.net".to_owned(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    imip_mail(
        "REQUEST",
        ALICE,
        &format!("{uid}-{seq}@event-size"),
        &[vevent(&lines)],
    )
}

/// One meeting `user` organizes.
fn meeting(user: &str, uid: &str) -> Vec<u8> {
    let lines = [
        format!("UID:{uid}"),
        "SEQUENCE:0".to_owned(),
        "DTSTAMP:20270101T120000Z".to_owned(),
        "DTSTART:20270301T090000Z".to_owned(),
        "DTEND:20270301T100000Z".to_owned(),
        "SUMMARY:meeting".to_owned(),
        format!("ORGANIZER:mailto:{user}"),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.net".to_owned(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    imip_mail(
        "REQUEST",
        user,
        &format!("{uid}@event-size"),
        &[vevent(&lines)],
    )
}

async fn ingest(env: &TestEnv, sender: &str, mail: &[u8]) {
    let out = env.ingest(&["--sender", sender], mail).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "ingest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything applied and every event published within `within`; else the
/// lane stalled (the processor's log says why).
async fn settle(env: &TestEnv, within: Duration, log: &Path, what: &str) {
    if tokio::time::timeout(within, env.wait_applied())
        .await
        .is_err()
    {
        let db = env.pg().await;
        let unpublished: i64 = db
            .query_one(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "{what}: not applied and published within {within:?} ({unpublished} events \
             unpublished); processor log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
}

/// One published event: its size on the wire (headers and payload, what
/// `max_payload` bounds) and its JSON.
struct Published {
    wire: usize,
    json: Value,
}

/// Every message of the events stream, in stream order.
async fn published(env: &TestEnv) -> Vec<Published> {
    let js = env.jetstream().await;
    let mut stream = js
        .get_stream(format!("{}-events", env.namespace))
        .await
        .expect("events stream");
    let info = stream.info().await.expect("stream info").clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.expect("stored event");
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .expect("Nats-Msg-Id");
        let header = format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n");
        out.push(Published {
            wire: header.len() + m.payload.len(),
            json: serde_json::from_slice(&m.payload).expect("event JSON"),
        });
    }
    out
}

/// Each user's events in stream order; asserts every one fits `max_payload`
/// and that each user's sequences run 1, 2, 3, … up to `user_events.last_seq`.
async fn check_events(
    env: &TestEnv,
    events: &[Published],
    max_payload: usize,
) -> BTreeMap<String, Vec<Value>> {
    let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        assert!(
            e.wire <= max_payload,
            "event {} is {} bytes on the wire, over max_payload {max_payload}",
            e.json["id"],
            e.wire
        );
        by_user
            .entry(e.json["user"].as_str().expect("user").to_owned())
            .or_default()
            .push(e.json.clone());
    }
    let db = env.pg().await;
    for (user, evs) in &by_user {
        let seqs: Vec<i64> = evs
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect();
        let want: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, want, "{user}: sequences in stream order");
        let last: i64 = db
            .query_one(
                "SELECT last_seq FROM user_events WHERE user_addr = $1",
                &[user],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(last, seqs.len() as i64, "{user}: every event published");
    }
    by_user
}

type Busy = (String, String, String, String);

/// The free/busy a subscriber holds after applying `events` in order, each
/// `removed` before its `added`, periods keyed by UID and instance.
fn replay(events: &[Value]) -> Vec<Busy> {
    let mut held: BTreeMap<(String, String), Busy> = BTreeMap::new();
    for e in events {
        if e["type"] != "org.imipflow.freebusy.changed" {
            continue;
        }
        let uid = e["data"]["uid"].as_str().unwrap().to_owned();
        let key = |p: &Value| {
            let instance = p["recurrence_id"].as_str().or(p["start"].as_str());
            (uid.clone(), instance.unwrap().to_owned())
        };
        for p in e["data"]["removed"].as_array().unwrap() {
            held.remove(&key(p));
        }
        for p in e["data"]["added"].as_array().unwrap() {
            let busy = (
                p["start"].as_str().unwrap().to_owned(),
                p["end"].as_str().unwrap().to_owned(),
                p["fbtype"].as_str().unwrap().to_owned(),
                uid.clone(),
            );
            held.insert(key(p), busy);
        }
    }
    let mut out: Vec<Busy> = held.into_values().collect();
    out.sort();
    out
}

/// (start, end, fbtype, uid) of a `freebusy --json` document, sorted.
fn busy_of(doc: &Value) -> Vec<Busy> {
    let mut out: Vec<Busy> = doc["periods"]
        .as_array()
        .expect("periods")
        .iter()
        .map(|p| {
            (
                p["start"].as_str().unwrap().to_owned(),
                p["end"].as_str().unwrap().to_owned(),
                p["fbtype"].as_str().unwrap().to_owned(),
                p["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn ctl_busy(env: &TestEnv, user: &str) -> Vec<Busy> {
    busy_of(
        &env.ctl_json(&["freebusy", user, "--from", FROM, "--to", TO])
            .await,
    )
}

async fn publisher_busy(url: &str) -> Vec<Busy> {
    let body = reqwest::get(url)
        .await
        .expect("publisher request")
        .text()
        .await
        .expect("publisher body");
    busy_of(&serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// Stores Alice's series of `count` instances, moves it by one minute, then
/// lets Bob (same partition) send a meeting; checks everything above.
async fn move_a_series(env: &TestEnv, count: usize, max_payload: usize) {
    let dir = TempDir::new("imip-event-size");
    let log = dir.0.join("processor.log");
    let p = spawn_processor(
        env,
        &[("IMIP_LEASE_MS", "5000"), ("IMIP_LOG", "warn")],
        Some(&log),
    );
    let publisher = env.start_publisher(free_port()).await;
    let alice_url = format!(
        "http://127.0.0.1:{}/freebusy/{ALICE}.json?from={FROM}&to={TO}",
        publisher.port
    );
    let within = Duration::from_secs(90);

    ingest(env, ALICE, &series("hourly@event-size", 0, 0, count)).await;
    settle(env, within, &log, "the series").await;
    let stored = ctl_busy(env, ALICE).await;
    assert_eq!(stored.len(), count, "instances stored");
    // Alice is in the publisher's cache from here on: the move reaches it
    // only through the events.
    assert_eq!(publisher_busy(&alice_url).await, stored);

    ingest(env, ALICE, &series("hourly@event-size", 1, 1, count)).await;
    // Bob's mail comes after the move, in the same partition.
    ingest(env, BOB, &meeting(BOB, "bob-1@event-size")).await;
    settle(env, within, &log, "the move and Bob's mail").await;

    let events = published(env).await;
    let by_user = check_events(env, &events, max_payload).await;
    let alice = &by_user[ALICE];
    let moved = ctl_busy(env, ALICE).await;
    assert_eq!(moved.len(), count, "instances after the move");
    assert!(
        moved.iter().all(|b| b.0.ends_with(":01:00Z")),
        "moved by a minute"
    );
    assert_eq!(replay(alice), moved, "free/busy replayed from the events");
    // The move was split: several freebusy.changed events of the UID, each
    // marked with its part; the parts of one change at consecutive
    // sequences, in order, complete.
    let mut groups = Vec::new();
    let mut open: Option<(i64, i64, &Value)> = None; // (part, parts, last event)
    for e in alice {
        let part = e["part"].as_i64();
        match (open, part) {
            (None, Some(1)) => {}
            (None, None) => continue,
            (Some((k, n, prev)), Some(p)) => {
                assert_eq!(p, k + 1, "part after part {k} of {n}: {e}");
                assert_eq!(e["parts"].as_i64(), Some(n));
                assert_eq!(e["data"]["uid"], prev["data"]["uid"]);
                assert_eq!(
                    e["sequence"].as_i64().unwrap(),
                    prev["sequence"].as_i64().unwrap() + 1
                );
            }
            (open, part) => panic!("part {part:?} after {:?}: {e}", open.map(|o| (o.0, o.1))),
        }
        let (p, n) = (part.unwrap(), e["parts"].as_i64().expect("parts"));
        open = if p == n {
            groups.push(n);
            None
        } else {
            Some((p, n, e))
        };
    }
    assert!(open.is_none(), "a change's parts end incomplete");
    eprintln!(
        "{count} instances, max_payload {max_payload}: {} events of Alice, parts per split \
         change {groups:?}, largest event {} bytes on the wire",
        alice.len(),
        events.iter().map(|e| e.wire).max().unwrap_or(0)
    );
    let last = alice.last().unwrap();
    assert!(
        last["parts"].as_i64().is_some_and(|n| n > 1),
        "the move was not split into parts: {groups:?}"
    );
    // The lane went on: Bob's meeting is applied and its events published.
    assert_eq!(
        ctl_busy(env, BOB).await,
        vec![(
            "2027-03-01T09:00:00Z".to_owned(),
            "2027-03-01T10:00:00Z".to_owned(),
            "BUSY".to_owned(),
            "bob-1@event-size".to_owned()
        )]
    );
    assert!(
        by_user[BOB]
            .iter()
            .any(|e| e["type"] == "org.imipflow.freebusy.changed"),
        "Bob's free/busy event published"
    );
    // The publisher's cache followed the parts to the same end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let served = publisher_busy(&alice_url).await;
        if served == moved {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publisher serves {} periods, {} of them moved; imip-ctl has {}",
            served.len(),
            served.iter().filter(|b| b.0.ends_with(":01:00Z")).count(),
            moved.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(publisher);
    assert!(p.terminate().await.success());
}

/// A private server that takes at most 64 KiB: 2,000 instances moved.
#[tokio::test]
async fn a_big_change_fits_a_small_max_payload_in_parts() {
    let nats = NatsServer::start_with_max_payload(65_536).await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    // One lane for every user: Bob shares Alice's partition.
    env.partitions = 1;
    migrate(&env).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert_eq!(js.client().server_info().max_payload, 65_536);
    move_a_series(&env, 2_000, 65_536).await;
}

/// The case on the shared server (nats-server's default 1 MiB):
/// 5,000 stored instances moved by one minute made one event of ~1.25 MB.
#[tokio::test]
async fn moving_5000_instances_fits_the_default_max_payload() {
    let mut env = TestEnv::unmigrated();
    env.partitions = 1;
    migrate(&env).await;
    let max_payload = env.jetstream().await.client().server_info().max_payload;
    assert_eq!(max_payload, 1024 * 1024, "the shared server's max_payload");
    move_a_series(&env, 5_000, max_payload).await;
}

/// An outbox row written too large to publish (by an older version, or
/// before the server's limit was lowered) is skipped with an error in the
/// log, and the user's later events are published after it.
#[tokio::test]
async fn an_oversized_outbox_row_does_not_block_the_relay() {
    let nats = NatsServer::start_with_max_payload(65_536).await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    env.partitions = 1;
    migrate(&env).await;
    let db = env.pg().await;
    let big: Vec<Value> = (0..1_000)
        .map(|i| {
            serde_json::json!({"start": format!("2027-02-01T{:02}:00:00Z", i % 24),
                "end": "2027-02-02T00:00:00Z", "fbtype": "BUSY", "recurrence_id": null})
        })
        .collect();
    let id = format!("{}:{CAROL}:1", env.namespace);
    let body = serde_json::json!({
        "specversion": "1.0", "id": id, "source": format!("imipflow/{}", env.namespace),
        "type": "org.imipflow.freebusy.changed", "subject": CAROL,
        "time": "2027-01-01T00:00:00Z", "datacontenttype": "application/json",
        "user": CAROL, "sequence": 1,
        "data": {"uid": "old@event-size", "added": big, "removed": []},
    });
    assert!(body.to_string().len() > 65_536);
    db.execute(
        "INSERT INTO user_events (partition, user_addr, last_seq) VALUES ($1, $2, 1)",
        &[&env.partition_of(CAROL), &CAROL],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO outbox (user_addr, user_seq, partition, event_id, kind, body)
         VALUES ($1, 1, $2, $3, 'freebusy.changed', $4)",
        &[
            &CAROL,
            &env.partition_of(CAROL),
            &id,
            &tokio_postgres::types::Json(&body),
        ],
    )
    .await
    .unwrap();

    let dir = TempDir::new("imip-event-size");
    let log = dir.0.join("processor.log");
    let p = spawn_processor(
        &env,
        &[("IMIP_LEASE_MS", "5000"), ("IMIP_LOG", "warn")],
        Some(&log),
    );
    ingest(&env, CAROL, &meeting(CAROL, "carol-1@event-size")).await;
    settle(&env, Duration::from_secs(60), &log, "Carol's mail").await;
    let events = published(&env).await;
    let seqs: Vec<i64> = events
        .iter()
        .filter(|e| e.json["user"] == CAROL)
        .map(|e| e.json["sequence"].as_i64().unwrap())
        .collect();
    assert!(!seqs.is_empty() && !seqs.contains(&1), "{seqs:?}");
    assert_eq!(seqs[0], 2, "Carol's new events follow the skipped one");
    assert!(events.iter().all(|e| e.wire <= 65_536));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("max_payload") && text.contains(&id),
        "the skip is logged with the event id:\n{text}"
    );
    assert!(p.terminate().await.success());
}

async fn migrate(env: &TestEnv) {
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
