//! `--help` of every binary of the workspace and every `imip-ctl` / `imip-processor`
//! subcommand (issue 15): each option and argument has a description, the
//! connection options sit under their own "Connection" heading, the usage
//! line lists none of the settings, and there are examples. Also that
//! `--from`/`--to` take a date as well as an RFC 3339 instant. Runs the real
//! binaries; no server is needed (`--help` and argument errors connect to
//! nothing).

use imipflow_tests::bin;
use std::process::Command;

/// The help text of `name args… --help` (exit 0 asserted).
fn help(name: &str, args: &[&str]) -> String {
    let out = Command::new(bin(name))
        .args(args)
        .arg("--help")
        .env_remove("IMIP_CONFIG")
        .output()
        .expect("run binary");
    assert!(
        out.status.success(),
        "{name} {args:?} --help: {:?}",
        out.status
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The subcommands a help text lists under "Commands:" (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Whether `line` is where an option or a positional argument is listed.
fn is_entry(line: &str) -> bool {
    // Entries are indented 2 or 6 spaces, their descriptions and the
    // [env: …] / [default: …] notes 10.
    let t = line.trim_start();
    let indent = line.len() - t.len();
    (2..=6).contains(&indent) && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
}

/// The entries of a help text that have no description, by their line, and
/// the heading each entry is under.
fn check_entries(text: &str) -> (Vec<String>, Vec<(String, String)>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut undescribed = Vec::new();
    let mut entries = Vec::new();
    let mut heading = String::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_owned();
            continue;
        }
        if heading == "Usage" || heading == "Commands" || !is_entry(line) {
            continue;
        }
        let spec = line.trim();
        // Compact help: "--flag <V>   Description" on one line.
        let same_line = spec.split("  ").skip(1).any(|s| !s.trim().is_empty());
        let next = lines.get(i + 1).copied().unwrap_or("");
        let indent = |l: &str| l.len() - l.trim_start().len();
        let next_line = !next.trim().is_empty()
            && indent(next) > indent(line)
            && !next.trim_start().starts_with('[');
        if !same_line && !next_line {
            undescribed.push(spec.to_owned());
        }
        let name = spec
            .split([' ', ','])
            .find(|w| w.starts_with("--") || w.starts_with('<'))
            .unwrap_or(spec)
            .to_owned();
        entries.push((heading.clone(), name));
    }
    (undescribed, entries)
}

/// Asserts everything the issue asks of one help text.
fn assert_good_help(what: &str, text: &str, connects: bool) {
    let (undescribed, entries) = check_entries(text);
    assert!(
        undescribed.is_empty(),
        "{what}: options without a description: {undescribed:?}\n{text}"
    );
    assert!(!entries.is_empty(), "{what}: no option found in\n{text}");
    if connects {
        assert!(
            text.lines().any(|l| l == "Connection:"),
            "{what}: no Connection heading\n{text}"
        );
        for flag in ["--nats-url", "--namespace", "--config"] {
            if let Some((h, _)) = entries.iter().find(|(_, n)| n == flag) {
                assert_eq!(h, "Connection", "{what}: {flag} under {h}");
            }
        }
    }
    // The command's own options come first: nothing under Options is a
    // connection or setting.
    let usage = text
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .expect("usage line");
    for (h, name) in &entries {
        if h == "Connection" || h == "Settings" || h == "Limits" {
            assert!(
                !usage.contains(name.as_str()),
                "{what}: the usage line lists the setting {name}: {usage}"
            );
        }
    }
    assert!(
        text.contains("Example"),
        "{what}: no examples in its help\n{text}"
    );
}

#[test]
fn every_binary_and_subcommand_has_complete_help() {
    let mut checked = 0;
    for (name, connects) in [
        ("imip-ingest", true),
        ("imip-publisher", true),
        ("imip-processor", true),
        ("imip-ctl", true),
        ("imip-loadgen", true),
        ("imip-bench", false),
    ] {
        let top = help(name, &[]);
        assert_good_help(name, &top, connects);
        checked += 1;
        let mut todo: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
        while let Some(path) = todo.pop() {
            let args: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = help(name, &args);
            assert_good_help(&format!("{name} {}", path.join(" ")), &text, connects);
            checked += 1;
            for sub in subcommands(&text) {
                let mut p = path.clone();
                p.push(sub);
                todo.push(p);
            }
        }
    }
    // 6 binaries, imip-ctl's 11 commands and 6 actions, imip-processor's 5,
    // imip-bench's 5:
    // a parser that stopped finding subcommands would check far fewer.
    assert!(checked >= 30, "only {checked} help texts checked");
}

#[test]
fn the_help_checker_sees_a_missing_description() {
    let text = "Usage: x [OPTIONS]\n\nOptions:\n      --json\n          \n\n      --user <U>\n          Whose\n";
    let (undescribed, entries) = check_entries(text);
    assert_eq!(undescribed, ["--json"]);
    assert_eq!(entries.len(), 2);
}

#[test]
fn from_and_to_take_a_date_or_an_instant_and_the_help_says_so() {
    let text = help("imip-ctl", &["freebusy"]);
    assert!(text.contains("2027-04-01"), "{text}");
    assert!(text.contains("RFC 3339"), "{text}");
    // A wrong value is refused by the parser (64-like clap exit 2) naming
    // both forms; a date passes the parser and only fails to connect later,
    // so an unreachable database shows the date was accepted.
    let bad = Command::new(bin("imip-ctl"))
        .args([
            "freebusy",
            "a@example.com",
            "--from",
            "April",
            "--to",
            "2027-05-01",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("RFC 3339") && err.contains("a date"), "{err}");
    for (from, to) in [
        ("2027-04-01", "2027-05-01"),
        ("2027-04-01T09:00:00Z", "2027-04-01T18:00:00+02:00"),
    ] {
        let out = Command::new(bin("imip-ctl"))
            .args(["freebusy", "a@example.com", "--from", from, "--to", to])
            .env(
                "IMIP_DATABASE_URL",
                "postgresql://postgres@127.0.0.1:1/none",
            )
            .env_remove("IMIP_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(2), "{from} {to} refused: {err}");
        assert!(!err.contains("invalid value"), "{from} {to}: {err}");
    }
}

#[test]
fn completions_are_shell_scripts_naming_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("imip-ctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {:?}", out.status);
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in ["freebusy", "rebuild", "replay", "quarantine", "completions"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            assert!(script.contains("complete -F"), "not a bash completion");
            let dir = imipflow_tests::servers::TempDir::new("completions");
            let path = dir.0.join("imip-ctl.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}

#[test]
fn man_pages_are_written_for_every_binary_and_subcommand() {
    let dir = imipflow_tests::servers::TempDir::new("man");
    let out = Command::new(bin("imip-ctl"))
        .arg("man")
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    for page in [
        "imip-ingest.1",
        "imip-processor.1",
        "imip-processor-run.1",
        "imip-ctl.1",
        "imip-ctl-freebusy.1",
        "imip-ctl-quarantine-release.1",
        "imip-publisher.1",
        "imip-manager.1",
        "imip-manager-config-check.1",
    ] {
        let text =
            std::fs::read_to_string(dir.0.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page} has no .TH");
    }
    let freebusy = std::fs::read_to_string(dir.0.join("imip-ctl-freebusy.1")).unwrap();
    assert!(
        freebusy.contains("RFC 3339"),
        "the page is not the help's text"
    );
    // --json lists what it wrote.
    let out = Command::new(bin("imip-ctl"))
        .args(["man", "--json"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pages: Vec<&str> = doc["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pages.contains(&"imip-manager.1") && pages.contains(&"imip-ctl-freebusy.1"),
        "{pages:?}"
    );
}

/// `--json` is accepted by every subcommand (`imip-ctl SUB --help` lists
/// it), the completions and man page writers included.
#[test]
fn every_subcommand_takes_json() {
    let help = |args: &[&str]| {
        let out = Command::new(bin("imip-ctl"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The subcommands as the help lists them (two-level for dlq and quarantine).
    let subcommands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top = subcommands(&help(&[]));
    assert!(top.len() >= 12, "{top:?}");
    let mut checked = 0;
    for c in &top {
        let text = help(&[c]);
        let nested = subcommands(&text);
        if nested.is_empty() {
            assert!(
                text.contains("--json"),
                "imip-ctl {c} takes no --json:\n{text}"
            );
            checked += 1;
        }
        for n in nested {
            let text = help(&[c, &n]);
            assert!(
                text.contains("--json"),
                "imip-ctl {c} {n} takes no --json:\n{text}"
            );
            checked += 1;
        }
    }
    let text = help(&["man"]);
    assert!(text.contains("--json"), "imip-ctl man: {text}");
    assert!(checked >= 18, "{checked}");
    let out = Command::new(bin("imip-ctl"))
        .args(["completions", "fish", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["shell"], "fish");
    assert!(
        doc["script"]
            .as_str()
            .unwrap()
            .contains("complete -c imip-ctl")
    );
}
