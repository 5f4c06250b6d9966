//! Issue 12, "one message must never stop a lane": through a real
//! `imip-processor run` on one partition, a message that costs more than its
//! time budget (and than the lease) is dead-lettered with a reason saying so
//! while the other users' messages around it are applied once; a batch longer
//! than the lease commits; a message whose batch keeps hitting a statement
//! timeout is blamed after a few tries; and a lane that does not advance while
//! messages wait makes `/readyz` fail, shows in `imip-ctl status` and in
//! `imipflow_partition_stalled`, until it moves again.
//!
//! Payloads go straight onto the stream (`publish_payloads`), as ingest would
//! publish them, so that no ingest limit stands between the test and the
//! processor. A costly payload is a plain invitation whose series' RRULE was
//! swapped for `FREQ=MINUTELY;BYDAY=MO;BYHOUR=3;BYMINUTE=7` starting on a
//! Monday: about 0.7 s of CPU a series in a debug build, within every limit.
//! Timings are only ever compared with budgets many times larger or smaller.

use chrono::Datelike;
use imipflow_tests::{
    Processor, TestEnv, all_events, free_port, imip_mail, json_lines, publish_payloads, vevent,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One partition, migrated: every user shares the lane.
async fn one_lane() -> TestEnv {
    let mut env = TestEnv::unmigrated();
    env.partitions = 1;
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env
}

/// `imip-processor run` with `vars` (the harness's `start_processor` fixes the lease).
fn processor(env: &TestEnv, vars: &[(&str, &str)]) -> Processor {
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .env("IMIP_LEASE_MS", "2000")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Processor {
        child: cmd.spawn().expect("spawn imip-processor run"),
    }
}

/// The payload ingest makes of a REQUEST from `user` with `series` events.
async fn request(env: &TestEnv, user: &str, tag: &str, series: usize) -> Value {
    request_on(env, user, tag, series, "20270301").await
}

/// `request` with every series starting on `day` (`YYYYMMDD`).
async fn request_on(env: &TestEnv, user: &str, tag: &str, series: usize, day: &str) -> Value {
    let comps: Vec<Vec<String>> = (0..series)
        .map(|i| {
            vevent(&[
                &format!("UID:{tag}-{i}"),
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                &format!("DTSTART:{day}T080000Z"),
                &format!("DTEND:{day}T083000Z"),
                "RRULE:FREQ=WEEKLY;COUNT=3",
                &format!("SUMMARY:{tag} {i}"),
                &format!("ORGANIZER:mailto:{user}"),
                "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.org",
            ])
        })
        .collect();
    let mail = imip_mail("REQUEST", user, &format!("{tag}@stall.test"), &comps);
    let out = env.ingest(&["--print", "--sender", user], &mail).await;
    assert!(
        out.status.success(),
        "ingest --print: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut payloads = json_lines(&out.stdout);
    assert_eq!(payloads.len(), 1);
    payloads.remove(0)
}

/// `request` of `series` series whose rule is costly to expand:
/// `FREQ=MINUTELY;BYDAY=MO;BYHOUR=3;BYMINUTE=7` from a Monday 08:00 makes the
/// expansion scan its whole budget of generated values (semantics'
/// `SCAN_BUDGET`), about 0.7 s of CPU a series in a debug build, whatever the
/// horizon; the series has a few dozen instances, within every limit.
async fn costly(env: &TestEnv, user: &str, tag: &str, series: usize) -> Value {
    let today = chrono::Utc::now().date_naive();
    let monday = today + chrono::Days::new(7 - u64::from(today.weekday().num_days_from_monday()));
    let day = monday.format("%Y%m%d").to_string();
    let mut p = request_on(env, user, tag, series, &day).await;
    for c in p["components"].as_array_mut().unwrap() {
        c["rrule"] = serde_json::json!(["FREQ=MINUTELY;BYDAY=MO;BYHOUR=3;BYMINUTE=7"]);
    }
    p
}

/// Polls `check` until it returns `Some`, within `secs`.
async fn within<T>(secs: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn applied_position(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT coalesce(max(last_sequence), 0) FROM partitions",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// (user, stream position, outcome) of every `message_log` row.
async fn log(db: &tokio_postgres::Client) -> Vec<(String, i64, String)> {
    db.query(
        "SELECT user_addr, stream_seq, outcome FROM message_log ORDER BY stream_seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// (user, stream position, error) of every dead letter.
async fn dead_letters(db: &tokio_postgres::Client) -> Vec<(String, i64, String)> {
    db.query(
        "SELECT user_addr, stream_seq, error FROM dead_letters ORDER BY stream_seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Every user's events on the stream, each once, numbered 1, 2, 3 … without
/// a gap, and as many as the user's event counter says were committed.
async fn events_once(env: &TestEnv) -> BTreeMap<String, usize> {
    let events = all_events(env).await;
    let mut ids = BTreeSet::new();
    let mut per_user: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &events {
        assert!(
            ids.insert(e["id"].as_str().unwrap().to_owned()),
            "event twice: {e}"
        );
        let user = e["user"].as_str().unwrap();
        per_user
            .entry(user.to_owned())
            .or_default()
            .push(e["sequence"].as_u64().unwrap());
    }
    let db = env.pg().await;
    for (user, seqs) in &per_user {
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &want, "{user}'s event sequence");
        let last: i64 = db
            .query_one(
                "SELECT last_seq FROM user_events WHERE user_addr = $1",
                &[user],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(last as usize, seqs.len(), "{user}'s committed events");
    }
    per_user.into_iter().map(|(u, s)| (u, s.len())).collect()
}

/// The users whose objects are stored.
async fn users_with_objects(db: &tokio_postgres::Client) -> BTreeSet<String> {
    db.query("SELECT DISTINCT user_addr FROM objects", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_message_over_its_budget_is_dead_lettered_and_the_others_are_applied_once() {
    let env = one_lane().await;
    let users = ["alice@example.com", "bob@example.com", "carol@example.com"];
    let heavy_user = "heavy@example.com";
    // One batch: alice, the costly one (about 3 s of CPU, over the 1 s lease
    // and far over the 300 ms budget), bob, carol.
    let mut payloads = vec![request(&env, users[0], "a", 1).await];
    payloads.push(costly(&env, heavy_user, "heavy", 4).await);
    for (i, u) in users[1..].iter().enumerate() {
        payloads.push(request(&env, u, &format!("n{i}"), 1).await);
    }
    publish_payloads(&env, &payloads).await;
    let _p = processor(
        &env,
        &[("IMIP_LEASE_MS", "1000"), ("IMIP_MESSAGE_BUDGET_MS", "300")],
    );
    let db = env.pg().await;
    within(120, "the first four messages applied", async || {
        (applied_position(&db).await >= 4).then_some(())
    })
    .await;
    // A later message of another user in the same lane goes through as well.
    let dave = request(&env, "dave@example.com", "d", 1).await;
    publish_payloads(&env, &[dave]).await;
    within(60, "dave's message applied", async || {
        (applied_position(&db).await >= 5).then_some(())
    })
    .await;
    env.wait_applied().await;

    let dead = dead_letters(&db).await;
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let (user, seq, error) = &dead[0];
    assert_eq!((user.as_str(), *seq), (heavy_user, 2));
    assert!(
        error.starts_with("took ") && error.ends_with(" s, over the 300 ms budget per message"),
        "the dead letter says why: {error}"
    );
    let logged = log(&db).await;
    let want: Vec<(String, i64, String)> = [(users[0], 1), (users[1], 3), (users[2], 4)]
        .iter()
        .chain(&[("dave@example.com", 5)])
        .map(|(u, s)| (u.to_string(), *s, "applied".to_owned()))
        .collect();
    assert_eq!(logged, want, "every normal message applied, once");
    let stored = users_with_objects(&db).await;
    assert!(
        !stored.contains(heavy_user),
        "nothing of the dead letter applied"
    );
    assert_eq!(stored.len(), 4, "{stored:?}");
    let events = events_once(&env).await;
    assert!(!events.contains_key(heavy_user), "{events:?}");
    assert_eq!(events.len(), 4, "{events:?}");
}

#[tokio::test]
async fn a_batch_longer_than_the_lease_commits_each_message_once() {
    const N: usize = 10;
    let env = one_lane().await;
    // Ten messages of about 0.7 s each, in one batch: 7 s of work in one
    // transaction with a 4 s lease (the server ends a transaction idle that
    // long). Each is well within its budget (2 s, half the lease): none may
    // be dead-lettered.
    let mut payloads = Vec::new();
    let mut users = Vec::new();
    for i in 0..N {
        let user = format!("u{i}@example.com");
        payloads.push(costly(&env, &user, &format!("c{i}"), 1).await);
        users.push(user);
    }
    publish_payloads(&env, &payloads).await;
    let _p = processor(&env, &[("IMIP_LEASE_MS", "4000")]);
    let db = env.pg().await;
    within(120, "every message applied", async || {
        (applied_position(&db).await >= N as i64).then_some(())
    })
    .await;
    env.wait_applied().await;
    assert_eq!(dead_letters(&db).await, vec![], "no dead letter");
    let logged = log(&db).await;
    let want: Vec<(String, i64, String)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.clone(), i as i64 + 1, "applied".to_owned()))
        .collect();
    assert_eq!(logged, want);
    assert_eq!(events_once(&env).await.len(), N);
}

#[tokio::test]
async fn a_message_whose_batch_keeps_timing_out_is_dead_lettered_with_the_error() {
    let env = one_lane().await;
    let db = env.pg().await;
    // Writing anything of slow@ takes longer than the database's statement
    // timeout: every batch holding that message fails with 57014, a
    // "transient" error, however often it is retried.
    db.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET statement_timeout = '1s';
         CREATE FUNCTION slow_user() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.user_addr = 'slow@example.com' THEN PERFORM pg_sleep(5); END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER slow_user BEFORE INSERT ON message_log
             FOR EACH ROW EXECUTE FUNCTION slow_user();",
        env.database
    ))
    .await
    .unwrap();
    let users = ["alice@example.com", "slow@example.com", "bob@example.com"];
    let mut payloads = Vec::new();
    for (i, u) in users.iter().enumerate() {
        payloads.push(request(&env, u, &format!("t{i}"), 1).await);
    }
    publish_payloads(&env, &payloads).await;
    let _p = processor(&env, &[]);
    within(120, "the lane past the slow message", async || {
        (applied_position(&db).await >= 3).then_some(())
    })
    .await;
    env.wait_applied().await;
    let dead = dead_letters(&db).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (user, seq, error) = &dead[0];
    assert_eq!((user.as_str(), *seq), ("slow@example.com", 2));
    assert!(
        error.contains("times in a row") && error.contains("57014"),
        "the dead letter names the repeated error: {error}"
    );
    let logged = log(&db).await;
    assert_eq!(
        logged,
        vec![
            (users[0].to_owned(), 1, "applied".to_owned()),
            (users[2].to_owned(), 3, "applied".to_owned()),
        ]
    );
    let events = events_once(&env).await;
    assert_eq!(
        events.keys().collect::<Vec<_>>(),
        vec![users[0], users[2]],
        "{events:?}"
    );
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// The value of one series in a Prometheus page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `imip-ctl status ARGS` with the test's stall threshold.
async fn ctl_status(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut cmd = env.command("imip-ctl");
    cmd.env("IMIP_STALL_AFTER_SECS", "2");
    let mut all = vec!["status"];
    all.extend(args);
    let out = env.run_with(cmd, &all, b"").await;
    assert!(
        out.status.success(),
        "imip-ctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn status_json(env: &TestEnv) -> Value {
    serde_json::from_slice(&ctl_status(env, &["--json"]).await.stdout).expect("status --json")
}

#[tokio::test]
async fn a_lane_that_does_not_advance_fails_readyz_until_it_moves_again() {
    let env = one_lane().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let _p = processor(
        &env,
        &[
            ("IMIP_METRICS_LISTEN", listen.as_str()),
            ("IMIP_STALL_AFTER_SECS", "2"),
        ],
    );
    let first = request(&env, "alice@example.com", "s0", 1).await;
    publish_payloads(&env, &[first]).await;
    env.wait_applied().await;
    within(30, "ready", async || {
        get(&format!("{base}/readyz"))
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;

    // The test holds the lane's partition row: its lease renewal and its
    // next batch wait behind the lock while a message waits.
    let mut holder = env.pg().await;
    let lock = holder.transaction().await.unwrap();
    lock.query_one(
        "SELECT last_sequence FROM partitions WHERE partition = 0 FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let second = request(&env, "bob@example.com", "s1", 1).await;
    publish_payloads(&env, &[second]).await;

    let (_, reason) = within(30, "/readyz 503 naming the stall", async || {
        get(&format!("{base}/readyz"))
            .await
            .filter(|(s, _)| *s == 503)
    })
    .await;
    assert!(
        reason.contains(
            "partition 0 stalled: 1 message(s) waiting, applied position 1 unchanged for"
        ),
        "{reason}"
    );
    let status = status_json(&env).await;
    let p0 = &status["partitions"][0];
    assert_eq!(p0["stalled"], true, "{status}");
    assert!(p0["stalled_for_secs"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(p0["lag"], 1, "{status}");
    let human = ctl_status(&env, &[]).await;
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("WARNING: partition 0 stalled: 1 message(s) waiting"),
        "{text}"
    );
    let page = within(30, "the stall in the metrics", async || {
        let (_, page) = get(&format!("{base}/metrics")).await?;
        (sample(&page, r#"imipflow_partition_stalled{partition="0"}"#) == Some(1.0)).then_some(page)
    })
    .await;
    assert!(
        sample(
            &page,
            r#"imipflow_partition_stalled_seconds{partition="0"}"#
        )
        .is_some_and(|s| s >= 2.0),
        "{page}"
    );

    lock.rollback().await.unwrap();
    env.wait_applied().await;
    within(30, "ready again", async || {
        get(&format!("{base}/readyz"))
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    let status = status_json(&env).await;
    assert_eq!(status["partitions"][0]["stalled"], false, "{status}");
    assert_eq!(status["partitions"][0]["stalled_for_secs"], 0, "{status}");
    within(30, "the metric back at 0", async || {
        let (_, page) = get(&format!("{base}/metrics")).await?;
        (sample(&page, r#"imipflow_partition_stalled{partition="0"}"#) == Some(0.0)).then_some(())
    })
    .await;
}
