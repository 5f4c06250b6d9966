//! `imip-ctl replay`'s progress bar and Ctrl-C (issue 15): under a
//! pseudo-terminal (util-linux `script`) the bar shows the rate and the time
//! left; SIGINT stops it with where it stopped and exit 130. Real NATS and
//! PostgreSQL (TestEnv); no processor runs, so every message is "pending"
//! and each costs one locking transaction: slow enough to watch.

use imipflow_tests::{TestEnv, bin, imip_mail, payload_of, publish_payloads, vevent};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// `n` distinct payloads on the messages stream.
async fn fill(env: &TestEnv, n: usize) {
    let alice = "alice@example.com";
    let mail = imip_mail(
        "REQUEST",
        alice,
        "m@t",
        &[vevent(&[
            "UID:u-0",
            "DTSTAMP:20270301T120000Z",
            "DTSTART:20270310T100000Z",
            "DTEND:20270310T110000Z",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    );
    let base = payload_of(env, alice, &mail).await;
    let payloads: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut p = base.clone();
            p["dedupe_id"] = format!("progress-{i}").into();
            p
        })
        .collect();
    publish_payloads(env, &payloads).await;
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test]
async fn replay_on_a_terminal_shows_rate_and_eta() {
    let env = TestEnv::new().await;
    fill(&env, 400).await;
    let cmd = format!(
        "{} replay --from 1",
        shell_quote(bin("imip-ctl").to_str().unwrap())
    );
    let mut script = tokio::process::Command::new("script");
    script.envs(env.vars()).env_remove("IMIP_CONFIG");
    let out = script
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .await
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(text.contains("replay ["), "no bar drawn:\n{text}");
    assert!(
        text.contains("/s ETA "),
        "no rate and ETA in the bar:\n{text}"
    );
    assert!(text.contains("replayed 400 message(s)"), "{text}");
}

#[tokio::test]
async fn ctrl_c_says_where_replay_stopped_and_exits_130() {
    let env = TestEnv::new().await;
    fill(&env, 3000).await;
    let mut child = env
        .command("imip-ctl")
        .args(["replay", "--from", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Some messages done: interrupt in the middle.
    for _ in 0..50 {
        let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("replay prints as it goes")
            .unwrap()
            .expect("a line");
        assert!(l.starts_with("seq "), "{l}");
    }
    imipflow_tests::servers::signal(child.id().unwrap(), "INT");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let at: u64 = err
        .split("stopped at stream sequence ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stop point in {err:?}"));
    assert!(err.contains(&format!("resume with --from {at}")), "{err}");
    assert!((51..3000).contains(&at), "stopped at {at}");
}
