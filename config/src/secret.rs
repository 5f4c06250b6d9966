//! Values that must never reach a log line, an error message or `config check`
//! output: a [`Secret`] prints as `***`, a [`SecretUrl`] prints with its
//! password (or NATS token) replaced by `***`.

use std::fmt;
use std::ops::Deref;

/// What a hidden value is shown as.
pub const HIDDEN: &str = "***";

/// A password or token. `Debug` and `Display` never show it; [`Secret::expose`]
/// is the one way to read it, at the point where it is handed to a client.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

/// A connection URL (or comma-separated list of them) that may carry a
/// password. It dereferences to the full text, so it can be handed to a client
/// as `&str`; formatting it hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The text with the password hidden, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_owned())
    }
}

impl Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SecretUrl {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Hides the secrets of a connection string: the password of
/// `scheme://user:password@host`, the token of `nats://token@host`, and the
/// value of a `password=` parameter (URL query or libpq `key=value` form).
/// Comma-separated lists (NATS servers, PostgreSQL hosts) are handled per item.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, item) in text.split(',').enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&redact_params(&redact_userinfo(item)));
    }
    out
}

fn redact_userinfo(item: &str) -> String {
    let (scheme, start) = match item.find("://") {
        Some(i) => (&item[..i], i + 3),
        None => ("", 0),
    };
    let authority_end = item[start..]
        .find(['/', '?', '#'])
        .map_or(item.len(), |i| i + start);
    let Some(at) = item[start..authority_end].rfind('@') else {
        return item.to_owned();
    };
    let userinfo = &item[start..start + at];
    let hidden = match userinfo.find(':') {
        Some(colon) => format!("{}:{HIDDEN}", &userinfo[..colon]),
        // `nats://TOKEN@host` authenticates with a token; a PostgreSQL user
        // name alone is not secret.
        None if matches!(scheme, "nats" | "tls" | "ws" | "wss") => HIDDEN.to_owned(),
        None => return item.to_owned(),
    };
    format!("{}{hidden}{}", &item[..start], &item[start + at..])
}

fn redact_params(item: &str) -> String {
    let lower = item.to_ascii_lowercase();
    let mut out = String::with_capacity(item.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("password=") {
        let key_start = pos + found;
        let boundary_ok =
            key_start == 0 || matches!(item.as_bytes()[key_start - 1], b'?' | b'&' | b' ' | b'\t');
        let value_start = key_start + "password=".len();
        out.push_str(&item[pos..value_start]);
        if !boundary_ok {
            pos = value_start;
            continue;
        }
        let value_end = item[value_start..]
            .find(['&', ' ', '\t', '#'])
            .map_or(item.len(), |i| i + value_start);
        out.push_str(HIDDEN);
        pos = value_end;
    }
    out.push_str(&item[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        let cases = [
            (
                "postgresql://imip:s3cret@db:5432/imip",
                "postgresql://imip:***@db:5432/imip",
            ),
            (
                "postgresql://postgres@127.0.0.1/imip",
                "postgresql://postgres@127.0.0.1/imip",
            ),
            ("nats://tok3n@n1:4222", "nats://***@n1:4222"),
            (
                "nats://a:p1@n1:4222,nats://a:p2@n2:4222",
                "nats://a:***@n1:4222,nats://a:***@n2:4222",
            ),
            (
                "postgresql://db/imip?user=x&password=hunter2&sslmode=require",
                "postgresql://db/imip?user=x&password=***&sslmode=require",
            ),
            (
                "host=db user=x password=hunter2 dbname=imip",
                "host=db user=x password=*** dbname=imip",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("u:p@host:4222", "u:***@host:4222"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn formatting_hides_secrets() {
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let u = SecretUrl::from("postgresql://u:hunter2@h/d");
        assert!(!format!("{u} {u:?}").contains("hunter2"));
        assert!(u.contains("hunter2"));
    }
}
