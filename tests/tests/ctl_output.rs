//! Issue 15's human output of `imip-ctl` through the real binary: aligned
//! tables with headers for objects, object, queue, events, freebusy and
//! status; long UIDs shortened unless `--wide`; times in UTC unless `--tz`
//! (an unknown zone is exit 64); events as sentences with the right counts;
//! `status` warning while no processor owns the partitions (and not while
//! one does); and errors that say what to do: PostgreSQL unreachable (host,
//! database, no password), a database without the schema or without a
//! database at all (`imip-processor migrate`), `--from` after `--to` (exit
//! 64).

use imipflow_tests::{TestEnv, free_port, imip_mail, vevent};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
/// Long enough to be shortened: Outlook-style.
const LONG_UID: &str = "040000008200E00074C5B7101A82E0080000000012345678DEADBEEFCAFE";
/// How the tables show it by default: first 12, "…", last 8.
const SHORT_UID: &str = "040000008200…BEEFCAFE";
const WINDOW: [&str; 4] = ["--from", "2027-03-01", "--to", "2027-04-01"];

async fn ctl(env: &TestEnv, args: &[&str]) -> Output {
    env.run("imip-ctl", args, b"").await
}

/// `imip-ctl ARGS` that must succeed: its stdout.
async fn text(env: &TestEnv, args: &[&str]) -> String {
    let out = ctl(env, args).await;
    assert!(
        out.status.success(),
        "imip-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lines of a table, asserting its header starts with `first` and
/// names every column of `header`, and that every column named in
/// `aligned` starts at the header's offset on each row (as chars: cells
/// hold "…" and "−").
fn table<'a>(text: &'a str, header: &[&str], aligned: &[&str]) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "a header and rows:\n{text}");
    let mut at = 0;
    for h in header {
        let found = lines[0][at..].find(h).map(|i| i + at);
        let Some(i) = found else {
            panic!("header lacks {h} (in order {header:?}):\n{text}")
        };
        at = i + h.len();
    }
    assert!(lines[0].starts_with(header[0]), "{text}");
    for col in aligned {
        let offset = lines[0][..lines[0].find(col).unwrap()].chars().count();
        for row in &lines[1..] {
            let before: String = row.chars().take(offset).collect();
            let rest: String = row.chars().skip(offset).collect();
            assert!(
                before.ends_with("  ") || offset == 0,
                "column {col} not aligned in {row:?}:\n{text}"
            );
            assert!(
                !rest.starts_with(' '),
                "column {col} not aligned in {row:?}:\n{text}"
            );
        }
    }
    lines
}

fn series() -> Vec<String> {
    vevent(&[
        &format!("UID:{LONG_UID}"),
        "SEQUENCE:0",
        "DTSTAMP:20270301T100000Z",
        "SUMMARY:Weekly sync",
        "DTSTART:20270302T090000Z",
        "DTEND:20270302T100000Z",
        "RRULE:FREQ=WEEKLY;COUNT=3",
        &format!("ORGANIZER:mailto:{ALICE}"),
        &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
    ])
}

/// The second instance moved from 09:00 to 11:00.
fn moved() -> Vec<String> {
    vevent(&[
        &format!("UID:{LONG_UID}"),
        "SEQUENCE:0",
        "DTSTAMP:20270301T100000Z",
        "SUMMARY:Weekly sync",
        "RECURRENCE-ID:20270309T090000Z",
        "DTSTART:20270309T110000Z",
        "DTEND:20270309T120000Z",
        &format!("ORGANIZER:mailto:{ALICE}"),
        &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
    ])
}

async fn ingest(env: &TestEnv, args: &[&str], mail: &[u8]) {
    let out = env.ingest(args, mail).await;
    assert!(out.status.success(), "ingest: {}", stderr(&out));
}

#[tokio::test]
async fn tables_shorten_uids_unless_wide_show_utc_unless_tz_and_events_read_as_sentences() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    // Alice's series (hers: objects, busy time) and the same invitation
    // delivered to Bob (pending in his queue), then her move of one instance.
    let mail = imip_mail("REQUEST", ALICE, "out1@t", &[series()]);
    ingest(&env, &["--sender", ALICE], &mail).await;
    ingest(
        &env,
        &[
            "--direction",
            "incoming",
            "--sender",
            ALICE,
            "--recipient",
            BOB,
        ],
        &mail,
    )
    .await;
    env.wait_applied().await;
    let mail = imip_mail("REQUEST", ALICE, "out2@t", &[moved()]);
    ingest(&env, &["--sender", ALICE], &mail).await;
    env.wait_applied().await;

    // objects: a table; the long UID shortened, in full with --wide.
    let out = text(&env, &["objects", ALICE]).await;
    let lines = table(
        &out,
        &["UID", "RECURRENCE", "SEQ", "START", "STATUS", "SUMMARY"],
        &["RECURRENCE", "START", "SUMMARY"],
    );
    assert_eq!(lines.len(), 3, "master and the moved instance:\n{out}");
    assert!(lines[1].starts_with(SHORT_UID), "{out}");
    assert!(!out.contains(LONG_UID), "{out}");
    assert!(!out.contains('"'), "no quoted values:\n{out}");
    assert!(out.contains("2027-03-02 09:00:00Z"), "UTC start:\n{out}");
    let wide = text(&env, &["objects", ALICE, "--wide"]).await;
    table(&wide, &["UID", "START"], &["START"]);
    assert!(wide.lines().nth(1).unwrap().starts_with(LONG_UID), "{wide}");
    assert!(!wide.contains('…'), "{wide}");

    // object: its fields as a table, the UID in full (it is the one asked for).
    let out = text(&env, &["object", ALICE, LONG_UID]).await;
    let lines = table(&out, &["FIELD", "VALUE"], &["VALUE"]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("uid") && l.ends_with(LONG_UID)),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("start") && l.ends_with("2027-03-02 09:00:00Z")),
        "{out}"
    );
    assert!(!out.contains('"') && !out.contains('{'), "no JSON:\n{out}");
    assert!(out.contains("ATTENDEE") && out.contains(BOB), "{out}");

    // freebusy: START END TYPE UID, UTC by default.
    let fb = [&["freebusy", ALICE][..], &WINDOW].concat();
    let out = text(&env, &fb).await;
    let lines = table(
        &out,
        &["START", "END", "TYPE", "UID"],
        &["END", "TYPE", "UID"],
    );
    assert_eq!(lines.len(), 4, "three instances:\n{out}");
    assert!(
        lines[1].starts_with("2027-03-02 09:00:00Z  2027-03-02 10:00:00Z  BUSY"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("2027-03-09 11:00:00Z"),
        "moved:\n{out}"
    );
    assert!(lines[1].ends_with(SHORT_UID), "{out}");
    // --tz: Berlin is UTC+1 in early March 2027 (summer time from the 28th).
    let out = text(&env, &[&fb[..], &["--tz", "Europe/Berlin"]].concat()).await;
    let lines = table(&out, &["START", "END", "TYPE", "UID"], &["TYPE"]);
    assert!(
        lines[1].starts_with("2027-03-02 10:00:00+01:00  2027-03-02 11:00:00+01:00"),
        "{out}"
    );
    // The flags are global: before the command too.
    let out = text(&env, &[&["--wide"][..], &fb].concat()).await;
    assert!(out.lines().nth(1).unwrap().ends_with(LONG_UID), "{out}");

    // queue: Bob's pending invitation, one row per instance, his answer.
    let out = text(&env, &["queue", BOB]).await;
    let lines = table(
        &out,
        &[
            "UID",
            "FOR",
            "ORGANIZER",
            "START",
            "END",
            "YOUR ANSWER",
            "SUMMARY",
        ],
        &["FOR", "ORGANIZER", "START", "YOUR ANSWER", "SUMMARY"],
    );
    assert!(lines.len() >= 2, "{out}");
    let row = lines[1];
    assert!(row.starts_with(SHORT_UID), "{out}");
    assert!(
        row.contains("series") && row.contains(ALICE) && row.contains("NEEDS-ACTION"),
        "{out}"
    );
    assert!(row.contains("2027-03-02 09:00:00Z"), "{out}");
    assert!(row.ends_with("Weekly sync"), "{out}");
    assert!(!out.contains('"'), "{out}");

    // events: one sentence each; the counts are the events' own.
    let events = match env.ctl_json(&["events", "--user", ALICE]).await {
        Value::Array(a) => a,
        other => panic!("{other}"),
    };
    let fb_changes: Vec<(u64, usize, usize)> = events
        .iter()
        .filter(|e| e["type"] == "org.imipflow.freebusy.changed")
        .map(|e| {
            let n = |k: &str| e["data"][k].as_array().map_or(0, Vec::len);
            (e["sequence"].as_u64().unwrap(), n("added"), n("removed"))
        })
        .collect();
    assert_eq!(
        fb_changes.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
        [(3, 0), (1, 1)],
        "the series, then the move: {events:#?}"
    );
    let out = text(&env, &["events", "--user", ALICE]).await;
    let lines = table(&out, &["SEQ", "TIME", "USER", "EVENT"], &["USER", "EVENT"]);
    assert_eq!(lines.len(), events.len() + 1, "{out}");
    let sentence = |seq: u64| {
        lines[1..]
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{seq} ")))
            .unwrap_or_else(|| panic!("no event {seq}:\n{out}"))
            .to_string()
    };
    let first = sentence(fb_changes[0].0);
    assert!(
        first.contains(ALICE)
            && first.ends_with(&format!("freebusy changed: +3 busy ({SHORT_UID})")),
        "{first}"
    );
    let second = sentence(fb_changes[1].0);
    assert!(
        second.ends_with(&format!(
            "freebusy changed: +1 busy, \u{2212}1 ({SHORT_UID})"
        )),
        "{second}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("object changed: {SHORT_UID} updated (sequence 0)"))),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "object changed: {SHORT_UID} (instance 2027-03-09 09:00:00Z) updated"
        ))),
        "{out}"
    );
    assert!(!out.contains('"') && !out.contains('{'), "no JSON:\n{out}");
    // Bob's queue event as a sentence.
    let out = text(&env, &["events", "--user", BOB]).await;
    assert!(
        out.contains(&format!("queue changed: added {SHORT_UID}")),
        "{out}"
    );
    // --tz shifts the event times too (and --wide the UIDs).
    let out = text(
        &env,
        &["events", "--user", ALICE, "--tz", "Asia/Kolkata", "--wide"],
    )
    .await;
    let row = out.lines().nth(1).unwrap();
    assert!(row.contains("+05:30"), "{out}");
    assert!(out.contains(LONG_UID), "{out}");

    // --follow streams the same rows, a header first.
    use tokio::io::AsyncBufReadExt;
    let mut follow = env.command("imip-ctl");
    follow
        .args(["events", "--user", ALICE, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = follow.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < 1 + events.len() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("a line");
        got.push(line);
    }
    child.kill().await.unwrap();
    assert!(got[0].trim_start().starts_with("SEQ  TIME"), "{got:#?}");
    assert!(
        got.iter()
            .any(|l| l.ends_with(&format!("freebusy changed: +3 busy ({SHORT_UID})"))),
        "{got:#?}"
    );
    assert!(!got.iter().any(|l| l.contains('{')), "{got:#?}");
}

#[tokio::test]
async fn an_unknown_time_zone_is_a_usage_error() {
    let env = TestEnv::unmigrated();
    let out = ctl(&env, &["status", "--tz", "Mars/Olympus_Mons"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--tz \"Mars/Olympus_Mons\" is not a time zone")
            && stderr(&out).contains("Europe/Berlin"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    let out = ctl(&env, &["status", "--tz", "Mars/Olympus_Mons", "--json"]).await;
    assert_eq!(out.status.code(), Some(64));
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON error");
    assert_eq!(err["kind"], "usage", "{err}");
}

#[tokio::test]
async fn status_warns_while_no_processor_owns_the_partitions() {
    let env = TestEnv::new().await;
    // No processor yet: every partition unowned, said in text and JSON.
    let out = text(&env, &["status"]).await;
    let lines = table(
        &out,
        &["PARTITION", "APPLIED", "NEWEST", "LAG", "EPOCH", "OWNER"],
        &["OWNER"],
    );
    for (i, row) in lines[1..=4].iter().enumerate() {
        assert!(
            row.trim_start().starts_with(&format!("{i} ")),
            "partition {i}:\n{out}"
        );
        assert!(row.ends_with("none"), "{out}");
    }
    assert!(
        out.contains(
            "WARNING: 4 of 4 partitions have no live owner (no imip-processor holds their lease)"
        ) && out.contains("start imip-processor run"),
        "{out}"
    );
    let st = env.ctl_json(&["status"]).await;
    assert_eq!(st["unowned"], serde_json::json!([0, 1, 2, 3]), "{st}");

    // A processor takes the leases: no warning, nothing unowned.
    let _p = env.start_processor(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = env.ctl_json(&["status"]).await;
        if st["unowned"] == serde_json::json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "leases not taken: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = text(&env, &["status"]).await;
    assert!(!out.contains("no live owner"), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
    let lines = table(&out, &["PARTITION", "OWNER"], &["OWNER"]);
    assert!(lines[1..=4].iter().all(|l| !l.ends_with("none")), "{out}");
}

#[tokio::test]
async fn an_unreachable_postgresql_is_named_with_the_fix_and_no_password() {
    let env = TestEnv::unmigrated();
    let port = free_port();
    let mut cmd = env.command("imip-ctl");
    cmd.env(
        "IMIP_DATABASE_URL",
        format!("postgresql://postgres:s3cret-pw@127.0.0.1:{port}/imip_nowhere"),
    );
    let out = env.run_with(cmd, &["users"], b"").await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port} (database imip_nowhere): is it running"
        )) && err.contains("(IMIP_DATABASE_URL)"),
        "{err}"
    );
    assert!(
        err.contains("cause:"),
        "the driver's own words follow: {err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");

    let mut cmd = env.command("imip-ctl");
    cmd.env(
        "IMIP_DATABASE_URL",
        format!("postgresql://postgres:s3cret-pw@127.0.0.1:{port}/imip_nowhere"),
    );
    let out = env.run_with(cmd, &["users", "--json"], b"").await;
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON error");
    assert_eq!(err["kind"], "postgres_unreachable", "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port} (database imip_nowhere)")),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
}

#[tokio::test]
async fn a_database_without_the_schema_says_run_migrate() {
    let env = TestEnv::unmigrated();
    // No database at all yet.
    let out = ctl(&env, &["users"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "PostgreSQL at 127.0.0.1:5432 has no database {}: run `imip-processor migrate`",
            env.database
        )),
        "{err}"
    );

    // The database exists but was never migrated: its tables are missing.
    let (admin, conn) = tokio_postgres::connect(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect as admin");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {}", env.database))
        .await
        .expect("create database");
    for args in [&["users"][..], &["dlq", "list"], &["log", ALICE]] {
        let out = ctl(&env, args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "PostgreSQL at 127.0.0.1:5432 (database {}): the schema is missing or old",
                env.database
            )) && err.contains("run `imip-processor migrate`"),
            "{args:?}: {err}"
        );
    }
    let out = ctl(&env, &["users", "--json"]).await;
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON error");
    assert_eq!(err["kind"], "schema_missing", "{err}");
    assert!(
        err["causes"][0].as_str().unwrap().contains("42P01"),
        "the server's error stays as the cause: {err}"
    );
}

#[tokio::test]
async fn from_after_to_is_a_plain_sentence_and_exit_64() {
    // Refused before any connection: no database needed.
    let env = TestEnv::unmigrated();
    let out = ctl(
        &env,
        &[
            "freebusy",
            ALICE,
            "--from",
            "2027-05-01",
            "--to",
            "2027-04-01T12:00:00+02:00",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "--from (2027-05-01T00:00:00Z) is after --to (2027-04-01T10:00:00Z): \
             give a start before the end"
        ),
        "{}",
        stderr(&out)
    );
    let out = ctl(
        &env,
        &[
            "freebusy",
            ALICE,
            "--from",
            "2027-05-01",
            "--to",
            "2027-04-01",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(64));
    let err: Value = serde_json::from_slice(&out.stderr).expect("one JSON error");
    assert_eq!(err["kind"], "usage", "{err}");
    assert_eq!(err["exit"], 64, "{err}");
}
