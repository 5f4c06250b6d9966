//! Issue 7's operator commands through the real binaries: `imip-ctl status`
//! (owners, lag), `rebuild` (free/busy recomputed from stored objects),
//! `replay` (a range of the stream re-applied idempotently) and
//! `quarantine list|show|release|delete`.

use imipflow_tests::{TestEnv, all_events, imip_mail, payload_of, vevent};

const FROM: &str = "2027-01-01T00:00:00Z";
const TO: &str = "2028-01-01T00:00:00Z";

fn weekly(organizer: &str, uid: &str, msgid: &str) -> Vec<u8> {
    imip_mail(
        "REQUEST",
        organizer,
        msgid,
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20270301T100000Z",
            "DTSTART;TZID=Europe/Berlin:20270302T100000",
            "DTEND;TZID=Europe/Berlin:20270302T110000",
            "RRULE:FREQ=WEEKLY;COUNT=4",
            &format!("ORGANIZER:mailto:{organizer}"),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:x@example.org",
        ])],
    )
}

fn single(organizer: &str, uid: &str, msgid: &str, attendees: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".to_owned(),
        "DTSTAMP:20270301T100000Z".to_owned(),
        "DTSTART:20270410T120000Z".to_owned(),
        "DTEND:20270410T130000Z".to_owned(),
        format!("ORGANIZER:mailto:{organizer}"),
    ];
    lines.extend(
        attendees
            .iter()
            .map(|a| format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{a}")),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    imip_mail("REQUEST", organizer, msgid, &[vevent(&refs)])
}

async fn ingest(env: &TestEnv, sender: &str, mail: &[u8]) {
    let out = env.ingest(&["--sender", sender], mail).await;
    assert!(out.status.success(), "ingest: {out:?}");
}

async fn ctl(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = env.command("imip-ctl");
    cmd.envs(extra.iter().copied());
    env.run_with(cmd, args, b"").await
}

fn freebusy_events(events: &[serde_json::Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "org.imipflow.freebusy.changed")
        .count()
}

#[tokio::test]
async fn status_names_owners_and_rebuild_restores_freebusy() {
    let env = TestEnv::new().await;
    let processor = env.start_processor(&[("IMIP_INSTANCE", "ctl-a"), ("IMIP_METRICS_LISTEN", "")]);
    let owner = format!("ctl-a:{}", processor.pid());
    let alice = "alice@example.com";
    ingest(&env, alice, &weekly(alice, "weekly", "w@t")).await;
    ingest(
        &env,
        alice,
        &single(alice, "single", "s@t", &["x@example.org"]),
    )
    .await;
    env.wait_applied().await;

    // Leases are taken within a lease period; wait until all four are held.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let st = env.ctl_json(&["status"]).await;
        if st["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 1 && i[0]["partitions"] == env.partitions)
        {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "owners: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(status["instances"][0]["instance"], owner.as_str());
    for p in status["partitions"].as_array().unwrap() {
        assert_eq!(p["owner"], owner.as_str(), "{p}");
        assert_eq!(p["leased"], true);
        assert_eq!(p["lag"], 0);
    }
    assert_eq!(status["lag"], 0);
    let text = ctl(&env, &["status"], &[]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("instance {owner} owns 4")));

    let before = env.busy_lines(alice, FROM, TO).await;
    assert_eq!(before.len(), 5, "{before:?}");
    let events_before = freebusy_events(&all_events(&env).await);

    // An intact user rebuilds to exactly what they have: no writes, no events.
    let r = env.ctl_json(&["rebuild", alice]).await;
    assert_eq!(r["uids"], 2);
    assert_eq!(r["changed"], serde_json::json!([]));
    assert_eq!(r["events"], 0);

    // Lose one series' rows and damage another's type; rebuild puts them back
    // and tells subscribers.
    let db = env.pg().await;
    db.batch_execute(
        "DELETE FROM freebusy WHERE uid = 'weekly';
         UPDATE freebusy SET fbtype = 'BUSY-TENTATIVE' WHERE uid = 'single';",
    )
    .await
    .unwrap();
    assert_ne!(env.busy_lines(alice, FROM, TO).await, before);
    let r = env.ctl_json(&["rebuild", alice]).await;
    assert_eq!(r["changed"], serde_json::json!(["single", "weekly"]), "{r}");
    assert_eq!(r["periods_added"], 5);
    assert_eq!(r["periods_removed"], 1);
    assert_eq!(r["events"], 2);
    assert_eq!(env.busy_lines(alice, FROM, TO).await, before);
    env.wait_applied().await;
    assert_eq!(freebusy_events(&all_events(&env).await), events_before + 2);
    let r = env.ctl_json(&["rebuild", alice]).await;
    assert_eq!(r["events"], 0);
    processor.terminate().await;
}

#[tokio::test]
async fn replay_changes_nothing_applied_and_restores_what_was_lost() {
    let env = TestEnv::new().await;
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", "")]);
    let (alice, bob) = ("alice@example.com", "bob@example.com");
    ingest(&env, alice, &weekly(alice, "a-weekly", "aw@t")).await;
    ingest(&env, alice, &single(alice, "a-single", "as@t", &[bob])).await;
    ingest(&env, bob, &single(bob, "b-single", "bs@t", &[alice])).await;
    env.wait_applied().await;
    let events = all_events(&env).await.len();
    let bob_busy = env.busy_lines(bob, FROM, TO).await;
    assert_eq!(bob_busy.len(), 1);

    let r = env.ctl_json(&["replay", "--from", "1"]).await;
    assert_eq!(r["messages"], 3, "{r}");
    assert_eq!(r["outcomes"], serde_json::json!({"duplicate": 3}));
    assert_eq!(all_events(&env).await.len(), events);

    // Bob's effects and log lost (say, a restore of an old backup of his rows).
    let db = env.pg().await;
    db.batch_execute(
        "DELETE FROM message_log WHERE user_addr = 'bob@example.com';
         DELETE FROM objects WHERE user_addr = 'bob@example.com';
         DELETE FROM attendees WHERE user_addr = 'bob@example.com';
         DELETE FROM freebusy WHERE user_addr = 'bob@example.com';",
    )
    .await
    .unwrap();
    assert!(env.busy_lines(bob, FROM, TO).await.is_empty());
    let r = env
        .ctl_json(&["replay", "--from", "1", "--user", bob])
        .await;
    assert_eq!(r["outcomes"], serde_json::json!({"applied": 1}), "{r}");
    assert_eq!(env.busy_lines(bob, FROM, TO).await, bob_busy);
    let r = env
        .ctl_json(&["replay", "--from", "1", "--user", bob])
        .await;
    assert_eq!(r["outcomes"], serde_json::json!({"duplicate": 1}), "{r}");

    // With no lane running, a message past its partition's position is left
    // for the lane (replaying it first could reorder the user's messages).
    processor.terminate().await;
    ingest(&env, alice, &single(alice, "a-later", "al@t", &[bob])).await;
    let r = env.ctl_json(&["replay", "--from", "2"]).await;
    assert_eq!(
        r["outcomes"],
        serde_json::json!({"duplicate": 2, "pending": 1}),
        "{r}"
    );
    assert_eq!(r["to"], 4);
}

/// A list command's `--json`: one array.
fn json_list(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON array")
}

#[tokio::test]
async fn quarantine_list_show_release_and_delete() {
    let env = TestEnv::new().await;
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", "")]);
    let alice = "alice@example.com";
    let mail = single(alice, "q-1", "q1@t", &["a@example.org", "b@example.org"]);
    // Refused under a limit of one attendee.
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_MAX_ATTENDEES", "1");
    let out = env.run_with(cmd, &["--sender", alice], &mail).await;
    assert!(out.status.success(), "{out:?}");
    // Cut: only an excerpt is kept.
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_MAX_MESSAGE_BYTES", "300")
        .env("IMIP_QUARANTINE_EXCERPT_BYTES", "100");
    let big = single(alice, "q-2", "q2@t", &["a@example.org"]);
    let out = env.run_with(cmd, &["--sender", alice], &big).await;
    assert!(out.status.success(), "{out:?}");

    let list = json_list(&ctl(&env, &["quarantine", "list", "--json"], &[]).await);
    assert_eq!(list.len(), 2, "{list:?}");
    let attendees = list
        .iter()
        .find(|r| r["reason"] == "too_many_attendees")
        .expect("attendee refusal");
    let cut = list
        .iter()
        .find(|r| r["reason"] == "message_too_large")
        .expect("size refusal");
    assert_eq!(cut["truncated"], true);
    let (id, cut_id) = (
        attendees["id"].as_u64().unwrap().to_string(),
        cut["id"].as_u64().unwrap().to_string(),
    );
    let shown = env.ctl_json(&["quarantine", "show", &id]).await;
    assert_eq!(shown["record"]["sender"], alice);
    assert!(
        shown["record"]["excerpt"]
            .as_str()
            .unwrap()
            .contains("BEGIN:VCALENDAR")
    );

    // Still over the limit in force: nothing published, record kept.
    let out = ctl(
        &env,
        &["quarantine", "release", &id],
        &[("IMIP_MAX_ATTENDEES", "1")],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still refused"),
        "{out:?}"
    );
    // An excerpt cannot be released.
    let out = ctl(&env, &["quarantine", "release", &cut_id], &[]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be released"),
        "{out:?}"
    );

    // Under the default limits it goes through, with the dedupe id the
    // original delivery would have had.
    let released = env.ctl_json(&["quarantine", "release", &id]).await;
    let expected = payload_of(&env, alice, &mail).await;
    assert_eq!(
        released["payloads"],
        serde_json::json!([expected["dedupe_id"]])
    );
    env.wait_applied().await;
    assert_eq!(
        env.busy_lines(alice, FROM, TO).await,
        vec!["2027-04-10T12:00:00Z 2027-04-10T13:00:00Z BUSY"]
    );
    let out = ctl(&env, &["quarantine", "delete", &cut_id], &[]).await;
    assert!(out.status.success(), "{out:?}");
    let list = json_list(&ctl(&env, &["quarantine", "list", "--json"], &[]).await);
    assert!(list.is_empty(), "{list:?}");
    let status = env.ctl_json(&["status"]).await;
    assert_eq!(status["quarantined"], 0);
    processor.terminate().await;
}

/// imip-ctl's writers name partitions and subjects with IMIP_PARTITIONS: run
/// with another count than the deployment's, rebuild would flush another
/// partition's outbox and replay and quarantine release would publish a
/// user's messages into another lane. They refuse instead, and say which
/// count to set; the readers take the deployment's count and still answer.
#[tokio::test]
async fn writers_refuse_a_partition_count_other_than_the_deployments() {
    let env = TestEnv::new().await;
    let wrong = (env.partitions + 3).to_string();
    let user = "alice@example.com";
    for args in [
        vec!["rebuild", user],
        vec!["replay", "--from", "1"],
        vec!["quarantine", "release", "1"],
    ] {
        let out = ctl(&env, &args, &[("IMIP_PARTITIONS", wrong.as_str())]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} went on: {out:?}");
        assert!(
            err.contains(&format!(
                "IMIP_PARTITIONS is {wrong} but this deployment was created with {}",
                env.partitions
            )),
            "{args:?}: {err}"
        );
    }
    // A reader finds the user in their partition by the deployment's count,
    // not this command's (a known user: a row in their partition).
    env.pg()
        .await
        .execute(
            "INSERT INTO user_usage (partition, user_addr) VALUES ($1, $2)",
            &[&env.partition_of(user), &user],
        )
        .await
        .unwrap();
    let out = ctl(
        &env,
        &["objects", user],
        &[("IMIP_PARTITIONS", wrong.as_str())],
    )
    .await;
    assert!(out.status.success(), "objects: {out:?}");
    let out = ctl(&env, &["rebuild", user, "--json"], &[]).await;
    assert!(
        out.status.success(),
        "rebuild with the right count: {out:?}"
    );
}
