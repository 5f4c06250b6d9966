//! Uninvites and delegation through the real binaries (issue 14): a CANCEL
//! that names only some attendees removes them and keeps the event, whatever
//! its STATUS, in the shape each client sends it (fixtures
//! `tests/fixtures/clients/uninvite-*.eml`: Outlook/Exchange with
//! `STATUS:CANCELLED`, Thunderbird with the event's own STATUS, Nextcloud's
//! sabre/vobject with none); the removed attendee who receives it loses the
//! event; per instance too. A delegate's REPLY (RFC 5546 §4.2.6,
//! `delegate-reply-rfc5546.eml`) sets both the delegate's and the
//! delegator's line. docs/semantics.md "CANCEL: whole event or uninvite".

use imipflow_tests::{TestEnv, fixture, imip_mail, partstats, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const ERIN: &str = "erin@example.org";
const MALLORY: &str = "mallory@example.net";

/// The UID Outlook gave Alice's series in the Outlook fixtures.
const OUTLOOK_UID: &str = "040000008200E00074C5B7101A82E00800000000B0C1D2E3F405CA010000000000000000100000001122334455667788";
const THUNDERBIRD_UID: &str = "6f1c2a9e-77d4-4d1e-9a3b-0c5e2d1f8a10";
const NEXTCLOUD_UID: &str = "a8e2f0c4-3b1d-4c5e-9f7a-nextcloud-uninvite";
const BUDGET_UID: &str = "budget-review-2027@example.com";

const WINDOW: (&str, &str) = ("2027-03-01T00:00:00Z", "2027-05-01T00:00:00Z");

struct World {
    env: TestEnv,
    _p: imipflow_tests::Processor,
    n: u32,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let p = env.start_processor(&[]);
        World { env, _p: p, n: 0 }
    }

    /// Ingests `mail` with envelope sender `from`: outgoing, or delivered to `to`.
    async fn ingest(&self, mail: &[u8], from: &str, to: Option<&str>) {
        let mut args = vec!["--sender", from];
        if let Some(to) = to {
            args.extend(["--direction", "incoming", "--recipient", to]);
        }
        let out = self.env.ingest(&args, mail).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn fixture(&self, name: &str, from: &str, to: Option<&str>) {
        self.ingest(&fixture(&format!("clients/{name}.eml")), from, to)
            .await;
    }

    async fn mail(&mut self, method: &str, from: &str, to: Option<&str>, lines: &[String]) {
        self.n += 1;
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mail = imip_mail(
            method,
            from,
            &format!("uninvite{}@x", self.n),
            &[vevent(&lines)],
        );
        self.ingest(&mail, from, to).await;
    }

    async fn busy(&self, user: &str) -> Vec<String> {
        self.env.wait_applied().await;
        self.env.busy_lines(user, WINDOW.0, WINDOW.1).await
    }

    /// The recurrence ids (`null` for the master) stored for `user` and `uid`.
    async fn keys(&self, user: &str, uid: &str) -> Vec<Value> {
        self.env.wait_applied().await;
        self.env
            .ctl_json(&["objects", user])
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["uid"] == uid)
            .map(|o| o["recurrence_id"].clone())
            .collect()
    }

    /// `imip-ctl object` of the master, or of the instance `rid`.
    async fn object(&self, user: &str, uid: &str, rid: Option<&str>) -> Value {
        self.env.wait_applied().await;
        let mut args = vec!["object", user, uid];
        if let Some(rid) = rid {
            args.extend(["--recurrence-id", rid]);
        }
        self.env.ctl_json(&args).await
    }

    /// Outcomes of `user`'s messages, in stream order.
    async fn outcomes(&self, user: &str) -> Vec<String> {
        self.env.wait_applied().await;
        let db = self.env.pg().await;
        db.query(
            "SELECT outcome FROM message_log WHERE user_addr = $1 ORDER BY stream_seq",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

/// Alice's weekly sync, four Tuesdays from 16 March 2027, 10:00 Berlin, with
/// Bob, Carol and Dave; `who` is the attendee list (Carol's acceptance
/// carries only her own line).
fn series(uid: &str, attendees: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".into(),
        "DTSTAMP:20270301T090000Z".into(),
        "DTSTART;TZID=Europe/Berlin:20270316T100000".into(),
        "DTEND;TZID=Europe/Berlin:20270316T110000".into(),
        "RRULE:FREQ=WEEKLY;COUNT=4".into(),
        "SUMMARY:Weekly sync".into(),
        format!("ORGANIZER:mailto:{ALICE}"),
    ];
    v.extend(attendees.iter().cloned());
    v
}

fn attendee(partstat: &str, who: &str) -> String {
    format!("ATTENDEE;PARTSTAT={partstat}:mailto:{who}")
}

fn everyone() -> Vec<String> {
    vec![
        attendee("ACCEPTED", BOB),
        attendee("NEEDS-ACTION", CAROL),
        attendee("ACCEPTED", DAVE),
    ]
}

fn addresses(object: &Value) -> Vec<String> {
    let mut v: Vec<String> = object["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// Alice sends the series; Carol is invited (queued) and accepts, so both
/// have it stored and are busy four times.
async fn invited(w: &mut World, uid: &str) -> Vec<String> {
    w.mail("REQUEST", ALICE, None, &series(uid, &everyone()))
        .await;
    w.mail("REQUEST", ALICE, Some(CAROL), &series(uid, &everyone()))
        .await;
    let mut accept = series(uid, &[attendee("ACCEPTED", CAROL)]);
    accept[2] = "DTSTAMP:20270302T090000Z".into();
    w.mail("REPLY", CAROL, None, &accept).await;
    let alice = w.busy(ALICE).await;
    assert_eq!(alice.len(), 4, "{alice:#?}");
    assert_eq!(w.busy(CAROL).await, alice, "Carol accepted the series");
    alice
}

/// The client's uninvite of Carol: Alice's copy loses Carol and keeps the
/// event and its busy time; Carol, receiving it, loses the event.
async fn uninvite_of_carol(fixture: &str, uid: &str) {
    let mut w = World::new().await;
    let busy = invited(&mut w, uid).await;
    w.fixture(fixture, ALICE, None).await;
    let object = w.object(ALICE, uid, None).await;
    assert_eq!(addresses(&object), [BOB, DAVE], "{fixture}: {object:#}");
    assert_eq!(object["sequence"], 1, "{fixture}");
    assert_eq!(w.keys(ALICE, uid).await, [Value::Null], "{fixture}");
    assert_eq!(w.busy(ALICE).await, busy, "{fixture}: Alice is still busy");

    w.fixture(fixture, ALICE, Some(CAROL)).await;
    assert!(
        w.keys(CAROL, uid).await.is_empty(),
        "{fixture}: Carol's copy"
    );
    assert!(w.busy(CAROL).await.is_empty(), "{fixture}: Carol is free");
    let all = w.outcomes(ALICE).await;
    assert!(all.iter().all(|o| o == "applied"), "{fixture}: {all:?}");
}

#[tokio::test]
async fn outlook_uninvite_with_status_cancelled_keeps_the_organizers_event() {
    uninvite_of_carol("uninvite-outlook", OUTLOOK_UID).await;
}

#[tokio::test]
async fn thunderbird_uninvite_with_the_events_own_status_keeps_the_organizers_event() {
    uninvite_of_carol("uninvite-thunderbird", THUNDERBIRD_UID).await;
}

#[tokio::test]
async fn nextcloud_uninvite_without_status_keeps_the_organizers_event() {
    uninvite_of_carol("uninvite-nextcloud", NEXTCLOUD_UID).await;
}

#[tokio::test]
async fn outlook_occurrence_uninvite_removes_the_attendee_from_that_instance_only() {
    let mut w = World::new().await;
    let busy = invited(&mut w, OUTLOOK_UID).await;
    w.fixture("uninvite-outlook-occurrence", ALICE, None).await;
    let rid = "2027-03-23T09:00:00Z";
    let master = w.object(ALICE, OUTLOOK_UID, None).await;
    assert_eq!(addresses(&master), [BOB, CAROL, DAVE]);
    assert_eq!(master["exdate"], Value::Array(vec![]));
    let instance = w.object(ALICE, OUTLOOK_UID, Some(rid)).await;
    assert_eq!(addresses(&instance), [BOB, DAVE]);
    assert_eq!(w.busy(ALICE).await, busy, "Alice keeps all four instances");

    // Carol receives it: that instance is gone for her, the others stay.
    w.fixture("uninvite-outlook-occurrence", ALICE, Some(CAROL))
        .await;
    let carol = w.busy(CAROL).await;
    let expected: Vec<String> = busy
        .iter()
        .filter(|l| !l.starts_with("2027-03-23"))
        .cloned()
        .collect();
    assert_eq!(carol.len(), 3, "{carol:#?}");
    assert_eq!(carol, expected);
}

#[tokio::test]
async fn outlook_cancel_naming_everyone_cancels_the_meeting() {
    let mut w = World::new().await;
    invited(&mut w, OUTLOOK_UID).await;
    w.fixture("cancel-outlook-everyone", ALICE, None).await;
    assert!(w.keys(ALICE, OUTLOOK_UID).await.is_empty());
    assert!(w.busy(ALICE).await.is_empty());
    w.fixture("cancel-outlook-everyone", ALICE, Some(CAROL))
        .await;
    assert!(w.keys(CAROL, OUTLOOK_UID).await.is_empty());
    assert!(w.busy(CAROL).await.is_empty());
}

/// Alice's budget review with Bob and Carol, as the delegation fixture answers it.
fn budget(stamp: &str, attendees: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("UID:{BUDGET_UID}"),
        "SEQUENCE:0".into(),
        format!("DTSTAMP:{stamp}"),
        "DTSTART:20270315T090000Z".into(),
        "DTEND:20270315T100000Z".into(),
        "SUMMARY:Budget review".into(),
        format!("ORGANIZER:mailto:{ALICE}"),
    ];
    v.extend(attendees.iter().cloned());
    v
}

#[tokio::test]
async fn a_delegates_reply_sets_the_delegators_line_too() {
    let mut w = World::new().await;
    let invitees = [
        attendee("NEEDS-ACTION", BOB),
        attendee("NEEDS-ACTION", CAROL),
    ];
    w.mail(
        "REQUEST",
        ALICE,
        None,
        &budget("20270301T090000Z", &invitees),
    )
    .await;
    // Erin, Bob's delegate, answers Alice before Bob told her (RFC 5546 §4.2.6).
    w.fixture("delegate-reply-rfc5546", ERIN, Some(ALICE)).await;
    let object = w.object(ALICE, BUDGET_UID, None).await;
    assert_eq!(
        partstats(&object),
        [
            format!("{BOB} DELEGATED"),
            format!("{CAROL} NEEDS-ACTION"),
            format!("{ERIN} ACCEPTED"),
        ]
    );
    // Mallory writes Carol's line delegating to someone else: the lines do
    // not match, Mallory is refused and Carol's line is untouched.
    let forged = budget(
        "20270305T000000Z",
        &[
            format!(
                "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{CAROL}\":mailto:{MALLORY}"
            ),
            format!("ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:{DAVE}\":mailto:{CAROL}"),
        ],
    );
    w.mail("REPLY", MALLORY, Some(ALICE), &forged).await;
    // Bob's own answer afterwards is his (the delegate's line was not his stamp).
    let bob = budget("20270303T000000Z", &[attendee("ACCEPTED", BOB)]);
    w.mail("REPLY", BOB, Some(ALICE), &bob).await;
    let object = w.object(ALICE, BUDGET_UID, None).await;
    assert_eq!(
        partstats(&object),
        [
            format!("{BOB} ACCEPTED"),
            format!("{CAROL} NEEDS-ACTION"),
            format!("{ERIN} ACCEPTED"),
        ]
    );
    assert_eq!(
        w.outcomes(ALICE).await,
        ["applied", "applied", "refused", "applied"]
    );
}
