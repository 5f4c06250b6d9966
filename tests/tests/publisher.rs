//! The free/busy publisher through the real binaries: mail goes through
//! `imip-ingest`, `imip-processor run` applies it, `imip-publisher` serves it
//! over HTTP (checked with a real HTTP client, the VFREEBUSY parsed back with
//! calcard), kept current from the change events, across restarts.
//!
//! Only outgoing messages: Alice organizes, so what she requests is her busy time.

use calcard::icalendar::{
    ICalendar, ICalendarComponentType, ICalendarFreeBusyType, ICalendarMethod,
    ICalendarParameterName, ICalendarParameterValue, ICalendarPeriod, ICalendarProperty,
    ICalendarValue,
};
use imipflow_tests::{Publisher, TestEnv, free_port, imip_mail, vevent};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

const ALICE: &str = "alice@example.com";
const FROM: &str = "2027-03-01T00:00:00Z";
const TO: &str = "2027-06-01T00:00:00Z";

fn window() -> String {
    format!("?from={FROM}&to={TO}")
}

/// One event Alice organizes (Bob invited), `lines` added to it.
fn event(uid: &str, seq: u32, start: &str, end: &str, lines: &[&str]) -> Vec<String> {
    let mut all = vec![
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        "DTSTAMP:20270201T100000Z".to_owned(),
        format!("DTSTART:{}", ical(start)),
        format!("DTEND:{}", ical(end)),
        format!("SUMMARY:{uid}"),
        "ORGANIZER:mailto:alice@example.com".to_owned(),
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com".to_owned(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org".to_owned(),
    ];
    all.extend(lines.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    vevent(&refs)
}

/// `2027-03-16T09:00:00Z` → `20270316T090000Z`.
fn ical(rfc3339: &str) -> String {
    rfc3339.replace(['-', ':'], "")
}

async fn send(env: &TestEnv, method: &str, component: Vec<String>) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "pub-{}@test",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let out = env
        .ingest(
            &["--sender", ALICE],
            &imip_mail(method, ALICE, &id, &[component]),
        )
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "ingest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn request(env: &TestEnv, uid: &str, seq: u32, start: &str, end: &str) {
    send(env, "REQUEST", event(uid, seq, start, end, &[])).await;
}

async fn cancel(env: &TestEnv, uid: &str, seq: u32, start: &str, end: &str) {
    send(
        env,
        "CANCEL",
        event(uid, seq, start, end, &["STATUS:CANCELLED"]),
    )
    .await;
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn get(publisher: &Publisher, path: &str, if_none_match: Option<&str>) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.get(publisher.url(path));
    if let Some(tag) = if_none_match {
        req = req.header("If-None-Match", tag);
    }
    let resp = req.send().await.expect("HTTP request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Reply {
        status: resp.status(),
        etag: header("etag"),
        content_type: header("content-type"),
        body: resp.text().await.expect("body"),
    }
}

/// Polls `path` until `done` holds, for at most `limit`; returns the reply.
async fn wait_for(
    publisher: &Publisher,
    path: &str,
    limit: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(publisher, path, None).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: not there within {limit:?}; last reply {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Busy = (String, String, String, String);

fn busy(start: &str, end: &str, fbtype: &str, uid: &str) -> Busy {
    (start.into(), end.into(), fbtype.into(), uid.into())
}

/// (start, end, fbtype, uid) of each period of a JSON document.
fn periods(doc: &Value) -> Vec<Busy> {
    doc["periods"]
        .as_array()
        .expect("periods")
        .iter()
        .map(|p| {
            busy(
                p["start"].as_str().unwrap(),
                p["end"].as_str().unwrap(),
                p["fbtype"].as_str().unwrap(),
                p["uid"].as_str().unwrap(),
            )
        })
        .collect()
}

fn json_path(user: &str) -> String {
    format!("/freebusy/{user}.json{}", window())
}

fn ifb_path(user: &str) -> String {
    format!("/freebusy/{user}.ifb{}", window())
}

/// Waits until the publisher's JSON has exactly `expected`, then checks that
/// it is the very document `imip-ctl freebusy --json` makes from PostgreSQL.
async fn expect_periods(env: &TestEnv, publisher: &Publisher, expected: &[Busy]) {
    env.wait_applied().await;
    let r = wait_for(publisher, &json_path(ALICE), Duration::from_secs(2), |r| {
        r.status == StatusCode::OK && periods(&r.json()) == expected
    })
    .await;
    let ctl = env
        .ctl_json(&["freebusy", ALICE, "--from", FROM, "--to", TO])
        .await;
    assert_eq!(r.json(), ctl, "publisher and imip-ctl disagree");
}

fn pdt(p: &calcard::common::PartialDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{}",
        p.year.unwrap(),
        p.month.unwrap(),
        p.day.unwrap(),
        p.hour.unwrap(),
        p.minute.unwrap(),
        p.second.unwrap(),
        if p.tz_hour == Some(0) && p.tz_minute.unwrap_or(0) == 0 {
            "Z"
        } else {
            "?"
        }
    )
}

/// The VFREEBUSY's (DTSTART, DTEND, ORGANIZER) and its FREEBUSY values as
/// (FBTYPE, start/end), read back with calcard.
#[allow(clippy::type_complexity)]
fn parse_vfreebusy(text: &str) -> ((String, String, String), Vec<(String, String)>) {
    let ical = ICalendar::parse(text).unwrap_or_else(|e| panic!("calcard: {e:?}\n{text}"));
    let root = &ical.components[0];
    assert_eq!(root.component_type, ICalendarComponentType::VCalendar);
    let method = root
        .property(&ICalendarProperty::Method)
        .and_then(|e| e.values.first());
    assert!(
        matches!(
            method,
            Some(ICalendarValue::Method(ICalendarMethod::Publish))
        ),
        "{method:?}"
    );
    let fb = ical
        .components
        .iter()
        .find(|c| c.component_type == ICalendarComponentType::VFreebusy)
        .expect("a VFREEBUSY");
    let time = |p: ICalendarProperty| match fb.property(&p).and_then(|e| e.values.first()) {
        Some(ICalendarValue::PartialDateTime(t)) => pdt(t),
        other => panic!("{p:?}: {other:?}"),
    };
    let organizer = match fb
        .property(&ICalendarProperty::Organizer)
        .and_then(|e| e.values.first())
    {
        Some(ICalendarValue::Text(t)) => t.clone(),
        Some(ICalendarValue::Uri(u)) => format!("{u:?}"),
        other => panic!("ORGANIZER: {other:?}"),
    };
    assert!(fb.property(&ICalendarProperty::Dtstamp).is_some());
    let mut list = Vec::new();
    for e in fb
        .entries
        .iter()
        .filter(|e| e.name == ICalendarProperty::Freebusy)
    {
        let fbtype = e
            .params
            .iter()
            .find(|p| p.name == ICalendarParameterName::Fbtype)
            .map(|p| match &p.value {
                ICalendarParameterValue::Fbtype(ICalendarFreeBusyType::Busy) => "BUSY",
                ICalendarParameterValue::Fbtype(ICalendarFreeBusyType::BusyTentative) => {
                    "BUSY-TENTATIVE"
                }
                ICalendarParameterValue::Fbtype(ICalendarFreeBusyType::BusyUnavailable) => {
                    "BUSY-UNAVAILABLE"
                }
                other => panic!("FBTYPE {other:?}"),
            })
            .expect("FBTYPE");
        for v in &e.values {
            let ICalendarValue::Period(ICalendarPeriod::Range { start, end }) = v else {
                panic!("FREEBUSY value {v:?}");
            };
            list.push((fbtype.to_owned(), format!("{}/{}", pdt(start), pdt(end))));
        }
    }
    (
        (
            time(ICalendarProperty::Dtstart),
            time(ICalendarProperty::Dtend),
            organizer,
        ),
        list,
    )
}

#[tokio::test]
async fn a_request_is_published_within_a_second_of_its_commit_as_a_valid_vfreebusy() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let publisher = env.start_publisher(free_port()).await;
    // Alice is unknown until her first message.
    assert_eq!(
        get(&publisher, &ifb_path(ALICE), None).await.status,
        StatusCode::NOT_FOUND
    );

    let db = env.pg().await;
    let mut latencies = Vec::new();
    for (uid, start, end, extra) in [
        ("m1", "2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z", None),
        (
            "m2",
            "2027-03-17T13:30:00Z",
            "2027-03-17T15:00:00Z",
            Some("STATUS:TENTATIVE"),
        ),
    ] {
        let lines: Vec<&str> = extra.into_iter().collect();
        send(&env, "REQUEST", event(uid, 0, start, end, &lines)).await;
        // The moment the processor's commit is visible in PostgreSQL…
        let deadline = Instant::now() + Duration::from_secs(30);
        while db
            .query_opt(
                "SELECT 1 FROM freebusy WHERE user_addr = $1 AND uid = $2",
                &[&ALICE, &uid],
            )
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "{uid} not applied within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let committed = Instant::now();
        // …to the moment the publisher shows it.
        let line = format!("{}/{}\r\n", ical(start), ical(end));
        wait_for(&publisher, &ifb_path(ALICE), Duration::from_secs(2), |r| {
            r.status == StatusCode::OK && r.body.contains(&line)
        })
        .await;
        latencies.push(committed.elapsed());
    }
    for l in &latencies {
        assert!(
            *l < Duration::from_secs(1),
            "published {l:?} after the commit"
        );
    }

    let r = get(&publisher, &ifb_path(ALICE), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.content_type.as_deref(),
        Some("text/calendar; charset=utf-8")
    );
    assert!(r.etag.is_some());
    assert!(r.body.starts_with("BEGIN:VCALENDAR\r\n"), "{}", r.body);
    assert!(r.body.contains("UID:freebusy-alice@example.com\r\n"));
    let ((dtstart, dtend, organizer), list) = parse_vfreebusy(&r.body);
    assert_eq!(dtstart, "20270301T000000Z");
    assert_eq!(dtend, "20270601T000000Z");
    assert!(
        organizer
            .to_lowercase()
            .contains("mailto:alice@example.com"),
        "{organizer}"
    );
    assert_eq!(
        list,
        vec![
            (
                "BUSY".to_owned(),
                "20270316T090000Z/20270316T100000Z".to_owned()
            ),
            (
                "BUSY-TENTATIVE".to_owned(),
                "20270317T133000Z/20270317T150000Z".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn json_equals_imip_ctl_and_etags_give_304_until_the_free_busy_changes() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let publisher = env.start_publisher(free_port()).await;
    request(&env, "a", 0, "2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z").await;
    request(&env, "b", 0, "2027-04-06T08:00:00Z", "2027-04-06T09:30:00Z").await;
    let two = [
        busy("2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z", "BUSY", "a"),
        busy("2027-04-06T08:00:00Z", "2027-04-06T09:30:00Z", "BUSY", "b"),
    ];
    expect_periods(&env, &publisher, &two).await;
    let r = get(&publisher, &json_path(ALICE), None).await;
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["user"], ALICE);
    assert_eq!(doc["from"], FROM);
    assert_eq!(doc["to"], TO);
    assert_eq!(doc["periods"][0]["recurrence_id"], Value::Null);

    // A matching ETag: 304, no body, the same ETag; for both formats.
    let json_tag = r.etag.clone().expect("ETag");
    let not_modified = get(&publisher, &json_path(ALICE), Some(&json_tag)).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.etag.as_deref(), Some(json_tag.as_str()));
    assert!(not_modified.body.is_empty());
    let ifb = get(&publisher, &ifb_path(ALICE), None).await;
    let ifb_tag = ifb.etag.clone().expect("ETag");
    assert_eq!(
        get(&publisher, &ifb_path(ALICE), Some(&ifb_tag))
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    // Another window is another representation.
    let other = get(
        &publisher,
        &format!("/freebusy/{ALICE}.json?from={FROM}&to=2027-04-01T00:00:00Z"),
        Some(&json_tag),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(periods(&other.json()), two[..1].to_vec());

    // A change: a new ETag, and the old one no longer matches.
    request(&env, "c", 0, "2027-05-03T12:00:00Z", "2027-05-03T13:00:00Z").await;
    let three = [
        two[0].clone(),
        two[1].clone(),
        busy("2027-05-03T12:00:00Z", "2027-05-03T13:00:00Z", "BUSY", "c"),
    ];
    expect_periods(&env, &publisher, &three).await;
    let changed = get(&publisher, &json_path(ALICE), Some(&json_tag)).await;
    assert_eq!(changed.status, StatusCode::OK);
    let new_tag = changed.etag.clone().expect("ETag");
    assert_ne!(new_tag, json_tag);
    assert_eq!(periods(&changed.json()), three.to_vec());
    assert_eq!(
        get(&publisher, &json_path(ALICE), Some(&new_tag))
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    let ifb = get(&publisher, &ifb_path(ALICE), Some(&ifb_tag)).await;
    assert_eq!(ifb.status, StatusCode::OK);
    assert_ne!(ifb.etag.as_deref(), Some(ifb_tag.as_str()));
    assert_eq!(parse_vfreebusy(&ifb.body).1.len(), 3);
}

#[tokio::test]
async fn default_window_unknown_users_and_bad_requests() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let publisher = env.start_publisher(free_port()).await;
    // An event 30 days from now is inside the default window
    // [today − 7 days, today + 365 days), days starting 00:00 UTC.
    let start = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc()
        + chrono::Duration::days(30);
    let end = start + chrono::Duration::hours(1);
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    request(&env, "soon", 0, &rfc(start), &rfc(end)).await;
    env.wait_applied().await;
    let path = format!("/freebusy/{ALICE}.json");
    let r = wait_for(&publisher, &path, Duration::from_secs(2), |r| {
        r.status == StatusCode::OK
    })
    .await;
    let doc = r.json();
    assert_eq!(
        periods(&doc),
        vec![busy(&rfc(start), &rfc(end), "BUSY", "soon")]
    );
    let from: chrono::DateTime<chrono::Utc> = doc["from"].as_str().unwrap().parse().unwrap();
    let to: chrono::DateTime<chrono::Utc> = doc["to"].as_str().unwrap().parse().unwrap();
    assert_eq!(from.time(), chrono::NaiveTime::MIN);
    assert_eq!(to - from, chrono::Duration::days(372));
    assert!(from <= chrono::Utc::now() - chrono::Duration::days(7));
    assert!(from > chrono::Utc::now() - chrono::Duration::days(8));
    // The address in the path may be percent-encoded and in any case.
    let r = get(&publisher, "/freebusy/Alice%40Example.COM.ifb", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("ORGANIZER:mailto:alice@example.com\r\n"));

    for unknown in [
        "/freebusy/bob@example.org.ifb",
        "/freebusy/bob@example.org.json",
        "/freebusy/alice@example.com",
        "/nothing-here",
    ] {
        assert_eq!(
            get(&publisher, unknown, None).await.status,
            StatusCode::NOT_FOUND,
            "{unknown}"
        );
    }
    assert_eq!(
        get(
            &publisher,
            "/freebusy/alice@example.com.ifb?from=yesterday",
            None
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    let health = get(&publisher, "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK);
    let post = reqwest::Client::new()
        .post(publisher.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn send_req(env: &TestEnv, p: &Busy, seq: u32) {
    request(env, &p.3, seq, &p.0, &p.1).await;
}

async fn send_cancel(env: &TestEnv, p: &Busy, seq: u32) {
    cancel(env, &p.3, seq, &p.0, &p.1).await;
}

#[tokio::test]
async fn restarted_mid_stream_it_resumes_and_shows_every_change_exactly_once() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let port = free_port();
    let js = env.jetstream().await;
    let events = js
        .get_stream(format!("{}-events", env.namespace))
        .await
        .unwrap();
    let consumer = format!("{}-publisher", env.namespace);

    let a = busy("2027-03-16T09:00:00Z", "2027-03-16T10:00:00Z", "BUSY", "a");
    let b = busy("2027-03-17T09:00:00Z", "2027-03-17T10:00:00Z", "BUSY", "b");
    let c = busy("2027-03-18T09:00:00Z", "2027-03-18T10:00:00Z", "BUSY", "c");
    let c_moved = busy("2027-03-18T14:00:00Z", "2027-03-18T15:30:00Z", "BUSY", "c");
    let d = busy("2027-03-19T09:00:00Z", "2027-03-19T10:00:00Z", "BUSY", "d");
    let e = busy("2027-03-22T09:00:00Z", "2027-03-22T10:00:00Z", "BUSY", "e");
    let f = busy("2027-03-23T09:00:00Z", "2027-03-23T10:00:00Z", "BUSY", "f");

    // First run: Alice cached, changes applied from the events.
    let first = env.start_publisher(port).await;
    send_req(&env, &a, 0).await;
    send_req(&env, &b, 0).await;
    expect_periods(&env, &first, &[a.clone(), b.clone()]).await;
    let created = events.consumer_info(&consumer).await.unwrap().created;

    // Killed mid-stream: C is on its way while the publisher dies.
    send_req(&env, &c, 0).await;
    first.kill9().await;
    send_cancel(&env, &a, 1).await;
    send_req(&env, &d, 0).await;
    env.wait_applied().await;

    // Second run, same durable consumer: it takes the backlog, shows B C D.
    let second = env.start_publisher(port).await;
    expect_periods(&env, &second, &[b.clone(), c.clone(), d.clone()]).await;
    // Events the killed publisher held unacknowledged come back after the
    // consumer's 5 s ack wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = events.consumer_info(&consumer).await.unwrap();
        assert_eq!(info.created, created, "the durable consumer was recreated");
        let last = js
            .get_stream(format!("{}-events", env.namespace))
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence;
        if info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence == last
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog not consumed: pending {}, ack pending {}, ack floor {}, last {last}",
            info.num_pending,
            info.num_ack_pending,
            info.ack_floor.stream_sequence
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Changes while cached again: a cancel, a move, a new one.
    send_cancel(&env, &b, 1).await;
    send_req(&env, &c_moved, 1).await;
    send_req(&env, &e, 0).await;
    expect_periods(&env, &second, &[c_moved.clone(), d.clone(), e.clone()]).await;

    // A graceful stop (SIGTERM), a change while down, a third run.
    let status = second.terminate().await;
    assert!(status.success(), "SIGTERM exit: {status}");
    send_req(&env, &f, 0).await;
    env.wait_applied().await;
    let third = env.start_publisher(port).await;
    expect_periods(
        &env,
        &third,
        &[c_moved.clone(), d.clone(), e.clone(), f.clone()],
    )
    .await;
    send_cancel(&env, &d, 1).await;
    send_req(&env, &a, 2).await;
    expect_periods(&env, &third, &[a, c_moved, e, f]).await;
    assert_eq!(
        events.consumer_info(&consumer).await.unwrap().created,
        created
    );
}
