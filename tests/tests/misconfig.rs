//! Issue 15 "Nothing lost by misconfiguration", through the real binaries:
//! an `imip-ingest` whose `IMIP_PARTITIONS` is not the deployment's is
//! refused (exit 75, the MTA keeps the mail) instead of storing it for no
//! lane; a stream from before that rule is narrowed by `migrate`, and what
//! it still holds shows in `imip-ctl status` and the metrics.

use imipflow_tests::{TestEnv, free_port, imip_mail, vevent};
use std::process::Output;
use std::time::{Duration, Instant};

/// Its partition is 6 of 16 (pinned in schema/src/partition.rs): beyond the
/// 4 partitions of a `TestEnv`.
const ALICE: &str = "alice@example.com";

fn mail() -> Vec<u8> {
    imip_mail(
        "REQUEST",
        ALICE,
        "misconfig-1@example.com",
        &[vevent(&[
            "UID:misconfig-1",
            "SEQUENCE:0",
            "DTSTAMP:20270201T100000Z",
            "DTSTART:20270316T100000Z",
            "DTEND:20270316T110000Z",
            "SUMMARY:Partition count",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
        ])],
    )
}

/// `imip-ingest --sender ALICE` with `IMIP_PARTITIONS=partitions`.
async fn ingest_with(env: &TestEnv, partitions: u32, mail: &[u8]) -> Output {
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_PARTITIONS", partitions.to_string());
    env.run_with(cmd, &["--sender", ALICE], mail).await
}

async fn stream_subjects(env: &TestEnv) -> Vec<String> {
    let js = env.jetstream().await;
    let mut stream = js
        .get_stream(format!("{}-messages", env.namespace))
        .await
        .expect("messages stream");
    stream
        .info()
        .await
        .expect("stream info")
        .config
        .subjects
        .clone()
}

fn exact_subjects(env: &TestEnv) -> Vec<String> {
    (0..env.partitions)
        .map(|p| format!("{}.msg.{p}.>", env.namespace))
        .collect()
}

#[tokio::test]
async fn ingest_with_another_partition_count_is_deferred_then_applied() {
    let env = TestEnv::new().await;
    assert_eq!(env.partitions, 4);
    assert_eq!(imipflow_schema::partition(ALICE, 16), 6);
    assert_eq!(stream_subjects(&env).await, exact_subjects(&env));

    let mail = mail();
    let out = ingest_with(&env, 16, &mail).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("no stream takes subject {}.msg.6.", env.namespace))
            && stderr.contains("IMIP_PARTITIONS (16)"),
        "stderr does not name the mismatch: {stderr}"
    );
    assert!(env.stream_messages("messages").await.is_empty());

    // The MTA retries once ingest has the deployment's count: applied, not
    // dropped as a duplicate of the refused publish (nothing was stored).
    let out = ingest_with(&env, 4, &mail).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = env.stream_messages("messages").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0].subject.split('.').nth(2),
        Some(imipflow_schema::partition(ALICE, 4).to_string().as_str())
    );
    let processor = env.start_processor(&[]);
    env.wait_applied().await;
    assert_eq!(
        env.message_log_of(ALICE).await,
        vec![("REQUEST".to_owned(), "applied".to_owned())]
    );
    processor.terminate().await;
}

/// An ingest with a *smaller* count publishes to a partition that exists,
/// only not the user's (the stream cannot refuse it): the lane that reads it
/// forwards it to the user's partition, where it is applied once, and the
/// user's records are where every reader looks for them.
#[tokio::test]
async fn ingest_with_a_smaller_partition_count_is_forwarded_to_the_users_lane() {
    let env = TestEnv::new().await;
    let owner = imipflow_schema::partition(ALICE, env.partitions);
    assert_eq!(owner, 2, "pinned: 6 of 16 is 2 of 4");
    assert_eq!(imipflow_schema::partition(ALICE, 1), 0);

    let out = ingest_with(&env, 1, &mail()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    env.wait_applied().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.message_log_of(ALICE).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "never applied in partition {owner}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        env.wait_applied().await;
    }
    assert_eq!(
        env.message_log_of(ALICE).await,
        vec![("REQUEST".to_owned(), "applied".to_owned())]
    );
    let stored = env.stream_messages("messages").await;
    let partitions: Vec<&str> = stored
        .iter()
        .map(|m| m.subject.split('.').nth(2).unwrap())
        .collect();
    assert_eq!(
        partitions,
        ["0", "2"],
        "the original and its forwarded copy"
    );
    let db = env.pg().await;
    for table in ["message_log", "objects", "freebusy"] {
        let rows = db
            .query(
                &format!("SELECT DISTINCT partition FROM {table} WHERE user_addr = $1"),
                &[&ALICE],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        let found: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(found, [owner as i32], "{table} rows of {ALICE}");
    }
    assert_eq!(
        env.busy_lines(ALICE, "2027-03-16T00:00:00Z", "2027-03-17T00:00:00Z")
            .await,
        ["2027-03-16T10:00:00Z 2027-03-16T11:00:00Z BUSY"]
    );
    let page = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    assert!(
        page.lines()
            .any(|l| l.starts_with("imipflow_messages_forwarded_total{partition=\"0\"} 1")),
        "{page}"
    );
    processor.terminate().await;
}

/// Polls the processor's `/metrics` until `imipflow_unread_messages` reads `want`.
async fn wait_unread_gauge(port: u16, want: u64) {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let line = format!("imipflow_unread_messages {want}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            last = r.text().await.unwrap_or_default();
            if last.lines().any(|l| l.trim() == line) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen: Vec<&str> = last
        .lines()
        .filter(|l| l.contains("unread_messages"))
        .collect();
    panic!("no {line:?} within 30 s; saw {seen:?}");
}

/// A stream created before the exact subject list (`<ns>.msg.>`) stored a
/// mismatched publish: `imip-ctl status` and the gauge count it, `migrate`
/// narrows the stream and says so, and the next such publish is refused.
#[tokio::test]
async fn migrate_narrows_an_old_wildcard_stream_and_status_counts_what_no_lane_reads() {
    let env = TestEnv::new().await;
    let js = env.jetstream().await;
    let name = format!("{}-messages", env.namespace);
    let mut config = js
        .get_stream(&name)
        .await
        .expect("messages stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    config.subjects = vec![format!("{}.msg.>", env.namespace)];
    js.update_stream(config).await.expect("widen the stream");

    let mail = mail();
    let out = ingest_with(&env, 16, &mail).await;
    assert_eq!(out.status.code(), Some(0), "the old stream stores it");

    let st = env.ctl_json(&["status"]).await;
    assert_eq!(st["unread"], 1, "{st}");
    assert_eq!(st["stream_subjects_stale"], true, "{st}");
    let out = env.run("imip-ctl", &["status"], b"").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "WARNING: 1 message(s) in the messages stream are on partitions no lane reads"
        ) && text.contains("run imip-processor migrate"),
        "{text}"
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    wait_unread_gauge(port, 1).await;

    let out = env.run("imip-processor", &["migrate"], b"").await;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains(&format!(
            "stream {name}: subjects {}.msg.0.>",
            env.namespace
        )),
        "{log}"
    );
    assert!(log.contains("WARNING: 1 message(s)"), "{log}");
    assert_eq!(stream_subjects(&env).await, exact_subjects(&env));

    // Still counted after the narrowing (the message is still stored) …
    let st = env.ctl_json(&["status"]).await;
    assert_eq!(st["unread"], 1, "{st}");
    assert_eq!(st["stream_subjects_stale"], false, "{st}");
    // … and no second one can join it.
    let out = ingest_with(&env, 16, &mail).await;
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(env.stream_messages("messages").await.len(), 1);

    // Once it is gone, the count falls to 0 and migrate forgets it.
    js.get_stream(&name)
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
    assert_eq!(env.ctl_json(&["status"]).await["unread"], 0);
    wait_unread_gauge(port, 0).await;
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("WARNING"));
    processor.terminate().await;
}

/// A user of another partition than ALICE's (2 of 4).
fn neighbour() -> String {
    (0..)
        .map(|i| format!("n{i}@example.com"))
        .find(|u| imipflow_schema::partition(u, 4) != 2)
        .unwrap()
}

/// A REQUEST from `organizer`, for its own copy (`--sender organizer`).
fn request_from(organizer: &str, uid: &str) -> Vec<u8> {
    imip_mail(
        "REQUEST",
        organizer,
        &format!("{uid}@example.com"),
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20270201T100000Z",
            "DTSTART:20270317T100000Z",
            "DTEND:20270317T110000Z",
            &format!("ORGANIZER:mailto:{organizer}"),
            &format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{organizer}"),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@example.net",
        ])],
    )
}

/// Lag is the number of messages waiting, in `imip-ctl status` and in
/// `imipflow_partition_lag`: ALICE's partition is held by an instance that
/// does not move (a lease of a hung "elsewhere"), two of her mails wait
/// among six of a neighbour's, and her lag is 2, not the 8 stream
/// positions between her applied position and her newest message. `status`
/// names the owner; the neighbour's partition is caught up.
#[tokio::test]
async fn lag_counts_the_messages_waiting_not_stream_positions() {
    let env = TestEnv::new().await;
    let other = neighbour();
    let db = env.pg().await;
    db.execute(
        "INSERT INTO partitions (partition, owner, epoch, lease_until)
         VALUES (2, 'elsewhere:1', 1, clock_timestamp() + interval '10 minutes')
         ON CONFLICT (partition) DO UPDATE SET owner = 'elsewhere:1', epoch = 1,
             lease_until = clock_timestamp() + interval '10 minutes'",
        &[],
    )
    .await
    .unwrap();
    let mut uids = Vec::new();
    for i in 0..8 {
        let (who, uid) = if i == 0 || i == 7 {
            (ALICE, format!("lag-alice-{i}"))
        } else {
            (other.as_str(), format!("lag-other-{i}"))
        };
        let mut cmd = env.command("imip-ingest");
        cmd.env("IMIP_PARTITIONS", "4");
        let out = env
            .run_with(cmd, &["--sender", who], &request_from(who, &uid))
            .await;
        assert!(out.status.success(), "{out:?}");
        uids.push(uid);
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    let other_partition = imipflow_schema::partition(&other, 4) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = env.ctl_json(&["status"]).await;
        if status["partitions"][other_partition]["lag"] == 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "neighbour never applied: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mine = &status["partitions"][2];
    assert_eq!(mine["lag"], 2, "{status}");
    assert_eq!(mine["newest"], 8, "{status}");
    assert_eq!(mine["applied"], 0, "{status}");
    assert_eq!(mine["owner"], "elsewhere:1", "{status}");
    assert_eq!(status["lag"], 2, "{status}");

    let series = "imipflow_partition_lag{partition=\"2\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        let value = page
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok());
        if value == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}, want 2:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    processor.terminate().await;
}

/// `imip-processor run` with another count than the deployment's exits 78
/// (EX_CONFIG) naming both, instead of running lanes that read nothing or
/// that send users to partitions not theirs.
#[tokio::test]
async fn a_processor_with_another_partition_count_exits_78_naming_both() {
    let env = TestEnv::new().await;
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .env("IMIP_PARTITIONS", "8")
        .env("IMIP_METRICS_LISTEN", "");
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("imip-processor run did not exit")
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("IMIP_PARTITIONS is 8 but this deployment was created with 4"),
        "{stderr}"
    );
    assert_eq!(env.ctl_json(&["status"]).await["partitions"][0]["epoch"], 0);
}
