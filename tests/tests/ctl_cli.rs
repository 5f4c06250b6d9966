//! Issue 15's `imip-ctl` commands and machine output through the real
//! binaries: `log USER` (a refused spoof with its reason, a single
//! instance's RECURRENCE-ID, the filters), `users`, an unknown user in every
//! per-user command (exit 67, the message, the `--json` error object), dead
//! letters resolved by `dlq delete`, `dlq replay` and a range `replay`
//! (which files no second dead letter), the `imipflow_dead_letters` gauge
//! back to 0 without SQL, and `imip-ctl … | head` exiting quietly.

use imipflow_tests::{TestEnv, free_port, imip_mail, payload_of, publish_payloads, vevent};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const MALLORY: &str = "mallory@example.net";
const NOBODY: &str = "nobody@example.com";

fn weekly(uid: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".to_owned(),
        "DTSTAMP:20270301T100000Z".to_owned(),
        format!("ORGANIZER:mailto:{ALICE}"),
        format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
    ];
    lines.extend(extra.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    vevent(&refs)
}

async fn ingest(env: &TestEnv, args: &[&str], mail: &[u8]) {
    let out = env.ingest(args, mail).await;
    assert!(out.status.success(), "ingest: {out:?}");
}

async fn ctl(env: &TestEnv, args: &[&str]) -> Output {
    env.run("imip-ctl", args, b"").await
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A list command's `--json`: one array.
async fn list(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    match env.ctl_json(args).await {
        Value::Array(a) => a,
        other => panic!("imip-ctl {args:?} --json is not one array: {other}"),
    }
}

#[tokio::test]
async fn log_shows_each_message_with_uid_recurrence_outcome_and_reason() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    // Alice's weekly series, then her update of one instance (to Bob).
    let series = weekly(
        "log-1",
        &[
            "DTSTART:20270302T090000Z",
            "DTEND:20270302T100000Z",
            "RRULE:FREQ=WEEKLY;COUNT=4",
        ],
    );
    let mail = imip_mail("REQUEST", ALICE, "log1@t", std::slice::from_ref(&series));
    ingest(&env, &["--sender", ALICE], &mail).await;
    let moved = weekly(
        "log-1",
        &[
            "RECURRENCE-ID:20270309T090000Z",
            "DTSTART:20270309T110000Z",
            "DTEND:20270309T120000Z",
        ],
    );
    let mail = imip_mail("REQUEST", ALICE, "log2@t", &[moved]);
    ingest(&env, &["--sender", ALICE], &mail).await;
    // Mallory, not the organizer, cancels Alice's meeting in mail to Alice.
    let mail = imip_mail("CANCEL", ALICE, "log3@t", &[series]);
    ingest(
        &env,
        &[
            "--sender",
            MALLORY,
            "--direction",
            "incoming",
            "--recipient",
            ALICE,
        ],
        &mail,
    )
    .await;
    env.wait_applied().await;

    let log = list(&env, &["log", ALICE]).await;
    let got: Vec<(&str, &str, Option<&str>, &str)> = log
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap(),
                e["uid"].as_str().unwrap(),
                e["recurrence_id"].as_str(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("REQUEST", "log-1", None, "applied"),
            ("REQUEST", "log-1", Some("2027-03-09T09:00:00Z"), "applied"),
            ("CANCEL", "log-1", None, "refused"),
        ],
        "{log:#?}"
    );
    assert!(log[0]["reason"].is_null(), "{log:#?}");
    let reason = log[2]["reason"].as_str().expect("a refusal has its reason");
    assert!(reason.contains(MALLORY), "{reason}");
    assert!(
        log.windows(2)
            .all(|w| w[0]["stream_seq"].as_i64() < w[1]["stream_seq"].as_i64())
    );

    // The filters.
    let refused = list(&env, &["log", ALICE, "--outcome", "refused"]).await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["reason"], reason);
    assert_eq!(
        list(&env, &["log", ALICE, "--since", "2099-01-01T00:00:00Z"]).await,
        Vec::<Value>::new()
    );
    let out = ctl(&env, &["log", ALICE, "--outcome", "rejected"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad outcome is a usage error");

    // As a table: a header, one row per message, the reason in words.
    let out = ctl(&env, &["log", ALICE]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("OUTCOME"),
        "{text}"
    );
    assert!(
        lines[3].contains("refused") && lines[3].contains(reason),
        "{text}"
    );
    // Columns line up: OUTCOME starts at the same offset on every line.
    let at = lines[0].find("OUTCOME").unwrap();
    assert!(lines[1][at..].starts_with("applied"), "{text}");
    assert!(lines[3][at..].starts_with("refused"), "{text}");

    // `users`: both users the store knows, with counts; Mallory is not one.
    let users = list(&env, &["users"]).await;
    let names: Vec<&str> = users.iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(names, [ALICE], "{users:#?}");
    let alice = &users[0];
    assert_eq!(alice["objects"], 2, "master and override: {alice}");
    assert_eq!(alice["freebusy"], 4, "{alice}");
    assert_eq!(alice["pending_requests"], 0, "{alice}");
    assert!(
        alice["last_event_sequence"].as_i64().unwrap() > 0,
        "{alice}"
    );
    assert_eq!(alice["dead_letters"], 0, "{alice}");
    let out = ctl(&env, &["users"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("USER"), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with(ALICE), "{text}");
}

#[tokio::test]
async fn an_unknown_user_is_an_error_in_every_per_user_command() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let mail = imip_mail(
        "REQUEST",
        ALICE,
        "known@t",
        &[weekly(
            "k-1",
            &["DTSTART:20270302T090000Z", "DTEND:20270302T100000Z"],
        )],
    );
    ingest(&env, &["--sender", ALICE], &mail).await;
    env.wait_applied().await;
    let window = [
        "--from",
        "2027-01-01T00:00:00Z",
        "--to",
        "2028-01-01T00:00:00Z",
    ];
    let commands: Vec<Vec<&str>> = vec![
        [&["freebusy", NOBODY][..], &window].concat(),
        vec!["objects", NOBODY],
        vec!["object", NOBODY, "k-1"],
        vec!["queue", NOBODY],
        vec!["events", "--user", NOBODY],
        vec!["log", NOBODY],
        vec!["rebuild", NOBODY],
    ];
    let message = format!("no such user: {NOBODY} — imip-ctl users lists them");
    for args in &commands {
        let out = ctl(&env, args).await;
        assert_eq!(out.status.code(), Some(67), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr(&out).contains(&message),
            "{args:?}: {}",
            stderr(&out)
        );
        // Under --json: one JSON object on stderr, the same exit status.
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = ctl(&env, &with_json).await;
        assert_eq!(out.status.code(), Some(67), "{with_json:?}");
        let err: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|e| {
            panic!(
                "{with_json:?}: stderr not one JSON object ({e}): {}",
                stderr(&out)
            )
        });
        assert_eq!(err["error"], message.as_str(), "{err}");
        assert_eq!(err["kind"], "no_such_user", "{err}");
        assert_eq!(err["user"], NOBODY, "{err}");
        assert_eq!(err["exit"], 67, "{err}");
    }
    // The same commands for the known user succeed (mixed case normalised).
    let out = ctl(&env, &["objects", "Alice@Example.COM", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(&env, &[&["freebusy", ALICE][..], &window].concat()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Empty lists are `[]`.
    assert_eq!(list(&env, &["queue", ALICE]).await, Vec::<Value>::new());
    assert_eq!(list(&env, &["dlq", "list"]).await, Vec::<Value>::new());
    assert_eq!(
        list(&env, &["quarantine", "list"]).await,
        Vec::<Value>::new()
    );
    // A usage error under --json too (exit 2, clap's), help stays text.
    let out = ctl(&env, &["log", ALICE, "--outcome", "rejected", "--json"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON object");
    assert_eq!(err["kind"], "usage", "{err}");
    assert!(err["error"].as_str().unwrap().contains("rejected"), "{err}");
    let out = ctl(&env, &["users", "--json", "--help"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    // Any other error under --json has the same shape, exit 1.
    let out = ctl(&env, &["dlq", "replay", "999", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON object");
    assert_eq!(err["kind"], "no_such_dead_letter", "{err}");
    assert!(err["error"].as_str().unwrap().contains("999"), "{err}");
}

/// `imipflow_dead_letters` as the processor's /metrics shows it.
async fn dead_letters_gauge(port: u16) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("imipflow_dead_letters "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_gauge(port: u16, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = dead_letters_gauge(port).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "imipflow_dead_letters {got:?}, expected {want} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dead_letters_are_resolved_by_delete_replay_and_a_range_replay() {
    let env = TestEnv::new().await;
    let db = env.pg().await;
    // A fault only the UIDs poison-* trigger, fixed later by dropping it.
    db.batch_execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.uid LIKE 'poison-%' THEN RAISE EXCEPTION 'poisoned row'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON objects FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // The gauge is read from the store at each scrape.
    let _p = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    for (n, uid) in ["poison-a", "poison-b", "poison-c", "healthy"]
        .iter()
        .enumerate()
    {
        let mail = imip_mail(
            "REQUEST",
            ALICE,
            &format!("dl{n}@t"),
            &[weekly(
                uid,
                &["DTSTART:20270302T090000Z", "DTEND:20270302T100000Z"],
            )],
        );
        ingest(&env, &["--sender", ALICE], &mail).await;
    }
    env.wait_applied().await;
    let pending = list(&env, &["dlq", "list"]).await;
    assert_eq!(pending.len(), 3, "{pending:#?}");
    wait_gauge(port, 3.0).await;
    let id = |i: usize| pending[i]["id"].as_i64().unwrap().to_string();
    let seq = |i: usize| pending[i]["stream_seq"].as_i64().unwrap();

    // Replaying the range while the fault is there, twice: each message
    // fails again, and no second dead letter is filed.
    for _ in 0..2 {
        let r = env.ctl_json(&["replay", "--from", "1"]).await;
        assert_eq!(r["outcomes"]["dead_lettered"], 3, "{r}");
    }
    assert_eq!(list(&env, &["dlq", "list", "--all"]).await.len(), 3);
    // `log` shows them, with their id and error.
    let log = list(&env, &["log", ALICE, "--outcome", "dead_lettered"]).await;
    assert_eq!(log.len(), 3, "{log:#?}");
    assert_eq!(log[0]["uid"], "poison-a");
    assert_eq!(log[0]["dead_letter"].to_string(), id(0));
    assert!(
        log[0]["reason"].as_str().unwrap().contains("poisoned row"),
        "{log:#?}"
    );

    // Deleted by hand: gone from every listing; a second delete says so.
    let d = env.ctl_json(&["dlq", "delete", &id(1)]).await;
    assert_eq!(d["deleted"], true, "{d}");
    let out = ctl(&env, &["dlq", "delete", &id(1)]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("no dead letter {}", id(1))),
        "{}",
        stderr(&out)
    );
    assert_eq!(list(&env, &["dlq", "list", "--all"]).await.len(), 2);
    wait_gauge(port, 2.0).await;

    db.batch_execute("DROP TRIGGER poison ON objects")
        .await
        .unwrap();
    // `dlq replay` applies the first and resolves it.
    let r = env.ctl_json(&["dlq", "replay", &id(0)]).await;
    assert_eq!(r["replayed"], true, "{r}");
    let out = ctl(&env, &["dlq", "replay", &id(0)]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("replayed already"),
        "{}",
        stderr(&out)
    );
    // A range replay over the third applies it and resolves its dead letter too.
    let c = seq(2).to_string();
    let r = env.ctl_json(&["replay", "--from", &c, "--to", &c]).await;
    assert_eq!(r["outcomes"]["applied"], 1, "{r}");
    assert_eq!(list(&env, &["dlq", "list"]).await, Vec::<Value>::new());
    let all = list(&env, &["dlq", "list", "--all"]).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|d| !d["replayed_at"].is_null()), "{all:#?}");
    assert_eq!(env.ctl_json(&["status"]).await["dead_letters"], 0);
    // The alert's gauge is back to 0: nothing to clear by SQL.
    wait_gauge(port, 0.0).await;
    let uids: Vec<String> = list(&env, &["objects", ALICE])
        .await
        .iter()
        .map(|o| o["uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uids.len(), 3, "healthy, poison-a, poison-c: {uids:?}");
    assert!(!uids.contains(&"poison-b".to_owned()), "{uids:?}");
}

#[tokio::test]
async fn piping_into_head_exits_quietly() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    // Enough objects that the text output (~100 KiB) outgrows the pipe's
    // buffer: imip-ctl is still writing when head has gone.
    let mail = imip_mail(
        "REQUEST",
        ALICE,
        "pipe@t",
        &[weekly(
            "pipe-0",
            &["DTSTART:20270302T090000Z", "DTEND:20270302T100000Z"],
        )],
    );
    let template = payload_of(&env, ALICE, &mail).await;
    let payloads: Vec<Value> = (0..1500)
        .map(|n| {
            let mut p = template.clone();
            p["dedupe_id"] = format!("pipe-{n}").into();
            p["components"][0]["uid"] = format!("pipe-{n}@a-long-uid.example.com").into();
            p
        })
        .collect();
    publish_payloads(&env, &payloads).await;
    env.wait_applied().await;

    let ctl = imipflow_tests::bin("imip-ctl");
    for (pipeline, json) in [
        (
            format!("'{}' objects {ALICE} | head -1", ctl.display()),
            false,
        ),
        (
            format!("'{}' objects {ALICE} --json | true", ctl.display()),
            true,
        ),
        (format!("'{}' log {ALICE} | head -3", ctl.display()), false),
    ] {
        // The status of imip-ctl, then the pipeline's (head's).
        let script =
            format!("{pipeline}; echo \"status ${{PIPESTATUS[0]}} ${{PIPESTATUS[1]}}\" >&2");
        let mut cmd = tokio::process::Command::new("bash");
        cmd.envs(env.vars())
            .env_remove("IMIP_CONFIG")
            .args(["-c", &script]);
        let out = cmd.output().await.expect("run bash");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{pipeline}: {err}");
        assert!(!err.contains("Broken pipe"), "{pipeline}: {err}");
        let statuses = err.trim().rsplit("status ").next().unwrap().to_owned();
        let (ctl_status, pipeline_status) = statuses.split_once(' ').unwrap();
        assert_eq!(pipeline_status, "0", "{pipeline}: {err}");
        // 0 when it finished before head closed, else ended by SIGPIPE
        // (141), as `cat` is: never 101 (a panic) nor an error message.
        assert!(
            ctl_status == "0" || ctl_status == "141",
            "{pipeline}: imip-ctl exited {ctl_status}: {err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{pipeline}: only the status line: {err}"
        );
        if !json {
            assert!(!out.stdout.is_empty(), "{pipeline}: head printed nothing");
            // The output outgrew the pipe: the broken pipe did happen.
            assert_eq!(ctl_status, "141", "{pipeline}: {err}");
        }
    }
}
