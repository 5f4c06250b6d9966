//! The processor's `/metrics` `/healthz` `/readyz` listener under abuse
//! (issue 12, the publisher's attacks tried on the telemetry listener):
//! half-sent requests are closed by the header timeout, and a flood of idle
//! connections beyond the listener's cap leaves `/healthz` answering.

use imipflow_tests::{TestEnv, free_port};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on a fresh connection: the status code, within `within`.
async fn status(port: u16, path: &str, within: Duration) -> Option<u16> {
    let run = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(within, run).await.ok().flatten()
}

/// `imip-processor run` with its listener on a free port, limited to 1,024
/// descriptors (the usual default soft limit, which a flood of 1,100
/// connections exhausts), once `/healthz` answers.
async fn started(env: &TestEnv) -> (tokio::process::Child, u16) {
    let port = free_port();
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .env("IMIP_LEASE_MS", "5000")
        .env("IMIP_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let p = cmd.spawn().expect("spawn imip-processor run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(port, "/healthz", Duration::from_secs(2)).await != Some(200) {
        assert!(Instant::now() < deadline, "the listener never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p, port)
}

async fn stop(mut p: tokio::process::Child) {
    if let Some(pid) = p.id() {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), p.wait()).await;
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn half_sent_requests_are_closed_by_the_header_timeout() {
    let env = TestEnv::new().await;
    let (p, port) = started(&env).await;
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        conns.push(s);
    }
    // The timeout is 5 s; allow for a loaded machine.
    let mut open = 0;
    for s in &mut conns {
        if !closed(s, Duration::from_secs(15)).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} of 100 half-sent requests still open after 15 s"
    );
    stop(p).await;
}

#[tokio::test]
async fn a_flood_of_idle_connections_leaves_healthz_answering() {
    let env = TestEnv::new().await;
    imipflow_tests::raise_own_nofile();
    let (p, port) = started(&env).await;
    let mut idle = Vec::new();
    // Several times the listener's cap, and more than its descriptors; sent
    // back to back, faster than the header timeout closes them.
    for _ in 0..1100 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    let t = Instant::now();
    let mut answered = None;
    while t.elapsed() < Duration::from_secs(10) {
        answered = status(port, "/healthz", Duration::from_secs(2)).await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered,
        Some(200),
        "/healthz did not answer beside {} idle connections",
        idle.len()
    );
    drop(idle);
    stop(p).await;
}
