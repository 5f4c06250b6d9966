//! Fault campaign (issue 5, "Faults"): processors killed with SIGKILL at random
//! moments while 1–3 instances run, NATS restarted mid-stream, PostgreSQL
//! restarted mid-transaction and unavailable for 30 s, and `imip-ingest`
//! while NATS is down. Every run is compared with an oracle — the same
//! loadgen traffic applied by one uninterrupted processor — so "nothing lost,
//! nothing twice, per-user order, no per-user event gaps" is checked on the
//! final tables and on the published event stream.
//!
//! Servers that are stopped or killed are private instances (tests/src/servers.rs).

use imipflow_loadgen::{Config, Message, messages};
use imipflow_tests::oracle::{Outcome, assert_same, oracle, publish, settle};
use imipflow_tests::servers::{NatsServer, PgServer, spawn_processor};
use imipflow_tests::{Processor, TestEnv};
use std::time::{Duration, Instant};

async fn migrate(env: &TestEnv) {
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn applied(env: &TestEnv) -> i64 {
    match tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls).await {
        Ok((db, conn)) => {
            tokio::spawn(conn);
            db.query_one("SELECT count(*) FROM message_log", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        }
        Err(_) => 0,
    }
}

async fn dead_letters(env: &TestEnv) -> i64 {
    env.pg()
        .await
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0)
}

/// Publishes `msgs` in slices with pauses, so that processors are busy and
/// the stream keeps growing while faults happen.
async fn trickle(env: &TestEnv, msgs: &[Message], slice: usize, pause: Duration) {
    for chunk in msgs.chunks(slice) {
        publish(env, chunk).await;
        tokio::time::sleep(pause).await;
    }
}

fn all_alive(procs: &mut [Processor]) {
    for p in procs {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "a processor exited on a transient fault"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_storm_with_one_to_three_instances_equals_the_oracle() {
    let kills_wanted: usize = std::env::var("IMIP_FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let msgs = messages(&Config::new(5, 80, 4000));
    let t = Instant::now();
    let want = oracle(&msgs).await;
    eprintln!("oracle: {:.1} s", t.elapsed().as_secs_f64());

    let env = TestEnv::new().await;
    let log = std::env::temp_dir().join(format!("imip-kill-storm-{}.log", std::process::id()));
    let mut rng = fastrand::Rng::with_seed(99);
    let extra = [("IMIP_BATCH_SIZE", "16")];
    let mut procs = vec![spawn_processor(&env, &extra, Some(&log))];
    let traffic = {
        let env_vars = (env.namespace.clone(), env.nats_url.clone(), env.partitions);
        let msgs = msgs.clone();
        tokio::spawn(async move {
            let client = async_nats::connect(&env_vars.1).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let ns = imipflow_loadgen::namespace(&env_vars.0).unwrap();
            for chunk in msgs.chunks(100) {
                imipflow_loadgen::publish(&js, &ns, env_vars.2, chunk)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let (mut kills, mut starts) = (0, 1);
    let started = Instant::now();
    while kills < kills_wanted {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        if procs.len() < 3 && (procs.is_empty() || rng.u32(..100) < 45) {
            procs.push(spawn_processor(&env, &extra, Some(&log)));
            starts += 1;
        } else {
            let victim = procs.swap_remove(rng.usize(..procs.len()));
            victim.kill9().await;
            kills += 1;
        }
    }
    traffic.await.unwrap();
    if procs.is_empty() {
        procs.push(spawn_processor(&env, &extra, Some(&log)));
        starts += 1;
    }
    settle(&env, Duration::from_secs(180)).await;
    eprintln!(
        "kill storm: {} messages, {kills} kills, {starts} starts, {:.1} s of faults, {} applied",
        msgs.len(),
        started.elapsed().as_secs_f64(),
        applied(&env).await
    );
    let got = Outcome::of(&env).await;
    for p in procs {
        p.terminate().await;
    }
    assert_eq!(dead_letters(&env).await, 0);
    assert_same(&got, &want);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_loses_and_repeats_nothing() {
    let msgs = messages(&Config::new(6, 40, 1500));
    let want = oracle(&msgs).await;

    let mut nats = NatsServer::start().await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    migrate(&env).await;
    let mut procs = vec![
        spawn_processor(&env, &[], None),
        spawn_processor(&env, &[], None),
    ];
    let (first, second) = msgs.split_at(msgs.len() / 2);
    publish(&env, first).await;
    // Kill the server while lanes are mid-way through the first half.
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&env).await < first.len() as i64 / 4 {
        assert!(Instant::now() < deadline, "no progress before the fault");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart().await;
    trickle(&env, second, 200, Duration::from_millis(50)).await;
    // And once more, with a clean shutdown this time.
    nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart().await;
    settle(&env, Duration::from_secs(120)).await;
    all_alive(&mut procs);
    let got = Outcome::of(&env).await;
    assert_eq!(
        dead_letters(&env).await,
        0,
        "a transient fault dead-lettered"
    );
    assert_same(&got, &want);
    for p in procs {
        p.kill9().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_transaction_and_down_30_s_loses_and_repeats_nothing() {
    let outage = Duration::from_secs(
        std::env::var("IMIP_PG_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let msgs = messages(&Config::new(7, 40, 1500));
    let want = oracle(&msgs).await;

    let mut pg = PgServer::start();
    let mut env = TestEnv::unmigrated();
    env.database_url = pg.url(&env.database);
    migrate(&env).await;
    let log = std::env::temp_dir().join(format!("imip-pg-outage-{}.log", std::process::id()));
    let mut procs = vec![
        spawn_processor(&env, &[], Some(&log)),
        spawn_processor(&env, &[], Some(&log)),
    ];
    let (first, second) = msgs.split_at(msgs.len() / 2);
    publish(&env, first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&env).await < first.len() as i64 / 4 {
        assert!(Instant::now() < deadline, "no progress before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Restart mid-transaction: immediate shutdown kills every backend.
    pg.stop_immediate();
    pg.restart();
    publish(&env, second).await;
    let before = applied(&env).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(&env).await < before + 50 {
        assert!(Instant::now() < deadline, "no progress after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Unavailable for the whole outage, then back.
    pg.stop_immediate();
    tokio::time::sleep(outage).await;
    all_alive(&mut procs);
    pg.restart();
    settle(&env, Duration::from_secs(120)).await;
    all_alive(&mut procs);
    let got = Outcome::of(&env).await;
    assert_eq!(
        dead_letters(&env).await,
        0,
        "a transient fault dead-lettered"
    );
    assert_same(&got, &want);
    for p in procs {
        p.kill9().await;
    }
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_while_nats_is_down_exits_75_and_the_mta_retry_applies_once() {
    let mut nats = NatsServer::start().await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    migrate(&env).await;
    let mail = imipflow_loadgen::mails(&Config::new(8, 1, 1)).remove(0);
    let owned = mail.ingest_args();
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    nats.kill9();
    let started = Instant::now();
    let out = env
        .run_with(
            {
                let mut c = env.command("imip-ingest");
                c.env("IMIP_NATS_TIMEOUT_MS", "2000");
                c
            },
            &args,
            &mail.bytes,
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(75),
        "ingest with NATS down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    nats.restart().await;
    let _p = spawn_processor(&env, &[], None);
    // The MTA retries the deferred mail (and, say, a lost SMTP ack makes it
    // deliver once more): applied exactly once.
    for _ in 0..2 {
        let out = env.ingest(&args, &mail.bytes).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.wait_applied().await;
    let db = env.pg().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM message_log WHERE user_addr = $1",
            &[&mail.user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let stored = env.stream_messages("messages").await;
    assert_eq!(stored.len(), 1, "the broker kept the re-delivery");
}
