//! Incoming mail and the manager path (SPEC §3) through the real binaries:
//! an invitation delivered to a user waits in the queue, the user's answer
//! (an outgoing REPLY) clears it and makes free/busy follow the answer, the
//! organizer's CANCEL removes the records; manager mail applies as if the user
//! had sent it, the same mail from anyone else does not.

use imipflow_tests::{TestEnv, imip_mail, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const MANAGER: &str = "calendar@example.com";

struct World {
    env: TestEnv,
    _p: imipflow_tests::Processor,
    n: u32,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER)]);
        World { env, _p: p, n: 0 }
    }

    /// Delivers `lines` as a `method` message from `from`: to `to` (incoming)
    /// or as `from`'s own outgoing mail when `to` is None.
    async fn mail(&mut self, method: &str, from: &str, to: Option<&str>, lines: &[&str]) {
        self.n += 1;
        let mail = imip_mail(method, from, &format!("in{}@x", self.n), &[vevent(lines)]);
        let args: Vec<&str> = match to {
            Some(to) => vec![
                "--direction",
                "incoming",
                "--sender",
                from,
                "--recipient",
                to,
            ],
            None => vec!["--sender", from],
        };
        let out = self.env.ingest(&args, &mail).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.env.wait_applied().await;
    }

    async fn queue(&self, user: &str) -> Vec<Value> {
        self.env
            .ctl_json(&["queue", user])
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    async fn busy(&self, user: &str) -> Vec<String> {
        self.env
            .busy_lines(user, "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
            .await
    }

    async fn log(&self) -> Vec<String> {
        let db = self.env.pg().await;
        db.query(
            "SELECT method || ' ' || outcome FROM message_log ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

fn invitation(seq: u32) -> Vec<String> {
    vec![
        "UID:bobs-meeting".into(),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:2027010{}T000000Z", seq + 1),
        "DTSTART:20270310T090000Z".into(),
        "DTEND:20270310T100000Z".into(),
        "SUMMARY:Bob's planning".into(),
        "ORGANIZER:mailto:bob@example.org".into(),
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org".into(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:alice@example.com".into(),
    ]
}

fn answer(partstat: &str, stamp: &str) -> Vec<String> {
    vec![
        "UID:bobs-meeting".into(),
        "SEQUENCE:0".into(),
        format!("DTSTAMP:{stamp}"),
        "DTSTART:20270310T090000Z".into(),
        "DTEND:20270310T100000Z".into(),
        "ORGANIZER:mailto:bob@example.org".into(),
        format!("ATTENDEE;PARTSTAT={partstat}:mailto:alice@example.com"),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The published `.ifb`'s FREEBUSY lines, once they equal `want` (within 10 s).
async fn ifb_shows(publisher: &imipflow_tests::Publisher, want: &[String]) {
    let url = publisher.url("/freebusy/alice@example.com.ifb");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let lines: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with("FREEBUSY"))
            .map(str::to_owned)
            .collect();
        if lines == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "published {lines:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn round_trip(partstat: &str, expect_busy: Vec<String>) {
    let mut w = World::new().await;
    let publisher = w.env.start_publisher(imipflow_tests::free_port()).await;
    w.mail("REQUEST", BOB, Some(ALICE), &refs(&invitation(0)))
        .await;
    let q = w.queue(ALICE).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["uid"], "bobs-meeting");
    assert_eq!(q[0]["organizer"], BOB);
    assert_eq!(q[0]["summary"], "Bob's planning");
    assert_eq!(q[0]["instances"][0]["start"], "2027-03-10T09:00:00Z");
    assert_eq!(q[0]["instances"][0]["partstat"], "NEEDS-ACTION");
    assert!(
        w.busy(ALICE).await.is_empty(),
        "no busy time until Alice answers"
    );

    // Alice answers from her own client (outgoing REPLY).
    w.mail(
        "REPLY",
        ALICE,
        None,
        &refs(&answer(partstat, "20270102T000000Z")),
    )
    .await;
    assert!(
        w.queue(ALICE).await.is_empty(),
        "the answer clears the queue entry"
    );
    assert_eq!(w.busy(ALICE).await, expect_busy);
    // The published .ifb follows: "start end TYPE" → FREEBUSY;FBTYPE=TYPE:start/end.
    let ical = |t: &str| t.replace(['-', ':'], "");
    let published: Vec<String> = expect_busy
        .iter()
        .map(|b| {
            let f: Vec<&str> = b.split(' ').collect();
            format!("FREEBUSY;FBTYPE={}:{}/{}", f[2], ical(f[0]), ical(f[1]))
        })
        .collect();
    ifb_shows(&publisher, &published).await;

    // Bob cancels: Alice's records go.
    let mut cancel = invitation(1);
    cancel.push("STATUS:CANCELLED".into());
    w.mail("CANCEL", BOB, Some(ALICE), &refs(&cancel)).await;
    assert!(w.busy(ALICE).await.is_empty());
    ifb_shows(&publisher, &[]).await;
    let objs = w.env.ctl_json(&["objects", ALICE]).await;
    assert!(objs.as_array().unwrap().is_empty(), "{objs}");
    assert_eq!(
        w.log().await,
        vec!["REQUEST applied", "REPLY applied", "CANCEL applied"]
    );
    // The queue events were emitted in order with the rest.
    let kinds: Vec<String> = imipflow_tests::all_events(&w.env)
        .await
        .iter()
        .filter(|e| e["user"] == ALICE)
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("org.imipflow.")
                .to_owned()
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("queue.changed"));
    assert!(kinds.contains(&"object.removed".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn accept_round_trip() {
    round_trip(
        "ACCEPTED",
        vec!["2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY".into()],
    )
    .await;
}

#[tokio::test]
async fn tentative_round_trip() {
    round_trip(
        "TENTATIVE",
        vec!["2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY-TENTATIVE".into()],
    )
    .await;
}

#[tokio::test]
async fn decline_round_trip() {
    round_trip("DECLINED", vec![]).await;
}

#[tokio::test]
async fn one_instance_of_a_series_round_trip() {
    let mut w = World::new().await;
    let mut series = invitation(0);
    series.push("RRULE:FREQ=WEEKLY;COUNT=3".into());
    w.mail("REQUEST", BOB, Some(ALICE), &refs(&series)).await;
    assert_eq!(w.queue(ALICE).await.len(), 1);
    // Alice accepts the series, then declines the second instance.
    let mut yes = answer("ACCEPTED", "20270102T000000Z");
    yes.push("RRULE:FREQ=WEEKLY;COUNT=3".into());
    w.mail("REPLY", ALICE, None, &refs(&yes)).await;
    let mut no = answer("DECLINED", "20270103T000000Z");
    no[3] = "DTSTART:20270317T090000Z".into();
    no[4] = "DTEND:20270317T100000Z".into();
    no.push("RECURRENCE-ID:20270317T090000Z".into());
    w.mail("REPLY", ALICE, None, &refs(&no)).await;
    assert!(w.queue(ALICE).await.is_empty());
    assert_eq!(
        w.busy(ALICE).await,
        vec![
            "2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY".to_owned(),
            "2027-03-24T09:00:00Z 2027-03-24T10:00:00Z BUSY".to_owned(),
        ]
    );
    // Bob cancels the third instance only.
    let mut cancel = vec![
        "UID:bobs-meeting",
        "SEQUENCE:1",
        "DTSTAMP:20270105T000000Z",
        "RECURRENCE-ID:20270324T090000Z",
        "DTSTART:20270324T090000Z",
        "DTEND:20270324T100000Z",
        "STATUS:CANCELLED",
        "ORGANIZER:mailto:bob@example.org",
    ];
    cancel.push("ATTENDEE:mailto:alice@example.com");
    w.mail("CANCEL", BOB, Some(ALICE), &cancel).await;
    assert_eq!(
        w.busy(ALICE).await,
        vec!["2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY".to_owned()]
    );
}

#[tokio::test]
async fn a_later_version_replaces_the_pending_request_an_older_one_does_not() {
    let mut w = World::new().await;
    w.mail("REQUEST", BOB, Some(ALICE), &refs(&invitation(1)))
        .await;
    w.mail("REQUEST", BOB, Some(ALICE), &refs(&invitation(0)))
        .await;
    assert_eq!(w.queue(ALICE).await[0]["sequence"], 1);
    w.mail("REQUEST", BOB, Some(ALICE), &refs(&invitation(2)))
        .await;
    let q = w.queue(ALICE).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["sequence"], 2);
}

#[tokio::test]
async fn an_attendees_reply_updates_the_organizers_object() {
    let mut w = World::new().await;
    // Alice organizes and invites Bob (outgoing REQUEST)...
    let mine = [
        "UID:alices",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270312T090000Z",
        "DTEND:20270312T100000Z",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org",
    ];
    w.mail("REQUEST", ALICE, None, &mine).await;
    // ...and Bob's acceptance is delivered to her.
    let reply = [
        "UID:alices",
        "SEQUENCE:0",
        "DTSTAMP:20270102T000000Z",
        "DTSTART:20270312T090000Z",
        "DTEND:20270312T100000Z",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org",
    ];
    w.mail("REPLY", BOB, Some(ALICE), &reply).await;
    let obj = w.env.ctl_json(&["object", ALICE, "alices"]).await;
    let bob = obj["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == BOB)
        .unwrap()
        .clone();
    assert_eq!(bob["partstat"], "ACCEPTED");
    assert_eq!(
        w.busy(ALICE).await,
        vec!["2027-03-12T09:00:00Z 2027-03-12T10:00:00Z BUSY".to_owned()]
    );
}

#[tokio::test]
async fn manager_mail_applies_as_the_user_and_the_same_mail_from_anyone_else_does_not() {
    let mut w = World::new().await;
    let event = |uid: &'static str| {
        vec![
            format!("UID:{uid}"),
            "DTSTAMP:20270101T000000Z".into(),
            "DTSTART:20270315T090000Z".into(),
            "DTEND:20270315T100000Z".into(),
            "ORGANIZER:mailto:alice@example.com".into(),
        ]
    };
    w.mail(
        "REQUEST",
        "mallory@example.net",
        Some(ALICE),
        &refs(&event("spoofed")),
    )
    .await;
    assert!(w.busy(ALICE).await.is_empty());
    assert!(w.queue(ALICE).await.is_empty());
    w.mail("REQUEST", MANAGER, Some(ALICE), &refs(&event("managed")))
        .await;
    assert_eq!(
        w.busy(ALICE).await,
        vec!["2027-03-15T09:00:00Z 2027-03-15T10:00:00Z BUSY".to_owned()]
    );
    assert_eq!(w.log().await, vec!["REQUEST refused", "REQUEST applied"]);
}
