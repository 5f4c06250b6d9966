//! Configuration layering (issue 7): flags over `IMIP_*` environment variables
//! over the TOML config file over defaults, unknown keys rejected, and
//! `imip-processor config check` printing every setting with its source and
//! secrets hidden. No server is needed: `config check` does not connect.

use imipflow_tests::bin;
use imipflow_tests::secure::TempDir;
use serde_json::Value;
use std::process::Output;

/// Runs a binary with no inherited `IMIP_*` variable, only `vars`.
fn run(name: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(bin(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("IMIP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn setting<'a>(doc: &'a Value, key: &str) -> &'a Value {
    doc["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no setting {key} in {doc}"))
}

#[test]
fn flags_over_env_over_file_over_defaults() {
    let dir = TempDir::new("imip-config");
    let file = dir.0.join("imipflow.toml");
    std::fs::write(
        &file,
        r#"
namespace = "fromfile"
partitions = 8
batch-size = 32
manager_addresses = ["cal@example.com", "web@example.com"]
nats_user = "imip"
nats_password = "file-secret-1"
"#,
    )
    .unwrap();
    let path = file.display().to_string();
    // The file named by IMIP_CONFIG.
    let out = run(
        "imip-processor",
        &["config", "check", "--json", "--batch-size", "7"],
        &[("IMIP_CONFIG", &path), ("IMIP_PARTITIONS", "12")],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("file-secret-1"), "secret printed: {t}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], true, "{doc}");
    assert_eq!(doc["file"], path.as_str());
    let expect = [
        ("namespace", "fromfile", "file"),
        ("partitions", "12", "env"),
        ("batch_size", "7", "flag"),
        ("lease_ms", "10000", "default"),
        (
            "manager_addresses",
            "cal@example.com,web@example.com",
            "file",
        ),
        ("nats_password", "***", "file"),
        ("config", path.as_str(), "env"),
    ];
    for (key, value, source) in expect {
        let e = setting(&doc, key);
        assert_eq!(e["value"], value, "{key}: {e}");
        assert_eq!(e["source"], source, "{key}: {e}");
    }
    assert_eq!(setting(&doc, "nats_user")["env"], "IMIP_NATS_USER");
    assert_eq!(setting(&doc, "nats_tls_ca")["source"], "unset");

    // The same file by flag; the flag beats IMIP_CONFIG, env beats the file.
    let out = run(
        "imip-processor",
        &["config", "check", "--json", "--config", &path],
        &[
            ("IMIP_CONFIG", "/nonexistent.toml"),
            ("IMIP_NAMESPACE", "fromenv"),
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(setting(&doc, "namespace")["value"], "fromenv");
    assert_eq!(setting(&doc, "namespace")["source"], "env");
    assert_eq!(setting(&doc, "batch_size")["value"], "32");
    assert_eq!(setting(&doc, "config")["source"], "flag");

    // The human-readable form says the same.
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check"],
        &[],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("config file: {path}")), "{t}");
    assert!(t.contains("config: valid"), "{t}");
    let line = t.lines().find(|l| l.starts_with("nats_password")).unwrap();
    assert!(line.contains("***") && line.ends_with("file"), "{line}");
    assert!(!t.contains("file-secret-1"), "{t}");

    // --help shows no value that came from the file.
    let out = run("imip-processor", &["--config", &path, "--help"], &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("IMIP_NATS_PASSWORD") && !t.contains("file-secret-1"),
        "{t}"
    );
}

#[test]
fn unknown_keys_are_rejected_by_every_binary() {
    let dir = TempDir::new("imip-config");
    let file = dir.0.join("typo.toml");
    std::fs::write(&file, "namespce = \"x\"\n").unwrap();
    let path = file.display().to_string();
    for (name, args) in [
        ("imip-processor", vec!["config", "check"]),
        ("imip-ctl", vec!["status"]),
        ("imip-publisher", vec![]),
    ] {
        let mut all = vec!["--config", path.as_str()];
        all.extend(args);
        let out = run(name, &all, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(78), "{name}: {t}");
        assert!(t.contains("unknown key `namespce`"), "{name}: {t}");
        assert!(t.contains("did you mean `namespace`"), "{name}: {t}");
    }
    // Not a table of settings, and not TOML at all.
    std::fs::write(&file, "[nats]\nurl = \"x\"\n").unwrap();
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    std::fs::write(&file, "partitions = = 4\n").unwrap();
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let out = run(
        "imip-processor",
        &["--config", "/nonexistent.toml", "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
}

#[test]
fn check_reports_every_problem_and_hides_secrets() {
    let dir = TempDir::new("imip-config");
    let file = dir.0.join("bad.toml");
    std::fs::write(
        &file,
        r#"
partitions = 0
default_timezone = "Mars/Olympus_Mons"
database_url = "postgresql://imip:url-secret-2@db.example:5432/imip"
nats_url = "nats://imip:url-secret-3@127.0.0.1:4222"
nats_tls_ca = "/nonexistent/ca.pem"
"#,
    )
    .unwrap();
    let path = file.display().to_string();
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check"],
        &[("IMIP_DATABASE_PASSWORD", "env-secret-4")],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(78), "{t}");
    for needle in [
        "IMIP_PARTITIONS",
        "IMIP_DEFAULT_TIMEZONE",
        "IMIP_NATS_TLS_CA",
        "postgresql://imip:***@db.example:5432/imip",
        "nats://imip:***@127.0.0.1:4222",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    for secret in ["url-secret-2", "url-secret-3", "env-secret-4"] {
        assert!(!t.contains(secret), "{secret} printed:\n{t}");
    }
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check", "--json"],
        &[("IMIP_DATABASE_PASSWORD", "env-secret-4")],
    );
    assert_eq!(out.status.code(), Some(78));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert!(doc["problems"].as_array().unwrap().len() >= 3, "{doc}");
    assert_eq!(setting(&doc, "database_password")["value"], "***");
    assert_eq!(setting(&doc, "database_password")["source"], "env");
}

/// docs/configuration.md lists every environment variable the binaries'
/// `--help` shows (so a setting added anywhere must be documented).
#[test]
fn every_setting_is_documented() {
    let docs = std::fs::read_to_string(imipflow_tests::repo_root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let mut missing = Vec::new();
    for name in [
        "imip-processor",
        "imip-ctl",
        "imip-publisher",
        "imip-ingest",
    ] {
        let out = run(name, &["--help"], &[]);
        let help = String::from_utf8_lossy(&out.stdout);
        for part in help.split("[env: ").skip(1) {
            let var: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !docs.contains(&format!("`{var}`")) {
                missing.push(format!("{name}: {var}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

/// `--help` shows which variables are set but not the values of those that
/// may hold a secret.
#[test]
fn help_shows_no_secret_from_the_environment() {
    let vars = [
        ("IMIP_NATS_URL", "nats://u:help-secret-1@127.0.0.1:4222"),
        ("IMIP_DATABASE_URL", "postgresql://u:help-secret-2@h/d"),
        ("IMIP_NATS_PASSWORD", "help-secret-3"),
        ("IMIP_NATS_TOKEN", "help-secret-4"),
        ("IMIP_DATABASE_PASSWORD", "help-secret-5"),
    ];
    for name in [
        "imip-processor",
        "imip-ctl",
        "imip-publisher",
        "imip-ingest",
    ] {
        let out = run(name, &["--help"], &vars);
        let t = text(&out);
        assert!(out.status.success(), "{name}: {t}");
        assert!(
            !t.contains("help-secret"),
            "{name} --help shows a secret:\n{t}"
        );
    }
}

/// One file for a whole installation: shared keys at the top, each binary's
/// own keys in its table; a binary skips the other binaries' tables but
/// still rejects an unknown key in its own.
#[test]
fn one_file_serves_every_binary_through_its_table() {
    let dir = TempDir::new("imip-config");
    let file = dir.0.join("imipflow.toml");
    let shared = r#"
namespace = "shared"
nats_url = "nats://127.0.0.1:4222"

[processor]
lease_ms = 4321

[ctl]
lease_ms = 999

[publisher]
listen = "127.0.0.1:8099"
"#;
    std::fs::write(&file, shared).unwrap();
    let path = file.display().to_string();
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(setting(&doc, "namespace")["value"], "shared", "{doc}");
    assert_eq!(setting(&doc, "lease_ms")["value"], "4321", "{doc}");
    assert_eq!(setting(&doc, "lease_ms")["source"], "file", "{doc}");
    // Parsing (and so the file) happens before --help is printed: exit 0
    // means the publisher and imip-ctl accepted the same file.
    for name in ["imip-publisher", "imip-ctl"] {
        let out = run(name, &["--config", &path, "--help"], &[]);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    // A processor key at the top level is not a publisher setting.
    std::fs::write(&file, format!("lease_ms = 5\n{shared}")).unwrap();
    let out = run("imip-publisher", &["--config", &path, "--help"], &[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("unknown key `lease_ms`"),
        "{}",
        text(&out)
    );
    // A typo inside the binary's own table names the table.
    std::fs::write(&file, "[processor]\nlease_msec = 5\n").unwrap();
    let out = run(
        "imip-processor",
        &["--config", &path, "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("unknown key `lease_msec` in [processor]"),
        "{}",
        text(&out)
    );
}

/// Manager addresses are trusted on the envelope sender alone (SPEC §3), so
/// `config check` says that the MTA must keep them to the manager's own
/// submission path: a warning, not a problem (exit 0, `valid`), in both
/// forms; and no warning without manager addresses.
#[test]
fn check_warns_that_manager_addresses_need_the_mta() {
    let vars = [(
        "IMIP_MANAGER_ADDRESSES",
        "Calendar@Example.org, web@example.org",
    )];
    let out = run("imip-processor", &["config", "check", "--json"], &vars);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], true, "{doc}");
    assert_eq!(doc["problems"], serde_json::json!([]), "{doc}");
    let warnings = doc["warnings"].as_array().expect("warnings array");
    assert_eq!(warnings.len(), 1, "{doc}");
    let w = warnings[0].as_str().unwrap();
    for needle in [
        "IMIP_MANAGER_ADDRESSES",
        "calendar@example.org, web@example.org",
        "envelope sender alone",
        "manager's own submission path",
        "docs/mta.md",
    ] {
        assert!(w.contains(needle), "{needle:?} not in {w:?}");
    }

    let out = run("imip-processor", &["config", "check"], &vars);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("config: valid"), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning line: {t}"));
    assert!(line.contains(w), "{line}");

    let out = run("imip-processor", &["config", "check", "--json"], &[]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["warnings"], serde_json::json!([]), "{doc}");
    let out = run("imip-processor", &["config", "check"], &[]);
    assert!(!text(&out).contains("warning:"), "{}", text(&out));
}
