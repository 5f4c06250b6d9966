//! NATS authentication and TLS settings (flags and `IMIP_NATS_*` variables)
//! and the one place where they become `async_nats::ConnectOptions`.
//!
//! Nothing TLS-related is loaded unless a TLS setting is given (or the server
//! asks for TLS): the no-auth path of `imip-ingest` stays as fast as before.

use crate::error::ConfigError;
use crate::secret::{Secret, redact_url};
use async_nats::ConnectOptions;
use std::path::{Path, PathBuf};

/// How the binaries authenticate to NATS and secure the connection. At most
/// one of user/password, token, nkey and credentials file may be given;
/// `nats://user:password@host` in the URL also works (async-nats reads it).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct NatsAuth {
    /// NATS user name (with a password).
    #[arg(long, env = "IMIP_NATS_USER", global = true)]
    pub nats_user: Option<String>,

    /// NATS password (prefer the file variant: environments leak).
    #[arg(
        long,
        env = "IMIP_NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub nats_password: Option<Secret>,

    /// File holding the NATS password (trailing newline ignored).
    #[arg(long, env = "IMIP_NATS_PASSWORD_FILE", global = true)]
    pub nats_password_file: Option<PathBuf>,

    /// NATS authentication token.
    #[arg(long, env = "IMIP_NATS_TOKEN", hide_env_values = true, global = true)]
    pub nats_token: Option<Secret>,

    /// File holding the NATS token.
    #[arg(long, env = "IMIP_NATS_TOKEN_FILE", global = true)]
    pub nats_token_file: Option<PathBuf>,

    /// File holding an nkey seed (`SU…`), for an nkey user.
    #[arg(long, env = "IMIP_NATS_NKEY_FILE", global = true)]
    pub nats_nkey_file: Option<PathBuf>,

    /// NATS `.creds` file (user JWT + nkey seed, decentralised auth).
    #[arg(long, env = "IMIP_NATS_CREDS_FILE", global = true)]
    pub nats_creds_file: Option<PathBuf>,

    /// PEM file of the CA(s) that signed the server's certificate; implies TLS.
    /// Without it, the system's roots are used when TLS is on.
    #[arg(long, env = "IMIP_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with --nats-tls-key); implies TLS.
    #[arg(long, env = "IMIP_NATS_TLS_CERT", global = true)]
    pub nats_tls_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, env = "IMIP_NATS_TLS_KEY", global = true)]
    pub nats_tls_key: Option<PathBuf>,

    /// Refuse a connection that is not TLS (also implied by a CA or client
    /// certificate, and by a `tls://` URL).
    #[arg(
        long,
        env = "IMIP_NATS_TLS_REQUIRED",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub nats_tls_required: bool,
}

impl NatsAuth {
    /// Checks what can be checked without connecting: one method, files present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let methods: Vec<&str> = [
            (
                self.nats_user.is_some()
                    || self.nats_password.is_some()
                    || self.nats_password_file.is_some(),
                "user/password",
            ),
            (
                self.nats_token.is_some() || self.nats_token_file.is_some(),
                "token",
            ),
            (self.nats_nkey_file.is_some(), "nkey"),
            (self.nats_creds_file.is_some(), "credentials file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(ConfigError::Invalid {
                setting: "NATS authentication",
                reason: format!("choose one method, got {}", methods.join(" + ")),
            });
        }
        if self.nats_user.is_some()
            != (self.nats_password.is_some() || self.nats_password_file.is_some())
        {
            return Err(ConfigError::Invalid {
                setting: "IMIP_NATS_USER",
                reason: "a user needs a password (IMIP_NATS_PASSWORD or IMIP_NATS_PASSWORD_FILE) and a password needs a user".into(),
            });
        }
        if self.nats_password.is_some() && self.nats_password_file.is_some() {
            return Err(ConfigError::Invalid {
                setting: "IMIP_NATS_PASSWORD",
                reason: "give the password or a password file, not both".into(),
            });
        }
        if self.nats_token.is_some() && self.nats_token_file.is_some() {
            return Err(ConfigError::Invalid {
                setting: "IMIP_NATS_TOKEN",
                reason: "give the token or a token file, not both".into(),
            });
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err(ConfigError::Invalid {
                setting: "IMIP_NATS_TLS_CERT",
                reason:
                    "a client certificate needs its key (IMIP_NATS_TLS_KEY) and the other way round"
                        .into(),
            });
        }
        for (setting, path) in [
            ("IMIP_NATS_PASSWORD_FILE", &self.nats_password_file),
            ("IMIP_NATS_TOKEN_FILE", &self.nats_token_file),
            ("IMIP_NATS_NKEY_FILE", &self.nats_nkey_file),
            ("IMIP_NATS_CREDS_FILE", &self.nats_creds_file),
            ("IMIP_NATS_TLS_CA", &self.nats_tls_ca),
            ("IMIP_NATS_TLS_CERT", &self.nats_tls_cert),
            ("IMIP_NATS_TLS_KEY", &self.nats_tls_key),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|source| ConfigError::File {
                    setting,
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Whether a login method is set (besides one in the URL).
    pub fn has_login(&self) -> bool {
        self.nats_user.is_some()
            || self.nats_password.is_some()
            || self.nats_password_file.is_some()
            || self.nats_token.is_some()
            || self.nats_token_file.is_some()
            || self.nats_nkey_file.is_some()
            || self.nats_creds_file.is_some()
    }

    /// Whether any TLS setting asks for TLS.
    pub fn tls_wanted(&self) -> bool {
        self.nats_tls_required || self.nats_tls_ca.is_some() || self.nats_tls_cert.is_some()
    }

    /// The connect options these settings describe (files are read now, so a
    /// missing or unreadable one is reported before any connection attempt).
    pub fn connect_options(&self) -> Result<ConnectOptions, ConfigError> {
        self.validate()?;
        let mut options = ConnectOptions::new();
        if let Some(path) = &self.nats_creds_file {
            let text = read_secret("IMIP_NATS_CREDS_FILE", path)?;
            let invalid = |reason: String| ConfigError::Invalid {
                setting: "IMIP_NATS_CREDS_FILE",
                reason: format!("{}: {reason}", path.display()),
            };
            let (jwt, seed) = parse_creds(&text)
                .ok_or_else(|| invalid("no user JWT and nkey seed in it".into()))?;
            let key_pair = std::sync::Arc::new(
                nkeys::KeyPair::from_seed(seed).map_err(|e| invalid(e.to_string()))?,
            );
            options = options.jwt(jwt.to_owned(), move |nonce| {
                let key_pair = key_pair.clone();
                async move { key_pair.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        if let Some(path) = &self.nats_nkey_file {
            let seed = read_secret("IMIP_NATS_NKEY_FILE", path)?;
            if !seed.starts_with('S') {
                return Err(ConfigError::Invalid {
                    setting: "IMIP_NATS_NKEY_FILE",
                    reason: format!("{}: not an nkey seed (they start with S)", path.display()),
                });
            }
            options = options.nkey(seed);
        }
        let token = match (&self.nats_token, &self.nats_token_file) {
            (Some(t), _) => Some(t.expose().to_owned()),
            (None, Some(path)) => Some(read_secret("IMIP_NATS_TOKEN_FILE", path)?),
            (None, None) => None,
        };
        if let Some(token) = token {
            options = options.token(token);
        }
        if let Some(user) = &self.nats_user {
            let password = match (&self.nats_password, &self.nats_password_file) {
                (Some(p), _) => p.expose().to_owned(),
                (None, Some(path)) => read_secret("IMIP_NATS_PASSWORD_FILE", path)?,
                (None, None) => unreachable!("validate() checked it"),
            };
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_wanted() {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// A login written into a server URL (`nats://user:password@host`,
/// `nats://token@host`).
#[derive(Clone, PartialEq, Eq)]
pub enum UrlLogin {
    UserPassword(String, Secret),
    Token(Secret),
}

impl std::fmt::Debug for UrlLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlLogin::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            UrlLogin::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// Takes the credentials out of a (comma-separated) list of server URLs: the
/// URLs without them, and the first login found. async-nats neither uses a
/// URL's credentials nor keeps them out of its debug log, so they are handed
/// to it as options instead.
pub fn split_url_login(urls: &str) -> (String, Option<UrlLogin>) {
    let mut login = None;
    let clean: Vec<String> = urls
        .split(',')
        .map(|item| {
            let start = item.find("://").map_or(0, |i| i + 3);
            let end = item[start..]
                .find(['/', '?', '#'])
                .map_or(item.len(), |i| i + start);
            let Some(at) = item[start..end].rfind('@') else {
                return item.to_owned();
            };
            let userinfo = &item[start..start + at];
            let found = match userinfo.split_once(':') {
                Some((user, password)) => UrlLogin::UserPassword(
                    percent_decode(user),
                    Secret::from(percent_decode(password)),
                ),
                None => UrlLogin::Token(Secret::from(percent_decode(userinfo))),
            };
            login.get_or_insert(found);
            format!("{}{}", &item[..start], &item[start + at + 1..])
        })
        .collect();
    (clean.join(","), login)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl NatsAuth {
    /// Options and the URL to connect to: credentials in the URL are moved
    /// into the options (they win over the settings, as in `imip-ingest`'s
    /// own client), so the URL handed to async-nats carries no secret.
    pub fn connect_target(&self, urls: &str) -> Result<(ConnectOptions, String), ConfigError> {
        let (clean, login) = split_url_login(urls);
        let options = self.connect_options()?;
        let options = match login {
            None => options,
            Some(UrlLogin::UserPassword(user, password)) => {
                options.user_and_password(user, password.expose().to_owned())
            }
            Some(UrlLogin::Token(token)) => options.token(token.expose().to_owned()),
        };
        Ok((options, clean))
    }
}

/// The user JWT and the nkey seed of a `.creds` file: the first line after
/// each of its first two `-----BEGIN …-----` lines. (async-nats' own parser
/// needs the regex crate, about 2 MB of imip-ingest.)
pub fn parse_creds(text: &str) -> Option<(&str, &str)> {
    let mut lines = text.lines().map(str::trim);
    let mut values = Vec::with_capacity(2);
    while values.len() < 2 {
        let line = lines.next()?;
        if line.starts_with("---") && line.contains("BEGIN") {
            let value = lines.find(|l| !l.is_empty())?;
            if value.starts_with("---") {
                return None;
            }
            values.push(value);
        }
    }
    Some((values[0], values[1]))
}

/// Reads a secret from a file; one trailing newline (as editors write) is not
/// part of it.
pub fn read_secret(setting: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        setting,
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Says what went wrong on connecting, in the operator's terms, without the
/// URL's password.
pub fn explain_connect_error(url: &str, e: &async_nats::ConnectError) -> ConfigError {
    ConfigError::Connect {
        service: "NATS",
        target: redact_url(url),
        reason: explain(e),
    }
}

/// The reason part of [`explain_connect_error`].
pub fn explain(e: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as K;
    let reason = match e.kind() {
        K::AuthorizationViolation => format!(
            "authorization failed: the server refused these credentials ({e}); check \
             IMIP_NATS_USER/IMIP_NATS_PASSWORD, IMIP_NATS_TOKEN, IMIP_NATS_NKEY_FILE or \
             IMIP_NATS_CREDS_FILE"
        ),
        K::Tls => format!("TLS failed ({e}); check IMIP_NATS_TLS_CA and the server's certificate"),
        // rustls reading a plaintext INFO line as a TLS record.
        K::Io if e.to_string().contains("InvalidContentType") => format!(
            "TLS handshake failed: TLS is required (IMIP_NATS_TLS_REQUIRED, a TLS CA or \
             certificate, or a tls:// URL) but the server did not answer in TLS ({e})"
        ),
        _ => e.to_string(),
    };
    redact_url(&reason)
}

/// Connects with these settings; `name` is shown by the server (`connz`).
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    name: &str,
) -> Result<async_nats::Client, ConfigError> {
    let (options, clean) = auth.connect_target(url)?;
    options
        .name(name)
        .connect(server_addrs(&clean)?)
        .await
        .map_err(|e| explain_connect_error(url, &e))
}

/// The servers of a comma-separated URL list, as async-nats takes them: it
/// parses a `&str` as one URL, so `nats://a:4222,nats://b:4222` (a cluster,
/// SPEC §5) must be handed over as a list.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConfigError::Invalid {
                    setting: "IMIP_NATS_URL",
                    reason: format!("{}: {e}", redact_url(u)),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_file_parts() {
        let text = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJqd3QiLCJhbGciOiJlZDI1NTE5In0.e30.sig\n------END NATS USER JWT------\n\n\
            ************************* IMPORTANT *************************\n\
            NKEY Seed printed below can be used to sign and prove identity.\n\n\
            -----BEGIN USER NKEY SEED-----\nSUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM\n------END USER NKEY SEED------\n";
        let (jwt, seed) = parse_creds(text).unwrap();
        assert_eq!(jwt, "eyJ0eXAiOiJqd3QiLCJhbGciOiJlZDI1NTE5In0.e30.sig");
        assert_eq!(
            seed,
            "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM"
        );
        assert!(nkeys::KeyPair::from_seed(seed).is_ok());
        assert_eq!(parse_creds("-----BEGIN X-----\n------END X------\n"), None);
        assert_eq!(parse_creds("garbage"), None);
    }

    #[test]
    fn url_credentials_are_taken_out() {
        let (clean, login) = split_url_login("nats://u%40x:p%3Aw@h1:4222,nats://h2:4222");
        assert_eq!(clean, "nats://h1:4222,nats://h2:4222");
        assert_eq!(
            login,
            Some(UrlLogin::UserPassword(
                "u@x".into(),
                Secret::from("p:w".to_owned())
            ))
        );
        let (clean, login) = split_url_login("tls://t0k3n@h:4443");
        assert_eq!(clean, "tls://h:4443");
        assert_eq!(
            login,
            Some(UrlLogin::Token(Secret::from("t0k3n".to_owned())))
        );
        assert!(!format!("{login:?}").contains("t0k3n"));
        let (clean, login) = split_url_login("nats://127.0.0.1:4222");
        assert_eq!((clean.as_str(), login), ("nats://127.0.0.1:4222", None));
    }
}
