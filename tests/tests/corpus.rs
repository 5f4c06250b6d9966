//! Every file of the shared real-world corpus (`../shared/corpus/real/`) goes
//! through the real `imip-ingest --print`: no crash, no hang, and a count of
//! what was parsed and quarantined per method. Skipped, with a message, when
//! the corpus is absent (it is not part of this repository).

use imipflow_tests::{TestEnv, json_lines};
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
}
