//! End-to-end tests of `imip-ingest` through the real binary, real NATS and
//! the streams created by the real `imip-processor migrate`.

use imipflow_tests::{TestEnv, fixture, json_lines, subset_mismatch};
use serde_json::Value;
use std::time::{Duration, Instant};

const ALICE: &str = "alice@example.com";

fn invitation(message_id: &str, uid: &str, attendees: usize) -> Vec<u8> {
    let mut ics = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow tests//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n",
    );
    ics.push_str(&format!(
        "UID:{uid}\r\nSEQUENCE:0\r\nDTSTAMP:20270301T120000Z\r\nDTSTART;TZID=Europe/Berlin:20270315T090000\r\n\
DTEND;TZID=Europe/Berlin:20270315T100000\r\nSUMMARY:Planning\r\nORGANIZER:mailto:{ALICE}\r\n"
    ));
    for i in 0..attendees {
        ics.push_str(&format!(
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:user{i}@example.org\r\n"
        ));
    }
    ics.push_str("END:VEVENT\r\nEND:VCALENDAR\r\n");
    format!(
        "From: Alice <{ALICE}>\r\nTo: bob@example.org\r\nSubject: Planning\r\nMessage-ID: <{message_id}>\r\n\
Date: Mon, 01 Mar 2027 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n{ics}"
    )
    .into_bytes()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn fixtures_produce_their_expected_payloads() {
    let dir = imipflow_tests::repo_root().join("tests/fixtures/mail");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 20,
        "expected at least 20 fixtures, found {}",
        names.len()
    );
    let env = TestEnv::unmigrated();
    let mut failures = Vec::new();
    for name in &names {
        let expect_path = dir.join(name.replace(".eml", ".expect.json"));
        let expect: Value = serde_json::from_slice(
            &std::fs::read(&expect_path)
                .unwrap_or_else(|e| panic!("{}: {e}", expect_path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
        let mut args = vec![
            "--print".to_owned(),
            "--sender".to_owned(),
            expect["sender"].as_str().unwrap().to_owned(),
        ];
        if let Some(d) = expect["direction"].as_str() {
            args.extend(["--direction".to_owned(), d.to_owned()]);
        }
        for r in expect["recipients"].as_array().into_iter().flatten() {
            args.extend(["--recipient".to_owned(), r.as_str().unwrap().to_owned()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.ingest(&argv, &fixture(&format!("mail/{name}"))).await;
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{name}: exit {:?}: {}",
                out.status.code(),
                stderr(&out)
            ));
            continue;
        }
        let lines = json_lines(&out.stdout);
        let payloads: Vec<Value> = lines
            .iter()
            .filter(|v| v.get("method").is_some())
            .cloned()
            .collect();
        let quarantine: Vec<Value> = lines
            .iter()
            .filter(|v| v.get("reason").is_some())
            .cloned()
            .collect();
        let want_payloads = expect
            .get("payloads")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        let want_quarantine = expect
            .get("quarantine")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        if let Some(m) = subset_mismatch(&want_payloads, &Value::Array(payloads), "payloads") {
            failures.push(format!("{name}: {m}"));
        }
        if let Some(m) = subset_mismatch(&want_quarantine, &Value::Array(quarantine), "quarantine")
        {
            failures.push(format!("{name}: {m}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn publishes_one_payload_per_object_on_the_users_partition_subject() {
    let env = TestEnv::new().await;
    let msg = invitation("p1@example.com", "uid-publish", 2);
    let printed = env
        .ingest(&["--print", "--sender", "Alice@Example.com"], &msg)
        .await;
    let expected = json_lines(&printed.stdout);
    assert_eq!(expected.len(), 1);

    let out = env.ingest(&["--sender", "Alice@Example.com"], &msg).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stored = env.stream_messages("messages").await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    let p = imipflow_schema::partition(ALICE, env.partitions);
    assert_eq!(
        m.subject,
        format!("{}.msg.{p}.alice@example%2Ecom", env.namespace)
    );
    assert_eq!(m.msg_id.as_deref(), m.json["dedupe_id"].as_str());
    assert_eq!(m.json["dedupe_id"], expected[0]["dedupe_id"]);
    assert_eq!(m.json["user"], ALICE);
    assert_eq!(m.json["method"], "REQUEST");
    let c = &m.json["components"][0];
    assert_eq!(c["uid"], "uid-publish");
    assert_eq!(c["start"]["utc"], "2027-03-15T08:00:00Z");
    assert_eq!(c["start"]["tzid"], "Europe/Berlin");
    assert_eq!(c["end"]["utc"], "2027-03-15T09:00:00Z");
    assert_eq!(c["attendees"].as_array().unwrap().len(), 2);
    // The payload decodes as the contract type.
    let typed: imipflow_schema::Payload =
        serde_json::from_value(m.json.clone()).expect("payload type");
    assert_eq!(typed.version, imipflow_schema::PAYLOAD_VERSION);
}

#[tokio::test]
async fn a_redelivered_message_is_stored_once_and_a_distinct_one_again() {
    let env = TestEnv::new().await;
    let msg = invitation("dup@example.com", "uid-dup", 1);
    for _ in 0..3 {
        let out = env.ingest(&["--sender", ALICE], &msg).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(env.stream_messages("messages").await.len(), 1);
    // Same calendar content, different message: a distinct publish.
    let other = invitation("dup-2@example.com", "uid-dup", 1);
    let out = env.ingest(&["--sender", ALICE], &other).await;
    assert_eq!(out.status.code(), Some(0));
    let stored = env.stream_messages("messages").await;
    assert_eq!(stored.len(), 2);
    assert_ne!(stored[0].msg_id, stored[1].msg_id);
}

#[tokio::test]
async fn broker_unreachable_is_a_temporary_failure_and_the_retry_publishes() {
    let env = TestEnv::new().await;
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let msg = invitation("retry@example.com", "uid-retry", 1);
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_NATS_URL", format!("nats://127.0.0.1:{port}"));
    cmd.env("IMIP_NATS_TIMEOUT_MS", "2000");
    let started = Instant::now();
    let out = env.run_with(cmd, &["--sender", ALICE], &msg).await;
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    assert!(env.stream_messages("messages").await.is_empty());

    // The MTA retries later, with the broker back.
    let out = env.ingest(&["--sender", ALICE], &msg).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.stream_messages("messages").await.len(), 1);
}

#[tokio::test]
async fn missing_stream_is_a_temporary_failure() {
    let env = TestEnv::unmigrated();
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_NATS_TIMEOUT_MS", "2000");
    let out = env
        .run_with(
            cmd,
            &["--sender", ALICE],
            &invitation("ns@example.com", "u", 1),
        )
        .await;
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
}

#[tokio::test]
async fn non_calendar_mail_exits_zero_without_touching_the_broker() {
    let env = TestEnv::unmigrated();
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_NATS_URL", "nats://127.0.0.1:1");
    let mail = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: lunch\r\n\r\nLunch at noon?\r\n";
    let out = env.run_with(cmd, &["--sender", ALICE], mail).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[tokio::test]
async fn bad_arguments_exit_64() {
    let env = TestEnv::unmigrated();
    let msg = invitation("u@example.com", "u", 1);
    for args in [
        vec![],
        vec!["--sender", ALICE, "--direction", "sideways"],
        vec!["--sender", ALICE, "--direction", "incoming"],
        vec!["--sender", ALICE, "--bogus"],
        vec!["--sender", ALICE, "--namespace", "bad.name"],
    ] {
        let out = env.ingest(&args, &msg).await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "args {args:?}: {}",
            stderr(&out)
        );
    }
    let out = env.ingest(&["--help"], b"").await;
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn unreadable_stdin_exits_74() {
    let env = TestEnv::unmigrated();
    let dir = std::fs::File::open("/").unwrap();
    let out = std::process::Command::new(imipflow_tests::bin("imip-ingest"))
        .envs(env.vars())
        .args(["--sender", ALICE])
        .stdin(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
}

#[tokio::test]
async fn malformed_calendar_data_is_quarantined_not_bounced() {
    let env = TestEnv::new().await;
    let mail = b"From: alice@example.com\r\nMessage-ID: <bad@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
DTSTART:20270315T090000Z\r\nSUMMARY:no uid\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let out = env.ingest(&["--sender", ALICE], mail).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(env.stream_messages("messages").await.is_empty());
    let q = env.stream_messages("quarantine").await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].json["reason"], "missing_uid");
    assert_eq!(q[0].json["users"][0], ALICE);
    assert!(
        q[0].json["excerpt"]
            .as_str()
            .unwrap()
            .contains("SUMMARY:no uid")
    );
    assert_eq!(
        q[0].subject,
        format!("{}.quarantine.alice@example%2Ecom", env.namespace)
    );
}

async fn assert_quarantined_quickly(env: &TestEnv, mail: &[u8], reason: &str) {
    let started = Instant::now();
    let out = env.ingest(&["--sender", ALICE], mail).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{reason}: {}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{reason}: took {took:?}");
    let q = env.stream_messages("quarantine").await;
    assert!(
        q.iter().any(|m| m.json["reason"] == reason),
        "no {reason} record in {:?}",
        q.iter()
            .map(|m| m.json["reason"].clone())
            .collect::<Vec<_>>()
    );
    for m in &q {
        assert!(m.json["excerpt"].as_str().unwrap().len() <= 256 * 1024);
    }
}

#[tokio::test]
async fn a_50_mb_message_is_quarantined_quickly() {
    let env = TestEnv::new().await;
    let mut mail = invitation("big@example.com", "uid-big", 1);
    // A large attachment after the calendar part.
    mail.extend_from_slice(b"\r\n");
    let line = [b'A'; 76];
    while mail.len() < 50 * 1024 * 1024 {
        mail.extend_from_slice(&line);
        mail.extend_from_slice(b"\r\n");
    }
    assert_quarantined_quickly(&env, &mail, "message_too_large").await;
    assert!(env.stream_messages("messages").await.is_empty());
}

#[tokio::test]
async fn ten_thousand_attendees_are_quarantined_quickly() {
    let env = TestEnv::new().await;
    let mail = invitation("many@example.com", "uid-many", 10_000);
    assert_quarantined_quickly(&env, &mail, "too_many_attendees").await;
    assert!(env.stream_messages("messages").await.is_empty());
}

#[tokio::test]
async fn a_thousand_calendar_parts_are_quarantined_quickly() {
    let env = TestEnv::new().await;
    let mut mail = String::from(
        "From: alice@example.com\r\nMessage-ID: <parts@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
    );
    for i in 0..1000 {
        mail.push_str(&format!(
            "--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:part-{i}\r\nDTSTAMP:20270301T120000Z\r\nDTSTART:20270315T090000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        ));
    }
    mail.push_str("--b--\r\n");
    assert_quarantined_quickly(&env, mail.as_bytes(), "too_many_calendar_parts").await;
    assert!(env.stream_messages("messages").await.is_empty());
}

#[tokio::test]
async fn incoming_mail_gives_one_payload_per_recipient() {
    let env = TestEnv::new().await;
    let msg = invitation("in@example.com", "uid-in", 2);
    let out = env
        .ingest(
            &[
                "--direction",
                "incoming",
                "--sender",
                ALICE,
                "--recipient",
                "Bob@Example.org",
                "--recipient",
                "carol@example.net",
            ],
            &msg,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stored = env.stream_messages("messages").await;
    let users: Vec<_> = stored
        .iter()
        .map(|m| m.json["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, vec!["bob@example.org", "carol@example.net"]);
    assert!(stored.iter().all(|m| m.json["direction"] == "incoming"));
    assert_ne!(stored[0].msg_id, stored[1].msg_id);
}

/// Issue 12: an envelope sender of 4 KB made the subject longer than NATS's
/// control line (exit 75, retried by the MTA until the message expired). It
/// is not an address (RFC 5321: at most 254 octets) and is quarantined as
/// such, on a subject of bounded length.
#[tokio::test]
async fn a_4_kb_envelope_address_is_quarantined_not_retried() {
    let env = TestEnv::new().await;
    let long = format!("{}@example.com", "a".repeat(4096));
    let msg = invitation("long-sender@example.com", "uid-long-sender", 1);
    let out = env.ingest(&["--sender", &long], &msg).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .ingest(
            &[
                "--direction",
                "incoming",
                "--sender",
                &long,
                "--recipient",
                &format!("{}@example.org", "b".repeat(4096)),
            ],
            &msg,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(env.stream_messages("messages").await.is_empty());
    let q = env.stream_messages("quarantine").await;
    assert_eq!(q.len(), 2, "{q:?}");
    for m in &q {
        assert_eq!(m.json["reason"], "invalid_address", "{:?}", m.json);
        assert_eq!(m.subject, format!("{}.quarantine.unknown", env.namespace));
        assert!(m.json["detail"].as_str().unwrap().len() < 1024);
    }
}

/// Issue 12: a 3,000-character UID passed ingest and failed at the database
/// ("index row size exceeds btree maximum"), a dead letter. It is quarantined
/// at ingest; the partition goes on with the next message.
#[tokio::test]
async fn a_3000_character_uid_is_quarantined_not_dead_lettered() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let msg = invitation("long-uid@example.com", &"u".repeat(3000), 1);
    let out = env.ingest(&["--sender", ALICE], &msg).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let good = invitation("after-long-uid@example.com", "uid-after", 1);
    let out = env.ingest(&["--sender", ALICE], &good).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    env.wait_applied().await;
    let q = env.stream_messages("quarantine").await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].json["reason"], "value_too_long");
    let db = env.pg().await;
    let dead: i64 = db
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    let objects = env.ctl_json(&["objects", ALICE]).await;
    let uids: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, vec!["uid-after"]);
}
