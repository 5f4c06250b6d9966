//! The digests behind dedupe ids: of the fields that identify a message or
//! an output, and of an object's text with its line endings unified.

use crate::mime;
use sha2::{Digest, Sha256};

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefix each field so that field boundaries cannot shift.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Digest of the text with line endings unified, so that the same object
/// carried inline and as an attachment (with different line endings) counts
/// once. Equal to `sha256(&[text.replace("\r\n", "\n").trim()])`, computed
/// without copying the text (it may be many MiB).
pub(super) fn canonical_digest(text: &str) -> [u8; 32] {
    let t = text.trim().as_bytes();
    let is_crlf = |i: usize| t.get(i + 1) == Some(&b'\n');
    let mut crlf = 0;
    mime::any_at(t, b'\r', |i| {
        crlf += is_crlf(i) as usize;
        false
    });
    let mut h = Sha256::new();
    h.update(((t.len() - crlf) as u64).to_be_bytes());
    let mut from = 0;
    mime::any_at(t, b'\r', |i| {
        if is_crlf(i) {
            h.update(&t[from..i]);
            from = i + 1;
        }
        false
    });
    h.update(&t[from..]);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_digest_unifies_line_endings_without_copying() {
        for text in [
            "",
            "a",
            "\r\n a\r\nb\nc\r\n\r\n ",
            "x\r",
            "\r\r\n\n",
            "é\r\nü",
        ] {
            let copy = text.replace("\r\n", "\n");
            assert_eq!(
                canonical_digest(text),
                sha256(&[copy.trim().as_bytes()]),
                "{text:?}"
            );
        }
        assert_eq!(canonical_digest("a\r\nb"), canonical_digest("a\nb"));
    }
}
