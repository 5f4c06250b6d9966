//! Scenario tests of the processor through the real binaries: mail goes through
//! `imip-ingest`, `imip-processor run` applies it, `imip-ctl --json` shows the
//! result (SPEC §2), and the events stream carries the change events (§4).

use imipflow_tests::{TestEnv, imip_mail, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";

async fn send(env: &TestEnv, sender: &str, mail: &[u8]) {
    let out = env.ingest(&["--sender", sender], mail).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "ingest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn periods(env: &TestEnv, user: &str, from: &str, to: &str) -> Vec<(String, String, String)> {
    let fb = env
        .ctl_json(&["freebusy", user, "--from", from, "--to", to])
        .await;
    fb["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_str().unwrap().to_owned(),
                p["end"].as_str().unwrap().to_owned(),
                p["fbtype"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn busy(start: &str, end: &str) -> (String, String, String) {
    (start.to_owned(), end.to_owned(), "BUSY".to_owned())
}

const WEEKLY: &[&str] = &[
    "UID:weekly-1",
    "SEQUENCE:0",
    "DTSTAMP:20270201T100000Z",
    "DTSTART;TZID=Europe/Berlin:20270316T100000",
    "DTEND;TZID=Europe/Berlin:20270316T110000",
    "RRULE:FREQ=WEEKLY;COUNT=4",
    "SUMMARY:Team meeting",
    "ORGANIZER:mailto:alice@example.com",
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
    "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
];

async fn events(env: &TestEnv, user: &str) -> Vec<Value> {
    let out = env
        .run("imip-ctl", &["events", "--user", user, "--json"], b"")
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --follow: one JSON array.
    serde_json::from_slice(&out.stdout).expect("one JSON array")
}

#[tokio::test]
async fn request_of_a_weekly_series_is_busy_dst_correct_and_emits_events() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "w1@x", &[vevent(WEEKLY)]),
    )
    .await;
    env.wait_applied().await;
    // Berlin switches to CEST on 2027-03-28: 10:00 local is 09:00Z before, 08:00Z after.
    assert_eq!(
        periods(&env, ALICE, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z").await,
        vec![
            busy("2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z"),
            busy("2027-03-23T09:00:00Z", "2027-03-23T10:00:00Z"),
            busy("2027-03-30T08:00:00Z", "2027-03-30T09:00:00Z"),
            busy("2027-04-06T08:00:00Z", "2027-04-06T09:00:00Z"),
        ]
    );
    let obj = env.ctl_json(&["object", ALICE, "weekly-1"]).await;
    assert_eq!(obj["sequence"], 0);
    assert_eq!(obj["organizer"], ALICE);
    assert_eq!(obj["attendees"][1]["address"], BOB);
    assert_eq!(obj["attendees"][1]["partstat"], "NEEDS-ACTION");

    let evs = events(&env, ALICE).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            "org.imipflow.object.changed",
            "org.imipflow.freebusy.changed"
        ]
    );
    assert_eq!(evs[0]["sequence"], 1);
    assert_eq!(evs[1]["sequence"], 2);
    assert_eq!(evs[0]["specversion"], "1.0");
    assert_eq!(evs[1]["data"]["added"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn an_override_moves_one_instance_and_a_cancel_removes_one() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "o1@x", &[vevent(WEEKLY)]),
    )
    .await;
    let moved = [
        "UID:weekly-1",
        "SEQUENCE:1",
        "DTSTAMP:20270202T100000Z",
        "RECURRENCE-ID;TZID=Europe/Berlin:20270323T100000",
        "DTSTART;TZID=Europe/Berlin:20270323T150000",
        "DTEND;TZID=Europe/Berlin:20270323T160000",
        "SUMMARY:Team meeting (moved)",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE:mailto:bob@example.org",
    ];
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "o2@x", &[vevent(&moved)]),
    )
    .await;
    let cancelled = [
        "UID:weekly-1",
        "SEQUENCE:2",
        "DTSTAMP:20270203T100000Z",
        "RECURRENCE-ID;TZID=Europe/Berlin:20270330T100000",
        "DTSTART;TZID=Europe/Berlin:20270330T100000",
        "DTEND;TZID=Europe/Berlin:20270330T110000",
        "STATUS:CANCELLED",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE:mailto:bob@example.org",
    ];
    send(
        &env,
        ALICE,
        &imip_mail("CANCEL", ALICE, "o3@x", &[vevent(&cancelled)]),
    )
    .await;
    env.wait_applied().await;
    assert_eq!(
        periods(&env, ALICE, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z").await,
        vec![
            busy("2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z"),
            busy("2027-03-23T14:00:00Z", "2027-03-23T15:00:00Z"),
            busy("2027-04-06T08:00:00Z", "2027-04-06T09:00:00Z"),
        ]
    );
    let moved = env
        .ctl_json(&[
            "object",
            ALICE,
            "weekly-1",
            "--recurrence-id",
            "2027-03-23T09:00:00Z",
        ])
        .await;
    assert_eq!(moved["sequence"], 1);
    // A new version of the whole series drops the override it does not carry.
    let mut v2: Vec<&str> = WEEKLY.to_vec();
    v2[1] = "SEQUENCE:3";
    v2[2] = "DTSTAMP:20270204T100000Z";
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "o4@x", &[vevent(&v2)]),
    )
    .await;
    env.wait_applied().await;
    let objs = env.ctl_json(&["objects", ALICE]).await;
    assert_eq!(objs.as_array().unwrap().len(), 1, "{objs}");
    assert_eq!(
        periods(&env, ALICE, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z")
            .await
            .len(),
        4
    );
}

#[tokio::test]
async fn replies_make_the_attendees_free_busy_follow_the_answer() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let reply = |partstat: &str, stamp: &str| {
        let att = format!("ATTENDEE;PARTSTAT={partstat}:mailto:bob@example.org");
        let stamp = format!("DTSTAMP:{stamp}");
        imip_mail(
            "REPLY",
            BOB,
            &format!("r-{partstat}-{stamp}@x"),
            &[vevent(&[
                "UID:single-1",
                "SEQUENCE:0",
                &stamp,
                "DTSTART:20270410T120000Z",
                "DTEND:20270410T130000Z",
                "ORGANIZER:mailto:alice@example.com",
                &att,
            ])],
        )
    };
    send(&env, BOB, &reply("ACCEPTED", "20270301T100000Z")).await;
    env.wait_applied().await;
    assert_eq!(
        periods(&env, BOB, "2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z").await,
        vec![busy("2027-04-10T12:00:00Z", "2027-04-10T13:00:00Z")]
    );
    send(&env, BOB, &reply("TENTATIVE", "20270302T100000Z")).await;
    env.wait_applied().await;
    assert_eq!(
        periods(&env, BOB, "2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z").await,
        vec![(
            "2027-04-10T12:00:00Z".to_owned(),
            "2027-04-10T13:00:00Z".to_owned(),
            "BUSY-TENTATIVE".to_owned()
        )]
    );
    send(&env, BOB, &reply("DECLINED", "20270303T100000Z")).await;
    // An older answer arriving late is stale and changes nothing.
    send(&env, BOB, &reply("ACCEPTED", "20270301T090000Z")).await;
    env.wait_applied().await;
    assert!(
        periods(&env, BOB, "2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn cancel_of_the_whole_event_removes_objects_and_busy_time() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "c1@x", &[vevent(WEEKLY)]),
    )
    .await;
    let mut cancel: Vec<&str> = WEEKLY.to_vec();
    cancel[1] = "SEQUENCE:1";
    cancel.push("STATUS:CANCELLED");
    send(
        &env,
        ALICE,
        &imip_mail("CANCEL", ALICE, "c2@x", &[vevent(&cancel)]),
    )
    .await;
    env.wait_applied().await;
    assert!(
        periods(&env, ALICE, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z")
            .await
            .is_empty()
    );
    let objs = env.ctl_json(&["objects", ALICE]).await;
    assert!(objs.as_array().unwrap().is_empty(), "{objs}");
    let kinds: Vec<String> = events(&env, ALICE)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"org.imipflow.object.removed".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn stale_refused_and_ignored_messages_change_nothing() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let mut v2: Vec<&str> = WEEKLY.to_vec();
    v2[1] = "SEQUENCE:2";
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "s1@x", &[vevent(&v2)]),
    )
    .await;
    // Older SEQUENCE: stale.
    let mut v1: Vec<&str> = WEEKLY.to_vec();
    v1[1] = "SEQUENCE:1";
    v1[3] = "DTSTART;TZID=Europe/Berlin:20270316T070000";
    v1[4] = "DTEND;TZID=Europe/Berlin:20270316T080000";
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "s2@x", &[vevent(&v1)]),
    )
    .await;
    // Bob is not the organizer: refused.
    send(
        &env,
        BOB,
        &imip_mail("REQUEST", BOB, "s3@x", &[vevent(WEEKLY)]),
    )
    .await;
    // COUNTER has no effect on the sender's records.
    send(
        &env,
        ALICE,
        &imip_mail("COUNTER", ALICE, "s4@x", &[vevent(&v1)]),
    )
    .await;
    env.wait_applied().await;
    let p = periods(&env, ALICE, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z").await;
    assert_eq!(p[0], busy("2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z"));
    assert!(
        periods(&env, BOB, "2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z")
            .await
            .is_empty()
    );
    let db = env.pg().await;
    let rows = db
        .query("SELECT outcome FROM message_log ORDER BY stream_seq", &[])
        .await
        .unwrap();
    let outcomes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(outcomes, vec!["applied", "stale", "refused", "ignored"]);
}

#[tokio::test]
async fn an_infinite_daily_series_answers_five_years_ahead() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let daily = [
        "UID:daily-1",
        "DTSTAMP:20270101T100000Z",
        "DTSTART;TZID=America/New_York:20270101T090000",
        "DTEND;TZID=America/New_York:20270101T091500",
        "RRULE:FREQ=DAILY",
        "ORGANIZER:mailto:alice@example.com",
    ];
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "d1@x", &[vevent(&daily)]),
    )
    .await;
    env.wait_applied().await;
    // 2032-07-14: EDT (-04:00), so 09:00 local is 13:00Z.
    assert_eq!(
        periods(&env, ALICE, "2032-07-14T00:00:00Z", "2032-07-15T00:00:00Z").await,
        vec![busy("2032-07-14T13:00:00Z", "2032-07-14T13:15:00Z")]
    );
    // 2031-12-01: EST (-05:00).
    assert_eq!(
        periods(&env, ALICE, "2031-12-01T00:00:00Z", "2031-12-02T00:00:00Z").await,
        vec![busy("2031-12-01T14:00:00Z", "2031-12-01T14:15:00Z")]
    );
}

#[tokio::test]
async fn a_secondly_rule_without_end_is_bounded_and_the_lane_moves_on() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let hostile = [
        "UID:hostile-1",
        "DTSTAMP:20270101T100000Z",
        "DTSTART:20270101T000000Z",
        "DTEND:20270101T000001Z",
        "RRULE:FREQ=SECONDLY",
        "ORGANIZER:mailto:alice@example.com",
    ];
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "h1@x", &[vevent(&hostile)]),
    )
    .await;
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "h2@x", &[vevent(WEEKLY)]),
    )
    .await;
    let started = std::time::Instant::now();
    env.wait_applied().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let db = env.pg().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM freebusy WHERE uid = 'hostile-1'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0 && n <= 5000, "{n} materialised instances");
    assert_eq!(
        periods(&env, ALICE, "2027-03-16T08:59:00Z", "2027-03-16T09:01:00Z")
            .await
            .iter()
            .filter(|p| p.0 == "2027-03-16T09:00:00Z" && p.1 == "2027-03-16T10:00:00Z")
            .count(),
        1
    );
}

#[tokio::test]
async fn freebusy_ics_is_a_valid_vfreebusy() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "i1@x", &[vevent(WEEKLY)]),
    )
    .await;
    env.wait_applied().await;
    let out = env
        .run(
            "imip-ctl",
            &[
                "freebusy",
                ALICE,
                "--from",
                "2027-03-01T00:00:00Z",
                "--to",
                "2027-04-01T00:00:00Z",
                "--ics",
            ],
            b"",
        )
        .await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("BEGIN:VCALENDAR\r\n"));
    assert!(text.contains("BEGIN:VFREEBUSY\r\n"));
    assert!(
        text.contains("FREEBUSY;FBTYPE=BUSY:20270316T090000Z/20270316T100000Z\r\n"),
        "{text}"
    );
    assert!(text.contains("DTSTART:20270301T000000Z\r\n"));
    assert!(text.trim_end().ends_with("END:VCALENDAR"));
}

#[tokio::test]
async fn events_follow_streams_new_events_as_they_are_committed() {
    use tokio::io::AsyncBufReadExt;
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let mut follow = env.command("imip-ctl");
    follow
        .args(["events", "--user", ALICE, "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = follow.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    send(
        &env,
        ALICE,
        &imip_mail("REQUEST", ALICE, "f1@x", &[vevent(WEEKLY)]),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("a line");
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(got[0]["type"], "org.imipflow.object.changed");
    assert_eq!(got[1]["type"], "org.imipflow.freebusy.changed");
    assert_eq!(got[1]["subject"], ALICE);
    let _ = child.kill().await;
}
