//! The partition-local test: four partitions, LIST layout, only lane `K`
//! running (the others' leases held by an owner that never comes), and each
//! step's table statistics compared before and after. A step passes when it
//! touched no child table of another partition.

use super::{TABLES, settle};
use imipflow_tests::{TestEnv, free_port, imip_mail, vevent};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
const K: i32 = 2;

/// A child's access counters (pg_stat_user_tables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    seq_scan: i64,
    idx_scan: i64,
    ins: i64,
    upd: i64,
    del: i64,
}

type Stats = BTreeMap<String, Counters>;

async fn stats(db: &tokio_postgres::Client) -> Stats {
    settle(db).await;
    db.query(
        "SELECT relname::text, seq_scan, coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, n_tup_del
         FROM pg_stat_user_tables WHERE relname ~ '_p[0-9]+$'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            Counters {
                seq_scan: r.get(1),
                idx_scan: r.get(2),
                ins: r.get(3),
                upd: r.get(4),
                del: r.get(5),
            },
        )
    })
    .collect()
}

/// Children whose counters moved between `before` and `after`.
fn touched(before: &Stats, after: &Stats) -> Vec<String> {
    after
        .iter()
        .filter(|(name, c)| before.get(*name).copied().unwrap_or_default() != **c)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Users whose rows are in partition `K`.
fn users_of_k() -> Vec<String> {
    (0..)
        .map(|i| format!("user{i}@example.com"))
        .filter(|u| imipflow_schema::partition(u, PARTITIONS) as i32 == K)
        .take(3)
        .collect()
}

struct Steps {
    db: tokio_postgres::Client,
    last: Stats,
    /// (step, children of other partitions it touched)
    foreign: Vec<(String, Vec<String>)>,
    /// Children of partition K some step touched.
    own: Vec<String>,
}

impl Steps {
    async fn after(&mut self, step: &str) {
        let now = stats(&self.db).await;
        let moved = touched(&self.last, &now);
        let own_suffix = format!("_p{K}");
        let (own, foreign): (Vec<String>, Vec<String>) =
            moved.into_iter().partition(|n| n.ends_with(&own_suffix));
        self.own.extend(own);
        if !foreign.is_empty() {
            self.foreign.push((step.to_owned(), foreign));
        }
        self.last = now;
    }
}

async fn ingest(env: &TestEnv, args: &[&str], mail: &[u8]) {
    let out = env.ingest(args, mail).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lane K caught up with the stream and its events published, read within
/// partition K only.
async fn wait_lane(env: &TestEnv, db: &tokio_postgres::Client) {
    let js = env.jetstream().await;
    let stream = js
        .get_stream(format!("{}-messages", env.namespace))
        .await
        .unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&format!("{}.msg.{K}.>", env.namespace))
        .await
        .unwrap()
        .sequence as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = db
            .query_opt(
                "SELECT last_sequence FROM partitions WHERE partition = $1",
                &[&K],
            )
            .await
            .unwrap()
            .map_or(0, |r| r.get(0));
        let unpublished: i64 = db
            .query_one(
                "SELECT count(*) FROM outbox WHERE partition = $1 AND published_at IS NULL",
                &[&K],
            )
            .await
            .unwrap()
            .get(0);
        if applied >= last && unpublished == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "lane {K} did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn event(uid: &str, organizer: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".to_owned(),
        "DTSTAMP:20270101T000000Z".to_owned(),
        "DTSTART:20270301T100000Z".to_owned(),
        "DTEND:20270301T110000Z".to_owned(),
        format!("ORGANIZER:mailto:{organizer}"),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:guest@example.net".to_owned(),
    ];
    lines.extend(extra.iter().map(|l| l.to_string()));
    vevent(&lines.iter().map(String::as_str).collect::<Vec<_>>())
}

pub async fn run() {
    let env = TestEnv::with_layout("list", PARTITIONS).await;
    let db = env.pg().await;
    for p in (0..PARTITIONS as i32).filter(|&p| p != K) {
        db.execute(
            "INSERT INTO partitions (partition, owner, epoch, lease_until)
             VALUES ($1, 'elsewhere:1', 1, now() + interval '1 day')
             ON CONFLICT (partition) DO UPDATE SET owner = EXCLUDED.owner,
                 lease_until = EXCLUDED.lease_until",
            &[&p],
        )
        .await
        .unwrap();
    }
    let users = users_of_k();
    let (u1, u2, u3) = (&users[0], &users[1], &users[2]);
    let mut steps = Steps {
        last: stats(&db).await,
        db,
        foreign: Vec::new(),
        own: Vec::new(),
    };

    // Messages waiting before the lane starts: its first batch takes them all.
    let single = imip_mail("REQUEST", u1, "s@k", &[event("single@k", u1, &[])]);
    ingest(&env, &["--sender", u1], &single).await;
    ingest(&env, &["--sender", u1], &single).await;
    let weekly = imip_mail(
        "REQUEST",
        u1,
        "w@k",
        &[event("weekly@k", u1, &["RRULE:FREQ=WEEKLY"])],
    );
    ingest(&env, &["--sender", u1], &weekly).await;
    let invite = imip_mail(
        "REQUEST",
        "boss@elsewhere.example",
        "i@k",
        &[event(
            "invite@k",
            "boss@elsewhere.example",
            &[&format!("ATTENDEE:mailto:{u2}")],
        )],
    );
    ingest(
        &env,
        &[
            "--sender",
            "boss@elsewhere.example",
            "--direction",
            "incoming",
            "--recipient",
            u2,
        ],
        &invite,
    )
    .await;
    let other = imip_mail("REQUEST", u3, "o@k", &[event("other@k", u3, &[])]);
    ingest(&env, &["--sender", u3], &other).await;
    // And one no lane can apply: the batch falls back to one message at a
    // time and files a dead letter.
    imipflow_tests::publish_payloads(
        &env,
        &[serde_json::json!({"user": u3, "dedupe_id": "broken@k", "method": 7})],
    )
    .await;
    steps.after("ingest").await;

    let processor = env.start_processor(&[]);
    wait_lane(&env, &steps.db).await;
    processor.terminate().await;
    steps.after("lane K: batch and relay flush").await;

    let (from, to) = ("2027-01-01T00:00:00Z", "2028-06-01T00:00:00Z");
    let ctl: [(&str, Vec<&str>); 6] = [
        (
            "imip-ctl freebusy",
            vec!["freebusy", u1, "--from", from, "--to", to],
        ),
        ("imip-ctl objects", vec!["objects", u1]),
        ("imip-ctl object", vec!["object", u1, "single@k"]),
        ("imip-ctl queue", vec!["queue", u2]),
        ("imip-ctl rebuild", vec!["rebuild", u1]),
        (
            "imip-ctl replay --user",
            vec!["replay", "--from", "1", "--user", u1],
        ),
    ];
    let mut failed = Vec::new();
    for (step, args) in &ctl {
        let mut all = args.clone();
        all.push("--json");
        let out = env.run("imip-ctl", &all, b"").await;
        if !out.status.success() {
            failed.push(format!("{step}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        steps.after(step).await;
    }

    let port = free_port();
    let publisher = env.start_publisher(port).await;
    let url = format!("http://127.0.0.1:{port}/freebusy/{u1}.json?from={from}&to={to}");
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    publisher.terminate().await;
    steps.after("publisher free/busy").await;

    // Stray statements first: they are what this test is about.
    assert!(
        steps.foreign.is_empty(),
        "statements outside partition {K}: {:#?}",
        steps.foreign
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(body.contains("2027-03-01T10:00:00Z"), "{body}");

    for t in [
        "objects",
        "attendees",
        "freebusy",
        "message_log",
        "user_events",
        "outbox",
        "dead_letters",
        "request_queue",
        "open_series",
        "object_texts",
        "user_usage",
    ] {
        assert!(
            steps.own.iter().any(|n| n == &format!("{t}_p{K}")),
            "{t}_p{K} was never used: {:?}",
            steps.own
        );
    }
    assert!(
        TABLES
            .iter()
            .all(|t| steps.last.contains_key(&format!("{t}_p0"))),
        "every table has its children"
    );
}
