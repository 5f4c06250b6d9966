//! `imip-manager` through the real binaries: the processor, the manager and
//! the harness's SMTP sink (`imipflow_tests::smtp_sink`), which accepts each
//! message the manager submits; the test hands it to the real `imip-ingest
//! --direction incoming` with the message's envelope (as the MTA's pipe
//! transport would).
//!
//! Refusals: no user header, a header from an untrusted peer, a missing or
//! wrong CSRF token, someone else's request, an unknown UID — none sends
//! anything. The happy path: Alice's invitation pending for Bob, Bob accepts
//! on the page, two messages go out (the REPLY to Alice from Bob, and its copy
//! to Bob from the calendar address), and once they are ingested Bob's queue
//! is empty, he is busy, Alice's record says he accepted, and the page (and
//! its event stream) says so.

use imipflow_tests::manager_http::{client, csrf_of, page, post_answer, queue};
use imipflow_tests::smtp_sink::Sink;
use imipflow_tests::{
    MANAGER_ADDRESS, PLANNING_UID as UID, TestEnv, free_port, imip_mail, invite_to_planning, vevent,
};
use std::time::Duration;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.net";
const SLOT: &str = "2027-03-16T09:00:00Z 2027-03-16T10:00:00Z BUSY";

/// Alice's invitation to Bob, pending for him (the harness's).
async fn invite(env: &TestEnv) {
    invite_to_planning(env, ALICE, BOB).await;
}

#[tokio::test]
async fn refusals_send_nothing() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)]);
    invite(&env).await;
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;

    // No header: 401, for pages and answers alike.
    let r = client().get(m.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        post_answer(&m, UID, None, &[("partstat", "ACCEPTED")]).await,
        401
    );
    let r = client().get(m.url("/events")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (status, html) = page(&m, "/", BOB).await;
    assert_eq!(status, 200);
    assert!(html.contains("Quarterly planning"), "{html}");
    let bobs = csrf_of(&html);
    let carols = csrf_of(&page(&m, "/", CAROL).await.1);
    assert_ne!(bobs, carols);

    // CSRF: missing, wrong, another user's.
    assert_eq!(
        post_answer(&m, UID, Some(BOB), &[("partstat", "ACCEPTED")]).await,
        403
    );
    let wrong = "0".repeat(bobs.len());
    for token in [wrong.as_str(), "nothex", carols.as_str()] {
        assert_eq!(
            post_answer(
                &m,
                UID,
                Some(BOB),
                &[("partstat", "ACCEPTED"), ("csrf", token)]
            )
            .await,
            403,
            "token {token}"
        );
    }
    // Someone else's request: Carol answers Bob's invitation with her own
    // valid token; it is not in her queue, so it is unknown to her.
    assert_eq!(
        post_answer(
            &m,
            UID,
            Some(CAROL),
            &[("partstat", "ACCEPTED"), ("csrf", &carols)]
        )
        .await,
        404
    );
    // An unknown UID, and a known one at a recurrence it has no entry for.
    assert_eq!(
        post_answer(
            &m,
            "no-such-uid",
            Some(BOB),
            &[("partstat", "ACCEPTED"), ("csrf", &bobs)]
        )
        .await,
        404
    );
    assert_eq!(
        post_answer(
            &m,
            UID,
            Some(BOB),
            &[
                ("partstat", "ACCEPTED"),
                ("csrf", &bobs),
                ("recurrence_id", "2027-03-23T09:00:00Z")
            ]
        )
        .await,
        404
    );
    // A PARTSTAT the page does not offer.
    assert_eq!(
        post_answer(
            &m,
            UID,
            Some(BOB),
            &[("partstat", "DELEGATED"), ("csrf", &bobs)]
        )
        .await,
        400
    );

    // A header from a peer outside the trusted proxies is not believed.
    let untrusting = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url())
                .env("IMIP_MANAGER_TRUSTED_PROXIES", "10.0.0.0/8")
                .env(
                    "IMIP_MANAGER_CONSUMER",
                    format!("{}-manager2", env.namespace),
                );
        })
        .await;
    let (status, body) = page(&untrusting, "/", BOB).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("127.0.0.1 is not a trusted proxy"), "{body}");

    sink.assert_nothing_sent().await;
    assert_eq!(
        queue(&env, BOB).await.len(),
        1,
        "the request is still pending"
    );
    // SIGTERM stops it cleanly.
    assert!(m.terminate().await.success());
}

#[tokio::test]
async fn accepting_on_the_page_sends_the_reply_and_its_copy_which_apply() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)]);
    invite(&env).await;
    let sink = Sink::start().await;
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env("IMIP_MANAGER_SMTP_URL", sink.url());
        })
        .await;
    let ready = client().get(m.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status().as_u16(),
        200,
        "{}",
        ready.text().await.unwrap()
    );

    let (status, html) = page(&m, "/", BOB).await;
    assert_eq!(status, 200);
    assert!(html.contains("Quarterly planning"), "{html}");
    assert!(html.contains(ALICE), "{html}");
    assert!(html.contains("Tue 16 Mar 2027 09:00 – 10:00"), "{html}");
    assert!(html.contains("new invitation"), "{html}");
    assert!(html.contains(&format!("/freebusy/{BOB}.ifb")), "{html}");
    let csrf = csrf_of(&html);
    assert!(
        html.contains(&format!("name=\"csrf\" value=\"{csrf}\"")),
        "{html}"
    );

    // The page's event stream, open before anything changes.
    let mut events = client()
        .get(m.url("/events"))
        .header("X-Remote-User", BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    let status = post_answer(
        &m,
        UID,
        Some(BOB),
        &[("partstat", "ACCEPTED"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 303);
    let (_, html) = page(&m, "/", BOB).await;
    assert!(html.contains("sent, waiting to apply"), "{html}");

    let got = sink.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let to_alice = got
        .iter()
        .find(|r| r.recipients == [ALICE])
        .expect("to Alice");
    let to_bob = got.iter().find(|r| r.recipients == [BOB]).expect("to Bob");
    assert_eq!(to_alice.sender, BOB);
    assert_eq!(to_bob.sender, MANAGER_ADDRESS);
    for r in [to_alice, to_bob] {
        let unfolded = r.data.replace("\r\n ", "");
        assert!(
            unfolded
                .to_ascii_lowercase()
                .contains("content-type: text/calendar; method=reply; charset=utf-8"),
            "{unfolded}"
        );
        for line in [
            "METHOD:REPLY",
            &format!("UID:{UID}"),
            "SEQUENCE:2",
            "DTSTART:20270316T090000Z",
            "DTEND:20270316T100000Z",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED;CN=Bob:mailto:bob@example.org",
        ] {
            assert!(
                unfolded.contains(&format!("\r\n{line}\r\n")),
                "{line} in\n{unfolded}"
            );
        }
        assert_eq!(unfolded.matches("ATTENDEE").count(), 1, "{unfolded}");
    }
    assert!(
        to_alice.data.contains(&format!("From: {BOB}")),
        "{}",
        to_alice.data
    );
    assert!(
        to_bob.data.contains(&format!("From: {MANAGER_ADDRESS}")),
        "{}",
        to_bob.data
    );

    // The MTA's part: each message to its recipient's incoming pipe.
    for r in &got {
        for rcpt in &r.recipients {
            let out = env
                .ingest(
                    &[
                        "--direction",
                        "incoming",
                        "--sender",
                        &r.sender,
                        "--recipient",
                        rcpt,
                    ],
                    r.data.as_bytes(),
                )
                .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    env.wait_applied().await;

    assert!(queue(&env, BOB).await.is_empty());
    assert_eq!(
        env.busy_lines(BOB, "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
            .await,
        vec![SLOT]
    );
    assert_eq!(
        imipflow_tests::partstat_of(&env, ALICE, UID, BOB).await,
        "ACCEPTED"
    );

    // The open page hears about it.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("event: queue.changed") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("no queue.changed within 20 s")
            .unwrap()
            .expect("event stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&format!("data: {UID}")), "{seen}");

    let (_, html) = page(&m, "/", BOB).await;
    assert!(html.contains("No pending requests."), "{html}");
    assert!(html.contains("ACCEPTED): applied"), "{html}");
    let (_, week) = page(&m, "/week?start=2027-03-16", BOB).await;
    assert!(week.contains("09:00 – 10:00 Quarterly planning"), "{week}");

    // Alice moves it: the new request says what it changes.
    let moved = vevent(&[
        &format!("UID:{UID}"),
        "SEQUENCE:3",
        "DTSTAMP:20270105T000000Z",
        "DTSTART:20270316T130000Z",
        "DTEND:20270316T140000Z",
        "SUMMARY:Quarterly planning",
        "ORGANIZER;CN=Alice:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.org",
    ]);
    let mail = imip_mail("REQUEST", ALICE, "moved@x", &[moved]);
    let out = env
        .ingest(
            &[
                "--direction",
                "incoming",
                "--sender",
                ALICE,
                "--recipient",
                BOB,
            ],
            &mail,
        )
        .await;
    assert!(out.status.success());
    env.wait_applied().await;
    let (_, html) = page(&m, "/", BOB).await;
    assert!(html.contains("Tue 16 Mar 2027 13:00 – 14:00"), "{html}");
    assert!(
        html.contains("moved from Tue 16 Mar 2027 09:00 – 10:00"),
        "{html}"
    );
    // SIGTERM stops it cleanly with the event stream still open, and the
    // stream ends.
    assert!(m.terminate().await.success());
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(
        rest.is_ok(),
        "the event stream did not end with the manager"
    );
}

#[tokio::test]
async fn config_check_refuses_a_from_that_is_no_manager_address() {
    let env = TestEnv::unmigrated();
    let mut cmd = env.command("imip-manager");
    cmd.env("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)
        .env("IMIP_MANAGER_FROM", "someone@example.com");
    let out = env.run_with(cmd, &["config", "check"], b"").await;
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IMIP_MANAGER_FROM: someone@example.com is not one of IMIP_MANAGER_ADDRESSES"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("imip-manager-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("imipflow.toml");
    std::fs::write(
        &file,
        format!(
            "[processor]\nmanager_addresses = \"{MANAGER_ADDRESS}\"\n\n[manager]\n\
             manager_addresses = \"{MANAGER_ADDRESS}\"\nfrom = \"{MANAGER_ADDRESS}\"\n\
             listen = \"127.0.0.1:9999\"\n"
        ),
    )
    .unwrap();
    let out = env
        .run(
            "imip-manager",
            &["--config", file.to_str().unwrap(), "config", "check"],
            b"",
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("config: valid"), "{text}");
    assert!(text.contains("127.0.0.1:9999"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_smtp_failure_is_shown_and_retried_until_it_is_sent() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[("IMIP_MANAGER_ADDRESSES", MANAGER_ADDRESS)]);
    invite(&env).await;
    // Nothing listens on the SMTP port yet.
    let smtp_port = free_port();
    let m = env
        .start_manager_with(free_port(), |c| {
            c.env(
                "IMIP_MANAGER_SMTP_URL",
                format!("smtp://127.0.0.1:{smtp_port}"),
            );
        })
        .await;
    let csrf = csrf_of(&page(&m, "/", BOB).await.1);
    let status = post_answer(
        &m,
        UID,
        Some(BOB),
        &[("partstat", "DECLINED"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 303);
    let (_, html) = page(&m, "/", BOB).await;
    assert!(html.contains("could not send ("), "{html}");
    assert!(html.contains("trying again at"), "{html}");
    assert!(!html.contains("sent, waiting to apply"), "{html}");
    // The server comes up: the background retry sends both messages once.
    let sink = Sink::start_on(smtp_port).await;
    let got = sink.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 2, "{got:?}");
    assert!(got.iter().all(|r| r.data.contains("PARTSTAT=DECLINED")));
    let (_, html) = page(&m, "/", BOB).await;
    assert!(html.contains("sent, waiting to apply"), "{html}");
}
