//! Docs that match behaviour (issue 15): what docs/mta.md and
//! docs/configuration.md say about exit statuses, checked against the real
//! binaries, so that a change to either shows here. No server is needed.

use imipflow_tests::{bin, repo_root};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn doc(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("docs").join(name)).unwrap()
}

/// Runs a binary with no inherited `IMIP_*` variable, only `vars`, `stdin` piped in.
fn run(name: &str, args: &[&str], vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(bin(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("IMIP_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(vars.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn a_bad_pipe_command_exits_0_on_plain_mail_and_64_on_calendar_mail_as_mta_md_says() {
    let mta = doc("mta.md");
    assert!(mta.contains("A message without calendar data exits 0 before the arguments"));
    assert!(mta.contains("only with a message that has calendar data"));
    let bad = ["--direction", "sideways", "--sender", "a@example.com"];
    let plain = b"From: a@example.com\r\nSubject: lunch\r\n\r\nNoon?\r\n";
    assert_eq!(run("imip-ingest", &bad, &[], plain).status.code(), Some(0));
    let invite =
        std::fs::read(repo_root().join("tests/fixtures/mail/apple-request-allday.eml")).unwrap();
    let out = run("imip-ingest", &bad, &[], &invite);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn an_unknown_time_zone_makes_run_exit_78_as_configuration_md_says() {
    assert!(doc("configuration.md").contains("exits 78 (EX_CONFIG) with the same lines"));
    let out = run(
        "imip-processor",
        &["run"],
        &[
            ("IMIP_DEFAULT_TIMEZONE", "Mars/Olympus_Mons"),
            ("IMIP_METRICS_LISTEN", ""),
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("invalid: ") && err.contains("Mars/Olympus_Mons"),
        "{err}"
    );
}

#[test]
fn config_check_refuses_malformed_manager_addresses_with_the_reason() {
    assert!(doc("configuration.md").contains("manager\naddresses are addresses (`local@domain`"));
    for bad in [
        "calendar",
        "cal@@example.com",
        "Cal Manager cal@example.com",
        "cal@example.com;x@y.org",
    ] {
        let out = run(
            "imip-processor",
            &["config", "check"],
            &[("IMIP_MANAGER_ADDRESSES", bad)],
            b"",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bad}: {err}");
        assert!(
            err.contains("invalid: IMIP_MANAGER_ADDRESSES") && err.contains("local@domain"),
            "{bad}: {err}"
        );
    }
    for good in [
        "cal@example.com",
        "<Cal@Example.com>, mailto:other@example.org",
    ] {
        let out = run(
            "imip-processor",
            &["config", "check"],
            &[("IMIP_MANAGER_ADDRESSES", good)],
            b"",
        );
        assert_eq!(out.status.code(), Some(0), "{good}: {out:?}");
    }
}
