//! Who a message belongs to (issue 12), through the real binaries: the
//! deduplication id tells apart two copies of one mail that came by different
//! envelope senders, and addresses are normalised as mail does it (a Unicode
//! domain and its A-label are one user; a Kelvin sign is not a `k`).

use imipflow_tests::{TestEnv, imip_mail, vevent};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";

async fn ingest_ok(env: &TestEnv, args: &[&str], mail: &[u8]) {
    let out = env.ingest(args, mail).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uids(objects: &Value) -> Vec<String> {
    let mut v: Vec<String> = objects
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["uid"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn outcomes(env: &TestEnv) -> Vec<(String, String)> {
    env.pg()
        .await
        .query(
            "SELECT user_addr, outcome FROM message_log ORDER BY stream_seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A mailing list's copy of Alice's invitation reaches Bob first (envelope
/// sender `list-bounces@…`) and is refused, as mail from someone other than
/// the organizer; Alice's own copy, the same bytes with the same Message-ID,
/// then comes by the direct path and must not be taken for a re-delivery of
/// the list copy.
#[tokio::test]
async fn a_list_copy_does_not_make_the_genuine_copy_a_duplicate() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let mail = imip_mail(
        "REQUEST",
        ALICE,
        "invite-1@example.com",
        &[vevent(&[
            "UID:listed",
            "SEQUENCE:0",
            "DTSTAMP:20270301T120000Z",
            "DTSTART:20270315T090000Z",
            "DTEND:20270315T100000Z",
            "SUMMARY:Planning",
            &format!("ORGANIZER:mailto:{ALICE}"),
            &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
        ])],
    );
    let incoming = |sender: &'static str| {
        [
            "--direction",
            "incoming",
            "--sender",
            sender,
            "--recipient",
            BOB,
        ]
    };
    ingest_ok(
        &env,
        &incoming("team-list-bounces@lists.example.net"),
        &mail,
    )
    .await;
    env.wait_applied().await;
    assert_eq!(
        outcomes(&env).await,
        vec![(BOB.to_owned(), "refused".to_owned())]
    );
    ingest_ok(&env, &incoming(ALICE), &mail).await;
    env.wait_applied().await;
    assert_eq!(
        outcomes(&env).await,
        vec![
            (BOB.to_owned(), "refused".to_owned()),
            (BOB.to_owned(), "applied".to_owned())
        ]
    );
    let queue = env.ctl_json(&["queue", BOB]).await;
    let queued: Vec<&str> = queue
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uid"].as_str().unwrap())
        .collect();
    assert_eq!(queued, vec!["listed"], "{queue}");
    // The same copy delivered again by the MTA is still one message.
    ingest_ok(&env, &incoming(ALICE), &mail).await;
    env.wait_applied().await;
    assert_eq!(outcomes(&env).await.len(), 2);
}

fn request(organizer: &str, uid: &str, message_id: &str) -> Vec<u8> {
    imip_mail(
        "REQUEST",
        organizer,
        message_id,
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20270301T120000Z",
            "DTSTART:20270315T090000Z",
            "DTEND:20270315T100000Z",
            "SUMMARY:Planning",
            &format!("ORGANIZER:mailto:{organizer}"),
            &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{BOB}"),
        ])],
    )
}

/// `K` (U+212A KELVIN SIGN) lowercases to an ASCII `k` under Unicode rules;
/// mail does not fold local parts that way, so `Kim@…` written with it is
/// another mailbox than `kim@…`.
#[tokio::test]
async fn a_kelvin_sign_does_not_merge_two_mailboxes() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let kim = "kim@example.com";
    let kelvin = "\u{212A}im@example.com";
    ingest_ok(&env, &["--sender", kim], &request(kim, "of-kim", "k1@x")).await;
    ingest_ok(
        &env,
        &["--sender", kelvin],
        &request(kelvin, "of-kelvin", "k2@x"),
    )
    .await;
    env.wait_applied().await;
    assert_eq!(uids(&env.ctl_json(&["objects", kim]).await), vec!["of-kim"]);
    assert_eq!(
        uids(&env.ctl_json(&["objects", kelvin]).await),
        vec!["of-kelvin"]
    );
    // ASCII case still does not matter.
    assert_eq!(
        uids(&env.ctl_json(&["objects", "KIM@Example.COM"]).await),
        vec!["of-kim"]
    );
}

/// `bücher.example` and `xn--bcher-kva.example` are one domain (IDNA, UTS 46):
/// Alice's invitation sent with the Unicode form is hers under either form,
/// and her CANCEL with the A-label form removes it.
#[tokio::test]
async fn a_unicode_domain_and_its_a_label_are_one_user() {
    let env = TestEnv::new().await;
    let _p = env.start_processor(&[]);
    let unicode = "Alice@B\u{fc}cher.Example";
    let a_label = "alice@xn--bcher-kva.example";
    ingest_ok(
        &env,
        &["--sender", unicode],
        &request(unicode, "idn-1", "i1@x"),
    )
    .await;
    env.wait_applied().await;
    assert_eq!(
        uids(&env.ctl_json(&["objects", a_label]).await),
        vec!["idn-1"]
    );
    assert_eq!(
        uids(&env.ctl_json(&["objects", "alice@bücher.example"]).await),
        vec!["idn-1"]
    );
    // The CANCEL names the organizer with the other form: still Alice.
    let cancel = imip_mail(
        "CANCEL",
        a_label,
        "i2@x",
        &[vevent(&[
            "UID:idn-1",
            "SEQUENCE:1",
            "DTSTAMP:20270302T120000Z",
            "DTSTART:20270315T090000Z",
            "DTEND:20270315T100000Z",
            &format!("ORGANIZER:mailto:{a_label}"),
            &format!("ATTENDEE:mailto:{BOB}"),
        ])],
    );
    ingest_ok(&env, &["--sender", a_label], &cancel).await;
    env.wait_applied().await;
    assert!(
        uids(&env.ctl_json(&["objects", unicode]).await).is_empty(),
        "{:?}",
        outcomes(&env).await
    );
    let users: Vec<String> = outcomes(&env).await.into_iter().map(|(u, _)| u).collect();
    assert_eq!(users, vec![a_label.to_owned(), a_label.to_owned()]);
}
