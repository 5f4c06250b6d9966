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

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes `chunk`, retrying while NATS is down (as the MTA retries a
/// deferred mail: same Nats-Msg-Id, so a retry never stores twice).
async fn publish_retrying(env: &TestEnv, chunk: &[Message]) -> usize {
    let ns = imipflow_loadgen::namespace(&env.namespace).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut retries = 0;
    loop {
        let attempt = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(env.nats_url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            imipflow_loadgen::publish(&js, &ns, env.partitions, chunk)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(_) => return retries,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing failed for 300 s: {e}"
                );
                retries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The recorded long run (scripts/longrun, figures in docs/reliability.md):
/// hundreds of SIGKILLs of 1–3 processor instances, NATS killed and
/// restarted, PostgreSQL restarted mid-transaction and down for 30 s, all
/// while traffic flows; then compared with the oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/longrun"]
async fn long_run() {
    let kills_wanted = setting("IMIP_LONGRUN_KILLS", 500);
    let count = setting("IMIP_LONGRUN_MESSAGES", 40_000);
    let users = setting("IMIP_LONGRUN_USERS", 400);
    let seed = setting("IMIP_LONGRUN_SEED", 2026) as u64;
    let outage = Duration::from_secs(setting("IMIP_PG_OUTAGE_SECS", 30) as u64);
    let started = Instant::now();
    let msgs = messages(&Config::new(seed, users, count));
    let want = oracle(&msgs).await;
    eprintln!(
        "longrun: {} payloads of {users} users (seed {seed}); oracle applied them in {:.0} s",
        msgs.len(),
        started.elapsed().as_secs_f64()
    );

    let mut nats = NatsServer::start().await;
    let mut pg = PgServer::start();
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    env.database_url = pg.url(&env.database);
    migrate(&env).await;
    let log = std::env::temp_dir().join(format!("imip-longrun-{}.log", std::process::id()));
    let extra = [("IMIP_BATCH_SIZE", "32")];
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut procs = vec![spawn_processor(&env, &extra, Some(&log))];
    // About one start per kill: spread the traffic over all 2 × kills steps,
    // so that faults keep hitting lanes with work in hand until the end.
    let per_step = msgs.len().div_ceil(kills_wanted * 2).max(1);
    let mut next = 0;
    let (mut kills, mut starts, mut nats_restarts, mut pg_restarts, mut outages) =
        (0usize, 1usize, 0usize, 0usize, 0usize);
    let mut publish_retries = 0;
    let faults_started = Instant::now();
    while kills < kills_wanted {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..1400))).await;
        let end = (next + per_step).min(msgs.len());
        publish_retries += publish_retrying(&env, &msgs[next..end]).await;
        next = end;
        if kills > 0 && kills % 90 == 0 && nats_restarts < kills / 90 {
            if nats_restarts % 2 == 0 {
                nats.kill9();
            } else {
                nats.stop();
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(200..3000))).await;
            nats.restart().await;
            nats_restarts += 1;
        } else if kills > 0 && kills % 125 == 0 && pg_restarts < kills / 125 {
            pg.stop_immediate();
            pg.restart();
            pg_restarts += 1;
        } else if outages == 0 && kills >= kills_wanted / 2 {
            pg.stop_immediate();
            tokio::time::sleep(outage).await;
            pg.restart();
            outages += 1;
        }
        if procs.len() < 3 && (procs.is_empty() || rng.u32(..100) < 45) {
            procs.push(spawn_processor(&env, &extra, Some(&log)));
            starts += 1;
        } else {
            let victim = procs.swap_remove(rng.usize(..procs.len()));
            victim.kill9().await;
            kills += 1;
            if kills % 50 == 0 {
                eprintln!(
                    "longrun: {kills} kills, {starts} starts, {next}/{} published, {} applied, {:.0} s",
                    msgs.len(),
                    applied(&env).await,
                    faults_started.elapsed().as_secs_f64()
                );
            }
        }
    }
    publish_retries += publish_retrying(&env, &msgs[next..]).await;
    if procs.is_empty() {
        procs.push(spawn_processor(&env, &extra, Some(&log)));
        starts += 1;
    }
    settle(&env, Duration::from_secs(900)).await;
    let got = Outcome::of(&env).await;
    let dead = dead_letters(&env).await;
    let applied_n = applied(&env).await;
    for p in procs {
        p.kill9().await;
    }
    eprintln!(
        "longrun figures: payloads={} users={users} applied_log_rows={applied_n} events={} \
kills={kills} starts={starts} nats_restarts={nats_restarts} pg_restarts={pg_restarts} \
pg_outages={outages}x{}s publish_retries={publish_retries} dead_letters={dead} \
fault_phase_s={:.0} total_s={:.0}",
        msgs.len(),
        got.events.len(),
        outage.as_secs(),
        faults_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(dead, 0, "a transient fault dead-lettered");
    assert_same(&got, &want);
    eprintln!("longrun outcome: equal to the oracle (tables and per-user event streams)");
    let _ = std::fs::remove_file(&log);
}
