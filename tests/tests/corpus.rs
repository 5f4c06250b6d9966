//! Every file of the shared real-world corpus (`../shared/corpus/real/`) goes
//! through the real `imip-ingest --print`: no crash, no hang, a count of what
//! was parsed and quarantined per method, and a comparison with an independent
//! reading (`tests/corpus/reference.py`: Python's `email`, `icalendar` and
//! `zoneinfo`) of UTC instants, all-day/floating flags, RRULE, RDATE/EXDATE,
//! RECURRENCE-ID, organizer and attendees. Every disagreement must fall under
//! a reason docs/corpus.md gives ([`explained`]). Skipped, with a message, when
//! the corpus is absent (it is not part of this repository); the comparison
//! alone is skipped, with a message, when no Python with `icalendar` can be
//! had (it is installed into a venv under `target/` on first use).

use imipflow_tests::{TestEnv, json_lines};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    imipflow_tests::repo_root().join("../shared/corpus/real")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("eml" | "ics")) {
            out.push(p);
        }
    }
}

/// A bare .ics becomes the body of a minimal iMIP mail, as a client would send it.
fn as_mail(path: &Path, bytes: Vec<u8>) -> Vec<u8> {
    if path.extension().and_then(|x| x.to_str()) == Some("eml") {
        return bytes;
    }
    let mut mail = format!(
        "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: corpus\r\nMessage-ID: <{}@corpus>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/calendar; charset=UTF-8\r\n\r\n",
        path.file_name().unwrap().to_string_lossy()
    )
    .into_bytes();
    mail.extend_from_slice(&bytes);
    mail
}

#[tokio::test]
async fn every_corpus_file_goes_through_ingest_without_a_crash() {
    let dir = corpus_dir();
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED: corpus not found at {} (it lives in ../shared, outside this repository)",
            dir.display()
        );
        return;
    }
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    paths.sort();
    assert!(!paths.is_empty());
    let env = TestEnv::unmigrated();
    // (method or "-") -> (payloads, quarantined, files without iMIP data)
    let mut table: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    let mut silent = 0;
    let mut failures = Vec::new();
    let mut printed: Vec<(PathBuf, Vec<Value>)> = Vec::new();
    for path in &paths {
        let mail = as_mail(path, std::fs::read(path).unwrap());
        let out = env
            .ingest(&["--print", "--sender", "alice@example.com"], &mail)
            .await;
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{}: exit {:?}: {}",
                path.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let lines = json_lines(&out.stdout);
        if lines.is_empty() {
            silent += 1;
        }
        printed.push((path.clone(), lines.clone()));
        for v in lines {
            if let Some(m) = v.get("method").and_then(|m| m.as_str()) {
                table.entry(m.to_owned()).or_default().0 += 1;
            } else if let Some(r) = v.get("reason").and_then(|r| r.as_str()) {
                table.entry("(quarantined)".to_owned()).or_default().1 += 1;
                *reasons.entry(r.to_owned()).or_default() += 1;
            }
        }
    }
    eprintln!(
        "corpus: {} files, {} without iMIP data",
        paths.len(),
        silent
    );
    eprintln!("{:<16} {:>9} {:>12}", "method", "payloads", "quarantined");
    for (m, (p, q)) in &table {
        eprintln!("{m:<16} {p:>9} {q:>12}");
    }
    for (r, n) in &reasons {
        eprintln!("quarantine reason {r}: {n}");
    }
    assert!(
        failures.is_empty(),
        "ingest failed on:\n{}",
        failures.join("\n")
    );
    let published: u32 = table.values().map(|(p, _)| p).sum();
    assert!(
        published > paths.len() as u32 / 2,
        "too few payloads: {published}"
    );
    compare_with_reference(&printed);
}

/// A Python with `icalendar`: a venv under `target/`, made on first use.
fn reference_python() -> Result<PathBuf, String> {
    let venv = imipflow_tests::repo_root().join("target/corpus-venv");
    let python = venv.join("bin/python");
    let has_icalendar = |py: &Path| {
        std::process::Command::new(py)
            .args(["-c", "import icalendar"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_icalendar(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut std::process::Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv))?;
    run(std::process::Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "icalendar>=6",
    ]))?;
    if has_icalendar(&python) {
        Ok(python)
    } else {
        Err("icalendar not importable after pip install".into())
    }
}

/// A time as the reference writes it: `YYYY-MM-DD` (date), local
/// `YYYY-MM-DDTHH:MM:SS` (floating), or the UTC instant with `Z`.
fn time_text(t: &Value) -> Value {
    if t.is_null() {
        return Value::Null;
    }
    match t["kind"].as_str() {
        Some("date") => Value::String(t["local"].as_str().unwrap_or("").chars().take(10).collect()),
        Some("floating") => t["local"].clone(),
        _ => t["utc"].clone(),
    }
}

/// RRULE parts in a canonical order (the two writers order them differently).
fn rule_parts(rules: &Value) -> Value {
    let mut out: Vec<String> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .map(|r| {
            let mut parts: Vec<String> = r
                .split(';')
                .map(|p| p.trim().to_ascii_uppercase())
                .collect();
            parts.retain(|p| !p.is_empty() && p != "INTERVAL=1" && p != "WKST=MO");
            parts.sort();
            parts.join(";")
        })
        .collect();
    out.sort();
    Value::from(out)
}

/// The fields compared, from one of ingest's components.
fn ingest_view(c: &Value) -> BTreeMap<&'static str, Value> {
    let times = |k: &str| {
        Value::from(
            c[k].as_array()
                .into_iter()
                .flatten()
                .map(time_text)
                .collect::<Vec<_>>(),
        )
    };
    let mut m = BTreeMap::new();
    m.insert("start", time_text(&c["start"]));
    m.insert("end", time_text(&c["end"]));
    m.insert("all_day", c["all_day"].clone());
    m.insert("floating", c["floating"].clone());
    m.insert("rrule", rule_parts(&c["rrule"]));
    m.insert("rdate", times("rdate"));
    m.insert("exdate", times("exdate"));
    m.insert("organizer", c["organizer"]["address"].clone());
    m.insert(
        "attendees",
        Value::from(
            c["attendees"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["address"].clone())
                .collect::<Vec<_>>(),
        ),
    );
    m
}

fn reference_view(c: &Value) -> BTreeMap<&'static str, Value> {
    let mut m = BTreeMap::new();
    for k in [
        "start",
        "end",
        "all_day",
        "floating",
        "rdate",
        "exdate",
        "organizer",
        "attendees",
    ] {
        m.insert(k, c[k].clone());
    }
    m.insert("rrule", rule_parts(&c["rrule"]));
    m
}

/// Ingest read `YYYY-MM-DD` where the reference made the same date a
/// date-time (at midnight in the TZID's zone).
fn date_as_midnight(d: &Disagreement) -> bool {
    let pairs: Vec<(&Value, &Value)> = match (&d.ingest, &d.reference) {
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a.iter().zip(b).collect(),
        (a, b) => vec![(a, b)],
    };
    !pairs.is_empty()
        && pairs.iter().all(|(a, b)| match (a.as_str(), b.as_str()) {
            (Some(a), Some(b)) => a.len() == 10 && b.len() > 10 && b.starts_with(a),
            _ => false,
        })
}

/// One way ingest and the reference read a file differently.
#[derive(Debug)]
struct Disagreement {
    path: String,
    uid: String,
    field: String,
    ingest: Value,
    reference: Value,
    /// The payload's warnings, which often say why.
    warnings: Vec<String>,
}

/// The reason docs/corpus.md gives for a disagreement, or `None` when it has
/// none (and the test fails).
fn explained(d: &Disagreement, dated: &[(String, String)]) -> Option<&'static str> {
    let warned = |needle: &str| d.warnings.iter().any(|w| w.contains(needle));
    if date_as_midnight(d)
        || (d.field == "all_day" && dated.contains(&(d.path.clone(), d.uid.clone())))
    {
        return Some(
            "a DATE value with a TZID and no VALUE=DATE (Google's 2005 export) is a date; icalendar makes it midnight in the zone",
        );
    }
    match d.field.as_str() {
        "object" if warned("TZID \"\"") || warned("unknown TZID \"\"") => {
            Some("an empty TZID is floating with a warning; icalendar refuses the object")
        }
        "organizer" | "attendees" if warned("is not an address: dropped") => {
            Some("ingest drops values that are not mail addresses, with a warning")
        }
        "start" | "end" | "rdate" | "exdate" | "recurrence_id"
            if warned("the message's VTIMEZONE puts") =>
        {
            Some("a standard TZID wins over the message's disagreeing VTIMEZONE, with a warning")
        }
        "start" | "end" | "rdate" | "exdate" | "floating" | "recurrence_id"
            if warned("treated as floating") =>
        {
            Some("a TZID with no VTIMEZONE and no standard meaning is floating, with a warning")
        }
        "end" if d.reference.is_null() => Some("ingest derives the end from DURATION"),
        _ => None,
    }
}

fn warnings_of(payload: &Value) -> Vec<String> {
    payload["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

fn compare_with_reference(printed: &[(PathBuf, Vec<Value>)]) {
    let python = match reference_python() {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "SKIPPED: comparison with Python icalendar (no venv with icalendar could be made under target/: {e})"
            );
            return;
        }
    };
    let script = imipflow_tests::repo_root().join("tests/corpus/reference.py");
    let out = std::process::Command::new(&python)
        .arg("-W")
        .arg("ignore")
        .arg(&script)
        .args(printed.iter().map(|(p, _)| p))
        .output()
        .expect("run reference.py");
    assert!(
        out.status.success(),
        "reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: BTreeMap<String, Value> = json_lines(&out.stdout)
        .into_iter()
        .map(|v| (v["path"].as_str().unwrap().to_owned(), v))
        .collect();

    let mut disagreements = Vec::new();
    let (mut compared, mut only_ingest, mut only_reference) = (0, 0, 0);
    let mut refused_by_reference = Vec::new();
    let mut both_refused = 0;
    // What ingest made of the components only the reference passed on.
    let mut not_passed: BTreeMap<String, usize> = BTreeMap::new();
    for (path, lines) in printed {
        let shown = path
            .strip_prefix(corpus_dir())
            .unwrap_or(path)
            .display()
            .to_string();
        let r = &reference[&path.display().to_string()];
        let payloads: Vec<&Value> = lines.iter().filter(|v| v.get("method").is_some()).collect();
        if let Some(e) = r.get("error") {
            if !payloads.is_empty() {
                refused_by_reference.push(format!("{shown}: {e}"));
            }
            continue;
        }
        // Objects the reference refuses: agreement when ingest quarantined
        // them too, else listed (and each must be explained).
        for e in r["errors"].as_array().into_iter().flatten() {
            let index = &e["object_index"];
            let ingest_read = payloads.iter().find(|p| &p["object_index"] == index);
            match ingest_read {
                None => both_refused += 1,
                Some(p) => disagreements.push(Disagreement {
                    path: shown.clone(),
                    uid: String::new(),
                    field: "object".into(),
                    ingest: p["method"].clone(),
                    reference: e["error"].clone(),
                    warnings: warnings_of(p),
                }),
            }
        }
        // (object index, UID, RECURRENCE-ID) -> the reference's components, in order.
        let mut theirs: BTreeMap<(i64, String, String), Vec<&Value>> = BTreeMap::new();
        for c in r["components"].as_array().unwrap() {
            let key = (
                c["object_index"].as_i64().unwrap_or(-1),
                c["uid"].as_str().unwrap_or("").to_owned(),
                c["recurrence_id"].to_string(),
            );
            theirs.entry(key).or_default().push(c);
        }
        for p in payloads {
            let warnings = warnings_of(p);
            for c in p["components"].as_array().unwrap() {
                if c["kind"] == "VFREEBUSY" {
                    continue;
                }
                let uid = c["uid"].as_str().unwrap_or("").to_owned();
                let rid = time_text(&c["recurrence_id"]["time"]);
                let Some(other) = theirs
                    .get_mut(&(
                        p["object_index"].as_i64().unwrap_or(-1),
                        uid.clone(),
                        rid.to_string(),
                    ))
                    .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
                else {
                    // A RECURRENCE-ID the two read differently shows here.
                    only_ingest += 1;
                    disagreements.push(Disagreement {
                        path: shown.clone(),
                        uid: uid.clone(),
                        field: "recurrence_id".into(),
                        ingest: rid,
                        reference: Value::Null,
                        warnings: warnings.clone(),
                    });
                    continue;
                };
                compared += 1;
                let (mine, ref_view) = (ingest_view(c), reference_view(other));
                for (field, v) in &mine {
                    let rv = &ref_view[field];
                    // The reference gives DTEND/DUE only when the component does.
                    if *field == "end" && rv.is_null() && c["duration_seconds"].is_number() {
                        continue;
                    }
                    if v != rv {
                        disagreements.push(Disagreement {
                            path: shown.clone(),
                            uid: uid.clone(),
                            field: (*field).to_owned(),
                            ingest: v.clone(),
                            reference: rv.clone(),
                            warnings: warnings.clone(),
                        });
                    }
                }
            }
        }
        for (key, left) in &theirs {
            if left.is_empty() {
                continue;
            }
            only_reference += left.len();
            let outcome = lines
                .iter()
                .find(|v| v["object_index"].as_i64() == Some(key.0) && v.get("reason").is_some())
                .map_or("no iMIP payload".to_owned(), |q| {
                    format!("quarantined {}", q["reason"])
                });
            *not_passed.entry(outcome).or_default() += left.len();
        }
    }
    eprintln!(
        "reference comparison: {compared} components compared, {only_ingest} only in ingest's reading, \
{only_reference} only in the reference's (objects ingest quarantined or found no iMIP in), \
{} files the reference cannot read at all but ingest reads, {both_refused} objects both refuse",
        refused_by_reference.len()
    );
    for (outcome, n) in &not_passed {
        eprintln!("  only in the reference's reading, ingest {outcome}: {n}");
    }
    for f in &refused_by_reference {
        eprintln!("  reference refuses: {f}");
    }
    let mut unexplained = Vec::new();
    let mut reasons: BTreeMap<&str, u32> = BTreeMap::new();
    let dated: Vec<(String, String)> = disagreements
        .iter()
        .filter(|d| d.field == "start" && date_as_midnight(d))
        .map(|d| (d.path.clone(), d.uid.clone()))
        .collect();
    for d in &disagreements {
        match explained(d, &dated) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => unexplained.push(format!(
                "{} {} {}: ingest {} reference {} warnings {:?}",
                d.path, d.uid, d.field, d.ingest, d.reference, d.warnings
            )),
        }
    }
    for (why, n) in &reasons {
        eprintln!("  explained ({n}): {why}");
    }
    assert!(
        unexplained.is_empty(),
        "{} disagreements with the reference that docs/corpus.md does not explain:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}
