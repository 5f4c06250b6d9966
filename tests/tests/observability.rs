//! Issue 7 "Running it": the processor's `/healthz`, `/readyz` and `/metrics`
//! scraped over HTTP from a real `imip-processor run`, JSON logs carrying the
//! message fields, the publisher's `/metrics`, and the deployment files
//! (`docker compose config`, `systemd-analyze verify`) where the tools exist.

use imipflow_tests::{Processor, TestEnv, free_port, imip_mail, repo_root, vevent};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Polls `url` until `want(status, body)` holds, within `secs`.
async fn wait_for(url: &str, secs: u64, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        if let Some((s, b)) = get(url).await {
            if want(s, &b) {
                return (s, b);
            }
            last = Some((s, b));
        }
        assert!(
            Instant::now() < deadline,
            "{url}: condition not met within {secs} s; last answer {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one sample line `name{labels} value` in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn request(uid: &str, organizer: &str, msgid: &str) -> Vec<u8> {
    imip_mail(
        "REQUEST",
        organizer,
        msgid,
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20270301T100000Z",
            "DTSTART:20270410T120000Z",
            "DTEND:20270410T130000Z",
            &format!("ORGANIZER:mailto:{organizer}"),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.com",
        ])],
    )
}

#[tokio::test]
async fn readyz_follows_migrate_metrics_count_and_logs_are_json() {
    let env = TestEnv::unmigrated();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .env("IMIP_LEASE_MS", "5000")
        .env("IMIP_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("IMIP_LOG_FORMAT", "json")
        .env("IMIP_LOG", "info,imipflow_processor=debug")
        .env("IMIP_INSTANCE", "obs")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn imip-processor run");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = r.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let processor = Processor { child };

    // Alive at once; not ready while the database does not even exist.
    wait_for(&format!("{base}/healthz"), 20, |s, _| s == 200).await;
    let (status, body) = get(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(status, 503, "readyz before migrate: {body}");
    assert!(body.starts_with("not ready: "), "{body}");

    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {out:?}");
    wait_for(&format!("{base}/readyz"), 20, |s, _| s == 200).await;

    // One applied and one refused message (bob is not the organizer).
    for (mail, sender) in [
        (
            request("obs-1", "alice@example.com", "obs-1@t"),
            "alice@example.com",
        ),
        (
            request("obs-2", "carol@example.com", "obs-2@t"),
            "bob@example.com",
        ),
    ] {
        let out = env.ingest(&["--sender", sender], &mail).await;
        assert!(out.status.success(), "ingest: {out:?}");
    }
    env.wait_applied().await;

    let (_, page) = wait_for(&format!("{base}/metrics"), 20, |s, b| {
        s == 200
            && sample(
                b,
                r#"imipflow_messages_total{method="REQUEST",outcome="refused"}"#,
            ) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &page,
            r#"imipflow_messages_total{method="REQUEST",outcome="applied"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "imipflow_owned_partitions"),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "imipflow_message_apply_seconds_count"),
        Some(2.0),
        "{page}"
    );
    assert!(sample(&page, "imipflow_batch_apply_seconds_count").unwrap_or(0.0) >= 1.0);
    assert_eq!(sample(&page, "imipflow_dead_letters"), Some(0.0), "{page}");
    assert_eq!(sample(&page, "imipflow_quarantined"), Some(0.0), "{page}");
    assert_eq!(
        sample(&page, "imipflow_outbox_unpublished"),
        Some(0.0),
        "{page}"
    );
    let mut acquired = 0.0;
    for p in 0..env.partitions {
        assert_eq!(
            sample(
                &page,
                &format!(r#"imipflow_partition_lag{{partition="{p}"}}"#)
            ),
            Some(0.0),
            "{page}"
        );
        assert_eq!(
            sample(
                &page,
                &format!(r#"imipflow_partition_owned{{partition="{p}"}}"#)
            ),
            Some(1.0)
        );
        acquired += sample(
            &page,
            &format!(r#"imipflow_lease_acquisitions_total{{partition="{p}"}}"#),
        )
        .unwrap_or(0.0);
    }
    assert!(acquired >= 4.0, "{page}");
    assert!(
        page.contains("# TYPE imipflow_message_apply_seconds histogram"),
        "{page}"
    );

    // Lag shows once the processor is gone and a message waits.
    let status = processor.terminate().await;
    assert!(status.success(), "processor exit: {status}");
    let logs = lines.lock().unwrap().clone();

    // Every line is JSON; the message lines carry the fields an operator greps for.
    let parsed: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let applied = parsed
        .iter()
        .find(|v| v["fields"]["uid"] == "obs-1")
        .unwrap_or_else(|| panic!("no log line about obs-1 in {logs:#?}"));
    assert_eq!(applied["fields"]["user"], "alice@example.com");
    assert_eq!(applied["fields"]["method"], "REQUEST");
    assert_eq!(applied["fields"]["outcome"], "applied");
    assert!(applied["fields"]["seq"].as_i64().unwrap() >= 1);
    assert!(applied["fields"]["partition"].is_i64());
    let refused = parsed
        .iter()
        .find(|v| v["fields"]["uid"] == "obs-2")
        .expect("log line about obs-2");
    assert_eq!(refused["level"], "INFO");
    assert_eq!(refused["fields"]["outcome"], "refused");
    assert_eq!(refused["fields"]["user"], "bob@example.com");
    assert!(
        parsed
            .iter()
            .any(|v| v["fields"]["message"] == "lane acquired")
    );
}

/// `/readyz` follows the broker: 503 naming NATS while a private nats-server
/// is down, 200 again once it is back; `/healthz` stays 200 throughout.
#[tokio::test]
async fn readyz_follows_nats() {
    let mut nats = imipflow_tests::servers::NatsServer::start().await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {out:?}");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    wait_for(&format!("{base}/readyz"), 20, |s, _| s == 200).await;

    nats.stop();
    let (_, body) = wait_for(&format!("{base}/readyz"), 20, |s, _| s == 503).await;
    assert!(body.contains("NATS"), "{body}");
    assert_eq!(
        get(&format!("{base}/healthz")).await.map(|r| r.0),
        Some(200)
    );

    nats.restart().await;
    wait_for(&format!("{base}/readyz"), 30, |s, _| s == 200).await;
    processor.terminate().await;
}

/// Started while the broker is down, `imip-processor run` does not exit (it
/// used to exit 1 at once): it keeps retrying, `/healthz` answers, `/readyz`
/// is 503 with the reason (the server's address refused), and once NATS is
/// up the lanes start and apply mail.
#[tokio::test]
async fn processor_started_while_nats_is_down_waits_says_why_and_applies_once_it_is_up() {
    let mut nats = imipflow_tests::servers::NatsServer::start().await;
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {out:?}");
    nats.stop();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    let (_, body) = wait_for(&format!("{base}/readyz"), 20, |s, b| {
        s == 503 && b.contains("NATS")
    })
    .await;
    assert!(
        body.contains(&format!("127.0.0.1:{}", nats.port)) && body.contains("refused"),
        "/readyz should say the broker refuses connections: {body}"
    );
    assert!(body.contains("retrying"), "{body}");
    // Several retries later it is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(&format!("{base}/healthz")).await.map(|r| r.0),
        Some(200),
        "the processor exited while NATS was down"
    );

    nats.restart().await;
    wait_for(&format!("{base}/readyz"), 30, |s, _| s == 200).await;
    let out = env
        .ingest(
            &["--sender", "alice@example.com"],
            &request("nats-late-1", "alice@example.com", "nats-late-1@t"),
        )
        .await;
    assert!(out.status.success(), "ingest: {out:?}");
    env.wait_applied().await;
    assert!(processor.terminate().await.success());
}

/// `/readyz` follows the database: 503 naming PostgreSQL while a private
/// server is down, 200 again once it is back.
#[tokio::test]
async fn readyz_follows_postgres() {
    let mut pg = imipflow_tests::servers::PgServer::start();
    let mut env = TestEnv::unmigrated();
    env.database_url = pg.url(&env.database);
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {out:?}");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", listen.as_str())]);
    wait_for(&format!("{base}/readyz"), 20, |s, _| s == 200).await;

    // The private server runs with synchronous_commit=off: make the
    // migrations durable before crashing it.
    env.pg().await.batch_execute("CHECKPOINT").await.unwrap();
    pg.stop_immediate();
    let (_, body) = wait_for(&format!("{base}/readyz"), 20, |s, _| s == 503).await;
    assert!(body.contains("PostgreSQL"), "{body}");

    pg.restart();
    wait_for(&format!("{base}/readyz"), 30, |s, _| s == 200).await;
    processor.terminate().await;
}

#[tokio::test]
async fn metrics_listener_can_be_disabled_and_publisher_serves_metrics() {
    let env = TestEnv::new().await;
    // Empty IMIP_METRICS_LISTEN: no listener, the processor still applies.
    let port = free_port();
    let processor = env.start_processor(&[("IMIP_METRICS_LISTEN", "")]);
    let out = env
        .ingest(
            &["--sender", "alice@example.com"],
            &request("pub-1", "alice@example.com", "pub-1@t"),
        )
        .await;
    assert!(out.status.success());
    env.wait_applied().await;
    assert!(
        get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_none()
    );
    processor.terminate().await;

    let publisher = env.start_publisher(port).await;
    let (status, _) = get(&publisher.url("/freebusy/alice@example.com.json"))
        .await
        .expect("freebusy");
    assert_eq!(status, 200);
    let (status, page) = get(&publisher.url("/metrics")).await.expect("metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&page, "imipflow_publisher_cached_users"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "imipflow_publisher_loads_total"),
        Some(1.0),
        "{page}"
    );
    publisher.terminate().await;
}

/// `docker compose config` parses and interpolates compose.yaml (the client
/// only, no engine). Without the compose v2 plugin, Debian's `docker-compose`
/// 1.29 validates everything but the top-level `name` (a v2 addition, removed
/// from the copy it checks); without either, the test says so and passes.
#[test]
fn compose_file_is_valid() {
    let compose = repo_root().join("compose.yaml");
    let v2 = std::process::Command::new("docker")
        .args(["compose", "-f"])
        .arg(&compose)
        .args(["config", "--format", "json"])
        .output();
    if let Ok(out) = &v2
        && out.status.success()
    {
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compose JSON");
        let services = &doc["services"];
        for name in ["nats", "postgres", "processor", "publisher"] {
            assert!(
                services[name]["healthcheck"]["test"].is_array(),
                "service {name} has no health check: {}",
                services[name]
            );
        }
        for dep in ["nats", "postgres"] {
            assert_eq!(
                services["processor"]["depends_on"][dep]["condition"],
                "service_healthy"
            );
        }
        assert_eq!(
            services["publisher"]["depends_on"]["processor"]["condition"],
            "service_healthy"
        );
        return;
    }
    let text = std::fs::read_to_string(&compose).unwrap();
    let copy = std::env::temp_dir().join(format!("imip-compose-{}.yaml", std::process::id()));
    let without_name: String = text
        .lines()
        .filter(|l| !l.starts_with("name:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&copy, without_name).unwrap();
    let v1 = std::process::Command::new("docker-compose")
        .arg("-f")
        .arg(&copy)
        .arg("--project-directory")
        .arg(repo_root())
        .arg("config")
        .output();
    let _ = std::fs::remove_file(&copy);
    match v1 {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "docker-compose config failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // 4 by default; the manager (profile manager-dev) adds one each
            // where the tool lists profiled services too.
            assert!(
                (4..=5).contains(&stdout.matches("healthcheck:").count()),
                "{stdout}"
            );
            assert!(
                (3..=4).contains(&stdout.matches("condition: service_healthy").count()),
                "{stdout}"
            );
        }
        Err(e) => eprintln!(
            "skipped: neither the docker compose plugin ({}) nor docker-compose ({e}) is installed",
            v2.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_else(|e| e.to_string())
        ),
    }
}

/// The image builds from a context that has every workspace member: cargo
/// needs each member's manifest, so a member the Dockerfile does not COPY
/// breaks `docker build` (the manager's did), and each binary the image
/// documents is built and copied.
#[test]
fn dockerfile_copies_every_workspace_member_and_ships_every_binary() {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let members: Vec<String> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("members line")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .collect();
    assert!(members.len() >= 10, "{members:?}");
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for m in &members {
        assert!(
            dockerfile.contains(&format!("COPY {m} {m}\n")),
            "Dockerfile does not COPY workspace member {m}"
        );
    }
    for binary in [
        "imip-processor",
        "imip-ctl",
        "imip-publisher",
        "imip-manager",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "Dockerfile does not ship {binary}"
        );
    }
    assert!(dockerfile.contains("target/static/ingest/imip-ingest"));
}

/// `systemd-analyze verify` on the unit files, where systemd is installed.
#[test]
fn systemd_units_verify() {
    let dir = repo_root().join("deploy/systemd");
    let units: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/systemd")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    assert!(units.len() >= 4, "{units:?}");
    for u in &units {
        let text = std::fs::read_to_string(u).unwrap();
        for needle in [
            "[Service]",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "EnvironmentFile=",
        ] {
            assert!(text.contains(needle), "{}: no {needle}", u.display());
        }
    }
    match std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("skipped systemd-analyze verify: systemd-analyze is not installed");
            return;
        }
    }
    // ExecStart must name an existing executable: point it at target/debug.
    let tmp = std::env::temp_dir().join(format!("imip-units-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bins = imipflow_tests::bin_dir();
    let mut paths = Vec::new();
    for u in &units {
        let text = std::fs::read_to_string(u)
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let p = tmp.join(u.file_name().unwrap());
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&tmp);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about units we do not ship (network-online.target's
    // dependencies in a container without systemd running) are not ours.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("imip-")).collect();
    assert!(
        out.status.success() || ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// Every metric the code defines is documented in docs/operations.md, and the
/// Grafana dashboard only queries metrics that exist.
#[test]
fn docs_and_dashboard_name_real_metrics() {
    let root = repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("imipflow_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        out
    };
    let code = read("processor/src/metrics.rs") + &read("publisher/src/http.rs");
    let defined: std::collections::BTreeSet<String> = names(&code)
        .into_iter()
        .filter(|n| code.contains(&format!("\"{n}\"")) && !n.starts_with("imipflow_processor"))
        .collect();
    assert!(defined.len() >= 15, "{defined:?}");
    let docs = read("docs/operations.md");
    for n in &defined {
        assert!(
            docs.contains(&format!("`{n}`")),
            "{n} is not in docs/operations.md"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/imipflow.json")).expect("dashboard JSON");
    for n in names(&dashboard.to_string()) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(&n);
        assert!(
            defined.contains(base),
            "dashboard queries unknown metric {n}"
        );
    }
}
