//! The outbox relay's publishers (processor/src/relay.rs) through the real
//! binaries: on a standalone server with a plain connection the relay
//! pipelines each flush over its own wire connection — here one that must log
//! in with the user and password of the URL — and every user's events still
//! reach the events stream once each, in sequence order. A three-node cluster
//! makes it publish serially instead (and still publish everything).

use imipflow_tests::servers::{NatsCluster, NatsServer, TempDir, spawn_processor};
use imipflow_tests::{TestEnv, all_events, imip_mail, vevent};
use std::collections::BTreeMap;
use std::time::Duration;

const USERS: usize = 3;
const MAILS: usize = 6;

/// Every mail of the traffic, published by the real `imip-ingest` before any
/// processor runs, so that the first flush carries several events per user.
async fn ingest_traffic(env: &TestEnv) {
    for m in 0..MAILS {
        for u in 0..USERS {
            let user = format!("user{u}@example.org");
            // New events, then new versions of the first one (SEQUENCE 1, 2, …).
            let (uid, seq, day) = if m < MAILS / 2 {
                (format!("ev{m}-{u}@relay"), 0, 10 + m)
            } else {
                (format!("ev0-{u}@relay"), m, 20 + m)
            };
            let lines = [
                format!("UID:{uid}"),
                format!("SEQUENCE:{seq}"),
                "DTSTAMP:20270301T120000Z".to_owned(),
                format!("DTSTART:202703{day:02}T090000Z"),
                format!("DTEND:202703{day:02}T100000Z"),
                format!("SUMMARY:mail {m}"),
                format!("ORGANIZER:mailto:{user}"),
                "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.net".to_owned(),
            ];
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let mail = imip_mail(
                "REQUEST",
                &user,
                &format!("m{m}-{u}@relay"),
                &[vevent(&lines)],
            );
            let out = env.ingest(&["--sender", &user], &mail).await;
            assert_eq!(
                out.status.code(),
                Some(0),
                "ingest: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Each user's event sequences in stream order must be 1, 2, 3, … (no gap,
/// no repeat, no reordering); returns the number of events.
async fn assert_in_order(env: &TestEnv) -> usize {
    let events = all_events(env).await;
    let mut per_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in &events {
        per_user
            .entry(e["user"].as_str().expect("user").to_owned())
            .or_default()
            .push(e["sequence"].as_i64().expect("sequence"));
    }
    assert_eq!(per_user.len(), USERS, "events of every user: {per_user:?}");
    for (user, seqs) in &per_user {
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, &expected, "{user}'s events in stream order");
        assert!(
            seqs.len() >= MAILS,
            "{user}: {} events for {MAILS} mails",
            seqs.len()
        );
    }
    events.len()
}

async fn run(env: &TestEnv, log: &TempDir, extra: &[(&str, &str)]) -> String {
    let mut migrate = env.command("imip-processor");
    migrate.envs(extra.iter().copied());
    let out = env.run_with(migrate, &["migrate"], b"").await;
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ingest_traffic(env).await;
    let path = log.0.join("processor.log");
    let mut vars = vec![("IMIP_LOG", "imipflow_processor::relay=debug,warn")];
    vars.extend_from_slice(extra);
    let p = spawn_processor(env, &vars, Some(&path));
    let applied = tokio::time::timeout(Duration::from_secs(90), env.wait_applied()).await;
    let log = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        applied.is_ok(),
        "not applied within 90 s; processor log:\n{}",
        log()
    );
    assert!(p.terminate().await.success());
    log()
}

#[tokio::test]
async fn pipelined_relay_logs_in_and_keeps_each_users_order() {
    let nats = NatsServer::start_with_login("relay", "s3cret-pw").await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    // One lane: every flush carries all three users' events.
    env.partitions = 1;
    let dir = TempDir::new("imip-relay");
    let log = run(&env, &dir, &[]).await;
    assert!(
        log.contains("publisher=\"pipelined\"") || log.contains("publisher=pipelined"),
        "the relay did not pipeline:\n{log}"
    );
    assert!(!log.contains("serial"), "{log}");
    let n = assert_in_order(&env).await;
    assert!(n >= USERS * MAILS, "{n} events");
}

#[tokio::test]
async fn a_cluster_makes_the_relay_publish_serially() {
    let cluster = NatsCluster::start().await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = cluster.urls();
    env.partitions = 1;
    let dir = TempDir::new("imip-relay");
    // Replicated streams, as a cluster deployment has them (docs/reliability.md).
    let log = run(&env, &dir, &[("IMIP_STREAM_REPLICAS", "3")]).await;
    assert!(
        log.contains("publisher=\"serial\"") || log.contains("publisher=serial"),
        "the relay did not fall back to serial publishing:\n{log}"
    );
    assert!(log.contains("cluster"), "reason logged: {log}");
    // wait_applied saw every outbox row published. The stream's order on a
    // cluster is the oracle's business in tests/cluster.rs (reading the
    // stream back here met async-nats' "invalid digit" error on a cluster).
}
