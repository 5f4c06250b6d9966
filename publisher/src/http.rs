//! The HTTP side: `GET /freebusy/<user>.ifb` (VFREEBUSY), `GET /freebusy/<user>.json`,
//! `GET /healthz`; ETag / If-None-Match; graceful shutdown.
//!
//! Requests are answered from the cache; only a user's first request (or the
//! first after they were dropped) loads their snapshot from PostgreSQL.

use crate::cache::{Cache, UserFreeBusy};
use crate::error::PublisherError;
use crate::store::Db;
use chrono::{DateTime, Duration, Utc};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use imipflow_schema::{VFreeBusy, normalize_address};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// PRODID of the published VFREEBUSY.
pub const PRODID: &str = "-//imipflow//imip-publisher//EN";

/// The default window starts this many days before today (00:00 UTC)…
pub const DEFAULT_PAST_DAYS: i64 = 7;
/// …and ends this many days after it.
pub const DEFAULT_FUTURE_DAYS: i64 = 365;

/// What the handlers share.
pub struct App {
    pub cache: Arc<Cache>,
    pub db: Db,
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
    Health,
    /// Prometheus metrics (docs/operations.md).
    Metrics,
    FreeBusy {
        user: String,
        format: Format,
    },
    BadRequest(String),
    NotFound,
}

/// The route of a request path (`/freebusy/<user>.<ifb|json>`, the user
/// percent-decoded and normalised).
pub fn route(path: &str) -> Route {
    if path == "/healthz" {
        return Route::Health;
    }
    if path == "/metrics" {
        return Route::Metrics;
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
/// default window (and with it the ETag) changes once a day.
pub fn window(
    query: Option<&str>,
    now: DateTime<Utc>,
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
    Ok((from, to))
}

/// The (weak) ETag of a user's free/busy over a window: the event sequence at
/// which their periods last changed, and the window.
pub fn etag(fb: &UserFreeBusy, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let f = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%S%.fZ").to_string();
    format!("W/\"{}-{}-{}\"", fb.version, f(from), f(to))
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

/// The cache's counters as Prometheus metrics (empty when no recorder is installed).
fn metrics(cache: &Cache) -> Response<Full<Bytes>> {
    let s = cache.stats();
    metrics::gauge!("imipflow_publisher_cached_users").set(s.users as f64);
    metrics::counter!("imipflow_publisher_loads_total").absolute(s.loads);
    metrics::counter!("imipflow_publisher_events_applied_total").absolute(s.applied);
    metrics::counter!("imipflow_publisher_events_skipped_total").absolute(s.skipped);
    metrics::counter!("imipflow_publisher_gaps_total").absolute(s.gaps);
    respond(
        StatusCode::OK,
        imipflow_telemetry::METRICS_CONTENT_TYPE,
        imipflow_telemetry::render(),
    )
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", format!("{msg}\n"))
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
        Route::Health => return text(StatusCode::OK, "ok"),
        Route::Metrics => return metrics(&app.cache),
        Route::NotFound => return text(StatusCode::NOT_FOUND, "not found"),
        Route::BadRequest(why) => return text(StatusCode::BAD_REQUEST, &why),
        Route::FreeBusy { user, format } => (user, format),
    };
    let (from, to) = match window(req.uri().query(), Utc::now()) {
        Ok(w) => w,
        Err(why) => return text(StatusCode::BAD_REQUEST, &why),
    };
    let fb = match app.cache.get(&user, || app.db.load(&user)).await {
        Ok(fb) => fb,
        Err(e) => {
            tracing::warn!(%user, error = %e, "cannot load free/busy");
            return text(StatusCode::SERVICE_UNAVAILABLE, "free/busy unavailable");
        }
    };
    if !fb.is_known() {
        return text(StatusCode::NOT_FOUND, "unknown user");
    }
    let tag = etag(&fb, from, to);
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
        let periods = fb.in_window(from, to);
        match format {
            Format::Ifb => respond(
                StatusCode::OK,
                "text/calendar; charset=utf-8",
                VFreeBusy {
                    prodid: PRODID,
                    user: &user,
                    from,
                    to,
                    dtstamp: fb.stamp,
                    periods: &periods,
                }
                .to_ics(),
            ),
            Format::Json => respond(
                StatusCode::OK,
                "application/json",
                serde_json::json!({"user": user, "from": from, "to": to, "periods": periods})
                    .to_string(),
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

/// Serves until `shutdown` turns true, then lets open requests finish (at
/// most 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PublisherError> {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(&app, req).await) }
        });
        let connection =
            graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
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
        assert_eq!(route("/healthz"), Route::Health);
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
    }

    #[test]
    fn windows() {
        let now: DateTime<Utc> = "2027-03-10T15:30:00Z".parse().unwrap();
        let (from, to) = window(None, now).unwrap();
        assert_eq!(
            from,
            "2027-03-03T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(to, "2028-03-09T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        let (from, to) = window(
            Some("from=2027-03-01T00:00:00%2B01:00&to=2027-04-01T00:00:00Z&x=1"),
            now,
        )
        .unwrap();
        assert_eq!(
            from,
            "2027-02-28T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(to, "2027-04-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        let (from, _) = window(Some("from=2027-03-01T00:00:00+01:00"), now).unwrap();
        assert_eq!(
            from,
            "2027-02-28T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(window(Some("from=yesterday"), now).is_err());
        assert!(
            window(
                Some("from=2027-04-01T00:00:00Z&to=2027-03-01T00:00:00Z"),
                now
            )
            .is_err()
        );
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
