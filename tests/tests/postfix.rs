//! A real Postfix in front of imipflow (issue 7): a private instance
//! configured with `deploy/postfix/` receives real SMTP, its pipes run
//! `imip-ingest` as `nobody`, and the processor's effects are read back with
//! `imip-ctl`. Covers the outgoing copy (submission only), the incoming copy
//! (every local recipient), that a forged local sender on port 25 changes
//! nobody's calendar, that the copy addresses cannot be addressed from
//! outside, and the EX_TEMPFAIL path: NATS down → the copy is deferred while
//! the real delivery goes on → NATS up → `postqueue -f` → applied. And the
//! calendar manager's address (`IMIP_MANAGER_ADDRESSES`, trusted on the
//! envelope sender alone): refused on port 25 and to any other login, applied
//! as the recipient's own when the manager submits with its own login.
//!
//! Skips (with a message) only when postfix cannot be installed here.

use imipflow_tests::mta::{MANAGED_SLOT, managed_meeting};
use imipflow_tests::mta::{NatsServer, Postfix, postfix_unavailable};
use imipflow_tests::{TestEnv, imip_mail, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.org"; // local user, organizer
const BOB: &str = "bob@example.org"; // local user, attendee
const DAVE: &str = "dave@example.com"; // elsewhere
const CAROL: &str = "carol@example.com"; // elsewhere, organizer
/// The calendar manager's address, as in `deploy/postfix/imip-manager-*`.
const MANAGER: &str = "calendar@example.org";
const MANAGER_LOGIN: &str = "calendar-manager";

const FROM: &str = "2027-03-01T00:00:00Z";
const TO: &str = "2027-04-01T00:00:00Z";
const SLOT: &str = "2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY";

fn skip() -> bool {
    match postfix_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

/// Alice's team meeting as she sends it (REQUEST) or as `who` answers it
/// (REPLY, only that attendee).
fn alice_meeting(reply_from: Option<(&str, &str)>) -> Vec<String> {
    let mut lines = vec![
        "UID:team-sync@example.org",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270310T090000Z",
        "DTEND:20270310T100000Z",
        "SUMMARY:Team sync",
        "ORGANIZER:mailto:alice@example.org",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    match reply_from {
        None => lines.extend([
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.org".to_owned(),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org".to_owned(),
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:dave@example.com".to_owned(),
        ]),
        Some((who, partstat)) => {
            lines[2] = "DTSTAMP:20270102T000000Z".to_owned();
            lines.push(format!("ATTENDEE;PARTSTAT={partstat}:mailto:{who}"));
        }
    }
    vevent(&lines.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn queue(env: &TestEnv, user: &str) -> Vec<Value> {
    env.ctl_json(&["queue", user])
        .await
        .as_array()
        .expect("queue")
        .clone()
}

#[tokio::test]
async fn outgoing_and_incoming_copies_through_postfix() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = env.start_processor(&[]);
    let pf = Postfix::start(&env);

    // Alice invites Bob (local) and Dave (elsewhere) from her mail client.
    let invite = imip_mail("REQUEST", ALICE, "invite@pf", &[alice_meeting(None)]);
    pf.send(pf.submission_port, ALICE, &[BOB, DAVE], &invite);
    // The real deliveries and both copies (Alice's outgoing, Bob's incoming).
    for to in [
        BOB,
        DAVE,
        "alice+imip-out@example.org",
        "bob+imip-in@example.org",
    ] {
        pf.wait_log(&[&format!("to=<{to}>"), "status=sent"], 1)
            .await;
    }
    env.wait_applied().await;
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);
    let q = queue(&env, BOB).await;
    assert_eq!(q.len(), 1, "Bob's pending invitation: {q:?}");
    assert_eq!(q[0]["uid"], "team-sync@example.org");
    assert_eq!(q[0]["organizer"], ALICE);
    assert!(env.busy_lines(BOB, FROM, TO).await.is_empty());

    // Bob accepts from his client: his outgoing REPLY, Alice's incoming one.
    let reply = imip_mail(
        "REPLY",
        BOB,
        "reply@pf",
        &[alice_meeting(Some((BOB, "ACCEPTED")))],
    );
    pf.send(pf.submission_port, BOB, &[ALICE], &reply);
    for to in ["bob+imip-out@example.org", "alice+imip-in@example.org"] {
        pf.wait_log(&[&format!("to=<{to}>"), "status=sent"], 1)
            .await;
    }
    env.wait_applied().await;
    assert!(queue(&env, BOB).await.is_empty(), "the answer clears it");
    assert_eq!(env.busy_lines(BOB, FROM, TO).await, vec![SLOT]);
    let object = env
        .ctl_json(&["object", ALICE, "team-sync@example.org"])
        .await;
    assert!(
        object.to_string().contains("ACCEPTED") && object.to_string().contains(BOB),
        "Alice's copy records Bob's answer: {object}"
    );

    // Carol (elsewhere) invites Bob over port 25, and a plain mail follows:
    // both get Bob's incoming copy; only the invitation reaches his queue.
    let carol_meeting = vevent(&[
        "UID:carol-review@example.com",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270311T140000Z",
        "DTEND:20270311T150000Z",
        "SUMMARY:Review",
        "ORGANIZER:mailto:carol@example.com",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org",
    ]);
    let invite = imip_mail("REQUEST", CAROL, "carol@pf", &[carol_meeting]);
    pf.send(pf.mx_port, CAROL, &[BOB], &invite);
    let plain = b"From: <dave@example.com>\r\nTo: <bob@example.org>\r\nSubject: lunch?\r\n\
Message-ID: <plain@pf>\r\n\r\nNo calendar here.\r\n";
    pf.send(pf.mx_port, DAVE, &[BOB], plain);
    pf.wait_log(&["to=<bob+imip-in@example.org>", "status=sent"], 3)
        .await;
    // Port 25 makes no outgoing copies: the envelope sender is whatever the
    // client claims. A forged CANCEL "from Alice" must not touch her calendar.
    let mut cancel = alice_meeting(None);
    cancel.insert(cancel.len() - 1, "STATUS:CANCELLED".to_owned());
    let forged = imip_mail("CANCEL", ALICE, "forged@pf", &[cancel]);
    pf.send(pf.mx_port, ALICE, &[DAVE], &forged);
    pf.wait_log(&[&format!("to=<{DAVE}>"), "status=sent"], 2)
        .await;
    pf.wait_queue_empty().await;
    assert_eq!(
        pf.log_lines(&["relay=imip-out"]).len(),
        2,
        "outgoing copies only for the two submitted messages:\n{}",
        pf.maillog()
    );
    env.wait_applied().await;
    let q = queue(&env, BOB).await;
    assert_eq!(q.len(), 1, "Carol's invitation waits: {q:?}");
    assert_eq!(q[0]["organizer"], CAROL);
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);

    // The copy addresses are internal: refused in RCPT TO from outside.
    let (accepted, transcript) = pf.try_send(
        pf.mx_port,
        ALICE,
        &["alice+imip-out@example.org"],
        &imip_mail("CANCEL", ALICE, "direct@pf", &[alice_meeting(None)]),
    );
    assert!(
        !accepted && transcript.contains("reserved address"),
        "{transcript}"
    );
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);
}

#[tokio::test]
async fn nats_down_defers_the_copy_only_and_a_flush_applies_it() {
    if skip() {
        return;
    }
    // A NATS of our own: this test stops it.
    let mut nats = NatsServer::start();
    let mut env = TestEnv::unmigrated();
    env.nats_url = nats.url();
    let out = env.run("imip-processor", &["migrate"], b"").await;
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _processor = env.start_processor(&[]);
    let pf = Postfix::start(&env);

    nats.stop();
    let invite = imip_mail("REQUEST", ALICE, "invite@tempfail", &[alice_meeting(None)]);
    pf.send(pf.submission_port, ALICE, &[BOB, DAVE], &invite);
    // The recipients' own deliveries are not held up by the copies…
    for to in [BOB, DAVE] {
        pf.wait_log(&[&format!("to=<{to}>"), "status=sent"], 1)
            .await;
    }
    // …which ingest refused with 75, so Postfix keeps them.
    for to in ["alice+imip-out@example.org", "bob+imip-in@example.org"] {
        let line = pf
            .wait_log(&[&format!("to=<{to}>"), "status=deferred"], 1)
            .await;
        assert!(line.contains("cannot connect to NATS"), "{line}");
    }
    let q = pf.queue();
    assert!(
        q.contains("alice+imip-out@example.org")
            && q.contains("bob+imip-in@example.org")
            && !q.contains(DAVE),
        "deferred copies in the queue, nothing else:\n{q}"
    );
    assert!(
        pf.log_lines(&["status=bounced"]).is_empty(),
        "{}",
        pf.maillog()
    );

    nats.start_again();
    pf.flush();
    pf.wait_queue_empty().await;
    for to in ["alice+imip-out@example.org", "bob+imip-in@example.org"] {
        pf.wait_log(&[&format!("to=<{to}>"), "status=sent"], 1)
            .await;
    }
    env.wait_applied().await;
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);
    let q = queue(&env, BOB).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["organizer"], ALICE);
    // The stream holds each payload once.
    assert_eq!(env.stream_messages("messages").await.len(), 2);
}

/// A pipe command with a mistake in it (ingest exits 64): the copy is dropped
/// and logged, the recipient's own delivery happens, and nobody gets a bounce
/// (Postfix adds BCC recipients as NOTIFY=NONE).
#[tokio::test]
async fn a_broken_pipe_command_drops_the_copy_without_bouncing() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let pf = Postfix::start_with(&env, |master_cf| {
        master_cf.replace("--direction incoming", "--direction sideways")
    });
    let invite = imip_mail("REQUEST", CAROL, "broken@pf", &[alice_meeting(None)]);
    pf.send(pf.mx_port, CAROL, &[BOB], &invite);
    pf.wait_log(&[&format!("to=<{BOB}>"), "status=sent"], 1)
        .await;
    let line = pf
        .wait_log(&["to=<bob+imip-in@example.org>", "status=bounced"], 1)
        .await;
    assert!(line.contains("command line usage error"), "{line}");
    pf.wait_queue_empty().await;
    // A bounce would be logged by bounce(8) as a "sender non-delivery
    // notification" and queued to carol@example.com.
    let log = pf.maillog();
    assert!(!log.contains("non-delivery notification"), "{log}");
    assert_eq!(pf.log_lines(&["from=<>"]).len(), 0, "{log}");
}

fn manager_processor(env: &TestEnv) -> imipflow_tests::Processor {
    env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER)])
}

/// An outsider on port 25 claiming the manager's address (in any case) is
/// refused by Postfix: swaks sees the 5xx, no copy reaches imip-ingest, and
/// Bob's calendar is untouched. (Before deploy/ refused it, the forged
/// REQUEST was delivered, piped and applied as Bob's own meeting.)
#[tokio::test]
async fn a_forged_manager_sender_on_port_25_is_refused() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = manager_processor(&env);
    let pf = Postfix::start(&env);

    for (i, claimed) in [MANAGER, "Calendar@Example.ORG"].into_iter().enumerate() {
        let (accepted, transcript) = pf.try_send(
            pf.mx_port,
            claimed,
            &[BOB],
            &managed_meeting(&format!("forged-{i}@pf"), claimed),
        );
        assert!(!accepted, "forged manager mail accepted:\n{transcript}");
        assert!(
            transcript.contains("554 5.7.1")
                && transcript.contains("reserved for the calendar manager's login"),
            "{transcript}"
        );
    }
    // A genuine invitation behind it: once it is applied, anything the
    // forgeries had started would have been too.
    let carol = vevent(&[
        "UID:carol-review@example.com",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270311T140000Z",
        "DTEND:20270311T150000Z",
        "SUMMARY:Review",
        "ORGANIZER:mailto:carol@example.com",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org",
    ]);
    pf.send(
        pf.mx_port,
        CAROL,
        &[BOB],
        &imip_mail("REQUEST", CAROL, "carol@pf", &[carol]),
    );
    pf.wait_log(&["to=<bob+imip-in@example.org>", "status=sent"], 1)
        .await;
    pf.wait_queue_empty().await;
    env.wait_applied().await;
    assert_eq!(
        pf.log_lines(&["relay=imip-in"]).len(),
        1,
        "only Carol's mail was piped:\n{}",
        pf.maillog()
    );
    assert_eq!(env.stream_messages("messages").await.len(), 1);
    assert_eq!(
        env.message_log_of(BOB).await.len(),
        1,
        "Carol's message only"
    );
    assert!(env.busy_lines(BOB, FROM, TO).await.is_empty());
    let q = queue(&env, BOB).await;
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["organizer"], CAROL);
}

/// The manager's own submission path: logged in as its SASL login, its mail
/// to Bob is accepted, piped to `imip-ingest --direction incoming` and
/// applied as Bob's own (busy, stored, not queued), with no outgoing copy for
/// the manager's address. The same envelope sender from another login, or
/// from nobody logged in, is refused on that service too.
#[tokio::test]
async fn the_managers_submission_is_applied_as_the_users_own() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = manager_processor(&env);
    let pf = Postfix::start(&env);

    for login in [Some("alice"), None] {
        let (accepted, transcript) = pf.try_send_as(
            pf.submission_port,
            login,
            MANAGER,
            &[BOB],
            &managed_meeting("not-the-manager@pf", MANAGER),
        );
        assert!(!accepted, "{login:?} spoke as the manager:\n{transcript}");
        assert!(
            transcript.contains("553 5.7.1") && transcript.contains("Sender address rejected"),
            "{transcript}"
        );
    }

    let (accepted, transcript) = pf.try_send_as(
        pf.submission_port,
        Some(MANAGER_LOGIN),
        MANAGER,
        &[BOB],
        &managed_meeting("managed@pf", MANAGER),
    );
    assert!(accepted, "{transcript}");
    let line = pf
        .wait_log(&["to=<bob+imip-in@example.org>", "status=sent"], 1)
        .await;
    assert!(line.contains("relay=imip-in"), "{line}");
    pf.wait_queue_empty().await;
    assert!(
        pf.log_lines(&["relay=imip-out"]).is_empty(),
        "no outgoing copy for the manager's address:\n{}",
        pf.maillog()
    );
    env.wait_applied().await;
    assert_eq!(env.busy_lines(BOB, FROM, TO).await, vec![MANAGED_SLOT]);
    assert!(queue(&env, BOB).await.is_empty());
    let object = env
        .ctl_json(&["object", BOB, "bob-planning@example.org"])
        .await;
    assert_eq!(object["organizer"], BOB, "{object}");
    assert_eq!(
        env.message_log_of(BOB).await,
        vec![("REQUEST".to_owned(), "applied".to_owned())]
    );
}
