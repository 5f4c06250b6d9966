//! Ordering, exactly-once and dead letters: the lane guarantees of SPEC §1.2,
//! through real `imip-processor run` processes.

use imipflow_tests::{TestEnv, all_events, imip_mail, payload_of, publish_payloads, vevent};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// `users` × `per_user` REQUESTs: user u's message n updates UID "ord" to SEQUENCE n.
async fn traffic(env: &TestEnv, users: usize, per_user: usize) -> Vec<Value> {
    let template = payload_of(
        env,
        "u0@example.com",
        &imip_mail(
            "REQUEST",
            "u0@example.com",
            "tpl@x",
            &[vevent(&[
                "UID:ord",
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270301T090000Z",
                "DTEND:20270301T100000Z",
                "ORGANIZER:mailto:u0@example.com",
            ])],
        ),
    )
    .await;
    let mut out = Vec::with_capacity(users * per_user);
    for n in 0..per_user {
        for u in 0..users {
            let user = format!("u{u}@example.com");
            let mut p = template.clone();
            p["user"] = user.clone().into();
            p["sender"] = user.clone().into();
            p["dedupe_id"] = format!("{user}-{n}").into();
            let c = &mut p["components"][0];
            c["sequence"] = n.into();
            c["organizer"]["address"] = user.clone().into();
            // Each message moves the event by n minutes, so effects differ per message.
            c["start"]["utc"] = format!("2027-03-01T09:{:02}:00Z", n % 60).into();
            c["end"]["utc"] = format!("2027-03-01T10:{:02}:00Z", n % 60).into();
            out.push(p);
        }
    }
    out
}

/// Asserts per user: event sequences 1..=k without gaps, no duplicate ids, and
/// object.changed events carrying SEQUENCE 0, 1, 2, … in order.
fn assert_ordered_exactly_once(events: &[Value], users: usize, per_user: usize) {
    let mut ids = HashSet::new();
    let mut by_user: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events {
        assert!(
            ids.insert(e["id"].as_str().unwrap().to_owned()),
            "duplicate event id {}",
            e["id"]
        );
        by_user
            .entry(e["user"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    assert_eq!(by_user.len(), users);
    for (user, evs) in by_user {
        let seqs: Vec<i64> = evs
            .iter()
            .map(|e| e["sequence"].as_i64().unwrap())
            .collect();
        let expect: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(
            seqs, expect,
            "{user}: per-user sequence has gaps or is out of order"
        );
        let applied: Vec<i64> = evs
            .iter()
            .filter(|e| e["type"] == "org.imipflow.object.changed")
            .map(|e| e["data"]["sequence"].as_i64().unwrap())
            .collect();
        let want: Vec<i64> = (0..per_user as i64).collect();
        assert_eq!(
            applied, want,
            "{user}: messages applied out of order or not exactly once"
        );
    }
}

async fn wait_events(env: &TestEnv, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let evs = all_events(env).await;
        if evs.len() >= n {
            return evs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} events",
            evs.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn two_instances_apply_every_users_messages_in_order_exactly_once() {
    let (users, per_user) = (200, 50);
    let env = TestEnv::new().await;
    let msgs = traffic(&env, users, per_user).await;
    let a = env.start_processor(&[]);
    let b = env.start_processor(&[]);
    publish_payloads(&env, &msgs).await;
    env.wait_applied().await;
    // Two events per message: object.changed and freebusy.changed.
    let events = wait_events(&env, users * per_user * 2).await;
    assert_ordered_exactly_once(&events, users, per_user);
    // Both instances held lanes at some point (leases are spread by racing).
    let db = env.pg().await;
    let owners: i64 = db
        .query_one("SELECT count(*) FROM partitions WHERE epoch > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owners, env.partitions as i64);
    // SIGTERM: each instance finishes its batch, releases its leases, exits 0.
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    let held: i64 = db
        .query_one(
            "SELECT count(*) FROM partitions WHERE owner IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "leases not released on SIGTERM");
}

async fn table_snapshot(env: &TestEnv) -> Vec<String> {
    let db = env.pg().await;
    let mut out = Vec::new();
    for q in [
        "SELECT user_addr || ' ' || uid || ' ' || recurrence_key || ' ' || sequence || ' ' || (data - 'raw')::text FROM objects ORDER BY 1",
        "SELECT user_addr || ' ' || uid || ' ' || instance || ' ' || period::text || ' ' || fbtype FROM freebusy ORDER BY 1",
        "SELECT user_addr || ' ' || last_seq FROM user_events ORDER BY 1",
        "SELECT user_addr || ' ' || user_seq || ' ' || event_id || ' ' || kind || ' ' || (body -> 'data')::text FROM outbox ORDER BY 1",
        "SELECT user_addr || ' ' || dedupe_id || ' ' || outcome FROM message_log ORDER BY 1",
    ] {
        for r in db.query(q, &[]).await.unwrap() {
            // Event ids embed the namespace, which differs between the two runs.
            out.push(r.get::<_, String>(0).replace(&env.namespace, "NS"));
        }
    }
    out
}

#[tokio::test]
async fn kill_9_mid_batch_then_restart_equals_an_uninterrupted_run() {
    let (users, per_user) = (40, 50);
    let oracle = TestEnv::new().await;
    let msgs = traffic(&oracle, users, per_user).await;
    publish_payloads(&oracle, &msgs).await;
    let p = oracle.start_processor(&[]);
    oracle.wait_applied().await;
    wait_events(&oracle, users * per_user * 2).await;
    p.terminate().await;

    let env = TestEnv::new().await;
    publish_payloads(&env, &msgs).await;
    let db = env.pg().await;
    let mut kills = 0;
    // Kill while lanes are mid-way, several times.
    while kills < 3 {
        let p = env.start_processor(&[("IMIP_BATCH_SIZE", "16")]);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let applied: i64 = db
                .query_one("SELECT count(*) FROM message_log", &[])
                .await
                .unwrap()
                .get(0);
            if applied as usize > (kills + 1) * msgs.len() / 5 {
                break;
            }
        }
        p.kill9().await;
        kills += 1;
    }
    let p = env.start_processor(&[]);
    env.wait_applied().await;
    let events = wait_events(&env, users * per_user * 2).await;
    p.terminate().await;
    assert_eq!(
        events.len(),
        users * per_user * 2,
        "events published more or less than once"
    );
    assert_ordered_exactly_once(&events, users, per_user);
    let (got, want) = (table_snapshot(&env).await, table_snapshot(&oracle).await);
    let diff: Vec<_> = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| g != w)
        .take(3)
        .collect();
    assert!(
        diff.is_empty() && got.len() == want.len(),
        "tables differ from the uninterrupted run ({} vs {} rows): {diff:#?}",
        got.len(),
        want.len()
    );
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_the_lane_continues_and_replay_applies_it() {
    let env = TestEnv::new().await;
    let db = env.pg().await;
    // A fault only this UID triggers, fixed later by dropping the trigger.
    db.batch_execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.uid = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON objects FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let _p = env.start_processor(&[]);
    let event = |uid: &str, id: &str| {
        imip_mail(
            "REQUEST",
            "alice@example.com",
            id,
            &[vevent(&[
                &format!("UID:{uid}"),
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270301T090000Z",
                "DTEND:20270301T100000Z",
                "ORGANIZER:mailto:alice@example.com",
            ])],
        )
    };
    for (uid, id) in [("poison", "m1@x"), ("healthy", "m2@x")] {
        let out = env
            .ingest(&["--sender", "alice@example.com"], &event(uid, id))
            .await;
        assert!(out.status.success());
    }
    env.wait_applied().await;
    let dlq: Vec<serde_json::Value> = serde_json::from_slice(
        &env.run("imip-ctl", &["dlq", "list", "--json"], b"")
            .await
            .stdout,
    )
    .expect("one JSON array");
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0]["error"].as_str().unwrap().contains("poisoned row"),
        "{}",
        dlq[0]
    );
    let objs = env.ctl_json(&["objects", "alice@example.com"]).await;
    let uids: Vec<&str> = objs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, vec!["healthy"]);

    // Replaying before the cause is fixed fails and keeps the dead letter.
    let id = dlq[0]["id"].to_string();
    let out = env.run("imip-ctl", &["dlq", "replay", &id], b"").await;
    assert!(!out.status.success());
    db.batch_execute("DROP TRIGGER poison ON objects")
        .await
        .unwrap();
    let out = env.run("imip-ctl", &["dlq", "replay", &id], b"").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = env.ctl_json(&["objects", "alice@example.com"]).await;
    assert_eq!(objs.as_array().unwrap().len(), 2);
    let status = env.ctl_json(&["status"]).await;
    assert_eq!(status["dead_letters"], 0);
}
