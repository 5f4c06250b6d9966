//! The mails fed to imip-ingest, with a fresh `Message-ID` per run so that
//! JetStream's dedupe (and ingest's dedupe id) never short-circuits a publish,
//! and the hand-made static "true" executable used as the second spawn baseline.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// One fixture class.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Short label used in the report (`typical`, `large-recurring`, `non-calendar`).
    pub class: &'static str,
    pub path: PathBuf,
    /// The mail as stored.
    pub bytes: Vec<u8>,
    /// The mail up to the value of its Message-ID header, and from the line end on.
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// The fixture classes, in report order: (class, file name).
pub const CLASSES: [(&str, &str); 3] = [
    ("typical", "typical-outlook.eml"),
    ("large-recurring", "large-recurring.eml"),
    ("non-calendar", "non-calendar.eml"),
];

impl Fixture {
    pub fn load(class: &'static str, path: PathBuf) -> anyhow::Result<Fixture> {
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read fixture {}", path.display()))?;
        let (head, tail) = split_at_message_id(&bytes);
        Ok(Fixture {
            class,
            path,
            bytes,
            head,
            tail,
        })
    }

    /// The mail with `Message-ID: <id>`; a mail without one gets it as its first header.
    pub fn with_message_id(&self, id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + id.len() + 16);
        out.extend_from_slice(&self.head);
        out.push(b'<');
        out.extend_from_slice(id.as_bytes());
        out.push(b'>');
        out.extend_from_slice(&self.tail);
        out
    }
}

/// Where the fixtures are by default: `bench/fixtures` under the working
/// directory, else next to this crate's sources.
pub fn default_dir() -> PathBuf {
    let relative = PathBuf::from("bench/fixtures");
    if relative.is_dir() {
        relative
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }
}

/// Splits a mail around the value of its `Message-ID:` header (continuation
/// lines included). Without such a header, the head is a new header line.
fn split_at_message_id(mail: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut pos = 0;
    while pos < mail.len() {
        let end = mail[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(mail.len(), |i| pos + i);
        let line = &mail[pos..end];
        if line.is_empty() || line == b"\r" {
            break; // end of the header section
        }
        const NAME: &[u8] = b"message-id:";
        if line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            let mut value_end = if line.ends_with(b"\r") { end - 1 } else { end };
            // Swallow folded continuation lines of the same header.
            let mut next = end + 1;
            while next < mail.len() && (mail[next] == b' ' || mail[next] == b'\t') {
                let e = mail[next..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(mail.len(), |i| next + i);
                value_end = if mail[..e].ends_with(b"\r") { e - 1 } else { e };
                next = e + 1;
            }
            let mut head = mail[..pos + NAME.len()].to_vec();
            head.push(b' ');
            return (head, mail[value_end.min(mail.len())..].to_vec());
        }
        pos = end + 1;
    }
    (
        b"Message-ID: ".to_vec(),
        [b"\r\n".as_slice(), mail].concat(),
    )
}

/// A complete x86-64 Linux ELF executable that only calls `exit(0)`: no
/// dynamic loader, no libc. Spawning it is the kernel's floor for
/// fork + exec + exit + wait, next to `/bin/true` (dynamically linked).
#[cfg(target_arch = "x86_64")]
pub fn static_true_elf() -> Option<Vec<u8>> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    // mov eax, 60 (exit); xor edi, edi; syscall
    const CODE: [u8; 9] = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let size = HEADERS + CODE.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // Program header: one PT_LOAD, R+X, the whole file at BASE.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&CODE);
    debug_assert_eq!(elf.len() as u64, size);
    Some(elf)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn static_true_elf() -> Option<Vec<u8>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_message_id() {
        let mail =
            b"From: a@example.com\r\nMessage-ID: <old@x>\r\nSubject: s\r\n\r\nMessage-ID: body\r\n";
        let (head, tail) = split_at_message_id(mail);
        let f = Fixture {
            class: "t",
            path: PathBuf::new(),
            bytes: mail.to_vec(),
            head,
            tail,
        };
        assert_eq!(
            f.with_message_id("new@y"),
            b"From: a@example.com\r\nMessage-ID: <new@y>\r\nSubject: s\r\n\r\nMessage-ID: body\r\n"
        );
    }

    #[test]
    fn rewrites_folded_and_adds_missing_message_id() {
        let folded = b"Message-Id:\r\n <old@x>\r\nTo: b\r\n\r\nhi";
        let (head, tail) = split_at_message_id(folded);
        assert_eq!(
            [head, b"<n>".to_vec(), tail].concat(),
            b"Message-Id: <n>\r\nTo: b\r\n\r\nhi"
        );
        let none = b"To: b\r\n\r\nMessage-ID: <body@x>\r\n";
        let (head, tail) = split_at_message_id(none);
        assert_eq!(
            [head, b"<n>".to_vec(), tail].concat(),
            b"Message-ID: <n>\r\nTo: b\r\n\r\nMessage-ID: <body@x>\r\n"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn static_true_runs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("imip-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("true-static");
        std::fs::write(&path, static_true_elf().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = std::process::Command::new(&path).status().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(status.success());
    }
}
