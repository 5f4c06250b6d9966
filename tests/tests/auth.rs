//! Authentication and transport security (issue 5): NATS with a user/password
//! and an nkey user over TLS with a test CA, PostgreSQL with scram-sha-256
//! over TLS only (`verify-full`), both private servers of this test
//! (`imipflow_tests::secure`). Ingest, processor and ctl work end to end with
//! them; wrong or missing credentials fail with a clear message (ingest: exit
//! 75, the MTA keeps the mail); a client that requires TLS refuses a plain
//! server; and no password appears in anything the binaries print, at debug
//! log level.

use imipflow_tests::secure::{
    NATS_PASSWORD, NATS_TOKEN, NATS_USER, NatsLogin, PG_PASSWORD, SecureNats, SecurePg,
};
use imipflow_tests::{TestEnv, repo_root};
use std::process::Output;
use std::time::{Duration, Instant};

const ALICE: &str = "alice@example.com";

fn demo_mail() -> Vec<u8> {
    std::fs::read(repo_root().join("demo/01-weekly-team-meeting-request.eml")).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything the binaries printed, checked at the end for secrets.
struct Transcript(Vec<String>);

impl Transcript {
    fn add(&mut self, what: &str, out: &Output) -> String {
        let t = text(out);
        self.0.push(format!("== {what}\n{t}"));
        t
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_credentials_and_tls() {
    let (nats, pg) = tokio::join!(
        tokio::task::spawn_blocking(SecureNats::start),
        tokio::task::spawn_blocking(SecurePg::start)
    );
    let (nats, pg) = (nats.unwrap(), pg.unwrap());
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    env.database_url = pg.url(&env.database);
    let ca_nats = nats.pki.ca.display().to_string();
    let ca_pg = pg.pki.ca.display().to_string();
    let secure: Vec<(&str, String)> = vec![
        ("IMIP_LOG", "debug".into()),
        ("IMIP_NATS_USER", NATS_USER.into()),
        ("IMIP_NATS_PASSWORD", NATS_PASSWORD.into()),
        ("IMIP_NATS_TLS_CA", ca_nats.clone()),
        ("IMIP_DATABASE_PASSWORD", PG_PASSWORD.into()),
        ("IMIP_DATABASE_SSLMODE", "verify-full".into()),
        ("IMIP_DATABASE_SSLROOTCERT", ca_pg.clone()),
    ];
    let run = |name: &'static str,
               args: Vec<String>,
               vars: Vec<(&'static str, String)>,
               stdin: Vec<u8>| {
        let env = &env;
        async move {
            let mut cmd = env.command(name);
            cmd.envs(vars);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.run_with(cmd, &args, &stdin).await
        }
    };
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut log = Transcript(Vec::new());

    // migrate: creates the database over TLS with the password, and the streams.
    let out = run("imip-processor", argv(&["migrate"]), secure.clone(), vec![]).await;
    let t = log.add("migrate", &out);
    assert!(out.status.success(), "migrate failed:\n{t}");

    // ingest with user/password over TLS, then with the nkey instead.
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        secure.clone(),
        demo_mail(),
    )
    .await;
    let t = log.add("ingest user/password", &out);
    assert!(out.status.success(), "ingest failed:\n{t}");
    let nkey: Vec<(&str, String)> = vec![
        ("IMIP_LOG", "debug".into()),
        ("IMIP_NATS_NKEY_FILE", nats.nkey_seed.display().to_string()),
        ("IMIP_NATS_TLS_CA", ca_nats.clone()),
    ];
    let out = run("imip-ingest", argv(&["--sender", ALICE]), nkey, demo_mail()).await;
    let t = log.add("ingest nkey", &out);
    assert!(out.status.success(), "ingest with nkey failed:\n{t}");

    // The processor applies it; ctl reads it back (both need NATS and PostgreSQL).
    let mut cmd = env.command("imip-processor");
    cmd.arg("run")
        .envs(secure.clone())
        .env("IMIP_METRICS_LISTEN", "")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let processor = cmd.spawn().expect("start processor");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(
            "imip-ctl",
            argv(&["objects", ALICE, "--json"]),
            secure.clone(),
            vec![],
        )
        .await;
        let t = log.add("ctl objects", &out);
        // 67: no such user yet, until the processor has applied the mail.
        let not_yet = out.status.code() == Some(67);
        assert!(out.status.success() || not_yet, "imip-ctl failed:\n{t}");
        let doc: serde_json::Value = if not_yet {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&out.stdout).expect("JSON")
        };
        if doc.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "not applied within 20 s: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = run(
        "imip-ctl",
        argv(&["status", "--json"]),
        secure.clone(),
        vec![],
    )
    .await;
    let t = log.add("ctl status", &out);
    assert!(out.status.success(), "imip-ctl status failed:\n{t}");
    // The publisher serves Alice's free/busy with the same credentials.
    let port = imipflow_tests::free_port();
    let mut cmd = env.command("imip-publisher");
    cmd.envs(secure.clone())
        .env("IMIP_PUBLISHER_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let publisher = cmd.spawn().expect("start publisher");
    let url = format!("http://127.0.0.1:{port}/freebusy/{ALICE}.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match reqwest::get(&url).await {
            Ok(r) => break r.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("publisher not serving within 20 s: {e}"),
        }
    };
    stop(publisher, &mut log, "publisher").await;
    assert_eq!(status, 200, "publisher: {}", log.0.last().unwrap());

    let pid = processor.id().expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let out = tokio::time::timeout(Duration::from_secs(20), processor.wait_with_output())
        .await
        .expect("processor stops on SIGTERM")
        .unwrap();
    log.add("processor run", &out);

    // Credentials inside both URLs instead of separate settings, at debug
    // level too: still never printed.
    let in_urls: Vec<(&str, String)> = vec![
        ("IMIP_LOG", "debug".into()),
        (
            "IMIP_NATS_URL",
            format!("nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:{}", nats.port),
        ),
        ("IMIP_NATS_TLS_CA", ca_nats.clone()),
        (
            "IMIP_DATABASE_URL",
            format!(
                "postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={ca_pg}",
                pg.port, env.database
            ),
        ),
    ];
    let out = run("imip-ctl", argv(&["status"]), in_urls.clone(), vec![]).await;
    let t = log.add("ctl credentials in URLs", &out);
    assert!(
        out.status.success(),
        "imip-ctl with credentials in URLs failed:\n{t}"
    );
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        in_urls,
        demo_mail(),
    )
    .await;
    let t = log.add("ingest credentials in URL", &out);
    assert!(
        out.status.success(),
        "ingest with credentials in the URL failed:\n{t}"
    );

    // Wrong NATS password: exit 75 (the MTA keeps the mail), a clear reason.
    let mut wrong = secure.clone();
    wrong.retain(|(k, _)| *k != "IMIP_NATS_PASSWORD");
    wrong.push(("IMIP_NATS_PASSWORD", "not-the-password".into()));
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        wrong,
        demo_mail(),
    )
    .await;
    let t = log.add("ingest wrong password", &out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(t.contains("authorization failed"), "{t}");

    // No credentials at all: the same.
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        vec![("IMIP_NATS_TLS_CA", ca_nats.clone())],
        demo_mail(),
    )
    .await;
    let t = log.add("ingest no credentials", &out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(t.contains("authorization"), "{t}");

    // A credentials file that is not there: exit 75 naming the setting.
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        vec![("IMIP_NATS_NKEY_FILE", "/nonexistent/user.nk".into())],
        demo_mail(),
    )
    .await;
    let t = log.add("ingest missing nkey file", &out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(t.contains("IMIP_NATS_NKEY_FILE"), "{t}");

    // TLS without our CA: the server's certificate is not trusted.
    let mut no_ca = secure.clone();
    no_ca.retain(|(k, _)| *k != "IMIP_NATS_TLS_CA");
    let out = run(
        "imip-ingest",
        argv(&["--sender", ALICE]),
        no_ca,
        demo_mail(),
    )
    .await;
    let t = log.add("ingest untrusted certificate", &out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(
        t.to_lowercase().contains("tls") || t.contains("certificate"),
        "{t}"
    );

    // Wrong PostgreSQL password: ctl fails and says why.
    let mut wrong = secure.clone();
    wrong.retain(|(k, _)| *k != "IMIP_DATABASE_PASSWORD");
    wrong.push(("IMIP_DATABASE_PASSWORD", "not-the-password".into()));
    let out = run("imip-ctl", argv(&["objects", ALICE]), wrong, vec![]).await;
    let t = log.add("ctl wrong pg password", &out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("password authentication failed"), "{t}");

    // Plaintext to a server that only accepts TLS: refused by pg_hba.
    let mut plain = secure.clone();
    plain.retain(|(k, _)| !k.starts_with("IMIP_DATABASE_SSL"));
    plain.push(("IMIP_DATABASE_SSLMODE", "disable".into()));
    let out = run("imip-ctl", argv(&["objects", ALICE]), plain, vec![]).await;
    let t = log.add("ctl plaintext pg", &out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("no encryption"), "{t}");

    // The other TLS modes: `require` encrypts without checking the
    // certificate; `verify-ca` checks the chain; `verify-full` with a CA that
    // did not sign the server's certificate refuses it.
    for (mode, ca, ok) in [
        ("require", None, true),
        ("verify-ca", Some(ca_pg.clone()), true),
        ("verify-full", Some(ca_nats.clone()), false),
    ] {
        let mut vars = secure.clone();
        vars.retain(|(k, _)| !k.starts_with("IMIP_DATABASE_SSL"));
        vars.push(("IMIP_DATABASE_SSLMODE", mode.into()));
        if let Some(ca) = ca {
            vars.push(("IMIP_DATABASE_SSLROOTCERT", ca));
        }
        let out = run("imip-ctl", argv(&["objects", ALICE]), vars, vec![]).await;
        let t = log.add(&format!("ctl sslmode {mode}"), &out);
        assert_eq!(out.status.success(), ok, "sslmode {mode}: {t}");
        if !ok {
            assert!(t.contains("certificate"), "{t}");
        }
    }

    let all = log.0.join("\n");
    for secret in [NATS_PASSWORD, PG_PASSWORD, "not-the-password"] {
        assert!(
            !all.contains(secret),
            "a password was printed:\n{}",
            all.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let seed = std::fs::read_to_string(&nats.nkey_seed).unwrap();
    assert!(!all.contains(seed.trim()), "the nkey seed was printed");
}

/// SIGTERM, wait, and keep what the process printed.
async fn stop(child: tokio::process::Child, log: &mut Transcript, what: &str) {
    let pid = child.id().expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    log.add(what, &out);
}

/// Token login over mutual TLS (the server verifies a client certificate):
/// ingest publishes with token + certificate, and fails (75) without the
/// certificate or with a wrong token. The database is the shared one; only
/// NATS is private here.
#[tokio::test]
async fn token_and_client_certificate() {
    let nats =
        tokio::task::spawn_blocking(|| SecureNats::start_with(NatsLogin::TokenAndClientCert))
            .await
            .unwrap();
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let pki = &nats.pki;
    let good: Vec<(&str, String)> = vec![
        ("IMIP_NATS_TOKEN", NATS_TOKEN.into()),
        ("IMIP_NATS_TLS_CA", pki.ca.display().to_string()),
        ("IMIP_NATS_TLS_CERT", pki.client_cert.display().to_string()),
        ("IMIP_NATS_TLS_KEY", pki.client_key.display().to_string()),
    ];
    let run =
        |name: &'static str, args: &'static [&'static str], vars: Vec<(&'static str, String)>| {
            let env = &env;
            async move {
                let mut cmd = env.command(name);
                cmd.envs(vars);
                let stdin = if name == "imip-ingest" {
                    demo_mail()
                } else {
                    Vec::new()
                };
                env.run_with(cmd, args, &stdin).await
            }
        };
    let out = run("imip-processor", &["migrate"], good.clone()).await;
    assert!(out.status.success(), "migrate: {}", text(&out));
    let out = run("imip-ingest", &["--sender", ALICE], good.clone()).await;
    assert!(out.status.success(), "ingest: {}", text(&out));
    let status = run("imip-ctl", &["status", "--json"], good.clone()).await;
    assert!(status.status.success(), "ctl: {}", text(&status));

    let mut no_cert = good.clone();
    no_cert.retain(|(k, _)| {
        !k.starts_with("IMIP_NATS_TLS_CERT") && !k.starts_with("IMIP_NATS_TLS_KEY")
    });
    let out = run("imip-ingest", &["--sender", ALICE], no_cert).await;
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));

    let mut wrong = good.clone();
    wrong.retain(|(k, _)| *k != "IMIP_NATS_TOKEN");
    wrong.push(("IMIP_NATS_TOKEN", "not-the-token".into()));
    let out = run("imip-ingest", &["--sender", ALICE], wrong).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(
        t.contains("authorization failed") && !t.contains("not-the-token"),
        "{t}"
    );
}

/// Decentralised auth: a `.creds` file (user JWT + seed) of an account with
/// JetStream, on a server in operator mode; without it, exit 75.
#[tokio::test]
async fn creds_file() {
    let nats = tokio::task::spawn_blocking(|| SecureNats::start_with(NatsLogin::Creds))
        .await
        .unwrap();
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let creds = vec![("IMIP_NATS_CREDS_FILE", nats.creds.display().to_string())];
    let mut cmd = env.command("imip-processor");
    cmd.envs(creds.clone());
    let out = env.run_with(cmd, &["migrate"], b"").await;
    assert!(out.status.success(), "migrate: {}", text(&out));
    let mut cmd = env.command("imip-ingest");
    cmd.envs(creds);
    let out = env.run_with(cmd, &["--sender", ALICE], &demo_mail()).await;
    assert!(out.status.success(), "ingest: {}", text(&out));
    let out = env.ingest(&["--sender", ALICE], &demo_mail()).await;
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
}

/// A client that requires TLS refuses a server without it (the shared NATS on
/// 4222 has no TLS): exit 75 for ingest, before anything is sent.
#[tokio::test]
async fn tls_required_refuses_a_plain_server() {
    let env = TestEnv::unmigrated();
    let mut cmd = env.command("imip-ingest");
    cmd.env("IMIP_NATS_TLS_REQUIRED", "true");
    let out = env.run_with(cmd, &["--sender", ALICE], &demo_mail()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(75), "{t}");
    assert!(t.to_lowercase().contains("tls"), "{t}");
}
