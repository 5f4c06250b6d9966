//! One scenario per row and rule of SPEC §2 that `processor.rs` does not
//! already cover, through the real binaries: each sends mail through
//! `imip-ingest`, lets `imip-processor run` apply it, and checks exact UTC
//! periods and objects through `imip-ctl --json`.

use imipflow_tests::{TestEnv, imip_mail, vevent};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";

struct Run {
    env: TestEnv,
    _processor: imipflow_tests::Processor,
    n: u32,
}

impl Run {
    async fn new(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let processor = env.start_processor(extra);
        Run {
            env,
            _processor: processor,
            n: 0,
        }
    }

    async fn send(&mut self, method: &str, sender: &str, components: &[Vec<String>]) {
        self.n += 1;
        let mail = imip_mail(method, sender, &format!("m{}@scenario", self.n), components);
        let out = self.env.ingest(&["--sender", sender], &mail).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// (start, end, fbtype) of `user` in the window, after everything applied.
    async fn periods(&self, user: &str, from: &str, to: &str) -> Vec<String> {
        self.env.wait_applied().await;
        self.env.busy_lines(user, from, to).await
    }

    async fn objects(&self, user: &str) -> Vec<serde_json::Value> {
        self.env.wait_applied().await;
        self.env
            .ctl_json(&["objects", user])
            .await
            .as_array()
            .unwrap()
            .clone()
    }
}

fn ev(lines: &[&str]) -> Vec<String> {
    vevent(lines)
}

fn b(s: &str) -> String {
    s.to_owned()
}

#[tokio::test]
async fn publish_adds_like_request_and_transparent_or_cancelled_events_are_not_busy() {
    let mut r = Run::new(&[]).await;
    r.send(
        "PUBLISH",
        ALICE,
        &[ev(&[
            "UID:pub",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270301T090000Z",
            "DTEND:20270301T100000Z",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:transp",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270302T090000Z",
            "DTEND:20270302T100000Z",
            "TRANSP:TRANSPARENT",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:cancelled",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270303T090000Z",
            "DTEND:20270303T100000Z",
            "STATUS:CANCELLED",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:tentative",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270304T090000Z",
            "DTEND:20270304T100000Z",
            "STATUS:TENTATIVE",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-05T00:00:00Z")
            .await,
        vec![
            b("2027-03-01T09:00:00Z 2027-03-01T10:00:00Z BUSY"),
            b("2027-03-04T09:00:00Z 2027-03-04T10:00:00Z BUSY-TENTATIVE")
        ]
    );
    assert_eq!(
        r.objects(ALICE).await.len(),
        4,
        "objects are stored even when they make no busy time"
    );
}

#[tokio::test]
async fn all_day_and_floating_times_use_the_configured_zone() {
    let mut r = Run::new(&[("IMIP_DEFAULT_TIMEZONE", "Europe/Berlin")]).await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:allday",
            "DTSTAMP:20270101T000000Z",
            "DTSTART;VALUE=DATE:20270310",
            "DTEND;VALUE=DATE:20270312",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:floating",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270315T090000",
            "DTEND:20270315T093000",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:allday-free",
            "DTSTAMP:20270101T000000Z",
            "DTSTART;VALUE=DATE:20270320",
            "TRANSP:TRANSPARENT",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
            .await,
        vec![
            // Two whole days in Berlin (CET, +01:00).
            b("2027-03-09T23:00:00Z 2027-03-11T23:00:00Z BUSY"),
            b("2027-03-15T08:00:00Z 2027-03-15T08:30:00Z BUSY"),
        ]
    );
}

#[tokio::test]
async fn recurrence_rules_new_york_dst_last_friday_and_exdate() {
    let mut r = Run::new(&[]).await;
    // Weekly across the US switch on 2027-03-14 (EST -05:00 → EDT -04:00), one EXDATE.
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:ny",
            "DTSTAMP:20270101T000000Z",
            "DTSTART;TZID=America/New_York:20270304T090000",
            "DTEND;TZID=America/New_York:20270304T100000",
            "RRULE:FREQ=WEEKLY;COUNT=3",
            "EXDATE;TZID=America/New_York:20270311T090000",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    // Monthly on the last Friday, three times.
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:lastfri",
            "DTSTAMP:20270101T000000Z",
            "DTSTART;TZID=Europe/Berlin:20270430T160000",
            "DTEND;TZID=Europe/Berlin:20270430T170000",
            "RRULE:FREQ=MONTHLY;BYDAY=-1FR;COUNT=3",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-31T00:00:00Z")
            .await,
        vec![
            b("2027-03-04T14:00:00Z 2027-03-04T15:00:00Z BUSY"),
            b("2027-03-18T13:00:00Z 2027-03-18T14:00:00Z BUSY")
        ]
    );
    assert_eq!(
        r.periods(ALICE, "2027-04-01T00:00:00Z", "2027-07-31T00:00:00Z")
            .await,
        vec![
            b("2027-04-30T14:00:00Z 2027-04-30T15:00:00Z BUSY"),
            b("2027-05-28T14:00:00Z 2027-05-28T15:00:00Z BUSY"),
            b("2027-06-25T14:00:00Z 2027-06-25T15:00:00Z BUSY"),
        ]
    );
}

const SERIES: &[&str] = &[
    "UID:series",
    "SEQUENCE:0",
    "DTSTAMP:20270101T000000Z",
    "DTSTART:20270301T090000Z",
    "DTEND:20270301T100000Z",
    "RRULE:FREQ=DAILY;COUNT=5",
    "ORGANIZER:mailto:alice@example.com",
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
    "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
    "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@example.net",
];

#[tokio::test]
async fn a_request_of_one_recurrence_only_never_deletes_the_series() {
    let mut r = Run::new(&[]).await;
    r.send("REQUEST", ALICE, &[ev(SERIES)]).await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:series",
            "SEQUENCE:1",
            "DTSTAMP:20270102T000000Z",
            "RECURRENCE-ID:20270303T090000Z",
            "DTSTART:20270303T120000Z",
            "DTEND:20270303T130000Z",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await,
        vec![
            b("2027-03-01T09:00:00Z 2027-03-01T10:00:00Z BUSY"),
            b("2027-03-02T09:00:00Z 2027-03-02T10:00:00Z BUSY"),
            b("2027-03-03T12:00:00Z 2027-03-03T13:00:00Z BUSY"),
            b("2027-03-04T09:00:00Z 2027-03-04T10:00:00Z BUSY"),
            b("2027-03-05T09:00:00Z 2027-03-05T10:00:00Z BUSY"),
        ]
    );
    assert_eq!(r.objects(ALICE).await.len(), 2);
}

#[tokio::test]
async fn this_and_future_moves_that_instance_and_every_later_one() {
    let mut r = Run::new(&[]).await;
    r.send("REQUEST", ALICE, &[ev(SERIES)]).await;
    r.send(
        "REQUEST",
        ALICE,
        &[ev(&[
            "UID:series",
            "SEQUENCE:1",
            "DTSTAMP:20270102T000000Z",
            "RECURRENCE-ID;RANGE=THISANDFUTURE:20270304T090000Z",
            "DTSTART:20270304T140000Z",
            "DTEND:20270304T150000Z",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await,
        vec![
            b("2027-03-01T09:00:00Z 2027-03-01T10:00:00Z BUSY"),
            b("2027-03-02T09:00:00Z 2027-03-02T10:00:00Z BUSY"),
            b("2027-03-03T09:00:00Z 2027-03-03T10:00:00Z BUSY"),
            b("2027-03-04T14:00:00Z 2027-03-04T15:00:00Z BUSY"),
            b("2027-03-05T14:00:00Z 2027-03-05T15:00:00Z BUSY"),
        ]
    );
}

#[tokio::test]
async fn cancel_for_some_attendees_keeps_the_event_and_busy_time() {
    let mut r = Run::new(&[]).await;
    r.send("REQUEST", ALICE, &[ev(SERIES)]).await;
    r.send(
        "CANCEL",
        ALICE,
        &[ev(&[
            "UID:series",
            "SEQUENCE:1",
            "DTSTAMP:20270102T000000Z",
            "DTSTART:20270301T090000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:carol@example.net",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await
            .len(),
        5
    );
    r.env.wait_applied().await;
    let obj = r.env.ctl_json(&["object", ALICE, "series"]).await;
    let who: Vec<&str> = obj["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap())
        .collect();
    assert_eq!(who, vec![ALICE, BOB]);
}

#[tokio::test]
async fn a_reply_to_the_whole_series_keeps_an_instances_own_answer() {
    let mut r = Run::new(&[]).await;
    let reply = |rid: Option<&str>, partstat: &str, stamp: &str| {
        let mut l = vec![
            b("UID:series"),
            b("SEQUENCE:0"),
            format!("DTSTAMP:{stamp}"),
            b("DTSTART:20270301T090000Z"),
            b("DTEND:20270301T100000Z"),
            b("RRULE:FREQ=DAILY;COUNT=5"),
            b("ORGANIZER:mailto:alice@example.com"),
            format!("ATTENDEE;PARTSTAT={partstat}:mailto:bob@example.org"),
        ];
        if let Some(rid) = rid {
            l.retain(|x| !x.starts_with("RRULE"));
            l.push(format!("RECURRENCE-ID:{rid}"));
            l[3] = format!("DTSTART:{rid}");
            l[4] = format!("DTEND:{}", rid.replace("T09", "T10"));
        }
        let refs: Vec<&str> = l.iter().map(String::as_str).collect();
        ev(&refs)
    };
    r.send("REPLY", BOB, &[reply(None, "ACCEPTED", "20270102T000000Z")])
        .await;
    r.send(
        "REPLY",
        BOB,
        &[reply(
            Some("20270303T090000Z"),
            "DECLINED",
            "20270103T000000Z",
        )],
    )
    .await;
    r.send(
        "REPLY",
        BOB,
        &[reply(None, "TENTATIVE", "20270104T000000Z")],
    )
    .await;
    assert_eq!(
        r.periods(BOB, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await,
        vec![
            b("2027-03-01T09:00:00Z 2027-03-01T10:00:00Z BUSY-TENTATIVE"),
            b("2027-03-02T09:00:00Z 2027-03-02T10:00:00Z BUSY-TENTATIVE"),
            b("2027-03-04T09:00:00Z 2027-03-04T10:00:00Z BUSY-TENTATIVE"),
            b("2027-03-05T09:00:00Z 2027-03-05T10:00:00Z BUSY-TENTATIVE"),
        ]
    );
}

#[tokio::test]
async fn cancel_of_an_unknown_event_removes_nothing_and_is_recorded() {
    let mut r = Run::new(&[]).await;
    r.send("REQUEST", ALICE, &[ev(SERIES)]).await;
    r.send(
        "CANCEL",
        ALICE,
        &[ev(&[
            "UID:never-seen",
            "DTSTAMP:20270102T000000Z",
            "STATUS:CANCELLED",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    )
    .await;
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await
            .len(),
        5
    );
    let db = r.env.pg().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM message_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn the_same_object_twice_in_one_message_applies_once() {
    let r = Run::new(&[]).await;
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:twice\r\nDTSTAMP:20270101T000000Z\r\n\
DTSTART:20270301T090000Z\r\nDTEND:20270301T100000Z\r\nORGANIZER:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let mail = format!(
        "From: alice@example.com\r\nMessage-ID: <twice@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n{ics}--b\r\nContent-Type: application/ics; name=invite.ics\r\n\
Content-Disposition: attachment; filename=invite.ics\r\n\r\n{ics}--b--\r\n"
    );
    let out = r.env.ingest(&["--sender", ALICE], mail.as_bytes()).await;
    assert!(out.status.success());
    assert_eq!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-02T00:00:00Z")
            .await
            .len(),
        1
    );
    let events = imipflow_tests::all_events(&r.env).await;
    assert_eq!(
        events.len(),
        2,
        "one object.changed and one freebusy.changed"
    );
}

#[tokio::test]
async fn replies_from_non_attendees_are_refused_and_other_object_types_ignored() {
    let mut r = Run::new(&[]).await;
    // Bob answers an event that does not list him: refused.
    r.send(
        "REPLY",
        BOB,
        &[ev(&[
            "UID:not-his",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270301T090000Z",
            "DTEND:20270301T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:carol@example.net",
        ])],
    )
    .await;
    // A VTODO request and a VFREEBUSY publish change nothing.
    let todo = vec![
        "BEGIN:VTODO".to_owned(),
        "UID:todo-1".into(),
        "DTSTAMP:20270101T000000Z".into(),
        "DUE:20270302T090000Z".into(),
        "ORGANIZER:mailto:alice@example.com".into(),
        "END:VTODO".into(),
    ];
    r.send("REQUEST", ALICE, &[todo]).await;
    let fb = vec![
        "BEGIN:VFREEBUSY".to_owned(),
        "UID:fb-1".into(),
        "DTSTAMP:20270101T000000Z".into(),
        "ORGANIZER:mailto:alice@example.com".into(),
        "FREEBUSY:20270303T090000Z/20270303T100000Z".into(),
        "END:VFREEBUSY".into(),
    ];
    r.send("PUBLISH", ALICE, &[fb]).await;
    assert!(
        r.periods(BOB, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await
            .is_empty()
    );
    assert!(
        r.periods(ALICE, "2027-03-01T00:00:00Z", "2027-03-10T00:00:00Z")
            .await
            .is_empty()
    );
    assert!(r.objects(ALICE).await.is_empty());
    assert!(r.objects(BOB).await.is_empty());
    let db = r.env.pg().await;
    let outcomes: Vec<String> = db
        .query(
            "SELECT method || ' ' || outcome FROM message_log ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        outcomes,
        vec!["REPLY refused", "REQUEST ignored", "PUBLISH ignored"]
    );
}
