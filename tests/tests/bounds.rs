//! Bounded cost per message and per user (issue 12), through the real
//! binaries: a message whose UIDs together materialise more free/busy rows
//! than `IMIP_MAX_PERIODS_PER_MESSAGE` is refused whole; a series with
//! hundreds of overrides stores its raw text once; `imip-ctl freebusy` over a
//! user with many open series is bounded by `IMIP_MAX_QUERY_PERIODS` and says
//! that it was cut; the per-user quotas refuse the message that would exceed
//! them and let deletions through. The limit and quota cases run on both write
//! paths (batched and `IMIP_APPLY_PER_MESSAGE=1`), which must agree.
//!
//! Payloads that ingest's own limits might quarantine first are published
//! straight onto the stream (`publish_payloads`), so that these tests exercise
//! the processor's bound, which also holds for payloads published by other means.

use imipflow_tests::{TestEnv, bin, imip_mail, payload_of, publish_payloads, vevent};
use serde_json::Value;
use std::time::Duration;

const ALICE: &str = "alice@example.com";

/// Both write paths: the batched fast path and the per-message path.
const PATHS: [(&str, &[(&str, &str)]); 2] = [
    ("batched", &[]),
    ("per-message", &[("IMIP_APPLY_PER_MESSAGE", "1")]),
];

/// (dedupe id, outcome, reason) of every logged message, in stream order.
async fn log(env: &TestEnv) -> Vec<(String, String, Option<String>)> {
    env.pg()
        .await
        .query(
            "SELECT dedupe_id, outcome, reason FROM message_log ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// A series without end, one instance an hour.
fn hourly(uid: &str) -> Vec<String> {
    vevent(&[
        &format!("UID:{uid}"),
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270301T000000Z",
        "DTEND:20270301T003000Z",
        "RRULE:FREQ=HOURLY",
        &format!("ORGANIZER:mailto:{ALICE}"),
        "SUMMARY:hourly",
    ])
}

/// The 8 KB mail: 40 hourly series, each capped at 5,000 instances,
/// became 200,000 free/busy rows. The processor refuses it whole.
#[tokio::test]
async fn forty_hourly_series_in_one_message_are_refused_whole() {
    for (path, extra) in PATHS {
        let env = TestEnv::new().await;
        // One series planned by the real ingest, then carried 40 times under
        // different UIDs (ingest's own rule limits may quarantine the mail
        // itself; the processor's bound must hold whatever publishes it).
        let mail = imip_mail("REQUEST", ALICE, "forty@x", &[hourly("h0")]);
        let mut p = payload_of(&env, ALICE, &mail).await;
        let one = p["components"][0].clone();
        p["components"] = (0..40)
            .map(|i| {
                let mut c = one.clone();
                c["uid"] = format!("h{i}").into();
                c
            })
            .collect::<Vec<Value>>()
            .into();
        p["dedupe_id"] = "forty".into();
        let single = imip_mail(
            "REQUEST",
            ALICE,
            "single@x",
            &[vevent(&[
                "UID:single",
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270302T090000Z",
                "DTEND:20270302T100000Z",
                &format!("ORGANIZER:mailto:{ALICE}"),
            ])],
        );
        let mut after = payload_of(&env, ALICE, &single).await;
        after["dedupe_id"] = "after".into();
        publish_payloads(&env, &[p, after]).await;
        let proc = env.start_processor(extra);
        env.wait_applied().await;
        assert!(proc.terminate().await.success());

        let logged = log(&env).await;
        assert_eq!(logged.len(), 2, "{path}: {logged:?}");
        let (id, outcome, reason) = &logged[0];
        assert_eq!(
            (id.as_str(), outcome.as_str()),
            ("forty", "refused"),
            "{path}"
        );
        let reason = reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("IMIP_MAX_PERIODS_PER_MESSAGE") && reason.contains("20000"),
            "{path}: reason names the limit: {reason}"
        );
        // Never half-applied: not one UID of it (the first four alone would fit).
        for table in ["objects", "freebusy", "open_series"] {
            let n = count(
                &env,
                &format!("SELECT count(*) FROM {table} WHERE uid LIKE 'h%'"),
            )
            .await;
            assert_eq!(n, 0, "{path}: {table} rows of the refused message");
        }
        assert_eq!(logged[1].1, "applied", "{path}: the lane moved on");
        assert_eq!(
            count(&env, "SELECT count(*) FROM freebusy WHERE uid = 'single'").await,
            1
        );
        assert_eq!(
            count(&env, "SELECT count(*) FROM dead_letters").await,
            0,
            "{path}"
        );
    }
}

/// Bytes the stored objects of the database take: their rows, and the
/// separate table of raw texts where there is one.
async fn object_bytes(env: &TestEnv) -> i64 {
    let db = env.pg().await;
    let mut total: i64 = db
        .query_one(
            "SELECT coalesce(sum(pg_column_size(o.*)), 0)::bigint FROM objects o",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let texts: bool = db
        .query_one("SELECT to_regclass('object_texts') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if texts {
        total += db
            .query_one(
                "SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM object_texts t",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    total
}

/// The 105 KiB mail: a master with 300 overrides stored the whole
/// raw calendar 301 times (32 MiB). Through the real ingest, default limits.
#[tokio::test]
async fn three_hundred_overrides_store_their_raw_text_once() {
    let env = TestEnv::new().await;
    let org = format!("ORGANIZER:mailto:{ALICE}");
    let mut comps = vec![vevent(&[
        "UID:daily",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270301T090000Z",
        "DTEND:20270301T093000Z",
        "RRULE:FREQ=DAILY;COUNT=400",
        &org,
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
        "SUMMARY:daily",
    ])];
    let mut rng = fastrand::Rng::with_seed(12);
    let start = chrono::NaiveDate::from_ymd_opt(2027, 3, 2).unwrap();
    for i in 0..300 {
        let day = (start + chrono::Duration::days(i)).format("%Y%m%d");
        // Notes that differ per instance, as real agendas do (and that do not
        // compress away, so the table's size says what is stored).
        let notes: String = (0..90)
            .map(|_| rng.alphanumeric())
            .collect::<String>()
            .chars()
            .collect::<Vec<_>>()
            .chunks(60)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" ");
        comps.push(vevent(&[
            "UID:daily",
            &format!("RECURRENCE-ID:{day}T090000Z"),
            "SEQUENCE:0",
            "DTSTAMP:20270101T000000Z",
            &format!("DTSTART:{day}T100000Z"),
            &format!("DTEND:{day}T103000Z"),
            &org,
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
            &format!("SUMMARY:daily {i}"),
            &format!("DESCRIPTION:{notes}"),
        ]));
    }
    let mail = imip_mail("REQUEST", ALICE, "overrides@x", &comps);
    assert!(
        (90_000..130_000).contains(&mail.len()),
        "the issue's mail was 105 KiB; this one {} B",
        mail.len()
    );
    let out = env.ingest(&["--sender", ALICE], &mail).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.stream_messages("quarantine").await.len(),
        0,
        "default limits pass it"
    );
    let proc = env.start_processor(&[]);
    env.wait_applied().await;
    assert!(proc.terminate().await.success());
    let logged = log(&env).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].1, "applied", "{logged:?}");
    assert_eq!(count(&env, "SELECT count(*) FROM objects").await, 301);

    let bytes = object_bytes(&env).await;
    eprintln!("301 objects from a {} B mail: {bytes} B stored", mail.len());
    // Each override's own component is stored (about as large as its part of
    // the mail), the raw text once: a few times the mail, not 301 times.
    assert!(
        bytes < 8 * mail.len() as i64,
        "{bytes} B stored for a {} B mail",
        mail.len()
    );

    // The raw text stored once still serves every object: `object --ics`
    // prints the whole UID (the master and its 300 overrides), each override
    // with its own notes from that text, and `--recurrence-id` one of them.
    let raw = payload_of(&env, ALICE, &mail).await["raw"].clone();
    let master = env
        .run("imip-ctl", &["object", ALICE, "daily", "--ics"], b"")
        .await;
    assert!(
        master.status.success(),
        "{}",
        String::from_utf8_lossy(&master.stderr)
    );
    let all = String::from_utf8_lossy(&master.stdout);
    assert_eq!(all.matches("BEGIN:VEVENT").count(), 301);
    let one = env
        .run(
            "imip-ctl",
            &[
                "object",
                ALICE,
                "daily",
                "--recurrence-id",
                "2027-06-01T09:00:00Z",
                "--ics",
            ],
            b"",
        )
        .await;
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let one = String::from_utf8_lossy(&one.stdout);
    assert_eq!(one.matches("BEGIN:VEVENT").count(), 1, "{one}");
    assert!(one.contains("RECURRENCE-ID:20270601T090000Z"), "{one}");
    // Its DESCRIPTION is the one the mail gave that instance.
    let unfold = |s: &str| s.replace("\r\n ", "").replace("\r\n\t", "");
    let notes = |s: &str| {
        let s = unfold(s);
        let at = s.find("DESCRIPTION:").expect("DESCRIPTION");
        s[at..].split("\r\n").next().unwrap().to_owned()
    };
    let raw = raw.as_str().unwrap();
    let in_mail = &raw[raw.find("RECURRENCE-ID:20270601T090000Z").unwrap()..];
    assert_eq!(notes(&one), notes(in_mail));
}

/// Runs `imip-ctl ARGS` against `env` and measures its peak RSS
/// (`imipflow_tests::rusage`: the test binary re-executed as a small helper,
/// since a child's `ru_maxrss` starts at its parent's high-water mark).
fn measured_ctl(
    env: &TestEnv,
    extra: &[(&str, &str)],
    args: &[&str],
) -> imipflow_tests::rusage::Run {
    let envs: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    imipflow_tests::rusage::measure(
        &bin("imip-ctl"),
        &args,
        &envs,
        b"",
        Duration::from_secs(120),
    )
}

/// Not a test of its own: the measuring helper of [`measured_ctl`], active
/// only when the test binary is re-executed by `imipflow_tests::rusage::measure`.
#[test]
fn rusage_helper() {
    imipflow_tests::rusage::helper();
}

/// A year of free/busy for a user with many open series (one instance a
/// minute, all computed at query time) needed 2.4 GB in one allocation: each
/// series alone was capped, the query was not. Now the answer holds at most
/// `IMIP_MAX_QUERY_PERIODS` periods, the first ones by start, and says so.
#[tokio::test]
async fn freebusy_over_many_open_series_is_bounded_and_says_truncated() {
    const SERIES: usize = 30;
    const CAP: usize = 20_000;
    let env = TestEnv::new().await;
    let mail = imip_mail(
        "REQUEST",
        ALICE,
        "minutely@x",
        &[vevent(&[
            "UID:m0",
            "SEQUENCE:0",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270101T000000Z",
            "DTEND:20270101T000030Z",
            "RRULE:FREQ=MINUTELY",
            &format!("ORGANIZER:mailto:{ALICE}"),
        ])],
    );
    let template = payload_of(&env, ALICE, &mail).await;
    let payloads: Vec<Value> = (0..SERIES)
        .map(|i| {
            let mut p = template.clone();
            p["components"][0]["uid"] = format!("m{i}").into();
            p["dedupe_id"] = format!("m{i}").into();
            p
        })
        .collect();
    publish_payloads(&env, &payloads).await;
    // A one-day horizon: the series are stored as open, their instances
    // computed when asked for.
    let proc = env.start_processor(&[("IMIP_HORIZON_DAYS", "1")]);
    env.wait_applied().await;
    assert!(proc.terminate().await.success());
    assert_eq!(
        count(&env, "SELECT count(*) FROM open_series").await,
        SERIES as i64
    );

    let cap = CAP.to_string();
    let (from, to) = ("2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z");
    let run = measured_ctl(
        &env,
        &[("IMIP_MAX_QUERY_PERIODS", &cap)],
        &["freebusy", ALICE, "--from", from, "--to", to, "--json"],
    );
    assert_eq!(run.code, 0, "{}", String::from_utf8_lossy(&run.stderr));
    let doc: Value = serde_json::from_slice(&run.stdout).expect("JSON");
    let periods = doc["periods"].as_array().expect("periods");
    eprintln!(
        "{SERIES} open series, a year: {} periods, peak RSS {} KiB",
        periods.len(),
        run.max_rss_kb
    );
    assert_eq!(periods.len(), CAP, "as many periods as the cap");
    assert_eq!(doc["truncated"], true);
    // The first periods by start: minute 0 of every series first.
    assert_eq!(periods[0]["start"], "2027-01-01T00:00:00Z");
    assert_eq!(periods[SERIES - 1]["start"], "2027-01-01T00:00:00Z");
    assert_eq!(periods[SERIES]["start"], "2027-01-01T00:01:00Z");
    assert!(
        run.max_rss_kb < 100 * 1024,
        "imip-ctl peaked at {} KiB",
        run.max_rss_kb
    );

    // The human-readable answer says so too.
    let out = env
        .run_with(
            {
                let mut c = env.command("imip-ctl");
                c.env("IMIP_MAX_QUERY_PERIODS", "100");
                c
            },
            &["freebusy", ALICE, "--from", from, "--to", to],
            b"",
        )
        .await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("truncated") && err.contains("IMIP_MAX_QUERY_PERIODS"),
        "stdout: {text}\nstderr: {err}"
    );
    // A window the cap does not reach is complete.
    let small = env
        .run_with(
            {
                let mut c = env.command("imip-ctl");
                c.env("IMIP_MAX_QUERY_PERIODS", "100");
                c
            },
            &[
                "freebusy",
                ALICE,
                "--from",
                "2027-06-01T00:00:00Z",
                "--to",
                "2027-06-01T00:02:00Z",
                "--json",
            ],
            b"",
        )
        .await;
    let doc: Value = serde_json::from_slice(&small.stdout).expect("JSON");
    assert_eq!(doc["periods"].as_array().unwrap().len(), 2 * SERIES);
    assert_eq!(doc["truncated"], false);
}

/// A REQUEST of a daily series, `count` instances, or a single event (`count` 0).
fn request(uid: &str, count: u32) -> Vec<u8> {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".into(),
        "DTSTAMP:20270101T000000Z".into(),
        "DTSTART:20270301T090000Z".into(),
        "DTEND:20270301T100000Z".into(),
        format!("ORGANIZER:mailto:{ALICE}"),
    ];
    if count > 0 {
        lines.push(format!("RRULE:FREQ=DAILY;COUNT={count}"));
    }
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    imip_mail("REQUEST", ALICE, &format!("{uid}@x"), &[vevent(&lines)])
}

fn cancel(uid: &str) -> Vec<u8> {
    imip_mail(
        "CANCEL",
        ALICE,
        &format!("cancel-{uid}@x"),
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:1",
            "DTSTAMP:20270102T000000Z",
            &format!("ORGANIZER:mailto:{ALICE}"),
            "STATUS:CANCELLED",
        ])],
    )
}

async fn usage(env: &TestEnv) -> (i64, i64) {
    let row = env
        .pg()
        .await
        .query_one(
            "SELECT objects, freebusy FROM user_usage WHERE user_addr = $1",
            &[&ALICE],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The per-user quotas: a message that would take the user past one is
/// refused whole; the counters match the rows; a user over quota (the quota
/// was lowered) can still cancel. Through the real ingest.
#[tokio::test]
async fn quota_refuses_the_message_that_would_exceed_it_and_lets_deletions_through() {
    let mut results = Vec::new();
    for (path, extra) in PATHS {
        let env = TestEnv::new().await;
        for mail in [
            request("a", 60), // 1 object, 60 rows: applied
            request("b", 60), // 120 rows > 100: refused
            request("c", 0),  // 2 objects, 61 rows
            request("d", 0),  // 3 objects, 62 rows
            request("e", 0),  // 4 objects > 3: refused
        ] {
            let out = env.ingest(&["--sender", ALICE], &mail).await;
            assert!(out.status.success());
        }
        let mut quota: Vec<(&str, &str)> = vec![
            ("IMIP_MAX_OBJECTS_PER_USER", "3"),
            ("IMIP_MAX_FREEBUSY_PER_USER", "100"),
        ];
        quota.extend_from_slice(extra);
        let proc = env.start_processor(&quota);
        env.wait_applied().await;
        assert!(proc.terminate().await.success());
        let logged = log(&env).await;
        let outcomes: Vec<&str> = logged.iter().map(|l| l.1.as_str()).collect();
        assert_eq!(
            outcomes,
            ["applied", "refused", "applied", "applied", "refused"],
            "{path}: {logged:?}"
        );
        let reason = |i: usize| logged[i].2.clone().unwrap_or_default();
        assert!(
            reason(1).contains("IMIP_MAX_FREEBUSY_PER_USER"),
            "{path}: {}",
            reason(1)
        );
        assert!(
            reason(4).contains("IMIP_MAX_OBJECTS_PER_USER"),
            "{path}: {}",
            reason(4)
        );
        for uid in ["b", "e"] {
            let n = count(
                &env,
                &format!(
                    "SELECT (SELECT count(*) FROM objects WHERE uid = '{uid}')
                          + (SELECT count(*) FROM freebusy WHERE uid = '{uid}')"
                ),
            )
            .await;
            assert_eq!(n, 0, "{path}: rows of refused {uid}");
        }
        assert_eq!(usage(&env).await, (3, 62), "{path}");

        // The quota lowered below what the user has: adding is refused,
        // cancelling goes through.
        for mail in [request("f", 0), cancel("a")] {
            assert!(
                env.ingest(&["--sender", ALICE], &mail)
                    .await
                    .status
                    .success()
            );
        }
        let mut lower: Vec<(&str, &str)> = vec![("IMIP_MAX_FREEBUSY_PER_USER", "10")];
        lower.extend_from_slice(extra);
        let proc = env.start_processor(&lower);
        env.wait_applied().await;
        assert!(proc.terminate().await.success());
        let logged = log(&env).await;
        let outcomes: Vec<&str> = logged[5..].iter().map(|l| l.1.as_str()).collect();
        assert_eq!(outcomes, ["refused", "applied"], "{path}: {logged:?}");
        assert_eq!(
            count(
                &env,
                "SELECT count(*) FROM freebusy WHERE uid IN ('a', 'f')"
            )
            .await,
            0
        );
        assert_eq!(usage(&env).await, (2, 2), "{path}");
        let actual = (
            count(&env, "SELECT count(*) FROM objects").await,
            count(&env, "SELECT count(*) FROM freebusy").await,
        );
        assert_eq!(usage(&env).await, actual, "{path}: counters match the rows");
        // What both paths must leave alike besides the log: the counters and
        // the stored texts (one per UID).
        let texts: Vec<String> = env
            .pg()
            .await
            .query(
                "SELECT uid || ' ' || encode(digest, 'hex') FROM object_texts ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(texts.len(), 2, "{path}: c and d");
        results.push((
            logged
                .into_iter()
                .map(|(_, o, r)| (o, r))
                .collect::<Vec<_>>(),
            usage(&env).await,
            texts,
        ));
    }
    assert_eq!(
        results[0], results[1],
        "batched and per-message paths agree"
    );
}

/// `imip-ctl rebuild` brings the quota counters back to the rows and drops
/// raw texts no object refers to, after rows were changed by hand.
#[tokio::test]
async fn rebuild_resets_the_quota_counters_and_drops_orphan_texts() {
    let env = TestEnv::new().await;
    for mail in [request("a", 5), request("b", 0)] {
        assert!(
            env.ingest(&["--sender", ALICE], &mail)
                .await
                .status
                .success()
        );
    }
    let proc = env.start_processor(&[]);
    env.wait_applied().await;
    assert!(proc.terminate().await.success());
    assert_eq!(usage(&env).await, (2, 6));
    env.pg()
        .await
        .batch_execute(
            "DELETE FROM objects WHERE uid = 'b'; DELETE FROM freebusy WHERE uid = 'b';
             UPDATE user_usage SET objects = 40, freebusy = 400",
        )
        .await
        .unwrap();
    let r = env.ctl_json(&["rebuild", ALICE]).await;
    assert_eq!(r["user"], ALICE);
    assert_eq!(usage(&env).await, (1, 5));
    assert_eq!(
        count(&env, "SELECT count(*) FROM object_texts").await,
        1,
        "only a's text is left"
    );
}

/// An incoming REQUEST carrying many UIDs waits in the queue once per UID;
/// each entry kept the whole message's raw text, so the text was stored as
/// many times as the message has UIDs (1,000 UIDs in a 1 MiB payload: 1 GB).
#[tokio::test]
async fn a_queued_request_with_many_uids_does_not_store_its_text_per_uid() {
    let env = TestEnv::new().await;
    const ORG: &str = "org@example.org";
    let mut rng = fastrand::Rng::with_seed(5);
    let comps: Vec<Vec<String>> = (0..200)
        .map(|i| {
            // Text that does not compress away, so the table's size says what is stored.
            let notes: String = (0..1000).map(|_| rng.alphanumeric()).collect();
            vevent(&[
                &format!("UID:agenda-{i}"),
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                &format!("DTSTART:20270301T{:02}0000Z", i % 24),
                &format!("DTEND:20270301T{:02}3000Z", i % 24),
                &format!("ORGANIZER:mailto:{ORG}"),
                &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{ALICE}"),
                &format!("DESCRIPTION:{notes}"),
            ])
        })
        .collect();
    let mail = imip_mail("REQUEST", ORG, "many-uids@example.org", &comps);
    let out = env
        .ingest(
            &[
                "--direction",
                "incoming",
                "--sender",
                ORG,
                "--recipient",
                ALICE,
            ],
            &mail,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = env.start_processor(&[]);
    env.wait_applied().await;
    p.terminate().await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM request_queue").await,
        200,
        "every UID waits in the queue"
    );
    let bytes = count(
        &env,
        "SELECT coalesce(sum(pg_column_size(q.*)), 0)::bigint FROM request_queue q",
    )
    .await;
    assert!(
        bytes < 8 * mail.len() as i64,
        "the queue holds {bytes} bytes for a {} byte mail",
        mail.len()
    );
}
