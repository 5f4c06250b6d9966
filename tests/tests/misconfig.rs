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
