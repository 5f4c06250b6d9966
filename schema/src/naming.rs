//! Names of streams, subjects and consumers, all derived from one namespace.
//!
//! The namespace prefixes everything imipflow creates in NATS, so that tests and
//! tenants can share one server without seeing each other's data.

use std::fmt;

/// A validated namespace (`IMIP_NAMESPACE`): 1–32 characters of `[A-Za-z0-9_-]`,
/// which keeps it valid both as a subject token and inside a stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceError(pub String);

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid namespace {:?}: use 1-32 characters of A-Z a-z 0-9 _ -",
            self.0
        )
    }
}

impl std::error::Error for NamespaceError {}

impl Default for Namespace {
    fn default() -> Self {
        Namespace("imip".to_owned())
    }
}

impl Namespace {
    pub fn new(name: &str) -> Result<Self, NamespaceError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Namespace(name.to_owned()))
        } else {
            Err(NamespaceError(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream of scheduling messages published by `imip-ingest`.
    pub fn messages_stream(&self) -> String {
        format!("{}-messages", self.0)
    }

    /// Every subject of the messages stream, as one filter (for reading).
    pub fn messages_subjects(&self) -> String {
        format!("{}.msg.>", self.0)
    }

    /// The subjects the messages stream takes: exactly one filter per
    /// partition the deployment has, so that a publish on a partition no
    /// lane reads (ingest run with another `IMIP_PARTITIONS`) is refused by
    /// JetStream instead of stored for no one (docs/configuration.md).
    pub fn messages_stream_subjects(&self, partitions: u32) -> Vec<String> {
        (0..partitions.max(1))
            .map(|p| self.partition_filter(p))
            .collect()
    }

    /// The subject one user's message is published on: partition first, so that
    /// a consumer per partition filters with a single wildcard subject (NATS 2.9
    /// has no multi-subject filters).
    pub fn message_subject(&self, partition: u32, user_key: &str) -> String {
        format!("{}.msg.{}.{}", self.0, partition, user_key)
    }

    /// The partition a subject of the messages stream is routed to (the
    /// token after `msg`, see [`Self::message_subject`]); `None` for a
    /// subject of another namespace or stream.
    pub fn message_partition(&self, subject: &str) -> Option<u32> {
        let rest = subject
            .strip_prefix(self.0.as_str())?
            .strip_prefix(".msg.")?;
        rest.split('.').next()?.parse().ok()
    }

    /// Filter subject of one partition's lane.
    pub fn partition_filter(&self, partition: u32) -> String {
        format!("{}.msg.{}.>", self.0, partition)
    }

    /// Durable consumer of one partition's lane.
    pub fn partition_consumer(&self, partition: u32) -> String {
        format!("{}-p{}", self.0, partition)
    }

    /// The stream holding refused or malformed calendar data, with the reason.
    pub fn quarantine_stream(&self) -> String {
        format!("{}-quarantine", self.0)
    }

    pub fn quarantine_subjects(&self) -> String {
        format!("{}.quarantine.>", self.0)
    }

    pub fn quarantine_subject(&self, user_key: &str) -> String {
        format!("{}.quarantine.{}", self.0, user_key)
    }

    /// The stream of change events (SPEC §4).
    pub fn events_stream(&self) -> String {
        format!("{}-events", self.0)
    }

    pub fn events_subjects(&self) -> String {
        format!("{}.events.>", self.0)
    }

    /// `<namespace>.events.<kind>.<user-key>`; every kind is two tokens
    /// (`freebusy.changed`), so `imip.events.*.*.<user-key>` follows one user and
    /// `imip.events.freebusy.changed.*` one kind.
    pub fn event_subject(&self, kind: &str, user_key: &str) -> String {
        format!("{}.events.{}.{}", self.0, kind, user_key)
    }

    /// Filter subject of every event about one user, whatever its kind
    /// (`<namespace>.events.*.*.<user-key>`, see [`Self::event_subject`]).
    pub fn user_events_filter(&self, user_key: &str) -> String {
        format!("{}.events.*.*.{}", self.0, user_key)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest address, in bytes, that imipflow accepts: RFC 5321 §4.5.3.1.3
/// limits a path to 256 octets with its angle brackets. (The 64-octet local
/// part limit of §4.5.3.1.1 is not enforced: SRS and VERP envelope senders
/// exceed it, and mail servers accept them.) Ingest quarantines longer ones;
/// the store keys users and attendees by address, next to the UID.
pub const MAX_ADDRESS_BYTES: usize = 254;

/// The canonical form of a calendar user address: no `mailto:`, no angle
/// brackets or surrounding space; the local part with ASCII letters in lower
/// case, the domain in its IDNA ASCII form (UTS 46: `bücher.example` and
/// `XN--BCHER-KVA.example` are both `xn--bcher-kva.example`). `None` when
/// nothing is left. Ingest, the processor and the publisher all key users by
/// this form, so changing it changes which stored rows a user owns
/// (docs/hostile-input.md, "Addresses").
///
/// Local parts are case-sensitive in RFC 5321 (§2.4). Treating ASCII letters
/// case-insensitively is what every mail system and calendar client does in
/// practice, and one user must map to one partition whatever case a client
/// writes. Unicode case folding is no such convention: it maps distinct code
/// points onto one (U+212A KELVIN SIGN onto `k`, so `Kim@` would be `kim@`),
/// which would let a chosen address read or write another's records. Non-ASCII
/// local parts (RFC 6531) are therefore kept as written.
pub fn normalize_address(address: &str) -> Option<String> {
    let mut a = address.trim();
    // `get`, not indexing: byte 7 may fall inside a multi-byte character.
    if let Some(rest) = a
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("mailto:"))
        .and(a.get(7..))
    {
        a = rest.trim();
    }
    let a = a.trim_start_matches('<').trim_end_matches('>').trim();
    if a.is_empty() {
        return None;
    }
    Some(match a.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = canonical_domain(domain);
            let mut out = String::with_capacity(local.len() + 1 + domain.len());
            out.push_str(local);
            out.make_ascii_lowercase();
            out.push('@');
            out.push_str(&domain);
            out
        }
        None => a.to_ascii_lowercase(),
    })
}

/// A domain in the form DNS and mail compare: ASCII lower case, and a
/// non-ASCII domain through UTS 46 to its A-labels. ASCII is by far the
/// common case and needs no Unicode data. A domain UTS 46 refuses (a space, a
/// disallowed code point) is kept as written, ASCII lowered: it is no user's
/// real domain, and refusing here would drop an attendee rather than keep
/// what the message said.
fn canonical_domain(domain: &str) -> String {
    if !domain.is_ascii()
        && let Ok(ascii) = idna::domain_to_ascii(domain)
    {
        return ascii;
    }
    domain.to_ascii_lowercase()
}

/// A user's address as one subject token: bytes outside `[a-z0-9@_+-]` become
/// `%XX`, so the key is injective and `.`, `*`, `>` and spaces never reach a subject.
pub fn user_key(normalized_address: &str) -> String {
    let mut out = String::with_capacity(normalized_address.len() + 8);
    for b in normalized_address.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'@' | b'_' | b'+' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_validation() {
        assert!(Namespace::new("imip").is_ok());
        assert!(Namespace::new("t_abc-1").is_ok());
        assert!(Namespace::new("").is_err());
        assert!(Namespace::new("a.b").is_err());
        assert!(Namespace::new("a b").is_err());
        assert!(Namespace::new(&"x".repeat(33)).is_err());
    }

    #[test]
    fn subjects_are_derived_from_the_namespace() {
        let ns = Namespace::new("t1").unwrap();
        assert_eq!(ns.message_subject(3, "a@b"), "t1.msg.3.a@b");
        assert_eq!(ns.partition_filter(3), "t1.msg.3.>");
        assert_eq!(ns.messages_stream(), "t1-messages");
        assert_eq!(
            ns.event_subject("freebusy.changed", "a@b"),
            "t1.events.freebusy.changed.a@b"
        );
        assert_eq!(ns.user_events_filter("a@b"), "t1.events.*.*.a@b");
        assert_eq!(ns.message_partition("t1.msg.3.a@b"), Some(3));
        assert_eq!(ns.message_partition("t2.msg.3.a@b"), None);
        assert_eq!(ns.message_partition("t1.events.freebusy.changed.a@b"), None);
    }

    #[test]
    fn addresses_normalise() {
        assert_eq!(
            normalize_address(" MAILTO:Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            normalize_address("<bob@example.org>").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(normalize_address("mailto:"), None);
    }

    #[test]
    fn only_ascii_letters_of_a_local_part_fold() {
        assert_eq!(
            normalize_address("\u{212A}im@Example.com").as_deref(),
            Some("\u{212A}im@example.com")
        );
        assert_ne!(
            normalize_address("\u{212A}im@example.com"),
            normalize_address("kim@example.com")
        );
        assert_eq!(
            normalize_address("J\u{d6}RG@example.com").as_deref(),
            Some("j\u{d6}rg@example.com")
        );
    }

    #[test]
    fn domains_take_their_idna_ascii_form() {
        let a = Some("alice@xn--bcher-kva.example".to_owned());
        assert_eq!(normalize_address("alice@b\u{fc}cher.example"), a);
        assert_eq!(normalize_address("mailto:Alice@B\u{dc}CHER.Example"), a);
        assert_eq!(normalize_address("alice@XN--BCHER-KVA.example"), a);
        // Full-width letters map (UTS 46); a refused domain is kept.
        assert_eq!(
            normalize_address("a@\u{ff25}xample.com").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(
            normalize_address("a@\u{fc}\u{2488}B").as_deref(),
            Some("a@\u{fc}\u{2488}b")
        );
        // The last @ separates (a quoted local part may hold one).
        assert_eq!(
            normalize_address("\"a@b\"@B\u{fc}cher.example").as_deref(),
            Some("\"a@b\"@xn--bcher-kva.example")
        );
        assert_eq!(
            normalize_address("urn:uuid:ABC").as_deref(),
            Some("urn:uuid:abc")
        );
    }

    #[test]
    fn user_keys_are_single_safe_tokens() {
        assert_eq!(user_key("alice@example.com"), "alice@example%2Ecom");
        assert_eq!(user_key("a b*c>d"), "a%20b%2Ac%3Ed");
        assert_ne!(user_key("a.b@c"), user_key("a_b@c"));
    }
}
