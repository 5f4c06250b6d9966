//! Who is asking: the user's address from the configured header, believed
//! only when the peer is one of the trusted proxies (the proxy authenticates,
//! as Apache does for imip-agent's manager); and the CSRF token every form
//! carries, so that another site cannot make a signed-in browser answer.

use hmac::{Hmac, KeyInit, Mac};
use imipflow_schema::normalize_address;
use ipnet::IpNet;
use sha2::Sha256;
use std::net::IpAddr;

type HmacSha256 = Hmac<Sha256>;

/// How a request is authenticated.
pub struct Trust {
    pub header: axum::http::HeaderName,
    pub proxies: Vec<IpNet>,
    /// `IMIP_MANAGER_DEV_PICK_USER`: `?as=` from anyone.
    pub dev_pick_user: bool,
    key: Vec<u8>,
}

/// Why a request has no user (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UntrustedPeer(IpAddr),
    NoHeader,
    /// The header more than once: a proxy that appends its own to the
    /// client's, whose first would be the client's choice. Neither is believed.
    SeveralHeaders,
    NotAnAddress,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UntrustedPeer(ip) => write!(
                f,
                "{ip} is not a trusted proxy (IMIP_MANAGER_TRUSTED_PROXIES)"
            ),
            Refusal::NoHeader => f.write_str("no authenticated user"),
            Refusal::SeveralHeaders => {
                f.write_str("more than one authenticated user header (the proxy must replace it)")
            }
            Refusal::NotAnAddress => f.write_str("the authenticated user is not a mail address"),
        }
    }
}

impl Trust {
    /// `secret`: `IMIP_MANAGER_CSRF_SECRET`, or `None` for a random key.
    pub fn new(
        header: axum::http::HeaderName,
        proxies: Vec<IpNet>,
        dev_pick_user: bool,
        secret: Option<&str>,
    ) -> Self {
        let key = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).expect("random bytes for the CSRF key");
                k
            }
        };
        Trust {
            header,
            proxies,
            dev_pick_user,
            key,
        }
    }

    /// The user of a request from `peer` with `headers` and, in development
    /// mode only, `?as=` (`dev_user`).
    pub fn user(
        &self,
        peer: IpAddr,
        headers: &axum::http::HeaderMap,
        dev_user: Option<&str>,
    ) -> Result<String, Refusal> {
        if self.dev_pick_user
            && let Some(u) = dev_user
        {
            return single_address(u).ok_or(Refusal::NotAnAddress);
        }
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        if !self.proxies.iter().any(|n| n.contains(&peer)) {
            return Err(Refusal::UntrustedPeer(peer));
        }
        let mut values = headers.get_all(&self.header).iter();
        let value = values.next().ok_or(Refusal::NoHeader)?;
        if values.next().is_some() {
            return Err(Refusal::SeveralHeaders);
        }
        // Visible ASCII only: a proxy passes an address as it authenticated
        // it, and bytes beyond ASCII have no agreed charset in a header.
        let value = value.to_str().map_err(|_| Refusal::NotAnAddress)?.trim();
        if value.is_empty() {
            return Err(Refusal::NoHeader);
        }
        single_address(value).ok_or(Refusal::NotAnAddress)
    }

    fn mac(&self, user: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"imip-manager csrf\0");
        mac.update(user.as_bytes());
        mac
    }

    /// The CSRF token of `user`'s forms (hex).
    pub fn csrf(&self, user: &str) -> String {
        self.mac(user)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is `user`'s (compared in constant time).
    pub fn csrf_ok(&self, user: &str, token: &str) -> bool {
        let Some(bytes) = hex(token) else {
            return false;
        };
        self.mac(user).verify_slice(&bytes).is_ok()
    }
}

/// `value` as the one address it names, normalised as the store keys users
/// ([`normalize_address`]: case, `mailto:`, `<>`), or `None` when it is not
/// exactly one `local@domain`: a list (`,` `;`), a display name or anything
/// with white space, quotes or brackets left, a control character, no `@`
/// or more than one, an empty side. Such a value is no user: believing it
/// would make a user of a string no mail can reach, or of a list.
pub fn single_address(value: &str) -> Option<String> {
    let a = normalize_address(value)?;
    let (local, domain) = a.split_once('@')?;
    let bad = |c: char| c.is_whitespace() || c.is_control() || "@,;:<>()[]\\\"".contains(c);
    if local.is_empty() || domain.is_empty() || local.contains(bad) || domain.contains(bad) {
        return None;
    }
    Some(a)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> Trust {
        Trust::new(
            axum::http::HeaderName::from_static("x-remote-user"),
            vec!["10.0.0.0/8".parse().unwrap()],
            false,
            Some("k"),
        )
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let t = trust();
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-remote-user", "Bob@Example.ORG".parse().unwrap());
        assert_eq!(
            t.user("10.1.2.3".parse().unwrap(), &h, None),
            Ok("bob@example.org".to_owned())
        );
        assert_eq!(
            t.user("127.0.0.1".parse().unwrap(), &h, None),
            Err(Refusal::UntrustedPeer("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            t.user("::ffff:10.0.0.1".parse().unwrap(), &h, None),
            Ok("bob@example.org".to_owned())
        );
        // ?as= is ignored unless development mode is on.
        assert_eq!(
            t.user("10.1.2.3".parse().unwrap(), &h, Some("eve@example.org")),
            Ok("bob@example.org".to_owned())
        );
        assert_eq!(
            t.user("10.1.2.3".parse().unwrap(), &Default::default(), None),
            Err(Refusal::NoHeader)
        );
    }

    #[test]
    fn a_header_names_one_address_or_nobody() {
        let t = trust();
        let peer = "10.1.2.3".parse().unwrap();
        let with = |values: &[&[u8]]| {
            let mut h = axum::http::HeaderMap::new();
            for v in values {
                h.append(
                    "x-remote-user",
                    axum::http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            t.user(peer, &h, None)
        };
        assert_eq!(
            with(&[b"eve@example.org", b"bob@example.org"]),
            Err(Refusal::SeveralHeaders)
        );
        for bad in [
            &b"eve@example.org, bob@example.org"[..],
            b"Eve <eve@example.org>",
            b"eve",
            b"@example.org",
            b"eve@",
            b"eve@@example.org",
            b"e ve@example.org",
            b"eve\xff@example.org",
        ] {
            assert_eq!(
                with(&[bad]),
                Err(Refusal::NotAnAddress),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(with(&[b"   "]), Err(Refusal::NoHeader));
        for same in [
            &b"Bob@Example.ORG"[..],
            b"mailto:bob@example.org",
            b"<bob@example.org>",
        ] {
            assert_eq!(with(&[same]), Ok("bob@example.org".to_owned()));
        }
    }

    #[test]
    fn a_token_is_the_users_own() {
        let t = trust();
        let tok = t.csrf("bob@example.org");
        assert!(t.csrf_ok("bob@example.org", &tok));
        assert!(!t.csrf_ok("alice@example.com", &tok));
        assert!(!t.csrf_ok("bob@example.org", ""));
        assert!(!t.csrf_ok("bob@example.org", &tok[..62]));
        let other = Trust::new(t.header.clone(), vec![], false, Some("other key"));
        assert!(!other.csrf_ok("bob@example.org", &tok));
    }
}
