//! A minimal SMTP server for the manager's tests (tests/tests/manager.rs,
//! manager_abuse.rs): it accepts what `imip-manager` submits and keeps each
//! message with its envelope, so a test can inspect exactly who it went to
//! and hand it to the real `imip-ingest` as an MTA would.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One message the sink accepted: envelope sender, recipients, content.
#[derive(Debug, Clone)]
pub struct Received {
    pub sender: String,
    pub recipients: Vec<String>,
    pub data: String,
}

impl Received {
    /// The header section (up to the first empty line), unfolded.
    pub fn headers(&self) -> String {
        let end = self.data.find("\r\n\r\n").unwrap_or(self.data.len());
        self.data[..end]
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ")
    }

    /// The body (after the first empty line).
    pub fn body(&self) -> &str {
        self.data
            .find("\r\n\r\n")
            .map_or("", |at| &self.data[at + 4..])
    }
}

/// A minimal SMTP server on 127.0.0.1: enough of RFC 5321 for lettre
/// (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT); keeps what it accepts.
pub struct Sink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = session(sock, store).await;
                });
            }
        });
        Sink { port, received }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Nothing received, after a pause long enough for a submission the
    /// manager had started to arrive (panics otherwise).
    pub async fn assert_nothing_sent(&self) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let got = self.received();
        assert!(got.is_empty(), "sent although refused: {got:?}");
    }

    /// At least `n` messages, within 30 s (panics otherwise).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sink received {} of {n} messages within 30 s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn angle(arg: &str) -> String {
    let a = arg.split_once(':').map(|x| x.1).unwrap_or(arg).trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}

async fn session(
    sock: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut sender, mut recipients) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 sink\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            sender = angle(&line);
            recipients.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            recipients.push(angle(&line));
            b"250 ok\r\n"
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            store.lock().unwrap().push(Received {
                sender: sender.clone(),
                recipients: std::mem::take(&mut recipients),
                data,
            });
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 ok\r\n"
        };
        w.write_all(reply).await?;
    }
}
