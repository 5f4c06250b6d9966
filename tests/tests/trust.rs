//! Sender trust (SPEC §2 "Trust", §3; issue 5) through the real binaries: a
//! REPLY from someone who is not an attendee, a REQUEST or CANCEL from someone
//! who is not the organizer (in the user's own outgoing mail and in mail
//! delivered to the user), and mail from a manager address that the deployment
//! does not trust are refused: nothing changes, `message_log` records the
//! outcome `refused` with the reason, and `imip-ctl status --json` counts them.

use imipflow_tests::{TestEnv, imip_mail, partstats, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const MALLORY: &str = "mallory@example.net";
const MANAGER: &str = "calendar@example.com";

const WINDOW: (&str, &str) = ("2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z");

struct World {
    env: TestEnv,
    _p: imipflow_tests::Processor,
    n: u32,
}

impl World {
    async fn new(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let p = env.start_processor(extra);
        World { env, _p: p, n: 0 }
    }

    /// Ingests a `method` message whose envelope sender is `from`: outgoing
    /// (`from` is the user) or delivered to `to`. `header_from` is what the
    /// From: header claims, which ingest must not trust.
    async fn mail(
        &mut self,
        method: &str,
        from: &str,
        header_from: &str,
        to: Option<&str>,
        lines: &[&str],
    ) {
        self.n += 1;
        let mail = imip_mail(
            method,
            header_from,
            &format!("trust{}@x", self.n),
            &[vevent(lines)],
        );
        let mut args = vec!["--sender", from];
        if let Some(to) = to {
            args.extend(["--direction", "incoming", "--recipient", to]);
        }
        let out = self.env.ingest(&args, &mail).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn busy(&self, user: &str) -> Vec<String> {
        self.env.wait_applied().await;
        self.env.busy_lines(user, WINDOW.0, WINDOW.1).await
    }

    async fn object(&self, user: &str, uid: &str) -> Option<Value> {
        self.env.wait_applied().await;
        self.env
            .ctl_json(&["objects", user])
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["uid"] == uid)
            .cloned()
    }

    /// (user, method, outcome, reason) of every logged message, in stream order.
    async fn log(&self) -> Vec<(String, String, String, Option<String>)> {
        self.env.wait_applied().await;
        let db = self.env.pg().await;
        db.query(
            "SELECT user_addr, method, outcome, reason FROM message_log ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }
}

/// Alice's meeting with Bob; `seq` and the times vary per version.
fn meeting(seq: u32, start: &str, end: &str, bob: &str) -> Vec<String> {
    vec![
        "UID:meeting@trust".into(),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:20270301T12000{seq}Z"),
        format!("DTSTART:{start}"),
        format!("DTEND:{end}"),
        format!("ORGANIZER:mailto:{ALICE}"),
        format!("ATTENDEE;PARTSTAT={bob}:mailto:{BOB}"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn messages_from_unentitled_senders_are_refused_recorded_and_counted() {
    // No manager address is configured in this deployment.
    let mut w = World::new(&[]).await;
    let m0 = meeting(0, "20270310T090000Z", "20270310T100000Z", "NEEDS-ACTION");
    w.mail("REQUEST", ALICE, ALICE, None, &strs(&m0)).await;
    let accepted = meeting(0, "20270310T090000Z", "20270310T100000Z", "ACCEPTED");
    w.mail("REPLY", BOB, BOB, None, &strs(&accepted)).await;
    let alice_busy = w.busy(ALICE).await;
    let bob_busy = w.busy(BOB).await;
    assert_eq!(alice_busy.len(), 1);
    assert_eq!(bob_busy, alice_busy, "Bob accepted: busy at the same time");
    let alice_object = w.object(ALICE, "meeting@trust").await.unwrap();

    // Outgoing: Bob's client sends a new version of Alice's meeting.
    let moved = meeting(1, "20270311T090000Z", "20270311T100000Z", "ACCEPTED");
    w.mail("REQUEST", BOB, BOB, None, &strs(&moved)).await;
    // Outgoing: Bob's client cancels Alice's meeting.
    w.mail("CANCEL", BOB, BOB, None, &strs(&moved)).await;
    // Outgoing: Carol answers a meeting that does not list her.
    let carol_reply = {
        let mut m = meeting(0, "20270310T090000Z", "20270310T100000Z", "ACCEPTED");
        m.push(format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{BOB}"));
        m
    };
    w.mail("REPLY", CAROL, CAROL, None, &strs(&carol_reply))
        .await;
    // Incoming: Mallory sends Bob an "update" of Alice's meeting, with a
    // forged From: header.
    w.mail("REQUEST", MALLORY, ALICE, Some(BOB), &strs(&moved))
        .await;
    // Incoming: Mallory cancels Alice's meeting for Bob.
    w.mail("CANCEL", MALLORY, ALICE, Some(BOB), &strs(&moved))
        .await;
    // Incoming: Mallory answers Alice's meeting as if she were Bob.
    let forged_reply = meeting(0, "20270310T090000Z", "20270310T100000Z", "DECLINED");
    w.mail("REPLY", MALLORY, BOB, Some(ALICE), &strs(&forged_reply))
        .await;
    // Incoming: Mallory answers Alice's meeting as herself (never invited).
    let uninvited = {
        let mut m = meeting(0, "20270310T090000Z", "20270310T100000Z", "ACCEPTED");
        m.retain(|l| !l.starts_with("ATTENDEE"));
        m.push(format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{MALLORY}"));
        m
    };
    w.mail("REPLY", MALLORY, MALLORY, Some(ALICE), &strs(&uninvited))
        .await;
    // Manager spoof: mail from the web calendar's address, which this
    // deployment does not trust, acting for Bob.
    let as_bob = {
        let mut m = meeting(5, "20270312T090000Z", "20270312T100000Z", "ACCEPTED");
        m.retain(|l| !l.starts_with("ORGANIZER"));
        m.push(format!("ORGANIZER:mailto:{BOB}"));
        m
    };
    w.mail("REQUEST", MANAGER, MANAGER, Some(BOB), &strs(&as_bob))
        .await;
    w.mail("CANCEL", MANAGER, MANAGER, Some(BOB), &strs(&moved))
        .await;

    // Nothing changed.
    assert_eq!(w.busy(ALICE).await, alice_busy);
    assert_eq!(w.busy(BOB).await, bob_busy);
    assert!(w.busy(CAROL).await.is_empty());
    let after = w.object(ALICE, "meeting@trust").await.unwrap();
    assert_eq!(after["attendees"], alice_object["attendees"]);
    assert_eq!(after["sequence"], alice_object["sequence"]);
    let bob_object = w.object(BOB, "meeting@trust").await.unwrap();
    assert_eq!(bob_object["sequence"], 0);
    let queue = w.env.ctl_json(&["queue", BOB]).await;
    assert_eq!(queue.as_array().unwrap().len(), 0, "{queue}");

    // Recorded: each refusal with its reason.
    let log = w.log().await;
    let refused: Vec<String> = log
        .iter()
        .filter(|(_, _, outcome, _)| outcome == "refused")
        .map(|(user, method, _, reason)| {
            let reason = reason.as_deref().unwrap_or("");
            assert!(!reason.is_empty(), "refusal without reason for {user}");
            format!("{user} {method}")
        })
        .collect();
    assert_eq!(
        refused,
        [
            format!("{BOB} REQUEST"),
            format!("{BOB} CANCEL"),
            format!("{CAROL} REPLY"),
            format!("{BOB} REQUEST"),
            format!("{BOB} CANCEL"),
            format!("{ALICE} REPLY"),
            format!("{ALICE} REPLY"),
            format!("{BOB} REQUEST"),
            format!("{BOB} CANCEL"),
        ],
        "{log:#?}"
    );
    let reasons: Vec<&str> = log
        .iter()
        .filter(|(_, _, o, _)| o == "refused")
        .map(|(_, _, _, r)| r.as_deref().unwrap_or(""))
        .collect();
    assert!(reasons[0].contains("organizer is"), "{reasons:?}");
    assert!(reasons[2].contains("not an attendee"), "{reasons:?}");

    // Counted.
    let status = w.env.ctl_json(&["status"]).await;
    assert_eq!(status["refused"], 9, "{status}");
    assert_eq!(status["dead_letters"], 0, "{status}");
}

#[tokio::test]
async fn a_configured_manager_is_trusted_and_a_lookalike_is_not() {
    let mut w = World::new(&[("IMIP_MANAGER_ADDRESSES", MANAGER)]).await;
    let as_bob = |seq: u32| {
        let mut m = meeting(seq, "20270312T090000Z", "20270312T100000Z", "ACCEPTED");
        m.retain(|l| !l.starts_with("ORGANIZER"));
        m.push(format!("ORGANIZER:mailto:{BOB}"));
        m
    };
    // The lookalike first: refused, nothing stored.
    let lookalike = "calendar@example.com.evil.example";
    w.mail("REQUEST", lookalike, MANAGER, Some(BOB), &strs(&as_bob(1)))
        .await;
    assert!(w.busy(BOB).await.is_empty());
    // The configured manager (in another case): applied as Bob's own.
    w.mail(
        "REQUEST",
        "Calendar@Example.COM",
        MANAGER,
        Some(BOB),
        &strs(&as_bob(2)),
    )
    .await;
    assert_eq!(
        w.busy(BOB).await,
        ["2027-03-12T09:00:00Z 2027-03-12T10:00:00Z BUSY"]
    );
    let outcomes: Vec<String> = w
        .log()
        .await
        .into_iter()
        .map(|(_, m, o, _)| format!("{m} {o}"))
        .collect();
    assert_eq!(outcomes, ["REQUEST refused", "REQUEST applied"]);
    let status = w.env.ctl_json(&["status"]).await;
    assert_eq!(status["refused"], 1, "{status}");
}

// ---- issue 12: trust is checked against what the user has stored ----------

const DAVE: &str = "dave@example.org";
const ERIN: &str = "erin@example.org";

/// `lines` with the ORGANIZER line replaced by `organizer` (a whole property line).
fn organized(mut lines: Vec<String>, organizer: &str) -> Vec<String> {
    lines.retain(|l| !l.starts_with("ORGANIZER"));
    lines.push(organizer.to_owned());
    lines
}

fn with(mut lines: Vec<String>, extra: &[&str]) -> Vec<String> {
    lines.extend(extra.iter().map(|l| l.to_string()));
    lines
}

async fn queue_of(w: &World, user: &str) -> Vec<Value> {
    w.env.wait_applied().await;
    let q = w.env.ctl_json(&["queue", user]).await;
    q.as_array().unwrap().clone()
}

/// Reasons of the refused messages, in stream order.
async fn refusals(w: &World) -> Vec<String> {
    w.log()
        .await
        .into_iter()
        .filter(|(_, _, outcome, _)| outcome == "refused")
        .map(|(user, method, _, reason)| format!("{user} {method}: {}", reason.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn only_the_stored_organizer_cancels_or_replaces_a_stored_meeting() {
    stored_organizer_decides(&[]).await;
}

#[tokio::test]
async fn only_the_stored_organizer_cancels_or_replaces_a_stored_meeting_per_message() {
    stored_organizer_decides(&[("IMIP_APPLY_PER_MESSAGE", "1")]).await;
}

async fn stored_organizer_decides(extra: &[(&str, &str)]) {
    let mut w = World::new(extra).await;
    // Alice's invitation reaches Bob, who accepts it from his own client.
    let invite = meeting(0, "20270310T090000Z", "20270310T100000Z", "NEEDS-ACTION");
    w.mail("REQUEST", ALICE, ALICE, Some(BOB), &strs(&invite))
        .await;
    let accepted = meeting(0, "20270310T090000Z", "20270310T100000Z", "ACCEPTED");
    w.mail("REPLY", BOB, BOB, None, &strs(&accepted)).await;
    let bob_busy = w.busy(BOB).await;
    assert_eq!(bob_busy.len(), 1, "Bob accepted: busy");
    let before = w.object(BOB, "meeting@trust").await.unwrap();

    // Mallory knows the UID (every attendee does) and cancels it as its organizer...
    let cancel = |seq| {
        with(
            meeting(seq, "20270310T090000Z", "20270310T100000Z", "ACCEPTED"),
            &["STATUS:CANCELLED"],
        )
    };
    let as_mallory = organized(cancel(1), &format!("ORGANIZER:mailto:{MALLORY}"));
    w.mail("CANCEL", MALLORY, MALLORY, Some(BOB), &strs(&as_mallory))
        .await;
    // ...then as Alice's SENT-BY...
    let sent_by = organized(
        cancel(2),
        &format!("ORGANIZER;SENT-BY=\"mailto:{MALLORY}\":mailto:{ALICE}"),
    );
    w.mail("CANCEL", MALLORY, ALICE, Some(BOB), &strs(&sent_by))
        .await;
    // ...and takes the meeting over with a REQUEST of her own.
    let takeover = organized(
        with(
            meeting(3, "20270311T090000Z", "20270311T100000Z", "NEEDS-ACTION"),
            &["SUMMARY:Mallory's meeting"],
        ),
        &format!("ORGANIZER:mailto:{MALLORY}"),
    );
    w.mail("REQUEST", MALLORY, MALLORY, Some(BOB), &strs(&takeover))
        .await;
    // Bob's own client re-organizes Alice's meeting (outgoing, Bob as organizer).
    let reorganized = organized(
        meeting(4, "20270312T090000Z", "20270312T100000Z", "ACCEPTED"),
        &format!("ORGANIZER:mailto:{BOB}"),
    );
    w.mail("REQUEST", BOB, BOB, None, &strs(&reorganized)).await;

    // Nothing changed: Bob's meeting, his busy time, his queue.
    assert_eq!(w.busy(BOB).await, bob_busy);
    let after = w.object(BOB, "meeting@trust").await.unwrap();
    assert_eq!(after, before);
    let queue = w.env.ctl_json(&["queue", BOB]).await;
    assert_eq!(queue.as_array().unwrap().len(), 0, "{queue}");
    let refused = refusals(&w).await;
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused[0].contains("organizer change"), "{refused:#?}");
    assert!(refused[1].contains("SENT-BY"), "{refused:#?}");
    assert!(refused[2].contains("organizer change"), "{refused:#?}");
    assert!(refused[3].contains("organizer change"), "{refused:#?}");

    // Alice, the stored organizer, still cancels it.
    w.mail("CANCEL", ALICE, ALICE, Some(BOB), &strs(&cancel(5)))
        .await;
    assert!(w.busy(BOB).await.is_empty());
    assert!(w.object(BOB, "meeting@trust").await.is_none());
}

#[tokio::test]
async fn an_outsider_does_not_replace_or_cancel_a_pending_invitation() {
    pending_organizer_decides(&[]).await;
}

#[tokio::test]
async fn an_outsider_does_not_replace_or_cancel_a_pending_invitation_per_message() {
    pending_organizer_decides(&[("IMIP_APPLY_PER_MESSAGE", "1")]).await;
}

async fn pending_organizer_decides(extra: &[(&str, &str)]) {
    let mut w = World::new(extra).await;
    let invite = |seq| {
        with(
            meeting(seq, "20270310T090000Z", "20270310T100000Z", "NEEDS-ACTION"),
            &["SUMMARY:Alice's planning"],
        )
    };
    w.mail("REQUEST", ALICE, ALICE, Some(BOB), &strs(&invite(0)))
        .await;
    let q = queue_of(&w, BOB).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["organizer"], ALICE);

    // A newer "version" with Mallory as organizer and her summary...
    let hers = organized(
        with(
            meeting(5, "20270311T090000Z", "20270311T100000Z", "NEEDS-ACTION"),
            &["SUMMARY:Mallory's party"],
        ),
        &format!("ORGANIZER:mailto:{MALLORY}"),
    );
    w.mail("REQUEST", MALLORY, MALLORY, Some(BOB), &strs(&hers))
        .await;
    // ...the same as Alice's SENT-BY...
    let sent_by = organized(
        hers.clone(),
        &format!("ORGANIZER;SENT-BY=\"mailto:{MALLORY}\":mailto:{ALICE}"),
    );
    w.mail("REQUEST", MALLORY, ALICE, Some(BOB), &strs(&sent_by))
        .await;
    // ...and a cancel of the pending entry.
    let cancel = organized(
        with(
            meeting(6, "20270310T090000Z", "20270310T100000Z", "NEEDS-ACTION"),
            &["STATUS:CANCELLED"],
        ),
        &format!("ORGANIZER:mailto:{MALLORY}"),
    );
    w.mail("CANCEL", MALLORY, MALLORY, Some(BOB), &strs(&cancel))
        .await;

    w.env.wait_applied().await;
    let q = queue_of(&w, BOB).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["organizer"], ALICE);
    assert_eq!(q[0]["summary"], "Alice's planning");
    assert_eq!(q[0]["sequence"], 0);
    let refused = refusals(&w).await;
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(refused[0].contains("organizer change"), "{refused:#?}");
    assert!(refused[1].contains("SENT-BY"), "{refused:#?}");
    assert!(refused[2].contains("organizer change"), "{refused:#?}");

    // Alice's own update still replaces her invitation.
    w.mail("REQUEST", ALICE, ALICE, Some(BOB), &strs(&invite(1)))
        .await;
    w.env.wait_applied().await;
    let q = queue_of(&w, BOB).await;
    assert_eq!(q[0]["sequence"], 1);
    assert!(w.busy(BOB).await.is_empty(), "pending: no busy time");
}

/// Alice's meeting with Bob and Carol, as Alice stores it.
fn alices_meeting() -> Vec<String> {
    vec![
        "UID:alices@trust".into(),
        "SEQUENCE:0".into(),
        "DTSTAMP:20270301T000000Z".into(),
        "DTSTART:20270315T090000Z".into(),
        "DTEND:20270315T100000Z".into(),
        format!("ORGANIZER:mailto:{ALICE}"),
        format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{ALICE}"),
        format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
        format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{CAROL}"),
    ]
}

/// A REPLY to [`alices_meeting`] stamped `stamp`, carrying `attendees`.
fn answer(stamp: &str, attendees: &[String]) -> Vec<String> {
    let mut v = vec![
        "UID:alices@trust".into(),
        "SEQUENCE:0".into(),
        format!("DTSTAMP:{stamp}"),
        "DTSTART:20270315T090000Z".into(),
        "DTEND:20270315T100000Z".into(),
        format!("ORGANIZER:mailto:{ALICE}"),
    ];
    v.extend(attendees.iter().cloned());
    v
}

#[tokio::test]
async fn a_reply_changes_only_its_senders_own_answer() {
    let mut w = World::new(&[]).await;
    w.mail("REQUEST", ALICE, ALICE, None, &strs(&alices_meeting()))
        .await;
    let carol = |p: &str| format!("ATTENDEE;PARTSTAT={p}:mailto:{CAROL}");
    let bob = |p: &str| format!("ATTENDEE;PARTSTAT={p}:mailto:{BOB}");
    // Carol accepts.
    let r = answer("20270302T000000Z", &[carol("ACCEPTED")]);
    w.mail("REPLY", CAROL, CAROL, Some(ALICE), &strs(&r)).await;
    // Bob, invited too, answers and declines for Carol as her SENT-BY...
    let r = answer(
        "20270305T000000Z",
        &[
            bob("ACCEPTED"),
            format!("ATTENDEE;PARTSTAT=DECLINED;SENT-BY=\"mailto:{BOB}\":mailto:{CAROL}"),
        ],
    );
    w.mail("REPLY", BOB, BOB, Some(ALICE), &strs(&r)).await;
    // ...and as her delegator, which he is not.
    let r = answer(
        "20270306T000000Z",
        &[
            bob("ACCEPTED"),
            format!("ATTENDEE;PARTSTAT=DECLINED;DELEGATED-FROM=\"mailto:{BOB}\":mailto:{CAROL}"),
        ],
    );
    w.mail("REPLY", BOB, BOB, Some(ALICE), &strs(&r)).await;
    // An outsider claims to be Carol's delegate.
    let r = answer(
        "20270306T000000Z",
        &[format!(
            "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{CAROL}\":mailto:{MALLORY}"
        )],
    );
    w.mail("REPLY", MALLORY, MALLORY, Some(ALICE), &strs(&r))
        .await;
    // Carol's real later answer is older than the forged stamps: it still counts.
    let r = answer("20270303T000000Z", &[carol("TENTATIVE")]);
    w.mail("REPLY", CAROL, CAROL, Some(ALICE), &strs(&r)).await;

    w.env.wait_applied().await;
    let object = w.env.ctl_json(&["object", ALICE, "alices@trust"]).await;
    assert_eq!(
        partstats(&object),
        [
            format!("{ALICE} ACCEPTED"),
            format!("{BOB} NEEDS-ACTION"),
            format!("{CAROL} TENTATIVE"),
        ]
    );
    let refused = refusals(&w).await;
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(refused[0].contains("SENT-BY"), "{refused:#?}");
    assert!(refused[1].contains("delegat"), "{refused:#?}");
    assert!(refused[2].contains("delegat"), "{refused:#?}");
}

#[tokio::test]
async fn a_delegate_is_accepted_only_when_the_delegator_delegated_to_them() {
    let mut w = World::new(&[]).await;
    w.mail("REQUEST", ALICE, ALICE, None, &strs(&alices_meeting()))
        .await;
    // Carol delegates to Dave (RFC 5546 §4.2.5), then Dave accepts.
    let r = answer(
        "20270302T000000Z",
        &[format!(
            "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:{DAVE}\":mailto:{CAROL}"
        )],
    );
    w.mail("REPLY", CAROL, CAROL, Some(ALICE), &strs(&r)).await;
    let r = answer(
        "20270303T000000Z",
        &[format!(
            "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{CAROL}\":mailto:{DAVE}"
        )],
    );
    w.mail("REPLY", DAVE, DAVE, Some(ALICE), &strs(&r)).await;
    // Erin, Bob's delegate, answers before Bob told Alice, with both lines
    // (RFC 5546 §4.2.6): accepted, and Bob's line is applied with his.
    let r = answer(
        "20270304T000000Z",
        &[
            format!("ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{BOB}\":mailto:{ERIN}"),
            format!("ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:{ERIN}\":mailto:{BOB}"),
        ],
    );
    w.mail("REPLY", ERIN, ERIN, Some(ALICE), &strs(&r)).await;
    // Mallory claims to be Bob's delegate without Bob's line: refused.
    let r = answer(
        "20270305T000000Z",
        &[format!(
            "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{BOB}\":mailto:{MALLORY}"
        )],
    );
    w.mail("REPLY", MALLORY, MALLORY, Some(ALICE), &strs(&r))
        .await;

    w.env.wait_applied().await;
    let object = w.env.ctl_json(&["object", ALICE, "alices@trust"]).await;
    assert_eq!(
        partstats(&object),
        [
            format!("{ALICE} ACCEPTED"),
            format!("{BOB} DELEGATED"),
            format!("{CAROL} DELEGATED"),
            format!("{DAVE} ACCEPTED"),
            format!("{ERIN} ACCEPTED"),
        ]
    );
    let refused = refusals(&w).await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].starts_with(&format!("{ALICE} REPLY")),
        "{refused:#?}"
    );
}
