//! The oracle of the fault tests: the same messages applied by one
//! uninterrupted processor, and the comparisons that say a faulty run ended
//! in exactly the same state — same tables, same change events per user in
//! the same order, no per-user gaps, no event twice.

use crate::TestEnv;
use imipflow_loadgen::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Every table's content as text lines, with the namespace (embedded in
/// event ids) replaced, so that runs in different namespaces and on
/// different servers compare equal when their effects are equal.
pub async fn table_snapshot(env: &TestEnv) -> Vec<String> {
    let db = env.pg().await;
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut out = Vec::new();
    for q in [
        "SELECT 'o ' || user_addr || ' ' || uid || ' ' || recurrence_key || ' ' || sequence || ' ' || (data - 'raw')::text FROM objects ORDER BY 1",
        "SELECT 'a ' || (to_jsonb(t))::text FROM attendees t ORDER BY 1",
        "SELECT 'f ' || user_addr || ' ' || uid || ' ' || instance || ' ' || period::text || ' ' || fbtype FROM freebusy ORDER BY 1",
        "SELECT 's ' || (to_jsonb(t))::text FROM open_series t ORDER BY 1",
        "SELECT 'q ' || user_addr || ' ' || uid || ' ' || recurrence_key || ' ' || coalesce(organizer, '') || ' ' || sequence || ' ' || coalesce(dtstamp::text, '') || ' ' || (data - 'raw')::text FROM request_queue ORDER BY 1",
        "SELECT 'u ' || user_addr || ' ' || last_seq FROM user_events ORDER BY 1",
        "SELECT 'e ' || user_addr || ' ' || user_seq || ' ' || event_id || ' ' || kind || ' ' || (body -> 'data')::text FROM outbox ORDER BY 1",
        "SELECT 'm ' || user_addr || ' ' || dedupe_id || ' ' || outcome || ' ' || coalesce(reason, '') FROM message_log ORDER BY 1",
        "SELECT 'd ' || user_addr || ' ' || error FROM dead_letters ORDER BY 1",
    ] {
        for r in db.query(q, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0).replace(&env.namespace, "NS"));
        }
    }
    out
}

/// The final state of a run: tables and the published event stream.
pub struct Outcome {
    pub tables: Vec<String>,
    pub events: Vec<Value>,
}

impl Outcome {
    pub async fn of(env: &TestEnv) -> Self {
        Outcome {
            tables: table_snapshot(env).await,
            events: read_stream(env, "events").await,
        }
    }
}

/// Every message of one of `env`'s streams, in stream order, read by
/// sequence (`$JS.API.STREAM.MSG.GET`, retried): unlike an ordered consumer
/// this also works right after a cluster lost a node.
pub async fn read_stream(env: &TestEnv, which: &str) -> Vec<Value> {
    use futures::StreamExt;
    let js = env.jetstream().await;
    let name = format!("{}-{which}", env.namespace);
    let mut stream = js.get_stream(&name).await.expect("stream");
    let info = stream.info().await.expect("stream info").clone();
    if info.state.messages == 0 {
        return Vec::new();
    }
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    futures::stream::iter(first..=last)
        .map(|seq| {
            let (stream, name) = (stream.clone(), name.clone());
            async move {
                for attempt in 0..20 {
                    match stream.get_raw_message(seq).await {
                        Ok(m) => {
                            return Some(serde_json::from_slice(&m.payload).expect("JSON"));
                        }
                        Err(e) if e.to_string().contains("no message found") => return None,
                        Err(e) => {
                            assert!(attempt < 19, "{name} #{seq}: {e}");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
                None
            }
        })
        .buffered(64)
        .filter_map(|v| async move { v })
        .collect()
        .await
}

/// Applies `messages` with one processor that nothing interrupts, in a fresh
/// namespace and database on the shared services.
pub async fn oracle(messages: &[Message]) -> Outcome {
    let env = TestEnv::new().await;
    publish(&env, messages).await;
    let p = crate::servers::spawn_processor(&env, &[("IMIP_LEASE_MS", "5000")], None);
    env.wait_applied().await;
    let outcome = Outcome::of(&env).await;
    p.terminate().await;
    outcome
}

/// Publishes loadgen messages into `env`'s messages stream.
pub async fn publish(env: &TestEnv, messages: &[Message]) {
    let ns = imipflow_loadgen::namespace(&env.namespace).unwrap();
    imipflow_loadgen::publish(&env.jetstream().await, &ns, env.partitions, messages)
        .await
        .expect("publish loadgen messages");
}

/// Per-user invariants of an event stream: ids unique, per-user sequence
/// numbers 1, 2, 3, … without gaps. Returns the events grouped by user.
pub fn check_event_stream(events: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut ids = HashSet::new();
    let mut by_user: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events {
        assert!(
            ids.insert(e["id"].as_str().expect("event id").to_owned()),
            "event published twice: {}",
            e["id"]
        );
        by_user
            .entry(e["user"].as_str().expect("user").to_owned())
            .or_default()
            .push(e);
    }
    for (user, evs) in &by_user {
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(
                e["sequence"].as_i64(),
                Some(i as i64 + 1),
                "{user}: event sequence gap or reorder at position {i}"
            );
        }
    }
    by_user
}

/// Asserts that `got` ended exactly as the oracle `want`: same tables, and
/// for every user the same events (type, data and part) in the same order.
pub fn assert_same(got: &Outcome, want: &Outcome) {
    let g = check_event_stream(&got.events);
    let w = check_event_stream(&want.events);
    assert_eq!(
        g.len(),
        w.len(),
        "number of users with events differs from the oracle"
    );
    for (user, want_evs) in &w {
        let got_evs = g
            .get(user)
            .unwrap_or_else(|| panic!("{user}: no events at all"));
        // `part`/`parts` too: a change split to fit max_payload must be
        // split the same way (events::fit depends only on the change).
        let key = |e: &&Value| {
            (
                e["type"].clone(),
                e["data"].clone(),
                e["part"].clone(),
                e["parts"].clone(),
            )
        };
        let gk: Vec<_> = got_evs.iter().map(key).collect();
        let wk: Vec<_> = want_evs.iter().map(key).collect();
        if gk != wk {
            let at = gk.iter().zip(&wk).position(|(a, b)| a != b);
            panic!(
                "{user}: events differ from the oracle ({} vs {} events, first difference at {at:?}): {:?} vs {:?}",
                gk.len(),
                wk.len(),
                at.and_then(|i| gk.get(i)),
                at.and_then(|i| wk.get(i)),
            );
        }
    }
    let (gs, ws): (HashSet<&String>, HashSet<&String>) =
        (got.tables.iter().collect(), want.tables.iter().collect());
    let missing: Vec<_> = want
        .tables
        .iter()
        .filter(|l| !gs.contains(l))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .tables
        .iter()
        .filter(|l| !ws.contains(l))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.tables.len() == want.tables.len(),
        "tables differ from the oracle ({} vs {} rows); missing {missing:#?}; extra {extra:#?}",
        got.tables.len(),
        want.tables.len()
    );
}

/// Waits until `env` has applied everything published and the relay has
/// published every event, within `within`.
pub async fn settle(env: &TestEnv, within: Duration) {
    tokio::time::timeout(within, env.wait_applied())
        .await
        .expect("run did not settle in time");
}
