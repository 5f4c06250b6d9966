//! PostgreSQL password and TLS settings (`IMIP_DATABASE_*`) and the one place
//! where they become a `tokio_postgres::Config` plus a TLS connector.
//!
//! TLS is rustls with ring (no OpenSSL). The modes are libpq's: `disable`,
//! `prefer` and `require` encrypt without checking the certificate (unless
//! `sslrootcert` is given, which turns `require` into `verify-ca`, as libpq
//! does), `verify-ca` checks the chain, `verify-full` also the host name.

use crate::error::ConfigError;
use crate::nats::read_secret;
use crate::secret::{Secret, redact_url};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values (`allow` is read as `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::Invalid {
                    setting: "IMIP_DATABASE_URL",
                    reason: format!("unknown sslmode {other:?}"),
                });
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How the long-running binaries authenticate to PostgreSQL and secure the
/// connection, on top of what `IMIP_DATABASE_URL` says.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct PgAuth {
    /// PostgreSQL password (overrides one in the URL; prefer the file variant).
    #[arg(
        long,
        env = "IMIP_DATABASE_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub database_password: Option<Secret>,

    /// File holding the PostgreSQL password (trailing newline ignored).
    #[arg(long, env = "IMIP_DATABASE_PASSWORD_FILE", global = true)]
    pub database_password_file: Option<PathBuf>,

    /// TLS mode, as libpq's sslmode (default: the URL's `sslmode`, else disable).
    #[arg(long, env = "IMIP_DATABASE_SSLMODE", value_enum, global = true)]
    pub database_sslmode: Option<SslMode>,

    /// PEM file of the CA(s) for verifying the server (default: the URL's
    /// `sslrootcert`, else the system's roots).
    #[arg(long, env = "IMIP_DATABASE_SSLROOTCERT", global = true)]
    pub database_sslrootcert: Option<PathBuf>,
}

/// Everything needed to open connections: parsed once, then cloned into
/// every connection attempt.
#[derive(Clone)]
pub struct Database {
    config: Config,
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
    target: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("sslmode", &self.mode)
            .finish()
    }
}

impl Database {
    /// Parses the URL (libpq URL or `key=value` form), applies the password
    /// and TLS settings, and reads the files they name.
    pub fn new(url: &str, auth: &PgAuth) -> Result<Self, ConfigError> {
        let (rest, url_mode, url_root) = split_tls_params(url);
        let mut config: Config = rest.parse().map_err(|e| ConfigError::Invalid {
            setting: "IMIP_DATABASE_URL",
            reason: format!("{} does not parse: {e}", redact_url(url)),
        })?;
        if auth.database_password.is_some() && auth.database_password_file.is_some() {
            return Err(ConfigError::Invalid {
                setting: "IMIP_DATABASE_PASSWORD",
                reason: "give the password or a password file, not both".into(),
            });
        }
        if let Some(p) = &auth.database_password {
            config.password(p.expose());
        } else if let Some(path) = &auth.database_password_file {
            config.password(read_secret("IMIP_DATABASE_PASSWORD_FILE", path)?);
        }
        let mode = match (auth.database_sslmode, url_mode) {
            (Some(m), _) => m,
            (None, Some(text)) => SslMode::parse(&text)?,
            (None, None) => SslMode::Disable,
        };
        let root = auth
            .database_sslrootcert
            .clone()
            .or(url_root.map(PathBuf::from));
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(mode, root.as_ref())?)),
        };
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(Database {
            config,
            mode,
            tls,
            target: redact_url(url),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn sslmode(&self) -> SslMode {
        self.mode
    }

    /// The database name the URL gives.
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The same server and credentials, another database (e.g. `postgres`
    /// for CREATE DATABASE).
    pub fn with_dbname(&self, name: &str) -> Database {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    /// Opens a connection and drives it on a task of its own.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let client = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                tokio::spawn(drive(conn));
                client
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(drive(conn));
                client
            }
        };
        Ok(client)
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::warn!(error = %e, "PostgreSQL connection closed");
    }
}

/// Takes `sslmode` and `sslrootcert` out of the connection string:
/// tokio-postgres knows neither `verify-*` nor `sslrootcert`.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k.trim(), v.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, root: Option<&PathBuf>) -> Result<ClientConfig, ConfigError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            setting: "IMIP_DATABASE_SSLMODE",
            reason: e.to_string(),
        })?;
    // libpq: with a root certificate, `require` verifies the chain.
    let mode = match (mode, root) {
        (SslMode::Require | SslMode::Prefer, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AnyCertificate(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ConfigError::Invalid {
                    setting: "IMIP_DATABASE_SSLROOTCERT",
                    reason: e.to_string(),
                })?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn roots(file: Option<&PathBuf>) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| ConfigError::Invalid {
                    setting: "IMIP_DATABASE_SSLROOTCERT",
                    reason: format!("{}: {e}", path.display()),
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ConfigError::Invalid {
                    setting: "IMIP_DATABASE_SSLROOTCERT",
                    reason: format!("{}: no certificate in it", path.display()),
                });
            }
        }
        None => {
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(store)
}

/// `prefer`/`require` without a root certificate: encrypted, not
/// authenticated (libpq's meaning); the handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_the_url() {
        let (rest, mode, root) = split_tls_params(
            "postgresql://u@h:5/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        );
        assert_eq!(rest, "postgresql://u@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = split_tls_params("host=h dbname=d sslmode=require");
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn password_setting_wins_and_debug_hides_it() {
        let auth = PgAuth {
            database_password: Some(Secret::from("hunter2".to_owned())),
            ..Default::default()
        };
        let db = Database::new("postgresql://u:old@h/d", &auth).unwrap();
        assert_eq!(db.config().get_password(), Some(&b"hunter2"[..]));
        assert!(!format!("{db:?}").contains("hunter2"));
        assert!(!format!("{db:?}").contains("old"));
    }
}
