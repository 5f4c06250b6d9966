//! A real Exim (Debian's 4.96, unpacked beside Postfix) in front of
//! imipflow (issue 7), configured with the routers and transports of
//! `deploy/exim/`: an authenticated submission makes the outgoing copy, every
//! local recipient the incoming one, an unauthenticated "local" sender none;
//! and the EX_TEMPFAIL path: NATS down → only the copies are deferred → NATS
//! up → a queue run applies them. And the calendar manager's address
//! (`IMIP_MANAGER_ADDRESSES`, trusted on the envelope sender alone): refused
//! at MAIL on port 25 and to any other login (`deploy/exim/acl_imip`),
//! applied as the recipient's own when the manager submits with its login.
//!
//! Skips (with a message) when Exim cannot be unpacked here.

use imipflow_tests::mta::{Exim, NatsServer, exim_unavailable};
use imipflow_tests::mta::{MANAGED_SLOT, managed_meeting};
use imipflow_tests::{TestEnv, imip_mail, vevent};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const DAVE: &str = "dave@example.com";
const CAROL: &str = "carol@example.com";
/// The calendar manager's address and login, as in `deploy/exim/imip-managers`.
const MANAGER: &str = "calendar@example.org";
const MANAGER_LOGIN: &str = "calendar-manager";
const FROM: &str = "2027-03-01T00:00:00Z";
const TO: &str = "2027-04-01T00:00:00Z";
const SLOT: &str = "2027-03-10T09:00:00Z 2027-03-10T10:00:00Z BUSY";

fn skip() -> bool {
    match exim_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

fn invitation(message_id: &str, method: &str) -> Vec<u8> {
    let mut lines = vec![
        "UID:exim-sync@example.org",
        "SEQUENCE:0",
        "DTSTAMP:20270101T000000Z",
        "DTSTART:20270310T090000Z",
        "DTEND:20270310T100000Z",
        "SUMMARY:Team sync",
        "ORGANIZER:mailto:alice@example.org",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.org",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.org",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:dave@example.com",
    ];
    if method == "CANCEL" {
        lines.push("STATUS:CANCELLED");
    }
    imip_mail(method, ALICE, message_id, &[vevent(&lines)])
}

async fn queue_len(env: &TestEnv, user: &str) -> usize {
    env.ctl_json(&["queue", user])
        .await
        .as_array()
        .expect("queue")
        .len()
}

#[tokio::test]
async fn outgoing_and_incoming_copies_through_exim() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = env.start_processor(&[]);
    let exim = Exim::start(&env);

    exim.send(
        exim.submission_port,
        true,
        ALICE,
        &[BOB, DAVE],
        &invitation("invite@exim", "REQUEST"),
    );
    // A forged "Alice" without authentication (port 25's case): delivered,
    // but no outgoing copy, so her calendar keeps the meeting.
    exim.send(
        exim.mx_port,
        false,
        ALICE,
        &[BOB],
        &invitation("forged@exim", "CANCEL"),
    );
    exim.run_queue();
    let log = exim.mainlog();
    assert_eq!(
        exim.log_lines(&["R=imip_outgoing"]).len(),
        2,
        "one outgoing copy (two recipients, one batched run):\n{log}"
    );
    assert_eq!(exim.log_lines(&["R=imip_incoming"]).len(), 2, "{log}");
    assert_eq!(exim.log_lines(&["R=deliver_and_discard"]).len(), 3, "{log}");
    assert!(exim.queue().trim().is_empty(), "{}", exim.queue());

    env.wait_applied().await;
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);
    // Bob got the invitation and the forged cancel: the cancel, from the
    // organizer's address, removes the pending entry — that is what an
    // organizer's CANCEL does; the point here is Alice's own records.
    let objects = env.ctl_json(&["objects", ALICE]).await;
    assert_eq!(objects.as_array().map(Vec::len), Some(1), "{objects}");
}

#[tokio::test]
async fn nats_down_defers_the_copies_and_a_queue_run_applies_them() {
    if skip() {
        return;
    }
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
    let exim = Exim::start(&env);

    nats.stop();
    exim.send(
        exim.submission_port,
        true,
        ALICE,
        &[BOB, DAVE],
        &invitation("invite@exim-tempfail", "REQUEST"),
    );
    exim.run_queue();
    let log = exim.mainlog();
    // The recipients' own deliveries happened; the copies wait.
    assert_eq!(exim.log_lines(&["R=deliver_and_discard"]).len(), 2, "{log}");
    let deferred = exim.log_lines(&["==", "defer"]);
    assert_eq!(
        deferred.len(),
        3,
        "2 outgoing (batched) + 1 incoming:\n{log}"
    );
    assert!(
        deferred.iter().all(|l| l.contains("returned 75")),
        "{deferred:?}"
    );
    assert!(exim.queue().contains(ALICE), "{}", exim.queue());

    nats.start_again();
    exim.run_queue();
    let log = exim.mainlog();
    assert!(exim.queue().trim().is_empty(), "{}\n{log}", exim.queue());
    assert_eq!(
        exim.log_lines(&["R=deliver_and_discard"]).len(),
        2,
        "the real deliveries are not repeated:\n{log}"
    );
    env.wait_applied().await;
    assert_eq!(env.busy_lines(ALICE, FROM, TO).await, vec![SLOT]);
    assert_eq!(queue_len(&env, BOB).await, 1);
}

/// A pipe command with a mistake in it (ingest exits 64): the copy fails and
/// is logged, the recipient's own delivery happens, and `errors_to =` keeps
/// Exim from sending anyone a bounce.
#[tokio::test]
async fn a_broken_pipe_command_fails_the_copy_without_bouncing() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let exim = Exim::start_with(&env, |transports| {
        transports.replace("--direction incoming", "--direction sideways")
    });
    exim.send(
        exim.mx_port,
        false,
        DAVE,
        &[BOB],
        &invitation("broken@exim", "REQUEST"),
    );
    exim.run_queue();
    let log = exim.mainlog();
    assert_eq!(exim.log_lines(&["R=deliver_and_discard"]).len(), 1, "{log}");
    assert_eq!(
        exim.log_lines(&["** bob@example.org R=imip_incoming", "returned 64"])
            .len(),
        1,
        "{log}"
    );
    assert_eq!(exim.log_lines(&["error ignored"]).len(), 1, "{log}");
    // A bounce would arrive as a new message from <> ("<= <>").
    assert!(exim.log_lines(&["<= <>"]).is_empty(), "{log}");
    assert!(exim.queue().trim().is_empty(), "{}", exim.queue());
}

/// An outsider on port 25 claiming the manager's address (in any case) is
/// refused at MAIL: swaks sees the 550, nothing is queued or piped, and Bob's
/// calendar is untouched. (Before `acl_imip`, the forged REQUEST was
/// accepted, piped and applied as Bob's own meeting.)
#[tokio::test]
async fn a_forged_manager_sender_on_port_25_is_refused() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER)]);
    let exim = Exim::start(&env);

    for (i, claimed) in [MANAGER, "Calendar@Example.ORG"].into_iter().enumerate() {
        let (accepted, transcript) = exim.try_send_as(
            exim.mx_port,
            None,
            claimed,
            &[BOB],
            &managed_meeting(&format!("forged-{i}@exim"), claimed),
        );
        assert!(!accepted, "forged manager mail accepted:\n{transcript}");
        assert!(
            transcript.contains("550 ")
                && transcript.contains("reserved for the calendar manager's login"),
            "{transcript}"
        );
    }
    assert!(exim.queue().trim().is_empty(), "{}", exim.queue());
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
    exim.send(
        exim.mx_port,
        false,
        CAROL,
        &[BOB],
        &imip_mail("REQUEST", CAROL, "carol@exim", &[carol]),
    );
    exim.run_queue();
    let log = exim.mainlog();
    assert_eq!(
        exim.log_lines(&["R=imip_incoming"]).len(),
        1,
        "only Carol's mail was piped:\n{log}"
    );
    env.wait_applied().await;
    assert_eq!(env.stream_messages("messages").await.len(), 1);
    assert_eq!(
        env.message_log_of(BOB).await.len(),
        1,
        "Carol's message only"
    );
    assert!(env.busy_lines(BOB, FROM, TO).await.is_empty());
    assert_eq!(queue_len(&env, BOB).await, 1);
}

/// The manager's own submission path: logged in as its login, its mail to
/// Bob is accepted, piped to `imip-ingest --direction incoming` and applied
/// as Bob's own (busy, stored, not queued), with no outgoing copy for the
/// manager's address. The same envelope sender from another login, or from
/// nobody logged in, is refused on that port too.
#[tokio::test]
async fn the_managers_submission_is_applied_as_the_users_own() {
    if skip() {
        return;
    }
    let env = TestEnv::new().await;
    let _processor = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER)]);
    let exim = Exim::start(&env);

    for login in [Some(ALICE), None] {
        let (accepted, transcript) = exim.try_send_as(
            exim.submission_port,
            login,
            MANAGER,
            &[BOB],
            &managed_meeting("not-the-manager@exim", MANAGER),
        );
        assert!(!accepted, "{login:?} spoke as the manager:\n{transcript}");
        assert!(
            transcript.contains("550 ")
                && transcript.contains("reserved for the calendar manager's login"),
            "{transcript}"
        );
    }
    let (accepted, transcript) = exim.try_send_as(
        exim.submission_port,
        Some(MANAGER_LOGIN),
        MANAGER,
        &[BOB],
        &managed_meeting("managed@exim", MANAGER),
    );
    assert!(accepted, "{transcript}");
    exim.run_queue();
    let log = exim.mainlog();
    assert!(exim.queue().trim().is_empty(), "{}\n{log}", exim.queue());
    assert_eq!(exim.log_lines(&["R=imip_incoming"]).len(), 1, "{log}");
    assert!(
        exim.log_lines(&["R=imip_outgoing"]).is_empty(),
        "no outgoing copy for the manager's address:\n{log}"
    );
    env.wait_applied().await;
    assert_eq!(env.busy_lines(BOB, FROM, TO).await, vec![MANAGED_SLOT]);
    assert_eq!(queue_len(&env, BOB).await, 0);
    let object = env
        .ctl_json(&["object", BOB, "bob-planning@example.org"])
        .await;
    assert_eq!(object["organizer"], BOB, "{object}");
    assert_eq!(
        env.message_log_of(BOB).await,
        vec![("REQUEST".to_owned(), "applied".to_owned())]
    );
}
