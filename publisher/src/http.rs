//! The HTTP side: `GET /freebusy/<user>.ifb` (VFREEBUSY), `GET /freebusy/<user>.json`,
//! `/healthz`, `/readyz`, `/metrics`; ETag / If-None-Match; graceful shutdown.
//!
//! Requests are answered from the cache; only a user's first request (or the
//! first after they were dropped) loads their snapshot from PostgreSQL, and a
//! user with too many periods to cache is read one window at a time.
//!
//! Bounded against abuse (docs/hostile-input.md, "Publisher"): the request
//! path and the user name by length and content, the window by length, an
//! answer by its number of periods; connections by number
//! ([`imipflow_telemetry::connections`]), by the time a request head may take (which is
//! also how long a keep-alive connection may sit idle) and by the time
//! without a byte moving.

use crate::cache::{Cache, Lookup, UserFreeBusy};
use crate::config::UnknownUsers;
use crate::error::PublisherError;
use crate::health::Health;
use crate::store::Db;
use chrono::{DateTime, Duration, Utc};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use imipflow_schema::{BusyPeriod, MAX_ADDRESS_BYTES, VFreeBusy, normalize_address};
use imipflow_telemetry::connections::{Admission, Connections, Watched};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// PRODID of the published VFREEBUSY.
pub const PRODID: &str = "-//imipflow//imip-publisher//EN";

/// The default window starts this many days before today (00:00 UTC)…
pub const DEFAULT_PAST_DAYS: i64 = 7;
/// …and ends this many days after it.
pub const DEFAULT_FUTURE_DAYS: i64 = 365;

/// Longest request path (before decoding) looked at: a 254-octet address
/// percent-encoded whole is 762 bytes, plus `/freebusy/` and `.json`.
pub const MAX_PATH_BYTES: usize = 1024;

/// Per-request limits (settings, docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_periods: usize,
    pub max_cached_periods: usize,
    pub max_window: Duration,
    pub unknown_users: UnknownUsers,
}

/// What the handlers share.
pub struct App {
    pub cache: Arc<Cache>,
    pub db: Db,
    pub limits: Limits,
    pub health: Arc<Health>,
    /// With `IMIP_PUBLISHER_UNKNOWN_USERS=empty`, ETags hide the event
    /// sequence behind a keyed hash (a key of this process): otherwise an
    /// unknown address would show itself by its constant `0`.
    pub etag_key: Option<std::hash::RandomState>,
}

impl App {
    /// The version part of an ETag: the sequence, or its keyed hash.
    fn etag_version(&self, version: i64, user: &str) -> String {
        use std::hash::BuildHasher;
        match &self.etag_key {
            None => version.to_string(),
            Some(key) => format!("{:016x}", key.hash_one((version, user))),
        }
    }
}

/// Connection-level bounds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: std::time::Duration,
    pub idle: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/calendar` VFREEBUSY, as imip-agent and Outlook publish.
    Ifb,
    /// `imip-ctl freebusy --json`.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`, `/readyz`, `/metrics`: `imipflow_telemetry::answer`.
    Operations,
    FreeBusy {
        user: String,
        format: Format,
    },
    BadRequest(String),
    UriTooLong,
    NotFound,
}

/// The route of a request path (`/freebusy/<user>.<ifb|json>`, the user
/// percent-decoded and normalised).
pub fn route(path: &str) -> Route {
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Route::Operations;
    }
    if path.len() > MAX_PATH_BYTES {
        return Route::UriTooLong;
    }
    let Some(file) = path.strip_prefix("/freebusy/") else {
        return Route::NotFound;
    };
    let (stem, format) = if let Some(s) = file.strip_suffix(".ifb") {
        (s, Format::Ifb)
    } else if let Some(s) = file.strip_suffix(".json") {
        (s, Format::Json)
    } else {
        return Route::NotFound;
    };
    let Some(decoded) = percent_decode(stem) else {
        return Route::BadRequest("the user is not percent-encoded UTF-8".into());
    };
    // NUL (which PostgreSQL refuses in text), CR/LF and the other controls
    // are in no mail address.
    if decoded.chars().any(char::is_control) {
        return Route::BadRequest("the user contains a control character".into());
    }
    if decoded.len() > MAX_ADDRESS_BYTES {
        return Route::BadRequest(format!(
            "the user is longer than a mail address may be ({MAX_ADDRESS_BYTES} octets)"
        ));
    }
    if decoded.contains('/') {
        return Route::NotFound;
    }
    match normalize_address(&decoded) {
        Some(user) => Route::FreeBusy { user, format },
        None => Route::NotFound,
    }
}

/// `%XX` decoding; `+` stays `+` (RFC 3339 offsets in the query need it).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The window of a request: `from` and `to` (RFC 3339) from the query, each
/// defaulting to [today − 7 days, today + 365 days) at 00:00 UTC, so that the
/// default window (and with it the ETag) changes once a day; at most
/// `max_window` long.
pub fn window(
    query: Option<&str>,
    now: DateTime<Utc>,
    max_window: Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let mut from = today - Duration::days(DEFAULT_PAST_DAYS);
    let mut to = today + Duration::days(DEFAULT_FUTURE_DAYS);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match name {
            "from" => &mut from,
            "to" => &mut to,
            _ => continue,
        };
        let text = percent_decode(value).ok_or_else(|| format!("{name}: bad encoding"))?;
        *target = DateTime::parse_from_rfc3339(&text)
            .map_err(|e| format!("{name}: not an RFC 3339 time ({e}): {text:?}"))?
            .with_timezone(&Utc);
    }
    if from >= to {
        return Err("from must be before to".into());
    }
    if to - from > max_window {
        return Err(format!(
            "the window from {from} to {to} is longer than {} days (IMIP_PUBLISHER_MAX_WINDOW_DAYS)",
            max_window.num_days()
        ));
    }
    Ok((from, to))
}

/// An answer's periods, at most `max` of them: when the window holds more,
/// the answer covers the window only up to the start of the first period
/// left out, so that it never shows as free a time it has not looked at.
/// `periods` are sorted; returns them with the end of the window covered,
/// and whether that is short of `to`.
pub fn cap(
    mut periods: Vec<BusyPeriod>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max: usize,
) -> Result<(Vec<BusyPeriod>, DateTime<Utc>, bool), String> {
    if periods.len() <= max {
        return Ok((periods, to, false));
    }
    let cut = periods[max].start;
    if cut <= from {
        return Err(format!(
            "more than {max} busy periods overlap the start of the window \
             (IMIP_PUBLISHER_MAX_PERIODS); ask for a later `from`"
        ));
    }
    periods.truncate(max);
    periods.retain(|p| p.start < cut);
    Ok((periods, cut, true))
}

/// The (weak) ETag of a user's free/busy over a window: the event sequence at
/// which their periods last changed, and the window.
pub fn etag(version: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let f = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%S%.fZ").to_string();
    format!("W/\"{}-{}-{}\"", version, f(from), f(to))
}

/// Whether `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || opaque(t) == ours)
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

/// The `.json` document, shaped as `imip-ctl freebusy --json`'s; `truncated`
/// when the window was cut short (then `to` says where the answer ends).
#[derive(serde::Serialize)]
struct Document<'a> {
    user: &'a str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    truncated: bool,
    periods: &'a [BusyPeriod],
}

/// What a free/busy answer is made of.
struct Found {
    version: i64,
    stamp: DateTime<Utc>,
    periods: Vec<BusyPeriod>,
}

/// Answers one request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (user, format) = match route(req.uri().path()) {
        Route::Operations => {
            return imipflow_telemetry::answer(&*app.health, req.method(), req.uri().path())
                .await
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found"));
        }
        Route::NotFound => return text(StatusCode::NOT_FOUND, "not found"),
        Route::UriTooLong => return text(StatusCode::URI_TOO_LONG, "request path too long"),
        Route::BadRequest(why) => return text(StatusCode::BAD_REQUEST, &why),
        Route::FreeBusy { user, format } => (user, format),
    };
    let (from, to) = match window(req.uri().query(), Utc::now(), app.limits.max_window) {
        Ok(w) => w,
        Err(why) => return text(StatusCode::BAD_REQUEST, &why),
    };
    let max = app.limits.max_periods;
    let looked_up = app
        .cache
        .get(&user, || app.db.load(&user, app.limits.max_cached_periods))
        .await;
    let found = match looked_up {
        Ok(Lookup::FreeBusy(fb)) => in_window(&fb, from, to, app.limits.unknown_users),
        Ok(Lookup::Large) => app
            .db
            .window(&user, from, to, max.saturating_add(1))
            .await
            .map(|(sequence, periods)| {
                Some(Found {
                    version: sequence,
                    stamp: Utc::now(),
                    periods,
                })
            }),
        Err(e) => Err(e),
    };
    let found = match found {
        Ok(Some(f)) => f,
        Ok(None) => return text(StatusCode::NOT_FOUND, "unknown user"),
        Err(e) => {
            tracing::warn!(%user, error = %e, "cannot load free/busy");
            return text(StatusCode::SERVICE_UNAVAILABLE, "free/busy unavailable");
        }
    };
    let (periods, to, truncated) = match cap(found.periods, from, to, max) {
        Ok(c) => c,
        Err(why) => return text(StatusCode::BAD_REQUEST, &why),
    };
    let tag = etag(&app.etag_version(found.version, &user), from, to);
    let matched = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &tag));
    let mut response = if matched {
        Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
            .expect("valid response")
    } else {
        match format {
            Format::Ifb => respond(
                StatusCode::OK,
                "text/calendar; charset=utf-8",
                VFreeBusy {
                    prodid: PRODID,
                    user: &user,
                    from,
                    to,
                    dtstamp: found.stamp,
                    periods: &periods,
                }
                .to_ics(),
            ),
            Format::Json => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&Document {
                    user: &user,
                    from,
                    to,
                    truncated,
                    periods: &periods,
                })
                .expect("serialisable"),
            ),
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("ETag is ASCII"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A cached (or just loaded) user's periods in the window; `None` for an
/// unknown user answered 404.
fn in_window(
    fb: &UserFreeBusy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    unknown: UnknownUsers,
) -> Result<Option<Found>, PublisherError> {
    if !fb.is_known() && unknown == UnknownUsers::NotFound {
        return Ok(None);
    }
    Ok(Some(Found {
        version: fb.version,
        stamp: fb.stamp,
        periods: fb.in_window(from, to),
    }))
}

/// Sets the publisher's metrics from the cache's and the connections'
/// counters (before each `/metrics` render; names in docs/operations.md).
pub fn set_metrics(cache: &Cache, open: &Connections, c: &ConnectionCounters) {
    let s = cache.stats();
    metrics::gauge!("imipflow_publisher_cached_users").set(s.users as f64);
    metrics::gauge!("imipflow_publisher_cache_bytes").set(s.bytes as f64);
    metrics::counter!("imipflow_publisher_loads_total").absolute(s.loads);
    metrics::counter!("imipflow_publisher_events_applied_total").absolute(s.applied);
    metrics::counter!("imipflow_publisher_events_skipped_total").absolute(s.skipped);
    metrics::counter!("imipflow_publisher_gaps_total").absolute(s.gaps);
    metrics::counter!("imipflow_publisher_cache_evictions_total").absolute(s.evictions);
    metrics::gauge!("imipflow_publisher_connections").set(open.open() as f64);
    metrics::gauge!("imipflow_publisher_connection_limit").set(open.limit() as f64);
    metrics::counter!("imipflow_publisher_connections_shed_total")
        .absolute(c.shed.load(Ordering::Relaxed));
    metrics::counter!("imipflow_publisher_connections_displaced_total")
        .absolute(c.displaced.load(Ordering::Relaxed));
    metrics::counter!("imipflow_publisher_connections_timed_out_total")
        .absolute(c.timed_out.load(Ordering::Relaxed));
}

/// Connections refused or displaced, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    pub shed: AtomicU64,
    pub displaced: AtomicU64,
    pub timed_out: AtomicU64,
}

/// What a connection turned away at the limit reads before it is closed.
const SHED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// Serves until `shutdown` turns true, then lets open requests finish (at
/// most 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    conns: Arc<Connections>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PublisherError> {
    let graceful = GracefulShutdown::new();
    let counters = app.health.connections.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors after all (something else took them):
                    // pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let slot = match conns.admit() {
            Admission::Admitted { slot, displaced } => {
                if displaced {
                    counters.displaced.fetch_add(1, Ordering::Relaxed);
                }
                slot
            }
            Admission::Full => {
                counters.shed.fetch_add(1, Ordering::Relaxed);
                // Best effort, never waiting: a client that does not read
                // gets the close alone.
                let _ = stream.try_write(SHED);
                drop(stream);
                continue;
            }
        };
        let app = app.clone();
        let conn = slot.conn.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            let busy = conn.busy();
            async move {
                let response = handle(&app, req).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let io = TokioIo::new(Watched::new(stream, slot.conn.clone()));
        let connection = graceful.watch(builder.serve_connection(io, service));
        let counters = counters.clone();
        let idle = timeouts.idle;
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let idle_ms = idle.as_millis() as u64;
            loop {
                let wait = idle_ms.saturating_sub(slot.conn.quiet_ms()).max(1);
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = slot.conn.close.notified() => {
                        tracing::debug!(%peer, "connection displaced at the limit");
                        break;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {
                        if slot.conn.quiet_ms() >= idle_ms {
                            counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "connection idle too long");
                            break;
                        }
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            tracing::warn!("open connections did not finish within 10 s");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Route::Operations);
        assert_eq!(route("/readyz"), Route::Operations);
        assert_eq!(
            route("/freebusy/Alice@Example.com.ifb"),
            Route::FreeBusy {
                user: "alice@example.com".into(),
                format: Format::Ifb
            }
        );
        assert_eq!(
            route("/freebusy/alice%40example.com.json"),
            Route::FreeBusy {
                user: "alice@example.com".into(),
                format: Format::Json
            }
        );
        assert_eq!(route("/freebusy/alice@example.com"), Route::NotFound);
        assert_eq!(route("/freebusy/.ifb"), Route::NotFound);
        assert_eq!(route("/freebusy/a%2Fb.ifb"), Route::NotFound);
        assert!(matches!(route("/freebusy/%ff.ifb"), Route::BadRequest(_)));
        assert_eq!(route("/other"), Route::NotFound);
        for control in ["a%00b@x", "%00", "a%0d%0a@x", "a%7f@x", "a%c2%85@x"] {
            assert!(
                matches!(
                    route(&format!("/freebusy/{control}.ifb")),
                    Route::BadRequest(_)
                ),
                "{control}"
            );
        }
        let long = format!("/freebusy/{}@x.json", "a".repeat(253));
        assert!(matches!(route(&long), Route::BadRequest(_)));
        let fits = format!("/freebusy/{}@x.json", "a".repeat(252));
        assert!(matches!(route(&fits), Route::FreeBusy { .. }));
        let huge = format!("/freebusy/{}@x.json", "a".repeat(64 * 1024));
        assert_eq!(route(&huge), Route::UriTooLong);
    }

    fn p(start: &str) -> BusyPeriod {
        let start: DateTime<Utc> = start.parse().unwrap();
        BusyPeriod {
            start,
            end: start + Duration::minutes(30),
            fbtype: imipflow_schema::FbType::Busy,
            uid: "u".into(),
            recurrence_id: None,
        }
    }

    #[test]
    fn a_capped_answer_covers_the_window_up_to_the_first_period_left_out() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let (from, to) = (t("2027-03-01T00:00:00Z"), t("2027-04-01T00:00:00Z"));
        let all = vec![
            p("2027-03-01T09:00:00Z"),
            p("2027-03-02T09:00:00Z"),
            p("2027-03-02T09:00:00Z"),
            p("2027-03-03T09:00:00Z"),
        ];
        assert_eq!(
            cap(all.clone(), from, to, 4).unwrap(),
            (all.clone(), to, false)
        );
        // Three fit, but the third starts where the fourth (left out) does.
        let (kept, end, truncated) = cap(all.clone(), from, to, 2).unwrap();
        assert_eq!(
            (kept, end, truncated),
            (all[..1].to_vec(), t("2027-03-02T09:00:00Z"), true)
        );
        let (kept, end, _) = cap(all.clone(), from, to, 3).unwrap();
        assert_eq!((kept, end), (all[..3].to_vec(), t("2027-03-03T09:00:00Z")));
        // Nothing can be answered truthfully when the cut is the window's start.
        let early = vec![p("2027-02-28T23:50:00Z"), p("2027-02-28T23:50:00Z")];
        assert!(cap(early, from, to, 1).is_err());
    }

    #[test]
    fn windows() {
        let now: DateTime<Utc> = "2027-03-10T15:30:00Z".parse().unwrap();
        let max = Duration::days(1830);
        let (from, to) = window(None, now, max).unwrap();
        assert_eq!(
            from,
            "2027-03-03T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(to, "2028-03-09T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        let (from, to) = window(
            Some("from=2027-03-01T00:00:00%2B01:00&to=2027-04-01T00:00:00Z&x=1"),
            now,
            max,
        )
        .unwrap();
        assert_eq!(
            from,
            "2027-02-28T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(to, "2027-04-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        let (from, _) = window(Some("from=2027-03-01T00:00:00+01:00"), now, max).unwrap();
        assert_eq!(
            from,
            "2027-02-28T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(window(Some("from=yesterday"), now, max).is_err());
        assert!(
            window(
                Some("from=2027-04-01T00:00:00Z&to=2027-03-01T00:00:00Z"),
                now,
                max
            )
            .is_err()
        );
        let long = window(
            Some("from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"),
            now,
            max,
        );
        assert!(long.unwrap_err().contains("longer than 1830 days"));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = "W/\"5-a-b\"";
        assert!(none_match("W/\"5-a-b\"", tag));
        assert!(none_match("\"5-a-b\"", tag));
        assert!(none_match("\"x\", W/\"5-a-b\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("W/\"4-a-b\"", tag));
    }
}
