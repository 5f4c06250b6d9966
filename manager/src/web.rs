//! The pages and the answer form: `GET /` (pending requests and agenda),
//! `GET /week` (free/busy of one week; `?user=<address>` a colleague's, when
//! they share it), `POST /sharing` (share one's own free/busy, or stop),
//! `POST /requests/{uid}/answer`,
//! `GET /events` (Server-Sent Events), the page's script and style under
//! `/static/`, and `/healthz`, `/readyz`, `/metrics`. Every page needs a user
//! ([`crate::auth`]); every POST a CSRF token of that user.
//!
//! Every response carries headers that keep the pages out of frames (the
//! Accept and Decline buttons must not be clickjacked), their type as
//! declared, their URL out of other sites' Referer, and personal data out of
//! caches; a request body is at most [`FORM_LIMIT`] bytes (413 before it is
//! read when it says it is larger), and a user has at most
//! [`STREAMS_PER_USER`] event streams open (429 beyond). docs/manager.md,
//! "Attacks at a glance", lists each attack and its outcome.

use crate::auth::{Trust, single_address};
use crate::error::ManagerError;
use crate::events::Notice;
use crate::health::Health;
use crate::mail::{self, Outbox, State, Status};
use crate::reply::{self, Answer};
use crate::store::{Busy, Db, PendingRow, Period};
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State as AxState,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use imipflow_schema::FbType;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Largest request body: an answer's form is a token, a PARTSTAT and a time
/// (well under 1 KB); anything near this is no form of this page.
pub const FORM_LIMIT: usize = 16 * 1024;

/// Event streams one user may have open at once (each open page holds one);
/// the next is 429 until one closes.
pub const STREAMS_PER_USER: usize = 16;

/// The page's policy: nothing from elsewhere, its own script and style only
/// (no inline script, so injected markup could not run even unescaped), its
/// fetch and event stream to itself, forms to itself, and never in a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// What the handlers share.
pub struct App {
    pub db: Db,
    pub trust: Trust,
    pub outbox: Arc<Outbox>,
    pub calendar: String,
    pub tz: Tz,
    pub publisher_url: String,
    pub agenda_weeks: u32,
    pub notices: broadcast::Sender<Notice>,
    pub health: Arc<Health>,
    pub shutdown: watch::Receiver<bool>,
    /// Open event streams per user.
    pub streams: Streams,
}

/// How many event streams each user has open.
#[derive(Default)]
pub struct Streams {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream of a user; dropped (the stream ended or its client went
/// away), it frees its place.
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Streams {
    /// A place for one more stream of `user`, or `None` at the cap.
    pub fn acquire(&self, user: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("streams lock");
        let n = open.entry(user.to_owned()).or_default();
        if *n >= STREAMS_PER_USER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("streams lock");
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

type Shared = Arc<App>;

/// The signed-in user, or a 401.
pub struct User {
    pub address: String,
    /// `?as=<user>` to carry on links in development mode, else empty.
    pub query: String,
}

impl FromRequestParts<Shared> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let dev = if app.trust.dev_pick_user {
            query_param(parts.uri.query().unwrap_or(""), "as")
        } else {
            None
        };
        match app.trust.user(peer, &parts.headers, dev.as_deref()) {
            Ok(address) => {
                let query = match dev {
                    Some(_) => format!("?as={}", encode(&address)),
                    None => String::new(),
                };
                Ok(User { address, query })
            }
            Err(why) => {
                tracing::info!(%peer, reason = %why, "refused: no user");
                metrics::counter!("imip_manager_refused_total", "status" => "401").increment(1);
                Err((
                    StatusCode::UNAUTHORIZED,
                    format!("401 Unauthorized: {why}\n"),
                )
                    .into_response())
            }
        }
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A UID as one path segment (percent-encoded).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a UID cannot be a path segment: browsers (and every WHATWG URL
/// parser) resolve `.` and `..` (also as `%2E`) before sending, so these are
/// answered at `/requests/answer` with the UID in the form.
fn needs_uid_field(uid: &str) -> bool {
    matches!(uid, "" | "." | "..")
}

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/week", get(week))
        .route("/sharing", post(sharing))
        .route("/requests/{uid}/answer", post(answer))
        .route("/requests/answer", post(answer_by_field))
        .route("/events", get(events))
        .route("/static/manager.js", get(script))
        .route("/static/manager.css", get(style))
        .route("/healthz", get(operations))
        .route("/readyz", get(operations))
        .route("/metrics", get(operations))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::from_fn(guard))
        .with_state(app)
}

/// Refuses a body declared larger than [`FORM_LIMIT`] before reading any of
/// it (one of no declared length is cut at the limit by the form extractor,
/// also 413), and puts the safety headers on every response.
async fn guard(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let is_static = req.uri().path().starts_with("/static/");
    let mut res = if declared.is_some_and(|n| n > FORM_LIMIT as u64) {
        let mut r = refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a request body is at most {FORM_LIMIT} bytes"),
        );
        // The body is never read, so the connection cannot carry another
        // request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !is_static {
        // Pages, answers, refusals and the event stream are the user's own.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The pages' script and style: the same for everyone, no user needed.
async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/manager.js"),
    )
}

async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../static/manager.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn operations(AxState(app): AxState<Shared>, method: Method, uri: Uri) -> Response {
    match imipflow_telemetry::answer(&*app.health, &method, uri.path()).await {
        Some(r) => r.map(axum::body::Body::new),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// An error a page shows as a 500, logged with its cause.
struct PageError(ManagerError);

impl From<ManagerError> for PageError {
    fn from(e: ManagerError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "page failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error: the calendar cannot be read right now\n",
        )
            .into_response()
    }
}

fn render(t: &impl Template) -> Result<Response, PageError> {
    Ok(Html(t.render().map_err(ManagerError::from)?).into_response())
}

struct StatusView {
    uid: String,
    summary: String,
    partstat: String,
    state: String,
    failed: bool,
}

struct PendingView {
    uid: String,
    /// Where its forms post: `/requests/<uid>/answer`, or
    /// `/requests/answer` with [`Self::uid_field`].
    action: String,
    uid_field: Option<String>,
    organizer: String,
    summary: String,
    which: String,
    recurrence_id: Option<String>,
    when: Vec<String>,
    /// What the request changes in the user's calendar.
    change: String,
}

#[derive(Clone)]
struct BusyView {
    when: String,
    summary: String,
    fbtype: String,
    class: &'static str,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    user: String,
    q: String,
    ifb: String,
    zone: String,
    csrf: String,
    statuses: Vec<StatusView>,
    pending: Vec<PendingView>,
    answers: Vec<(&'static str, &'static str)>,
    agenda: Vec<BusyView>,
    weeks: u32,
}

impl App {
    fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .format("%a %d %b %Y %H:%M")
            .to_string()
    }

    fn span(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> String {
        let (s, e) = (start.with_timezone(&self.tz), end.with_timezone(&self.tz));
        if s.date_naive() == e.date_naive() {
            format!("{} – {}", self.local(start), e.format("%H:%M"))
        } else {
            format!("{} – {}", self.local(start), self.local(end))
        }
    }

    fn ifb(&self, user: &str) -> String {
        format!(
            "{}/freebusy/{}.ifb",
            self.publisher_url.trim_end_matches('/'),
            path_segment(user)
        )
    }

    fn busy_view(&self, b: &Busy) -> BusyView {
        BusyView {
            when: self.span(b.start, b.end),
            summary: b.summary.clone().unwrap_or_else(|| b.uid.clone()),
            fbtype: b.fbtype.as_str().to_owned(),
            class: if b.fbtype == FbType::BusyTentative {
                "tentative"
            } else {
                "busy"
            },
        }
    }

    /// A colleague's busy period: its time and type, nothing of the event.
    fn period_view(&self, b: &Period) -> BusyView {
        BusyView {
            when: self.span(b.start, b.end),
            summary: b.fbtype.as_str().to_owned(),
            fbtype: b.fbtype.as_str().to_owned(),
            class: if b.fbtype == FbType::BusyTentative {
                "tentative"
            } else {
                "busy"
            },
        }
    }

    fn pending_view(&self, p: &PendingRow) -> PendingView {
        let when = p
            .components
            .iter()
            .filter_map(|c| {
                let start = c.start.as_ref()?;
                let end = c.end.as_ref().unwrap_or(start);
                Some(match (start.utc, end.utc) {
                    (Some(s), Some(e)) => self.span(s, e),
                    _ if c.all_day => format!("{} (all day)", start.local),
                    _ => format!("{} – {}", start.local, end.local),
                })
            })
            .collect();
        PendingView {
            uid: p.uid.clone(),
            action: if needs_uid_field(&p.uid) {
                "/requests/answer".to_owned()
            } else {
                format!("/requests/{}/answer", path_segment(&p.uid))
            },
            uid_field: needs_uid_field(&p.uid).then(|| p.uid.clone()),
            organizer: reply::organizer(p).unwrap_or_else(|| "(no organizer)".into()),
            summary: p
                .summary
                .clone()
                .or_else(|| p.main().and_then(|c| c.summary.clone()))
                .unwrap_or_else(|| "(no summary)".into()),
            which: match p.recurrence_id {
                Some(rid) => format!("the occurrence of {}", self.local(rid)),
                None if p.main().is_some_and(|c| !c.rrule.is_empty()) => "the whole series".into(),
                None => String::new(),
            },
            recurrence_id: p
                .recurrence_id
                .map(|r| r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            when,
            change: self.change(p),
        }
    }

    /// "new", "update", or "moved from …" against the stored object.
    fn change(&self, p: &PendingRow) -> String {
        let Some((start, end)) = p.stored else {
            return "new invitation".into();
        };
        let proposed = p.main().map(|c| {
            (
                c.start.as_ref().and_then(|t| t.utc),
                c.end.as_ref().and_then(|t| t.utc),
            )
        });
        match (proposed, start, end) {
            (Some(now), Some(s), Some(e)) if now != (Some(s), Some(e)) => {
                format!("moved from {}", self.span(s, e))
            }
            _ => "update (same time)".into(),
        }
    }
}

fn status_view(s: &Status) -> StatusView {
    let (state, failed) = match &s.state {
        State::Sent => ("sent, waiting to apply".to_owned(), false),
        State::Applied => ("applied".to_owned(), false),
        State::Retrying { error, retry_at } => (
            format!("could not send ({error}); trying again at {retry_at}"),
            true,
        ),
        State::Failed { error } => (format!("could not send ({error}); not sent"), true),
    };
    StatusView {
        uid: s.uid.clone(),
        summary: s.summary.clone(),
        partstat: s.partstat.clone(),
        state,
        failed,
    }
}

async fn index(AxState(app): AxState<Shared>, user: User) -> Result<Response, PageError> {
    let pending = app.db.pending(&user.address).await?;
    let now = Utc::now();
    let agenda = app
        .db
        .busy(
            &user.address,
            now,
            now + Duration::weeks(i64::from(app.agenda_weeks.max(1))),
        )
        .await?;
    render(&IndexPage {
        ifb: app.ifb(&user.address),
        zone: app.tz.name().to_owned(),
        csrf: app.trust.csrf(&user.address),
        statuses: app
            .outbox
            .statuses(&user.address)
            .iter()
            .map(status_view)
            .collect(),
        pending: pending.iter().map(|p| app.pending_view(p)).collect(),
        answers: vec![
            ("ACCEPTED", "Accept"),
            ("TENTATIVE", "Tentative"),
            ("DECLINED", "Decline"),
        ],
        agenda: agenda.iter().map(|b| app.busy_view(b)).collect(),
        weeks: app.agenda_weeks.max(1),
        user: user.address,
        q: user.query,
    })
}

struct DayView {
    label: String,
    busy: Vec<BusyView>,
}

#[derive(Template)]
#[template(path = "week.html")]
struct WeekPage {
    user: String,
    csrf: String,
    q: String,
    /// The previous and next weeks' link up to `start=`: `/week?…&`.
    nav: String,
    ifb: String,
    zone: String,
    first: String,
    prev: String,
    next: String,
    days: Vec<DayView>,
    /// Whose week: `None` the user's own, else the colleague's address.
    owner: Option<String>,
    /// Whether the user shares their own free/busy (their own week's form).
    sharing: bool,
    /// The development mode's `as`, for the colleague form (a GET form
    /// replaces the action's query string with its fields).
    dev_as: Option<String>,
}

/// The answer to a colleague's week that is not shared, or of an address
/// nobody uses: one page, the same for both, so that it tells nothing about
/// which addresses exist.
#[derive(Template)]
#[template(path = "not_shared.html")]
struct NotSharedPage {
    user: String,
    csrf: String,
    q: String,
    ifb: String,
    dev_as: Option<String>,
}

async fn week(
    AxState(app): AxState<Shared>,
    user: User,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let dev_as = query_param(user.query.trim_start_matches('?'), "as");
    // `?user=`: a colleague's week. Not an address, not shared, or nobody's:
    // the same 404. One's own address is one's own week.
    let owner = match params.get("user").map(|u| u.trim()) {
        None | Some("") => None,
        Some(asked) => match single_address(asked) {
            Some(a) if a == user.address => None,
            Some(a) if app.db.shares(&a).await? => Some(a),
            _ => {
                tracing::info!(user = %user.address, "a colleague's week that is not shared");
                metrics::counter!("imip_manager_refused_total", "status" => "404").increment(1);
                let page = NotSharedPage {
                    csrf: app.trust.csrf(&user.address),
                    ifb: app.ifb(&user.address),
                    user: user.address,
                    q: user.query,
                    dev_as,
                };
                let mut r = render(&page)?;
                *r.status_mut() = StatusCode::NOT_FOUND;
                return Ok(r);
            }
        },
    };
    let today = Utc::now().with_timezone(&app.tz).date_naive();
    let day = params
        .get("start")
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        // Years a week of can be shown and stored: chrono's range ends
        // within a week of its last day (the next Monday would overflow).
        .filter(|d| (1..=9999).contains(&d.year()))
        .unwrap_or(today);
    let monday = day - Duration::days(i64::from(day.weekday().num_days_from_monday()));
    let midnight = |d: NaiveDate| -> DateTime<Utc> {
        app.tz
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
    };
    let (from, to) = (midnight(monday), midnight(monday + Duration::days(7)));
    // (start, end, view): a colleague's periods are read without the UID
    // and summary, so that the page cannot show them.
    let busy: Vec<(DateTime<Utc>, DateTime<Utc>, BusyView)> = match &owner {
        None => app
            .db
            .busy(&user.address, from, to)
            .await?
            .iter()
            .map(|b| (b.start, b.end, app.busy_view(b)))
            .collect(),
        Some(a) => app
            .db
            .periods(a, from, to)
            .await?
            .iter()
            .map(|b| (b.start, b.end, app.period_view(b)))
            .collect(),
    };
    let days = (0..7)
        .map(|i| {
            let d = monday + Duration::days(i);
            let (from, to) = (midnight(d), midnight(d + Duration::days(1)));
            DayView {
                label: d.format("%a %d %b").to_string(),
                busy: busy
                    .iter()
                    .filter(|(start, end, _)| *start < to && *end > from)
                    .map(|(_, _, v)| v.clone())
                    .collect(),
            }
        })
        .collect();
    let sharing = match owner {
        None => app.db.shares(&user.address).await?,
        Some(_) => false,
    };
    let mut nav = format!("/week{}", user.query);
    nav.push(if user.query.is_empty() { '?' } else { '&' });
    if let Some(a) = &owner {
        nav.push_str(&format!("user={}&", encode(a)));
    }
    render(&WeekPage {
        csrf: app.trust.csrf(&user.address),
        ifb: app.ifb(&user.address),
        zone: app.tz.name().to_owned(),
        first: monday.format("%a %d %b %Y").to_string(),
        prev: (monday - Duration::days(7)).to_string(),
        next: (monday + Duration::days(7)).to_string(),
        days,
        owner,
        sharing,
        dev_as,
        nav,
        user: user.address,
        q: user.query,
    })
}

#[derive(serde::Deserialize)]
pub struct ShareForm {
    #[serde(default)]
    csrf: String,
    /// `on` or `off`.
    #[serde(default)]
    share: String,
}

/// `POST /sharing`: the user turns the sharing of their own free/busy on or
/// off (only their own: the user is the signed-in one), then back to their
/// week (303).
async fn sharing(
    AxState(app): AxState<Shared>,
    user: User,
    form: Result<Form<ShareForm>, FormRejection>,
) -> Result<Response, PageError> {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => return Ok(form_refused(e)),
    };
    if !app.trust.csrf_ok(&user.address, &form.csrf) {
        return Ok(refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
    }
    let on = match form.share.as_str() {
        "on" => true,
        "off" => false,
        _ => return Ok(refuse(StatusCode::BAD_REQUEST, "share must be on or off")),
    };
    app.db.set_shares(&user.address, on).await?;
    tracing::info!(user = %user.address, on, "free/busy sharing");
    Ok(Redirect::to(&format!("/week{}", user.query)).into_response())
}

#[derive(serde::Deserialize)]
pub struct AnswerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    partstat: String,
    #[serde(default)]
    recurrence_id: Option<String>,
    /// The UID, for `/requests/answer` only.
    #[serde(default)]
    uid: Option<String>,
}

fn refuse(status: StatusCode, why: &str) -> Response {
    metrics::counter!("imip_manager_refused_total", "status" => status.as_str().to_owned())
        .increment(1);
    (status, format!("{status}: {why}\n")).into_response()
}

async fn answer(
    AxState(app): AxState<Shared>,
    user: User,
    Path(uid): Path<String>,
    form: Result<Form<AnswerForm>, FormRejection>,
) -> Result<Response, PageError> {
    match form {
        Ok(Form(form)) => answer_uid(&app, user, uid, form).await,
        Err(e) => Ok(form_refused(e)),
    }
}

/// The refusal of an answer's form: 413 for a body over [`FORM_LIMIT`],
/// 415 for another content type, 400 for fields that do not parse (a field
/// twice among them: which one would count?).
fn form_refused(e: FormRejection) -> Response {
    let status = match e.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    refuse(status, &e.body_text())
}

/// `POST /requests/answer`: the UID in the form, for the UIDs no path
/// segment can carry ([`needs_uid_field`]).
async fn answer_by_field(
    AxState(app): AxState<Shared>,
    user: User,
    form: Result<Form<AnswerForm>, FormRejection>,
) -> Result<Response, PageError> {
    let mut form = match form {
        Ok(Form(form)) => form,
        Err(e) => return Ok(form_refused(e)),
    };
    let Some(uid) = form.uid.take() else {
        return Ok(refuse(StatusCode::BAD_REQUEST, "no uid in the form"));
    };
    answer_uid(&app, user, uid, form).await
}

async fn answer_uid(
    app: &Shared,
    user: User,
    uid: String,
    form: AnswerForm,
) -> Result<Response, PageError> {
    if !app.trust.csrf_ok(&user.address, &form.csrf) {
        return Ok(refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
    }
    let Some(answer) = Answer::parse(&form.partstat) else {
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "partstat must be ACCEPTED, TENTATIVE or DECLINED",
        ));
    };
    let rid = match form.recurrence_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                return Ok(refuse(
                    StatusCode::BAD_REQUEST,
                    "recurrence_id is not an RFC 3339 time",
                ));
            }
        },
    };
    // Only the user's own queue is read: someone else's request is as unknown
    // as one that does not exist.
    let Some(entry) = app.db.pending_one(&user.address, &uid, rid).await? else {
        return Ok(refuse(
            StatusCode::NOT_FOUND,
            "no such pending request of yours",
        ));
    };
    let Some(organizer) = reply::organizer(&entry) else {
        return Ok(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the request has no organizer to answer",
        ));
    };
    let summary = entry
        .summary
        .clone()
        .or_else(|| entry.main().and_then(|c| c.summary.clone()))
        .unwrap_or_else(|| entry.uid.clone());
    let ics = reply::compose(&entry, &user.address, answer, Utc::now());
    let messages = mail::messages(
        &user.address,
        &organizer,
        &app.calendar,
        &format!("{}: {summary}", answer.verb()),
        &ics,
    )?;
    let state = app
        .outbox
        .submit(
            &user.address,
            Status {
                uid: entry.uid.clone(),
                recurrence_id: rid,
                summary,
                partstat: answer.partstat().to_string(),
                state: State::Sent,
                at: Utc::now(),
            },
            messages,
        )
        .await;
    tracing::info!(user = %user.address, uid = %entry.uid, ?rid, partstat = %answer.partstat(), ?state, "answer");
    Ok(Redirect::to(&format!("/{}", user.query)).into_response())
}

async fn events(AxState(app): AxState<Shared>, user: User) -> Response {
    let Some(slot) = app.streams.acquire(&user.address) else {
        tracing::info!(user = %user.address, "refused: too many event streams");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "at most {STREAMS_PER_USER} open event streams per user; close a page of this \
                 calendar"
            ),
        );
    };
    let me = user.address;
    let mut shutdown = app.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let rx = tokio_stream_of(app.notices.subscribe());
    let stream = rx
        .filter_map(move |n| {
            let mine = n.filter(|n| n.user == me);
            async move { mine.map(|n| Ok::<_, Infallible>(Event::default().event(n.kind).data(n.uid))) }
        })
        .take_until(Box::pin(stop))
        // The slot lives as long as the stream: hyper drops the stream when
        // the client goes away (at the latest at the next keep-alive).
        .map(move |e| {
            let _held = &slot;
            e
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A broadcast receiver as a stream; a receiver that fell behind gets `None`
/// items for what it missed, which are dropped (the next notice reloads).
fn tokio_stream_of(rx: broadcast::Receiver<Notice>) -> impl futures::Stream<Item = Option<Notice>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(n) => Some((Some(n), rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}
