//! Finding the calendar parts of a mail, whatever MIME shape the client chose.
//!
//! Clients put iTIP objects in `text/calendar` bodies (inline, inside
//! `multipart/alternative`), in `application/ics` or `*.ics` attachments, or
//! both at once; transfer encodings and charsets are decoded by mail-parser.
//! Parts of attached messages (`message/rfc822`) are not looked into: a
//! forwarded invitation is not something the user said.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One calendar-bearing MIME part, decoded to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarPart {
    pub text: String,
    /// The `method=` parameter of the Content-Type, if any (RFC 6047 §2.4).
    pub method_param: Option<String>,
    /// Whether bytes had to be replaced while decoding to text.
    pub lossy: bool,
}

#[derive(Debug, Default)]
pub struct Mail {
    pub message_id: Option<String>,
    pub parts: Vec<CalendarPart>,
}

/// Cheap pre-check on the raw bytes: can this message contain calendar data at
/// all? Every calendar part announces itself in a header (its content type or
/// file name) or in its text, so a `false` here is final and lets the
/// non-calendar majority of mail leave without a MIME parse or a connection.
pub fn looks_calendar(raw: &[u8]) -> bool {
    // `contains_any_ignore_case(raw, &[b"text/calendar", b"/ics", b".ics",
    // b"vcalendar"])`, written out: every marker has a 'c' followed by 'a' or
    // 's', and the byte after each 'c' rules out most at once (callgrind: the
    // generic search took 49 k instructions for a 10 KB mail).
    any_at(raw, b'c', |i| {
        let is = |from: usize, marker: &[u8]| {
            raw.get(from..from + marker.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(marker))
        };
        match raw.get(i + 1).map(u8::to_ascii_lowercase) {
            Some(b'a') => {
                (i >= 5 && is(i - 5, b"text/calendar")) || (i >= 1 && is(i - 1, b"vcalendar"))
            }
            Some(b's') => i >= 2 && (is(i - 2, b"/ics") || is(i - 2, b".ics")),
            _ => false,
        }
    })
}

/// Most MIME parts ingest lets mail-parser build. A part costs it about 1 KiB
/// whatever its size, so 150,000 empty nested parts in a 9 MiB message took
/// 185 MiB; 10,000 stay near 10 MiB. Real mail has tens of parts.
pub const MAX_MIME_PARTS: usize = 10_000;

/// Lines that can delimit a MIME part (`--` at the start of a line): an upper
/// bound on the number of parts mail-parser would build, counted without it.
pub fn delimiter_lines(raw: &[u8]) -> usize {
    let starts = raw.starts_with(b"--") as usize;
    let mut n = 0;
    any_at(raw, b'\n', |i| {
        n += (raw.get(i + 1..i + 3) == Some(b"--")) as usize;
        false
    });
    starts + n
}

/// Whether `f` holds at some index of `hay` whose byte is `byte` (in either
/// case when `byte` is a lowercase ASCII letter), trying the indexes in
/// order. Compares eight bytes at a time: a byte-by-byte loop over the whole
/// mail cost 12 instructions a byte, 124 k of the 1.5 M a typical invitation
/// took (callgrind), for each of this module's scans.
pub(crate) fn any_at(hay: &[u8], byte: u8, mut f: impl FnMut(usize) -> bool) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // `b | 0x20 == byte` holds for both cases of a letter and nothing else.
    let fold = if byte.is_ascii_lowercase() { 0x20 } else { 0 };
    let (fold_word, byte_word) = (ONES * u64::from(fold), ONES * u64::from(byte));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        let v = (word | fold_word) ^ byte_word;
        // The top bit of each byte of `v` that is zero, and no other bit
        // (no carry crosses a byte: 0x7f + 0x7f < 0x100).
        let mut zeros = !(((v & LOW7) + LOW7) | v | LOW7);
        while zeros != 0 {
            if f(base + (zeros.trailing_zeros() / 8) as usize) {
                return true;
            }
            zeros &= zeros - 1;
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .enumerate()
        .any(|(j, &b)| b | fold == byte && f(base + j))
}

/// Case-insensitive search for several ASCII needles at once.
pub fn contains_any_ignore_case(hay: &[u8], needles: &[&[u8]]) -> bool {
    let lower = |b: &u8| b.to_ascii_lowercase();
    // When one byte is in every needle (for `looks_calendar`: 'c', ~3 % of
    // text), compare the needles only around its occurrences instead of at
    // every byte: this scan was most of the non-calendar fast path's
    // instructions (callgrind: 721 k of 992 k for a 10 KB mail). A match at p
    // has the needle's first anchor at p + offset, so none is missed.
    let anchor = needles.first().and_then(|first| {
        first
            .iter()
            .map(lower)
            .find(|a| needles.iter().all(|n| n.iter().any(|b| lower(b) == *a)))
    });
    let Some(anchor) = anchor else {
        return hay.iter().enumerate().any(|(i, &b)| {
            needles.iter().any(|n| {
                lower(&n[0]) == b.to_ascii_lowercase()
                    && hay.len() - i >= n.len()
                    && hay[i..i + n.len()].eq_ignore_ascii_case(n)
            })
        });
    };
    any_at(hay, anchor, |i| {
        needles.iter().any(|n| {
            let off = n.iter().position(|b| lower(b) == anchor).unwrap_or(0);
            i >= off
                && hay.len() - (i - off) >= n.len()
                && hay[i - off..i - off + n.len()].eq_ignore_ascii_case(n)
        })
    })
}

fn is_calendar_part(part: &mail_parser::MessagePart<'_>) -> bool {
    if let Some(ct) = part.content_type() {
        let main = ct.ctype();
        let sub = ct.subtype().unwrap_or("");
        let is = |a: &str, b: &str| main.eq_ignore_ascii_case(a) && sub.eq_ignore_ascii_case(b);
        if is("text", "calendar") || is("application", "ics") || is("text", "x-vcalendar") {
            return true;
        }
        if main.eq_ignore_ascii_case("multipart") || main.eq_ignore_ascii_case("message") {
            return false;
        }
    }
    part.attachment_name().is_some_and(|n| {
        let n = n.trim();
        // `get`: the cut may fall inside a multi-byte character of the name.
        n.len()
            .checked_sub(4)
            .and_then(|i| n.get(i..))
            .is_some_and(|ext| ext.eq_ignore_ascii_case(".ics"))
    })
}

fn decode_binary(bytes: &[u8], charset: Option<&str>) -> (String, bool) {
    if let Some(cs) = charset
        && !cs.eq_ignore_ascii_case("utf-8")
        && !cs.eq_ignore_ascii_case("us-ascii")
        && let Some(decoder) = mail_parser::decoders::charsets::map::charset_decoder(cs.as_bytes())
    {
        return (decoder(bytes), false);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
    }
}

/// Skips what may precede the header block when an MTA pipes a message: blank
/// or whitespace-only lines, and an mbox `From ` line (Postfix `pipe` flag `F`).
pub fn strip_preamble(mut raw: &[u8]) -> &[u8] {
    loop {
        let line_end = raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| p + 1);
        let line = &raw[..line_end];
        let blank = line.iter().all(|b| b.is_ascii_whitespace());
        if line_end > 0 && line_end < raw.len() && (blank || line.starts_with(b"From ")) {
            raw = &raw[line_end..];
        } else {
            return raw;
        }
    }
}

/// The calendar parts of a message, in MIME order.
pub fn calendar_parts(raw: &[u8]) -> Mail {
    let Some(msg) = MessageParser::default().parse(strip_preamble(raw)) else {
        return Mail::default();
    };
    let message_id = msg
        .message_id()
        .map(|s| s.trim().replace(|c: char| c.is_control(), ""));
    let mut parts = Vec::new();
    for part in &msg.parts {
        if !is_calendar_part(part) {
            continue;
        }
        let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
        let (text, lossy) = match &part.body {
            PartType::Text(t) | PartType::Html(t) => (t.to_string(), t.contains('\u{FFFD}')),
            PartType::Binary(b) | PartType::InlineBinary(b) => decode_binary(b, charset),
            PartType::Message(_) | PartType::Multipart(_) => continue,
        };
        // NUL is never valid in iCalendar text (RFC 5545 §3.1) and PostgreSQL
        // refuses it in text and jsonb: one would make the processor fail the
        // whole message. Replace it like any other undecodable byte.
        let (text, lossy) = if text.contains('\0') {
            (text.replace('\0', "\u{FFFD}"), true)
        } else {
            (text, lossy)
        };
        let method_param = part
            .content_type()
            .and_then(|ct| ct.attribute("method"))
            .map(|m| m.trim().to_ascii_uppercase())
            // A method is a token (RFC 5545 iana-token / x-name); anything else
            // in a header is noise, and a NUL in it would fail the processor's
            // transaction (found by fuzzing).
            .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        parts.push(CalendarPart {
            text,
            method_param,
            lossy,
        });
    }
    Mail { message_id, parts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_sees_only_calendar_mail() {
        assert!(!looks_calendar(b"Subject: hi\r\n\r\nlunch?\r\n"));
        assert!(looks_calendar(
            b"Content-Type: TEXT/Calendar; method=REQUEST\r\n"
        ));
        assert!(looks_calendar(
            b"Content-Disposition: attachment; filename=\"invite.ICS\""
        ));
        assert!(looks_calendar(b"\r\nBEGIN:VCALENDAR\r\n"));
    }

    #[test]
    fn anchored_scan_finds_what_a_plain_scan_finds() {
        let needles: [&[u8]; 4] = [b"text/calendar", b"/ics", b".ics", b"vcalendar"];
        let plain = |hay: &[u8]| {
            needles
                .iter()
                .any(|n| hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)))
        };
        let words: [&[u8]; 9] = [
            b"text/calenda",
            b"TEXT/CALENDAR",
            b"c",
            b"/ic",
            b"s.ICS",
            b"vCalendar",
            b"cal",
            b"x",
            b"ics",
        ];
        // Every sequence of up to three words: matches at the edges, split
        // needles, anchors without a match.
        for a in words {
            for b in words {
                for c in words {
                    let hay = [a, b, c].concat();
                    assert_eq!(
                        contains_any_ignore_case(&hay, &needles),
                        plain(&hay),
                        "{}",
                        String::from_utf8_lossy(&hay)
                    );
                    assert_eq!(looks_calendar(&hay), plain(&hay));
                }
            }
        }
        assert!(contains_any_ignore_case(b"xyz", &[b"y"]));
        assert!(!contains_any_ignore_case(b"xyz", &[b"ab", b"q"]));
    }

    #[test]
    fn word_scan_finds_what_a_byte_scan_finds() {
        // Every byte value at every offset of the 8-byte words and of the
        // remainder, among others that look alike (other case, 0x20 apart).
        for len in 0..40 {
            for at in 0..len {
                for b in [b'c', b'C', b'\n', 0x0a ^ 0x20, 0x80, 0xe3, 0x43 ^ 0x80, 0] {
                    let mut hay = vec![b'x'; len];
                    hay[at] = b;
                    if at + 3 < len {
                        hay[at + 3] = b;
                    }
                    for byte in [b'c', b'\n', 0xe3, 0] {
                        let want: Vec<usize> = (0..len)
                            .filter(|&i| hay[i].to_ascii_lowercase() == byte)
                            .collect();
                        let mut got = Vec::new();
                        assert!(!any_at(&hay, byte, |i| {
                            got.push(i);
                            false
                        }));
                        assert_eq!(got, want, "{hay:?} {byte}");
                        assert_eq!(any_at(&hay, byte, |i| i == at), want.contains(&at));
                    }
                }
            }
        }
    }

    #[test]
    fn counts_delimiter_lines() {
        let plain = |raw: &[u8]| {
            raw.starts_with(b"--") as usize + raw.windows(3).filter(|w| w == b"\n--").count()
        };
        for raw in [
            &b""[..],
            b"--",
            b"--a\n--b\r\n--\n-\n--",
            b"\n--\n--\n--\n--\n--\n--\n--\n-",
            b"1234567\n--",
            b"123456\n--",
            b"12345678\n-",
        ] {
            assert_eq!(delimiter_lines(raw), plain(raw), "{raw:?}");
        }
    }

    #[test]
    fn finds_inline_and_attached_parts() {
        let raw = b"From: a@example.com\r\nMessage-ID: <m1@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
Content-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--b2\r\n\
Content-Type: text/calendar; method=request; charset=utf-8\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n\
--b2--\r\n--b1\r\nContent-Type: application/octet-stream; name=\"invite.ics\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nQkVHSU46VkNBTEVOREFSDQpFTkQ6VkNBTEVOREFSDQo=\r\n--b1--\r\n";
        let mail = calendar_parts(raw);
        assert_eq!(mail.message_id.as_deref(), Some("m1@example.com"));
        assert_eq!(mail.parts.len(), 2);
        assert_eq!(mail.parts[0].method_param.as_deref(), Some("REQUEST"));
        assert!(mail.parts[0].text.starts_with("BEGIN:VCALENDAR"));
        assert_eq!(mail.parts[1].text, "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n");
    }

    #[test]
    fn skips_mbox_from_line_and_blank_lines() {
        assert_eq!(
            strip_preamble(b"   \nFrom a@b Mon Jan  1\nSubject: x\n"),
            b"Subject: x\n"
        );
        assert_eq!(strip_preamble(b"Subject: x\n"), b"Subject: x\n");
        assert_eq!(strip_preamble(b"\n"), b"\n");
    }

    #[test]
    fn decodes_latin1_attachments() {
        let (text, lossy) = decode_binary(b"R\xe9union", Some("iso-8859-1"));
        assert_eq!(text, "Réunion");
        assert!(!lossy);
        let (_, lossy) = decode_binary(b"R\xe9union", None);
        assert!(lossy);
    }
}
