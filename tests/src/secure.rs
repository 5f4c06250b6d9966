//! Private servers that demand credentials and TLS, for the authentication
//! tests (`tests/tests/auth.rs`): a test CA with a server certificate for
//! `localhost`/`127.0.0.1` (rcgen), a nats-server with users, an nkey user and
//! TLS, and a PostgreSQL cluster with scram-sha-256 passwords that accepts
//! only TLS connections. Each runs on a free loopback port with its files in a
//! temp directory and is stopped when dropped (also when the test panics);
//! the shared services on 4222 and 5432 are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::servers::TempDir;
use crate::servers::{as_postgres, pg_ctl_start};

/// A test CA and one server certificate it signed, as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate from the same CA, for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "imipflow test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().expect("server key");
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let mut client_params =
            CertificateParams::new(vec!["imipflow-client".to_owned()]).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "imipflow-client");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("client key");
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.client_cert, client.pem()).unwrap();
        std::fs::write(&pki.client_key, client_key.serialize_pem()).unwrap();
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.server_cert, server.pem()).unwrap();
        std::fs::write(&pki.server_key, server_key.serialize_pem()).unwrap();
        pki
    }
}

fn wait_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {port} not open within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The credentials the secure servers accept.
pub const NATS_USER: &str = "imip";
pub const NATS_PASSWORD: &str = "nats-pw-Zq8vX2";
pub const PG_PASSWORD: &str = "pg-pw-Kd93Lm";
pub const NATS_TOKEN: &str = "nats-token-Vb71Qe";

/// Which login the server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsLogin {
    /// [`NATS_USER`]/[`NATS_PASSWORD`] or the nkey of `nkey_seed`; TLS with
    /// a server certificate.
    UsersAndNkey,
    /// [`NATS_TOKEN`], and TLS with a client certificate (`verify: true`).
    TokenAndClientCert,
    /// Decentralised (operator) mode: a user of an account with JetStream,
    /// whose `.creds` file is `creds`; no TLS.
    Creds,
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("IMIPFLOWTEST{iat}{name}").to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).expect("sign JWT");
    format!("{body}.{}", base64url(&signature))
}

/// Server config lines and a `.creds` file for operator mode.
fn operator_setup(creds: &Path) -> String {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "acct",
        serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}},
                           "type": "account", "version": 2}),
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "user",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                           "type": "user", "version": 2}),
    );
    std::fs::write(
        creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acct}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}\n",
        acct = account.public_key(),
        sys = system.public_key(),
    )
}

/// A nats-server with JetStream that requires TLS and a login: user
/// [`NATS_USER`] / [`NATS_PASSWORD`], or the nkey whose seed is in `nkey_seed`.
pub struct SecureNats {
    pub port: u16,
    pub pki: Pki,
    pub nkey_seed: PathBuf,
    /// The user's `.creds` file ([`NatsLogin::Creds`] only).
    pub creds: PathBuf,
    child: Child,
    pub dir: TempDir,
}

impl SecureNats {
    pub fn start() -> Self {
        Self::start_with(NatsLogin::UsersAndNkey)
    }

    pub fn start_with(login: NatsLogin) -> Self {
        let dir = TempDir::new("imip-secure-nats");
        let pki = Pki::generate(&dir.0);
        let nkey = nkeys::KeyPair::new_user();
        let nkey_seed = dir.0.join("user.nk");
        std::fs::write(&nkey_seed, format!("{}\n", nkey.seed().unwrap())).unwrap();
        let port = crate::free_port();
        let config = dir.0.join("nats.conf");
        let (tls_extra, authorization) = match login {
            NatsLogin::UsersAndNkey => (
                String::new(),
                format!(
                    "users = [ {{ user: \"{NATS_USER}\", password: \"{NATS_PASSWORD}\" }}, {{ nkey: \"{}\" }} ]",
                    nkey.public_key()
                ),
            ),
            NatsLogin::TokenAndClientCert => (
                format!(", ca_file: \"{}\", verify: true", pki.ca.display()),
                format!("token: \"{NATS_TOKEN}\""),
            ),
            NatsLogin::Creds => (String::new(), String::new()),
        };
        let creds = dir.0.join("user.creds");
        let (tls_block, auth_block) = match login {
            NatsLogin::Creds => (String::new(), operator_setup(&creds)),
            _ => (
                format!(
                    "tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 2{tls_extra} }}\n",
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
                format!("authorization {{ {authorization} }}\n"),
            ),
        };
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 256MB }}\n\
                 {tls_block}{auth_block}",
                store = dir.0.join("store").display(),
            ),
        )
        .unwrap();
        let child = Command::new(
            std::env::var_os("IMIP_TEST_NATS_SERVER")
                .unwrap_or_else(|| "/usr/sbin/nats-server".into()),
        )
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("nats.log")).unwrap())
        .spawn()
        .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server not up within 10 s:\n{}",
                std::fs::read_to_string(dir.0.join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        SecureNats {
            port,
            pki,
            nkey_seed,
            creds,
            child,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL 15 cluster whose only TCP access is `hostssl` with a
/// scram-sha-256 password ([`PG_PASSWORD`] for `postgres`).
pub struct SecurePg {
    pub port: u16,
    pub pki: Pki,
    data: PathBuf,
    pub dir: TempDir,
}

impl SecurePg {
    pub fn start() -> Self {
        let dir = TempDir::new("imip-secure-pg");
        let pki = Pki::generate(&dir.0);
        let pwfile = dir.0.join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres", &dir.0.display().to_string()])
            .status();
        let _ = Command::new("chmod")
            .args(["600", &pki.server_key.display().to_string()])
            .status();
        let data = dir.0.join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // TLS or nothing: a plaintext TCP connection finds no pg_hba entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let port = crate::free_port();
        let opts = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
             -c ssl_cert_file={cert} -c ssl_key_file={key}",
            sock = dir.0.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        pg_ctl_start(&data, &opts, &dir.0);
        wait_port(port, Duration::from_secs(30));
        SecurePg {
            port,
            pki,
            data,
            dir,
        }
    }

    /// A URL without the password (it comes from `IMIP_DATABASE_PASSWORD`).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for SecurePg {
    fn drop(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
