//! `imip-publisher` under abuse, through the real binary against real NATS
//! and PostgreSQL: half-sent requests, floods of idle connections, absurd and
//! unknown user names, users with a million busy periods, hostile windows,
//! control bytes in the path; `/readyz`; the `empty` answer for unknown users.
//! Each limit and outcome is listed in docs/hostile-input.md ("Publisher").

use imipflow_tests::servers::{NatsServer, PgServer};
use imipflow_tests::{Publisher, TestEnv, free_port};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// GET with a generous timeout: these tests bound memory and connections,
/// not speed.
async fn get(publisher: &Publisher, path: &str) -> (StatusCode, String) {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
        .get(publisher.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status(), r.text().await.unwrap_or_default())
}

/// The publisher's resident set (VmRSS), in KiB.
fn rss_kib(publisher: &Publisher) -> u64 {
    let pid = publisher.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A metric's value from `/metrics` (first sample of that name).
async fn metric(publisher: &Publisher, name: &str) -> f64 {
    let (status, body) = get(publisher, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// True once the server has closed `s` (EOF or reset), false while it is open.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (e.g. 408) before the close: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn half_sent_requests_and_idle_keep_alive_connections_are_closed() {
    let env = TestEnv::new().await;
    let publisher = env
        .start_publisher_with(free_port(), |c| {
            c.env("IMIP_PUBLISHER_HEADER_READ_TIMEOUT_MS", "1000");
        })
        .await;
    let mut half = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", publisher.port))
            .await
            .unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost:").await.unwrap();
        half.push(s);
    }
    // One well-behaved keep-alive connection that then says nothing more.
    let mut idle = TcpStream::connect(("127.0.0.1", publisher.port))
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The header read timeout is 1 s; well within 15 s every one is closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open: Vec<TcpStream> = half.into_iter().chain([idle]).collect();
    while !open.is_empty() {
        let mut still = Vec::new();
        for mut s in open {
            if !closed_by_server(&mut s).await {
                still.push(s);
            }
        }
        open = still;
        assert!(
            open.is_empty() || Instant::now() < deadline,
            "{} of 101 connections still open after 15 s",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&publisher, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_idle_connections_leaves_healthz_answering() {
    imipflow_tests::raise_own_nofile();
    let env = TestEnv::new().await;
    // As started by hand on most systems: 1,024 descriptors, and here no way
    // to raise them (hard limit 1,024 too).
    let publisher = env
        .start_publisher_with(free_port(), |c| unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 1024,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        })
        .await;
    let mut flood = Vec::new();
    for i in 0..1100 {
        match TcpStream::connect(("127.0.0.1", publisher.port)).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // /healthz answers (5 s client timeout) while the 1,100 are still open.
    let r = client().get(publisher.url("/healthz")).send().await;
    let r = r.unwrap_or_else(|e| panic!("/healthz under 1,100 idle connections: {e}"));
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = get(&publisher, "/freebusy/nobody@example.com.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(flood);

    // A connection limit the descriptors cannot carry is refused at start.
    let mut cmd = env.command("imip-publisher");
    cmd.env(
        "IMIP_PUBLISHER_LISTEN",
        format!("127.0.0.1:{}", free_port()),
    )
    .env("IMIP_PUBLISHER_MAX_CONNECTIONS", "5000");
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let out = env.run_with(cmd, &[], b"").await;
    assert!(
        !out.status.success(),
        "started with 5,000 connections on 1,024 descriptors"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IMIP_PUBLISHER_MAX_CONNECTIONS"), "{err}");
}

#[tokio::test]
async fn unknown_users_are_not_cached_and_absurd_names_are_refused() {
    let env = TestEnv::new().await;
    let publisher = env.start_publisher(free_port()).await;
    let http = client();
    // Warm up (first allocations, metrics), then measure.
    for i in 0..20 {
        let r = http
            .get(publisher.url(&format!("/freebusy/warm{i}@example.com.json")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let before = rss_kib(&publisher);
    // Raw requests: 64 KB is more than an `http::Uri` (the client's) holds.
    // 64,000 bytes: hyper itself answers 414 to a URI over 65,534.
    let long = "x".repeat(64_000);
    for i in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", publisher.port))
            .await
            .unwrap();
        let request = format!(
            "GET /freebusy/{long}{i}@example.com.ifb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let status = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
        assert!(
            status.starts_with("HTTP/1.1 4"),
            "a 64 KB name answered {status:?}"
        );
    }
    let after = rss_kib(&publisher);
    // 1,000 names of 64 KB are 61 MiB; none of it may stay.
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB after 1,000 long unknown names"
    );
    // Short unknown names: 404, and none of them is held in memory.
    for i in 0..1000 {
        let r = http
            .get(publisher.url(&format!("/freebusy/nobody{i}@example.com.json")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        metric(&publisher, "imipflow_publisher_cached_users").await,
        0.0
    );
}

/// Busy periods written straight into the store for one user: `n` periods of
/// 5 minutes, one every 10 minutes from a week ago on.
async fn many_periods(env: &TestEnv, user: &str, n: i64) {
    let db = env.pg().await;
    db.execute(
        "INSERT INTO freebusy (partition, user_addr, uid, instance, period, fbtype, recurrence_id)
         SELECT $3, $1, 'bomb', t, tstzrange(t, t + interval '5 minutes'), 'BUSY', t
         FROM (SELECT date_trunc('day', now()) - interval '7 days' + i * interval '10 minutes' AS t
               FROM generate_series(0::bigint, $2::bigint - 1) AS i) s",
        &[&user, &n, &env.partition_of(user)],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO user_events (partition, user_addr, last_seq) VALUES ($2, $1, 1)
         ON CONFLICT (partition, user_addr) DO UPDATE SET last_seq = 1",
        &[&user, &env.partition_of(user)],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_cache_stays_within_its_byte_budget() {
    let env = TestEnv::new().await;
    // 40 users of 100 periods each (about 17 KB each in the cache's
    // estimate); the budget holds about three of them.
    for u in 0..40 {
        many_periods(&env, &format!("user{u}@example.com"), 100).await;
    }
    let publisher = env
        .start_publisher_with(free_port(), |c| {
            c.env("IMIP_PUBLISHER_CACHE_BYTES", "65536");
        })
        .await;
    for round in 0..2 {
        for u in 0..40 {
            let (status, body) =
                get(&publisher, &format!("/freebusy/user{u}@example.com.json")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let doc: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                doc["periods"].as_array().unwrap().len(),
                100,
                "round {round}"
            );
            let bytes = metric(&publisher, "imipflow_publisher_cache_bytes").await;
            assert!(bytes <= 65536.0, "cache holds {bytes} bytes");
        }
    }
    let cached = metric(&publisher, "imipflow_publisher_cached_users").await;
    assert!((1.0..40.0).contains(&cached), "{cached} users cached");
    assert!(metric(&publisher, "imipflow_publisher_cache_evictions_total").await > 0.0);
}

#[tokio::test]
async fn a_user_with_a_million_periods_is_served_within_bounded_memory() {
    let env = TestEnv::new().await;
    let user = "heavy@example.com";
    many_periods(&env, user, 1_000_000).await;
    let publisher = env.start_publisher(free_port()).await;
    let before = rss_kib(&publisher);
    // The default window holds 53,568 of them: more than one answer carries.
    let (status, body) = get(&publisher, &format!("/freebusy/{user}.json")).await;
    let (ifb_status, ifb) = get(&publisher, &format!("/freebusy/{user}.ifb")).await;
    let after = rss_kib(&publisher);
    eprintln!("RSS {before} KiB before, {after} KiB after serving 1,000,000 periods");
    assert!(
        after < before + 96 * 1024,
        "RSS grew from {before} KiB to {after} KiB serving a user with 1,000,000 periods"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    let periods = doc["periods"].as_array().unwrap();
    assert_eq!(doc["truncated"], Value::Bool(true), "{}", &body[..200]);
    assert!(
        !periods.is_empty() && periods.len() <= 20_000,
        "{}",
        periods.len()
    );
    // The answer says which window it covers: up to the first period left out.
    let to: chrono::DateTime<chrono::Utc> = doc["to"].as_str().unwrap().parse().unwrap();
    let last_start: chrono::DateTime<chrono::Utc> = periods.last().unwrap()["start"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_start < to);
    assert!(to < chrono::Utc::now() + chrono::Duration::days(300));
    assert_eq!(ifb_status, StatusCode::OK);
    assert!(ifb.matches("FREEBUSY;").count() <= 20_000);

    // A window longer than the limit is refused.
    let (status, body) = get(
        &publisher,
        &format!("/freebusy/{user}.json?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("window"), "{body}");
    // A short window is answered whole.
    let from = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, body) = get(
        &publisher,
        &format!(
            "/freebusy/{user}.json?from={}&to={}",
            rfc(from),
            rfc(from + chrono::Duration::days(1))
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["periods"].as_array().unwrap().len(), 144);
    assert_eq!(doc["truncated"], Value::Bool(false));
}

#[tokio::test]
async fn control_bytes_and_invalid_utf8_in_a_user_answer_400() {
    let env = TestEnv::new().await;
    let publisher = env.start_publisher(free_port()).await;
    for name in [
        "a%00b@example.com",
        "%00",
        "a%01@example.com",
        "a%0d%0aX:%20y@example.com",
        "a%7f@example.com",
        "a%ff@example.com",
        "a%c3%28@example.com",
    ] {
        for ext in ["ifb", "json"] {
            let (status, body) = get(&publisher, &format!("/freebusy/{name}.{ext}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}.{ext}: {body}");
        }
    }
    assert_eq!(get(&publisher, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_users_can_be_answered_with_empty_free_busy() {
    let env = TestEnv::new().await;
    let publisher = env
        .start_publisher_with(free_port(), |c| {
            c.env("IMIP_PUBLISHER_UNKNOWN_USERS", "empty");
        })
        .await;
    let (status, body) = get(
        &publisher,
        "/freebusy/nobody@example.com.json?from=2027-03-01T00:00:00Z&to=2027-04-01T00:00:00Z",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["user"], "nobody@example.com");
    assert_eq!(doc["periods"], Value::Array(vec![]));
    // The ETag does not give the unknown address away by a constant sequence 0.
    let r = client()
        .get(publisher.url("/freebusy/nobody@example.com.ifb"))
        .send()
        .await
        .unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(!tag.starts_with("W/\"0-"), "{tag}");
    let (status, ics) = get(&publisher, "/freebusy/nobody@example.com.ifb").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ics.contains("BEGIN:VFREEBUSY\r\n"), "{ics}");
    assert!(!ics.contains("FREEBUSY;"), "{ics}");
    // Nothing to look up at all is still not found.
    assert_eq!(
        get(&publisher, "/freebusy/.ifb").await.0,
        StatusCode::NOT_FOUND
    );
}

/// Polls `/readyz` until its status is `want`; returns the body.
async fn readyz_becomes(publisher: &Publisher, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client().get(publisher.url("/readyz")).send().await {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz not {want} within 30 s: {status} {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_follows_nats_and_postgresql() {
    let mut nats = NatsServer::start().await;
    let mut pg = PgServer::start();
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    env.database_url = pg.url(&env.database);
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {out:?}");
    let publisher = env.start_publisher(free_port()).await;
    readyz_becomes(&publisher, StatusCode::OK).await;

    nats.stop();
    let why = readyz_becomes(&publisher, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(why.contains("NATS") || why.contains("events"), "{why}");
    assert_eq!(get(&publisher, "/healthz").await.0, StatusCode::OK);
    nats.restart().await;
    readyz_becomes(&publisher, StatusCode::OK).await;

    pg.stop_immediate();
    let why = readyz_becomes(&publisher, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(why.contains("PostgreSQL"), "{why}");
    pg.restart();
    readyz_becomes(&publisher, StatusCode::OK).await;
}
