//! Normal users under a mixed hostile and normal load (issue 12, "Done
//! when"): the loadgen traffic of many users with the attacks of
//! `imipflow_loadgen::hostile` mixed in, applied by a real processor, must
//! leave every normal user exactly as the normal traffic alone does (same
//! records, same change events in the same order), dead-letter nothing, and
//! keep the processor's memory bounded. The CI-sized run is
//! `normal_users_are_untouched_by_a_hostile_mix`; the long run
//! (`hostile_long_run`, ignored) is what docs/reliability.md records.

use chrono::{DateTime, Duration, Utc};
use imipflow_ingest::Limits;
use imipflow_loadgen::hostile::{self, ATTACKER, Attack, Mixed};
use imipflow_loadgen::{Config, Message};
use imipflow_tests::TestEnv;
use imipflow_tests::oracle::{check_event_stream, read_stream};
use std::collections::{BTreeMap, BTreeSet};

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-04T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Ingest's limits lifted, for the attacks on the server's resources: such
/// payloads may reach the stream by other means than `imip-ingest` (an old
/// ingest, a tool, a bug), and the processor must bound them by itself.
fn lifted() -> Limits {
    Limits {
        max_recurrence_values: usize::MAX / 4,
        max_components: usize::MAX / 4,
        max_rrules: usize::MAX / 4,
        max_message_recurrence_values: usize::MAX / 4,
        max_message_instances: u64::MAX / 4,
        max_payload_bytes: 900 * 1024,
        ..Limits::default()
    }
}

/// What planning the mix gave.
#[derive(Default)]
struct Planned {
    messages: Vec<Message>,
    quarantined: BTreeMap<&'static str, usize>,
    published: BTreeMap<&'static str, usize>,
    /// Dedupe ids of the attacks' payloads (their message_log lines are
    /// theirs, whatever the outcome).
    hostile_ids: BTreeMap<String, &'static str>,
}

/// Plans each mail with ingest's own pure planner (what `imip-ingest` would
/// publish), on a clock that advances one second per normal mail, so that
/// the normal mails get the same ingest time with and without the attacks.
fn plan(mixed: &[Mixed]) -> Planned {
    let mut out = Planned::default();
    let mut clock = epoch();
    for m in mixed {
        let mail = &m.mail;
        if m.attack.is_none() {
            clock += Duration::seconds(1);
        }
        let limits = match m.attack {
            Some(a) if a.exhausts() => lifted(),
            _ => Limits::default(),
        };
        let label = m.attack.map_or("normal", Attack::name);
        for planned in imipflow_loadgen::plan_mail(mail, &limits, clock) {
            match planned {
                Some(message) => {
                    *out.published.entry(label).or_default() += 1;
                    if m.attack.is_some() {
                        out.hostile_ids.insert(message.dedupe_id.clone(), label);
                    }
                    out.messages.push(message);
                }
                None => {
                    assert!(m.attack.is_some(), "a normal mail was quarantined");
                    *out.quarantined.entry(label).or_default() += 1;
                }
            }
        }
    }
    out
}

/// Publishes in slices, each acknowledged before the next: the mix carries
/// payloads of up to ~1 MB, and 256 of them in flight outlast the client's
/// ack timeout on a loaded machine.
async fn publish(env: &TestEnv, messages: &[Message]) {
    for chunk in messages.chunks(16) {
        imipflow_tests::oracle::publish(env, chunk).await;
    }
}

/// One user's records and events, as text lines.
async fn user_rows(
    env: &TestEnv,
    users: &[String],
    hostile_ids: &BTreeMap<String, &'static str>,
) -> BTreeMap<String, Vec<String>> {
    let db = env.pg().await;
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for q in [
        "SELECT user_addr, 'o ' || uid || ' ' || recurrence_key || ' ' || sequence || ' ' || (data - 'raw')::text FROM objects WHERE user_addr = ANY($1)",
        "SELECT user_addr, 'a ' || (to_jsonb(t))::text FROM attendees t WHERE user_addr = ANY($1)",
        "SELECT user_addr, 'f ' || uid || ' ' || instance || ' ' || period::text || ' ' || fbtype FROM freebusy WHERE user_addr = ANY($1)",
        "SELECT user_addr, 's ' || (to_jsonb(t))::text FROM open_series t WHERE user_addr = ANY($1)",
        "SELECT user_addr, 'q ' || uid || ' ' || recurrence_key || ' ' || coalesce(organizer, '') || ' ' || sequence || ' ' || coalesce(dtstamp::text, '') || ' ' || (data - 'raw')::text FROM request_queue WHERE user_addr = ANY($1)",
        "SELECT user_addr, 'e ' || user_seq || ' ' || kind || ' ' || (body -> 'data')::text FROM outbox WHERE user_addr = ANY($1)",
        "SELECT user_addr, 'd ' || error FROM dead_letters WHERE user_addr = ANY($1)",
    ] {
        for r in db.query(q, &[&users]).await.unwrap() {
            out.entry(r.get(0)).or_default().push(r.get(1));
        }
    }
    for r in db
        .query(
            "SELECT user_addr, dedupe_id, 'm ' || dedupe_id || ' ' || outcome || ' ' || coalesce(reason, '') FROM message_log WHERE user_addr = ANY($1)",
            &[&users],
        )
        .await
        .unwrap()
    {
        if !hostile_ids.contains_key(&r.get::<_, String>(1)) {
            out.entry(r.get(0)).or_default().push(r.get(2));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Peak resident set of a running process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Figures of one run, printed for docs/reliability.md.
struct Figures {
    normal: usize,
    hostile: usize,
    peak_rss_mib: u64,
    seconds: f64,
}

async fn run(seed: u64, users: usize, messages: usize, percent: u32) -> Figures {
    let normal = imipflow_loadgen::mails(&Config::new(seed, users, messages));
    let normal_users: Vec<String> = (0..users).map(|i| format!("u{i}@load.example")).collect();
    let mixed = hostile::mix(normal.clone(), seed, percent);
    let with = plan(&mixed);
    let without = plan(
        &normal
            .into_iter()
            .map(|mail| Mixed { mail, attack: None })
            .collect::<Vec<_>>(),
    );
    let hostile_count = mixed.iter().filter(|m| m.attack.is_some()).count();
    eprintln!(
        "hostile mix: {} normal payloads, {hostile_count} attacks; published {:?}; quarantined by ingest {:?}",
        without.messages.len(),
        with.published,
        with.quarantined
    );

    // The oracle: the normal traffic alone.
    let oracle = TestEnv::new().await;
    let oracle_started = std::time::Instant::now();
    let p = oracle.start_processor(&[]);
    publish(&oracle, &without.messages).await;
    oracle.wait_applied().await;
    let oracle_seconds = oracle_started.elapsed().as_secs_f64();
    let oracle_peak = peak_rss_kib(p.pid());
    p.terminate().await;
    let want = user_rows(&oracle, &normal_users, &with.hostile_ids).await;

    // The mix, with one processor.
    let env = TestEnv::new().await;
    let started = std::time::Instant::now();
    let p = env.start_processor(&[]);
    publish(&env, &with.messages).await;
    env.wait_applied().await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_kib(p.pid());
    p.terminate().await;
    let got = user_rows(&env, &normal_users, &with.hostile_ids).await;

    let db = env.pg().await;
    // Every attack aimed at a normal user was recorded, and none applied.
    let mut recorded = 0usize;
    for r in db
        .query(
            "SELECT dedupe_id, outcome, coalesce(reason, '') FROM message_log WHERE user_addr = ANY($1)",
            &[&normal_users],
        )
        .await
        .unwrap()
    {
        let (id, outcome, reason): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if let Some(attack) = with.hostile_ids.get(&id) {
            recorded += 1;
            assert!(
                outcome == "refused" || outcome == "ignored",
                "an attack ({attack}) on a normal user was {outcome}: {reason}"
            );
        }
    }
    let aimed = with
        .messages
        .iter()
        .filter(|m| with.hostile_ids.contains_key(&m.dedupe_id) && normal_users.contains(&m.user))
        .count();
    assert!(aimed > 0, "no attack reached a normal user");
    assert_eq!(
        recorded, aimed,
        "attacks on normal users without a message_log line"
    );
    let refused = recorded;
    // Every normal user exactly as without the attacks.
    for user in &normal_users {
        let (g, w) = (
            got.get(user).cloned().unwrap_or_default(),
            want.get(user).cloned().unwrap_or_default(),
        );
        if g != w {
            let gs: BTreeSet<&String> = g.iter().collect();
            let ws: BTreeSet<&String> = w.iter().collect();
            let missing: Vec<_> = ws.difference(&gs).take(4).collect();
            let extra: Vec<_> = gs.difference(&ws).take(4).collect();
            panic!("{user}: differs under attack; missing {missing:#?}; extra {extra:#?}");
        }
    }
    // Published events: per-user gap-free, and for normal users the same as the oracle's.
    let events = read_stream(&env, "events").await;
    let by_user = check_event_stream(&events);
    let oracle_events = read_stream(&oracle, "events").await;
    let oracle_by_user = check_event_stream(&oracle_events);
    for user in &normal_users {
        let key = |e: &&serde_json::Value| (e["type"].clone(), e["data"].clone());
        let g: Vec<_> = by_user
            .get(user)
            .map(|v| v.iter().map(key).collect())
            .unwrap_or_default();
        let w: Vec<_> = oracle_by_user
            .get(user)
            .map(|v| v.iter().map(key).collect())
            .unwrap_or_default();
        assert_eq!(g, w, "{user}: published events differ under attack");
    }
    // Nothing dead-lettered, the attackers' mail included: each attack has a
    // defined outcome (refused, quarantined, applied within the limits).
    let dead: Vec<String> = db
        .query("SELECT user_addr || ': ' || error FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    // The attacker's mailbox stays bounded.
    let attacker_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM freebusy WHERE user_addr = $1",
            &[&ATTACKER],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "hostile mix: applied in {seconds:.1} s (normal traffic alone: {oracle_seconds:.1} s), processor peak RSS {} MiB (alone: {} MiB), attacker free/busy rows {attacker_rows}, refusals for normal users {refused}",
        peak / 1024,
        oracle_peak / 1024
    );
    Figures {
        normal: without.messages.len(),
        hostile: hostile_count,
        peak_rss_mib: peak / 1024,
        seconds,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_users_are_untouched_by_a_hostile_mix() {
    let f = run(2026, 30, 900, 12).await;
    assert!(f.hostile > 50, "only {} attacks", f.hostile);
    // Bounded memory: the attacks (40 hourly series, 5,000 RRULE lines, 300
    // overrides) must not grow the processor beyond what normal work needs.
    assert!(
        f.peak_rss_mib < 512,
        "processor peak RSS {} MiB under the hostile mix",
        f.peak_rss_mib
    );
}

/// The long run recorded in docs/reliability.md: `cargo nextest run -p
/// imipflow-tests --test hostile_mix --run-ignored only --no-capture`
/// (IMIP_HOSTILE_MESSAGES, IMIP_HOSTILE_USERS override the size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn hostile_long_run() {
    let get = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let f = run(
        7,
        get("IMIP_HOSTILE_USERS", 200),
        get("IMIP_HOSTILE_MESSAGES", 20_000),
        15,
    )
    .await;
    eprintln!(
        "hostile long run: {} normal payloads, {} attacks, {:.1} s, peak RSS {} MiB",
        f.normal, f.hostile, f.seconds, f.peak_rss_mib
    );
}
