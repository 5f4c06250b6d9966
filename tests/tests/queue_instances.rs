//! The request queue per instance and the stored invitation, through the
//! real binaries (issue 14), with the mail Outlook/Exchange sends an
//! attendee and the replies Thunderbird sends back (fixtures
//! `tests/fixtures/clients/queue-*.eml`):
//!
//! * accepting a pending invitation with a REPLY that names only the user
//!   stores the invitation (organizer, every attendee, summary, rule) with
//!   the user's answer merged, not the thin REPLY;
//! * an organizer's update of one instance waits as that instance's entry,
//!   and a later CANCEL of another instance leaves it pending;
//! * answering the update moves the user's busy time.
//!
//! docs/semantics.md "Request queue".

use imipflow_tests::{TestEnv, fixture, partstats};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const UID: &str = "040000008200E00074C5B7101A82E00800000000D1E2F3A4B5C6DA0100000000000000001000000099AABBCCDDEEFF00";
const WINDOW: (&str, &str) = ("2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z");

struct World {
    env: TestEnv,
    _p: imipflow_tests::Processor,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let p = env.start_processor(&[]);
        World { env, _p: p }
    }

    /// Ingests a client fixture: Bob's mail delivered to Alice, or Alice's own.
    async fn deliver(&self, name: &str) {
        let mail = fixture(&format!("clients/{name}.eml"));
        let args: Vec<&str> = if name.contains("outlook") {
            vec![
                "--direction",
                "incoming",
                "--sender",
                BOB,
                "--recipient",
                ALICE,
            ]
        } else {
            vec!["--sender", ALICE]
        };
        let out = self.env.ingest(&args, &mail).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.env.wait_applied().await;
    }

    /// Alice's queue as (recurrence id or "series", summary).
    async fn queue(&self) -> Vec<String> {
        self.env
            .ctl_json(&["queue", ALICE])
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["uid"], UID);
                assert_eq!(e["organizer"], BOB);
                e["recurrence_id"].as_str().unwrap_or("series").to_owned()
            })
            .collect()
    }

    async fn busy(&self) -> Vec<String> {
        self.env.busy_lines(ALICE, WINDOW.0, WINDOW.1).await
    }

    async fn object(&self, rid: Option<&str>) -> Value {
        let mut args = vec!["object", ALICE, UID];
        if let Some(rid) = rid {
            args.extend(["--recurrence-id", rid]);
        }
        self.env.ctl_json(&args).await
    }

    /// `imip-ctl object --ics`, unfolded.
    async fn ics(&self) -> String {
        let out = self
            .env
            .run("imip-ctl", &["object", ALICE, UID, "--ics"], b"")
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .replace("\r\n ", "")
            .replace("\r\n\t", "")
    }

    async fn outcomes(&self) -> Vec<String> {
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

fn busy(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| format!("{l} BUSY")).collect()
}

#[tokio::test]
async fn accepting_keeps_the_invitation_and_a_cancel_of_one_instance_leaves_another_pending() {
    let w = World::new().await;
    w.deliver("queue-outlook-series").await;
    assert_eq!(w.queue().await, ["series"]);
    assert!(w.busy().await.is_empty(), "pending: no busy time");

    // Alice's Thunderbird accepts, naming only her.
    w.deliver("queue-thunderbird-accept-series").await;
    assert!(w.queue().await.is_empty(), "the answer clears the entry");
    let master = w.object(None).await;
    assert_eq!(
        partstats(&master),
        [
            format!("{ALICE} ACCEPTED"),
            format!("{CAROL} NEEDS-ACTION"),
            format!("{DAVE} NEEDS-ACTION"),
        ],
        "the invitation's attendees with Alice's answer: {master:#}"
    );
    assert_eq!(master["organizer"], BOB);
    assert_eq!(master["summary"], "Quarterly planning");
    // Mondays 10:00 in W. Europe Standard Time (CEST).
    let series = busy(&[
        "2027-04-05T08:00:00Z 2027-04-05T09:00:00Z",
        "2027-04-12T08:00:00Z 2027-04-12T09:00:00Z",
        "2027-04-19T08:00:00Z 2027-04-19T09:00:00Z",
        "2027-04-26T08:00:00Z 2027-04-26T09:00:00Z",
    ]);
    assert_eq!(w.busy().await, series);

    // Bob moves 12 April to 14:00: it waits as that instance's entry.
    w.deliver("queue-outlook-occurrence-moved").await;
    assert_eq!(w.queue().await, ["2027-04-12T08:00:00Z"]);
    assert_eq!(w.busy().await, series, "unanswered: the old time stays");

    // Bob cancels 19 April: 12 April's update stays pending.
    w.deliver("queue-outlook-occurrence-cancelled").await;
    assert_eq!(w.queue().await, ["2027-04-12T08:00:00Z"]);
    assert_eq!(
        w.busy().await,
        busy(&[
            "2027-04-05T08:00:00Z 2027-04-05T09:00:00Z",
            "2027-04-12T08:00:00Z 2027-04-12T09:00:00Z",
            "2027-04-26T08:00:00Z 2027-04-26T09:00:00Z",
        ])
    );

    // Alice accepts the moved instance: her busy time moves with it.
    w.deliver("queue-thunderbird-accept-occurrence").await;
    assert!(w.queue().await.is_empty());
    assert_eq!(
        w.busy().await,
        busy(&[
            "2027-04-05T08:00:00Z 2027-04-05T09:00:00Z",
            "2027-04-12T12:00:00Z 2027-04-12T13:00:00Z",
            "2027-04-26T08:00:00Z 2027-04-26T09:00:00Z",
        ])
    );
    // The calendar's copy is Bob's invitation: its description, location
    // and alarm, every attendee, the moved instance as its own VEVENT.
    let ics = w.ics().await;
    for want in [
        "DESCRIPTION;LANGUAGE=en-US:Agenda: budget\\, hiring\\, roadmap.\\n",
        "LOCATION;LANGUAGE=en-US:Room 7",
        "LOCATION;LANGUAGE=en-US:Room 9",
        "TRIGGER;RELATED=START:-PT15M",
        "EXDATE",
    ] {
        assert!(ics.contains(want), "{want:?} not in\n{ics}");
    }
    assert_eq!(ics.matches("BEGIN:VEVENT").count(), 2, "{ics}");
    assert_eq!(ics.matches("carol@example.org").count(), 2, "{ics}");
    assert!(!ics.contains("METHOD:"), "{ics}");
    let moved = w.object(Some("2027-04-12T08:00:00Z")).await;
    assert_eq!(partstats(&moved).len(), 3, "{moved:#}");
    assert_eq!(moved["sequence"], 1);
    assert_eq!(
        w.outcomes().await,
        [
            "REQUEST applied",
            "REPLY applied",
            "REQUEST applied",
            "CANCEL applied",
            "REPLY applied"
        ]
    );
}
