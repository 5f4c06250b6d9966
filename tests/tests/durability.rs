//! Fencing and the durability of an acknowledgement (issue 5).
//!
//! - A worker paused with SIGSTOP past its lease loses its partitions to
//!   another instance; when it resumes (SIGCONT) it must not commit anything
//!   for them: its attempt is refused by the epoch check (its log says so) and
//!   the result equals the oracle's — nothing twice, nothing out of order.
//! - `kill -9` of nats-server right after acknowledgements: after a restart on
//!   the same store every acknowledged message is there.

use imipflow_loadgen::{Config, messages};
use imipflow_tests::TestEnv;
use imipflow_tests::oracle::{Outcome, assert_same, oracle, publish, read_stream, settle};
use imipflow_tests::servers::{NatsServer, signal, spawn_processor};
use std::collections::HashSet;
use std::time::{Duration, Instant};

async fn applied(env: &TestEnv) -> i64 {
    env.pg()
        .await
        .query_one("SELECT count(*) FROM message_log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_that_lost_its_lease_cannot_commit() {
    let msgs = messages(&Config::new(31, 40, 2400));
    let want = oracle(&msgs).await;

    let env = TestEnv::new().await;
    let dir = imipflow_tests::servers::TempDir::new("imip-fencing");
    let (log_a, log_b) = (dir.0.join("a.log"), dir.0.join("b.log"));
    // Small batches and debug logging: A is mid-batch most of the time.
    let extra = [("IMIP_BATCH_SIZE", "8"), ("IMIP_LOG", "info")];
    let a = spawn_processor(&env, &extra, Some(&log_a));
    let (first, second) = msgs.split_at(msgs.len() * 2 / 3);
    publish(&env, first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&env).await < 300 {
        assert!(Instant::now() < deadline, "A made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Pause A mid-stream, well past its 1 s lease.
    signal(a.pid(), "STOP");
    let paused_at = applied(&env).await;
    let b = spawn_processor(&env, &extra, Some(&log_b));
    publish(&env, second).await;
    settle(&env, Duration::from_secs(120)).await;
    let by_b = applied(&env).await - paused_at;
    assert!(by_b > 0, "B applied nothing while A was paused");
    // A wakes up believing it still owns its lanes, with a batch in hand.
    signal(a.pid(), "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another message per partition makes both instances fetch again.
    settle(&env, Duration::from_secs(60)).await;
    let got = Outcome::of(&env).await;
    a.kill9().await;
    b.terminate().await;

    let log = std::fs::read_to_string(&log_a).unwrap_or_default();
    // After SIGCONT, A's open transaction has been aborted by the server
    // (idle_in_transaction_session_timeout) and its lease row carries B's
    // epoch: whatever A tries is refused, and its log says why.
    let after_cont: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    for l in after_cont.iter().take(12) {
        eprintln!("fencing, A's log: {l}");
    }
    // Refused by the epoch check ("lease lost before commit (fenced)", "lease
    // lost" on renewal) or, for a transaction A had open when it was paused,
    // aborted by the server before B could take the row.
    let after_cont: Vec<&&str> = after_cont
        .iter()
        .filter(|l| {
            l.contains("fenced") || l.contains("lease lost") || l.contains("idle-in-transaction")
        })
        .collect();
    let refused = after_cont.len();
    // Sessions of this database the server ended with a FATAL error: the
    // transactions A had open, aborted by idle_in_transaction_session_timeout.
    let aborted: i64 = env
        .pg()
        .await
        .query_one(
            "SELECT sessions_fatal FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "fencing: A paused after {paused_at} applied, B applied {by_b}; A's attempts refused \
         by the epoch check or aborted (log lines): {refused}; A's transactions aborted by the \
         server: {aborted}"
    );
    assert!(
        refused > 0 || aborted > 0,
        "no evidence that A's commit was refused; A's log:\n{log}"
    );
    assert_same(&got, &want);
}

/// Publishes `n` loadgen payloads as fast as acknowledgements come, kills
/// nats-server with SIGKILL right after the last acknowledgement, restarts it
/// on the same store and checks that every acknowledged message is there.
async fn acked_then_killed(nats: &mut NatsServer, env: &TestEnv, seed: u64, n: usize) -> usize {
    let msgs = messages(&Config {
        redelivery_percent: 0,
        ..Config::new(seed, 50, n)
    });
    publish(env, &msgs).await;
    nats.kill9();
    nats.restart().await;
    let stored: HashSet<String> = read_stream(env, "messages")
        .await
        .into_iter()
        .map(|v| v["dedupe_id"].as_str().unwrap().to_owned())
        .collect();
    let lost = msgs
        .iter()
        .filter(|m| !stored.contains(&m.dedupe_id))
        .count();
    assert_eq!(
        lost, 0,
        "{lost} of {n} acknowledged messages missing after kill -9"
    );
    msgs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9_of_nats_server() {
    // IMIP_TEST_NATS_SYNC=always runs the same check with `sync_interval:
    // always` on a server that has it (≥ 2.10, IMIP_TEST_NATS_SERVER).
    let extra = match std::env::var("IMIP_TEST_NATS_SYNC") {
        Ok(v) if !v.is_empty() => format!("sync_interval: {v}"),
        _ => String::new(),
    };
    let mut nats = NatsServer::start_with(&extra).await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success());
    let mut total = 0;
    // Fast path: thousands of pipelined publishes, killed right after the last ack.
    for round in 0..3 {
        total += acked_then_killed(&mut nats, &env, 40 + round, 2000).await;
    }
    // The mail path: imip-ingest exits 0 only after the ack; kill right after.
    let mails = imipflow_loadgen::mails(&Config {
        redelivery_percent: 0,
        ..Config::new(50, 10, 40)
    });
    let mut acked = Vec::new();
    for m in &mails {
        let args = m.ingest_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.ingest(&args, &m.bytes).await;
        assert_eq!(out.status.code(), Some(0));
        acked.push(m.clone());
    }
    nats.kill9();
    nats.restart().await;
    let stored = read_stream(&env, "messages").await;
    let ids: HashSet<&str> = stored
        .iter()
        .filter_map(|v| v["message_id"].as_str())
        .collect();
    for m in &acked {
        let text = String::from_utf8_lossy(&m.bytes);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .and_then(|l| l.strip_suffix('>'))
            .unwrap();
        assert!(
            ids.contains(id),
            "mail {id} acknowledged (exit 0) but missing after kill -9"
        );
    }
    eprintln!(
        "ack durability: {total} pipelined + {} ingested acknowledgements, 4 kill -9, none lost",
        acked.len()
    );
}
