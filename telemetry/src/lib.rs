//! What every long-running imipflow binary shares for being operated: log
//! set-up ([`init_logging`], text or JSON lines on stderr) and the small HTTP
//! listener ([`serve`]) answering `/metrics` (Prometheus text format),
//! `/healthz` and `/readyz`, on the accept loop with connection and header
//! limits ([`serve_with`]) that the manager serves its pages on too.
//!
//! The metric *names* belong to the binaries (`imipflow_processor::metrics`);
//! this crate only installs the recorder and renders it, so that the processor
//! and the publisher expose the same way. [`connections`] bounds the open
//! HTTP connections of both listeners.

pub mod connections;

use connections::{Admission, Connections, Watched};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("IMIP_LOG_FORMAT: {0:?} is neither \"text\" nor \"json\"")]
    LogFormat(String),
    #[error("metrics listener {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics listen address {0:?}: expected HOST:PORT, or empty to disable")]
    ListenAddress(String),
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`tracing`'s default format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (the message and its own fields), `span` and `spans` (the fields of the
    /// enclosing spans, e.g. user, uid, method, seq, partition).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(TelemetryError::LogFormat(s.to_owned())),
        }
    }
}

/// Installs the global subscriber: level filter from `IMIP_LOG` (an
/// `EnvFilter` directive, default `default_filter`), format from
/// `IMIP_LOG_FORMAT` (`text` or `json`). Logs go to stderr so that stdout
/// stays the command's output. Read from the environment only (not from the
/// config file), because logging has to work before the configuration does.
pub fn init_logging(default_filter: &str) -> Result<LogFormat, TelemetryError> {
    let format: LogFormat = std::env::var("IMIP_LOG_FORMAT")
        .unwrap_or_default()
        .parse()?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMIP_LOG")
        .unwrap_or_else(|_| default_filter.into());
    // Colour only for a person at a terminal: journald and log files get
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(format)
}

/// Bucket boundaries (seconds) of the latency histograms: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle). Metrics whose name ends in `_seconds` are histograms
/// with [`LATENCY_BUCKETS`].
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    // Histograms keep raw samples until upkeep folds them into buckets.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The rendered metrics (Prometheus text exposition format), empty before
/// [`install_recorder`].
pub fn render() -> String {
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

/// `IMIP_METRICS_LISTEN`-style address: `None` when empty (disabled).
pub fn parse_listen(addr: &str) -> Result<Option<SocketAddr>, TelemetryError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    addr.parse()
        .map(Some)
        .map_err(|_| TelemetryError::ListenAddress(addr.to_owned()))
}

/// What the binary tells the listener.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when the process can do its work; `Err(reason)` for `/readyz` 503.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Called before each `/metrics` render: refresh gauges that are read
    /// from elsewhere (lag, dead letters) rather than counted as things happen.
    fn refresh(&self) -> impl Future<Output = ()> + Send;
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers `/metrics`, `/healthz`, `/readyz`; `None` for any other path (a
/// binary with its own HTTP server routes those itself).
pub async fn answer<P: Probe>(
    probe: &P,
    method: &Method,
    path: &str,
) -> Option<Response<Full<Bytes>>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    Some(match path {
        "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => match probe.ready().await {
            Ok(()) => respond(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            probe.refresh().await;
            respond(StatusCode::OK, METRICS_CONTENT_TYPE, render())
        }
        _ => return None,
    })
}

/// Most connections the listener serves at once (scrapers and probes need a
/// few; kept well below the usual 1,024 descriptors).
pub const MAX_CONNECTIONS: usize = 256;
/// A request's head must arrive within this (hyper also closes an idle
/// keep-alive connection after it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (so that a taken port fails at start-up, not later).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `/metrics`, `/healthz`, `/readyz` on `listener` until `shutdown`
/// turns true. Scrapers and health checks need a handful of connections:
/// the cap keeps a flood of idle ones (each a descriptor) from starving the
/// probes, and a newcomer at the cap displaces the quietest idle connection,
/// so a health check always gets through.
pub async fn serve<P: Probe>(
    listener: TcpListener,
    probe: Arc<P>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = Limits {
        max_connections: MAX_CONNECTIONS,
        header_read: HEADER_READ_TIMEOUT,
        drain: Duration::from_secs(5),
    };
    serve_with(listener, limits, shutdown, move |_peer| {
        let probe = probe.clone();
        service_fn(move |req: Request<Incoming>| {
            let probe = probe.clone();
            async move {
                let r = answer(&*probe, req.method(), req.uri().path()).await;
                Ok::<_, std::convert::Infallible>(r.unwrap_or_else(|| {
                    respond(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n".into(),
                    )
                }))
            }
        })
    })
    .await;
}

/// What an HTTP listener of [`serve_with`] allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; at the cap a newcomer displaces the
    /// quietest connection not answering a request, or is closed when every
    /// one is.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (slowloris; an
    /// idle keep-alive connection waits under it too).
    pub header_read: Duration,
    /// After shutdown, how long open requests (and streams) may take to end.
    pub drain: Duration,
}

/// Serves HTTP/1.1 on `listener` with `service(peer)` for each connection,
/// under `limits`, until `shutdown` turns true; then lets what is open end
/// within `limits.drain`. The one accept loop of the metrics listeners and
/// the manager (the publisher's adds idle timeouts and counters of its own).
pub async fn serve_with<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let conns = Connections::new(limits.max_connections);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors after all (something else took
                    // them): pause, go on.
                    tracing::warn!(error = %e, "listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let slot = match conns.admit() {
            Admission::Admitted { slot, .. } => slot,
            // Every connection is answering a request: close the newcomer.
            Admission::Full => continue,
        };
        let inner = service(peer);
        let conn = slot.conn.clone();
        // A connection counts as busy (not to be displaced) while a request
        // is being answered.
        let service = service_fn(move |req: Request<Incoming>| {
            let busy = conn.busy();
            let answer = hyper::service::Service::call(&inner, req);
            async move {
                let r = answer.await;
                drop(busy);
                r
            }
        });
        let io = TokioIo::new(Watched::new(stream, slot.conn.clone()));
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = slot.conn.close.notified() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.drain, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("TEXT".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("").unwrap(), None);
        assert_eq!(
            parse_listen("127.0.0.1:9464").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(parse_listen("localhost").is_err());
    }
}
