//! A minimal blocking NATS client for the one thing ingest does per mail:
//! connect, publish a few messages (with a `Nats-Msg-Id` header) to JetStream
//! and wait for each acknowledgement.
//!
//! Why not async-nats on this path: ingest is a new process per mail, and on
//! the benchmark machine the async client's start-up was most of ingest's
//! wall time (bench/results/ingest-*.md): a tokio runtime, a connect that
//! waits for the server's INFO, sends CONNECT + PING and waits for the PONG
//! before anything is published, a timer tick of 1 ms on the way, and the
//! page faults of all that code. Here everything the server needs is written
//! in one `write` right after the TCP connect (CONNECT, the inbox SUB, every
//! HPUB) and the only wait is for the acks: one round trip, the same as a
//! publish from an already connected client.
//!
//! It speaks plain TCP with no auth, user/password or token. Anything else
//! (TLS, nkeys, JWT credentials) is [`WireError::Unsupported`] and the caller
//! uses async-nats instead.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// One message to publish.
pub struct Message<'a> {
    pub subject: &'a str,
    pub msg_id: &'a str,
    pub payload: &'a [u8],
}

/// How to log in (beyond what the URL itself carries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Login {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
}

#[derive(Debug)]
pub enum WireError {
    /// The URL or the server wants something this client does not speak.
    Unsupported(String),
    /// No server could be reached or the session was refused.
    Connect(String),
    /// Message `index` was not acknowledged.
    Publish { index: usize, reason: String },
    /// No stream takes message `index`'s subject (a 503 no-responders
    /// status): nothing was stored, and retrying will not help until the
    /// subject or the streams change.
    NoStream { index: usize },
}

/// One server of a (comma-separated) NATS URL.
#[derive(Debug, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    login: Login,
}

/// `[nats://][user:password@|token@]host[:port]`; other schemes (tls, ws)
/// are unsupported.
fn parse_server(url: &str) -> Result<Server, WireError> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => rest,
        Some((scheme, _)) => {
            return Err(WireError::Unsupported(format!("{scheme}:// URL")));
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let (login, hostport) = match rest.rsplit_once('@') {
        Some((info, hp)) => (
            match info.split_once(':') {
                Some((u, p)) => Login::UserPassword(u.to_owned(), p.to_owned()),
                None => Login::Token(info.to_owned()),
            },
            hp,
        ),
        None => (Login::None, rest),
    };
    let bad = || WireError::Connect(format!("cannot parse server address {hostport:?}"));
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().map_err(|_| bad())?),
            None if after.is_empty() => (host, 4222),
            None => return Err(bad()),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (hostport, 4222),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Server {
        host: host.to_owned(),
        port,
        login,
    })
}

/// Publishes `messages` through the first server of `urls` that accepts a
/// TCP connection and waits for every acknowledgement, all before `timeout`.
pub fn publish(
    urls: &str,
    login: &Login,
    messages: &[Message<'_>],
    timeout: Duration,
) -> Result<(), WireError> {
    let deadline = Instant::now() + timeout;
    let servers = urls
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(parse_server)
        .collect::<Result<Vec<_>, _>>()?;
    let mut last = WireError::Connect("no server URL".into());
    for server in &servers {
        match connect(server, deadline) {
            Ok(stream) => {
                // Credentials in the URL win, as in async-nats.
                let login = match &server.login {
                    Login::None => login,
                    l => l,
                };
                return session(stream, login, messages, deadline);
            }
            Err(e) => last = WireError::Connect(format!("{}:{}: {e}", server.host, server.port)),
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

fn connect(server: &Server, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
    for addr in (server.host.as_str(), server.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The CONNECT options without a login, as JSON (the login-free line is
/// also spelt out as a constant in [`connect_line`]; a test keeps the two equal).
fn connect_options() -> serde_json::Value {
    serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "name": "imip-ingest",
        "protocol": 1,
        "headers": true,
        "no_responders": true,
    })
}

/// The CONNECT options: no `+OK` per command (verbose off), headers on (for
/// `Nats-Msg-Id`), and no_responders so a subject no stream takes is a 503
/// status at once instead of a wait for the timeout.
fn connect_line(login: &Login) -> Vec<u8> {
    // Without a login, the line `serde_json` writes below, spelt out: it
    // builds and drops a map for it otherwise (15 k instructions).
    if *login == Login::None {
        return concat!(
            r#"CONNECT {"headers":true,"lang":"rust","name":"imip-ingest","no_responders":true,"#,
            r#""pedantic":false,"protocol":1,"verbose":false,"version":""#,
            env!("CARGO_PKG_VERSION"),
            "\"}\r\n"
        )
        .as_bytes()
        .to_vec();
    }
    let mut opts = connect_options();
    match login {
        Login::None => {}
        Login::UserPassword(u, p) => {
            opts["user"] = u.as_str().into();
            opts["pass"] = p.as_str().into();
        }
        Login::Token(t) => opts["auth_token"] = t.as_str().into(),
    }
    let mut line = b"CONNECT ".to_vec();
    line.extend_from_slice(opts.to_string().as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// An inbox prefix no other connection uses: the subscription is this
/// connection's, but a subject is global.
fn inbox() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("_INBOX.ingest{:x}x{nanos:x}", std::process::id())
}

fn session(
    mut stream: TcpStream,
    login: &Login,
    messages: &[Message<'_>],
    deadline: Instant,
) -> Result<(), WireError> {
    let inbox = inbox();
    let out = request(login, &inbox, messages);
    // The server sends INFO as soon as it accepts and reads commands after it,
    // so there is no need to wait for INFO before writing.
    stream
        .set_write_timeout(Some(remaining(deadline).map_err(conn_err)?))
        .map_err(conn_err)?;
    stream.write_all(&out).map_err(conn_err)?;

    let reader = BufReader::with_capacity(4096, stream.try_clone().map_err(conn_err)?);
    Acks {
        reader,
        inbox: &inbox,
        acked: vec![false; messages.len()],
        left: messages.len(),
        deadline,
    }
    .wait()
}

fn conn_err(e: io::Error) -> WireError {
    WireError::Connect(e.to_string())
}

/// Everything the session writes, in one buffer: CONNECT, the SUB for the
/// acknowledgements (reply subject `<inbox>.<index>`), and one HPUB per message.
fn request(login: &Login, inbox: &str, messages: &[Message<'_>]) -> Vec<u8> {
    let size: usize = messages.iter().map(|m| m.payload.len() + 200).sum();
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(&connect_line(login));
    out.extend_from_slice(format!("SUB {inbox}.* 1\r\n").as_bytes());
    for (i, m) in messages.iter().enumerate() {
        let header = format!("NATS/1.0\r\nNats-Msg-Id: {}\r\n\r\n", m.msg_id);
        out.extend_from_slice(
            format!(
                "HPUB {} {inbox}.{i} {} {}\r\n",
                m.subject,
                header.len(),
                header.len() + m.payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(m.payload);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The reading side of a session: the server's lines until every message
/// is acknowledged, an error, or the deadline.
struct Acks<'a> {
    reader: BufReader<TcpStream>,
    inbox: &'a str,
    /// Per message, whether its acknowledgement came (a redelivered reply
    /// counts once).
    acked: Vec<bool>,
    left: usize,
    deadline: Instant,
}

impl Acks<'_> {
    fn wait(mut self) -> Result<(), WireError> {
        let mut line = Vec::with_capacity(256);
        while self.left > 0 {
            let wait = remaining(self.deadline).map_err(|e| self.failed(e))?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(wait))
                .map_err(conn_err)?;
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| self.failed(e))?;
            if n == 0 {
                return Err(self.failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            let mut words = text.split_ascii_whitespace();
            let op = words.next().unwrap_or("");
            let args: Vec<&str> = words.collect();
            match op.to_ascii_uppercase().as_str() {
                "INFO" => check_info(text)?,
                "PING" => {
                    let mut s = self.reader.get_ref();
                    s.write_all(b"PONG\r\n").map_err(conn_err)?;
                }
                "PONG" | "+OK" => {}
                "-ERR" => return Err(server_error(text)),
                "MSG" | "HMSG" => self.on_reply(op, &args, text)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A read that failed or timed out, as the failure of the first message
    /// still waiting for its acknowledgement.
    fn failed(&self, e: io::Error) -> WireError {
        let index = self.acked.iter().position(|a| !a).unwrap_or(0);
        let reason = if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            "no acknowledgement in time".to_owned()
        } else {
            e.to_string()
        };
        WireError::Publish { index, reason }
    }

    /// A MSG or HMSG line (`text`, split into `op` and `args`) and its body:
    /// an acknowledgement when it is addressed to one of our reply subjects.
    fn on_reply(&mut self, op: &str, args: &[&str], text: &str) -> Result<(), WireError> {
        let bad = || WireError::Connect(format!("unexpected server line {text:?}"));
        let (header_len, total): (usize, usize) = if op.eq_ignore_ascii_case("HMSG") {
            let [.., h, t] = args[..] else {
                return Err(bad());
            };
            (h.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?)
        } else {
            let [.., t] = args[..] else {
                return Err(bad());
            };
            (0, t.parse().map_err(|_| bad())?)
        };
        let mut body = vec![0u8; total + 2];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| self.failed(e))?;
        let index = args
            .first()
            .and_then(|s| s.strip_prefix(self.inbox))
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&i| i < self.acked.len());
        let Some(index) = index else { return Ok(()) };
        if header_len > total {
            return Err(bad());
        }
        check_ack(&body[..header_len], &body[header_len..total]).map_err(|e| match e {
            AckError::NoStream => WireError::NoStream { index },
            AckError::Other(reason) => WireError::Publish { index, reason },
        })?;
        if !self.acked[index] {
            self.acked[index] = true;
            self.left -= 1;
        }
        Ok(())
    }
}

/// The server's INFO: what this client cannot speak is
/// [`WireError::Unsupported`], for the caller to fall back to async-nats.
fn check_info(text: &str) -> Result<(), WireError> {
    let info: serde_json::Value = serde_json::from_str(text[4..].trim()).unwrap_or_default();
    if info["tls_required"].as_bool() == Some(true) {
        return Err(WireError::Unsupported("the server requires TLS".into()));
    }
    if info["headers"].as_bool() == Some(false) {
        return Err(WireError::Unsupported(
            "the server does not support headers".into(),
        ));
    }
    Ok(())
}

/// A `-ERR` line; a refused login says which settings to check.
fn server_error(text: &str) -> WireError {
    let reason = text[4..].trim().trim_matches('\'');
    WireError::Connect(if reason.to_ascii_lowercase().contains("authorization") {
        format!(
            "authorization failed: the server refused these credentials \
                 ({reason}); check IMIP_NATS_USER/IMIP_NATS_PASSWORD, \
                 IMIP_NATS_TOKEN, IMIP_NATS_NKEY_FILE or IMIP_NATS_CREDS_FILE"
        )
    } else {
        reason.to_owned()
    })
}

/// Why an acknowledgement is not one.
#[derive(Debug, PartialEq, Eq)]
enum AckError {
    /// 503 no responders: no stream takes the subject.
    NoStream,
    Other(String),
}

/// Reads JetStream's reply to a publish: `{"stream":…,"seq":…}`, or an API
/// error, or (headers only) a status such as 503 when no stream takes the
/// subject.
fn check_ack(headers: &[u8], payload: &[u8]) -> Result<(), AckError> {
    if !headers.is_empty() {
        let first = String::from_utf8_lossy(headers.split(|&b| b == b'\n').next().unwrap_or(&[]));
        let status = first.trim().strip_prefix("NATS/1.0").unwrap_or("").trim();
        if status.starts_with("503") {
            return Err(AckError::NoStream);
        }
        if !status.is_empty() && payload.is_empty() {
            return Err(AckError::Other(format!("status {status}")));
        }
    }
    check_ack_body(payload).map_err(AckError::Other)
}

fn check_ack_body(payload: &[u8]) -> Result<(), String> {
    let reply: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("unreadable acknowledgement ({e})"))?;
    if let Some(err) = reply.get("error") {
        return Err(format!(
            "{} (code {}, error code {})",
            err["description"].as_str().unwrap_or("JetStream error"),
            err["code"],
            err["err_code"]
        ));
    }
    if reply.get("stream").is_none() {
        return Err(format!("unexpected acknowledgement {reply}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let s = parse_server("nats://127.0.0.1:4222").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 4222));
        let s = parse_server(" localhost ").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.login),
            ("localhost", 4222, Login::None)
        );
        let s = parse_server("nats://u:p@[::1]:5000/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.login),
            ("::1", 5000, Login::UserPassword("u".into(), "p".into()))
        );
        let s = parse_server("NATS://tok@h").unwrap();
        assert_eq!(s.login, Login::Token("tok".into()));
        assert!(matches!(
            parse_server("tls://h:4222"),
            Err(WireError::Unsupported(_))
        ));
        assert!(matches!(parse_server("h:x"), Err(WireError::Connect(_))));
    }

    #[test]
    fn connect_line_without_login_is_the_json_one() {
        let json = connect_options();
        assert_eq!(
            String::from_utf8(connect_line(&Login::None)).unwrap(),
            format!("CONNECT {json}\r\n")
        );
        let with_token = String::from_utf8(connect_line(&Login::Token("t".into()))).unwrap();
        assert!(with_token.contains(r#""auth_token":"t""#), "{with_token}");
    }

    #[test]
    fn reads_acks() {
        assert!(check_ack(b"", br#"{"stream":"s","seq":3}"#).is_ok());
        assert!(check_ack(b"", br#"{"stream":"s","seq":3,"duplicate":true}"#).is_ok());
        let Err(AckError::Other(e)) = check_ack(
            b"",
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        ) else {
            panic!("an API error is not an ack");
        };
        assert!(e.contains("maximum messages exceeded"), "{e}");
        assert_eq!(
            check_ack(b"NATS/1.0 503\r\n\r\n", b""),
            Err(AckError::NoStream)
        );
    }
}
