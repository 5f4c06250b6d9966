//! Shard by lane (issue 13, docs/scaling.md): the database's partition
//! function equals the Rust one; migration V6 moves an existing V5 database
//! over without losing a row and gives every row its user's partition; and,
//! with the tables LIST-partitioned (`IMIP_DB_LAYOUT=list`), a lane's batch,
//! the relay's flush, each per-user `imip-ctl` query and the publisher's
//! free/busy touch only their own partition's child tables.

use imipflow_tests::{TestEnv, imip_mail, repo_root, vevent};
use std::collections::BTreeMap;
use std::time::Duration;

/// The tables whose key begins with `partition`. Spelled out here rather
/// than imported from `migrate::list_layout::TABLES`: these tests check that
/// list (a table it forgot would stay unpartitioned), so they must not share it.
const TABLES: [&str; 11] = [
    "objects",
    "attendees",
    "freebusy",
    "open_series",
    "request_queue",
    "message_log",
    "dead_letters",
    "user_events",
    "outbox",
    "object_texts",
    "user_usage",
];

/// Addresses of every kind the partition function meets: ASCII, IDN in
/// Unicode, umlauts, CJK, emoji, long ones, and pseudo-random byte mixes.
fn addresses() -> Vec<String> {
    let mut out: Vec<String> = vec![
        String::new(),
        "a".into(),
        "alice@example.com".into(),
        "jörg.müller@bücher.example".into(),
        "用户@例子.广告".into(),
        "θεός@παράδειγμα.δοκιμή".into(),
        "🙂@emoji.example".into(),
        "x".repeat(1000) + "@long.example",
    ];
    let pieces = [
        "a", "z", "0", "9", ".", "-", "_", "+", "@", "é", "ß", "ø", "ñ", "я", "ж", "語", "中",
        "🙂", "𝄞", "\u{7f}", "\u{80}", "\u{ff}", "\u{100}", "\u{ffff}",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..4000 {
        let mut s = String::new();
        let len = 1 + (i % 40);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s.push_str(pieces[(state % pieces.len() as u64) as usize]);
        }
        out.push(s);
        out.push(format!("user{i}@example.com"));
    }
    out
}

#[tokio::test]
async fn the_database_partition_function_equals_the_rust_one() {
    let env = TestEnv::new().await;
    let db = env.pg().await;
    let addrs = addresses();
    for n in [1u32, 2, 4, 7, 16, 64, 1000, 65_537, i32::MAX as u32] {
        let rows = db
            .query(
                "SELECT imipflow_partition(a, $2) FROM unnest($1::text[]) WITH ORDINALITY AS x(a, i)
                 ORDER BY i",
                &[&addrs, &(n as i32)],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), addrs.len());
        for (a, r) in addrs.iter().zip(&rows) {
            let sql: i32 = r.get(0);
            assert_eq!(
                sql,
                imipflow_schema::partition(a, n) as i32,
                "imipflow_partition({a:?}, {n})"
            );
        }
    }
}

// ------------------------------------------------------------ migration V6

/// A database at V5, built from the migration files and the history rows
/// `migrate` writes (copied from a database it migrated), with no V6.
async fn database_at_v5() -> TestEnv {
    let reference = TestEnv::new().await;
    let history = reference
        .pg()
        .await
        .query(
            "SELECT version, name, applied_on, checksum FROM refinery_schema_history
             WHERE version <= 5 ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 5);
    let env = TestEnv::unmigrated();
    let (admin, conn) = tokio_postgres::connect(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE \"{}\"", env.database))
        .await
        .unwrap();
    let db = env.pg().await;
    let dir = repo_root().join("schema/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            ["V1__", "V2__", "V3__", "V4__", "V5__"]
                .iter()
                .any(|v| name.starts_with(v))
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 5);
    for f in files {
        db.batch_execute(&std::fs::read_to_string(f).unwrap())
            .await
            .unwrap();
    }
    db.batch_execute(
        "CREATE TABLE refinery_schema_history (version int4 PRIMARY KEY, name varchar(255),
             applied_on varchar(255), checksum varchar(255))",
    )
    .await
    .unwrap();
    for r in history {
        db.execute(
            "INSERT INTO refinery_schema_history VALUES ($1, $2, $3, $4)",
            &[
                &r.get::<_, i32>(0),
                &r.get::<_, Option<String>>(1),
                &r.get::<_, Option<String>>(2),
                &r.get::<_, Option<String>>(3),
            ],
        )
        .await
        .unwrap();
    }
    env
}

const V5_USERS: [&str; 5] = [
    "alice@example.com",
    "bob@example.com",
    "jörg@bücher.example",
    "用户@例子.广告",
    "carol@example.org",
];

/// Rows of every V5 table for each of [`V5_USERS`], as the V5 processor
/// wrote them (outbox and dead_letters carried the lane's partition).
async fn fill_v5(db: &tokio_postgres::Client, partitions: u32) {
    for (i, u) in V5_USERS.iter().enumerate() {
        let p = imipflow_schema::partition(u, partitions) as i32;
        let uid = format!("ev{i}@migration");
        db.execute(
            "INSERT INTO objects (user_addr, uid, recurrence_key, sequence, data, text_digest)
             VALUES ($1, $2, '', 0, '{}', sha256('x'))",
            &[u, &uid],
        )
        .await
        .unwrap();
        let stmts = [
            "INSERT INTO attendees VALUES ($1, $2, '', 'x@example.net', 'NEEDS-ACTION', 'REQ-PARTICIPANT')",
            "INSERT INTO freebusy VALUES ($1, $2, '2027-01-01 00:00Z', tstzrange('2027-01-01 00:00Z', '2027-01-01 01:00Z'), 'BUSY')",
            "INSERT INTO open_series VALUES ($1, $2, '2028-01-01 00:00Z')",
            "INSERT INTO request_queue (user_addr, uid, data) VALUES ($1, $2, '{}')",
            "INSERT INTO message_log VALUES ($1, $2, 1, 'REQUEST', 'applied')",
            "INSERT INTO object_texts VALUES ($1, $2, sha256('x'), 'x')",
        ];
        for s in stmts {
            db.execute(s, &[u, &uid]).await.unwrap();
        }
        db.execute(
            "INSERT INTO dead_letters (user_addr, partition, stream_seq, payload, error)
             VALUES ($1, $2, 7, 'p', 'e')",
            &[u, &p],
        )
        .await
        .unwrap();
        db.execute("INSERT INTO user_events VALUES ($1, 1)", &[u])
            .await
            .unwrap();
        db.execute(
            "INSERT INTO outbox (user_addr, user_seq, partition, event_id, kind, body, published_at)
             VALUES ($1, 1, $2, $3, 'freebusy.changed', '{}', now())",
            &[u, &p, &format!("ev{i}")],
        )
        .await
        .unwrap();
        db.execute("INSERT INTO user_usage VALUES ($1, 1, 1)", &[u])
            .await
            .unwrap();
    }
}

/// Every table's (user, partition) pairs, by table.
async fn rows_by_table(db: &tokio_postgres::Client) -> BTreeMap<&'static str, Vec<(String, i32)>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        let rows = db
            .query(
                &format!("SELECT user_addr, partition FROM {t} ORDER BY 1, 2"),
                &[],
            )
            .await
            .unwrap();
        out.insert(t, rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    out
}

async fn migrate(env: &TestEnv, layout: &str) -> std::process::Output {
    let mut cmd = env.command("imip-processor");
    cmd.env("IMIP_DB_LAYOUT", layout);
    env.run_with(cmd, &["migrate"], b"").await
}

#[tokio::test]
async fn migration_v6_keeps_every_row_and_gives_it_its_users_partition() {
    let env = database_at_v5().await;
    let db = env.pg().await;
    db.execute(
        "INSERT INTO deployment VALUES ('partitions', $1)",
        &[&env.partitions.to_string()],
    )
    .await
    .unwrap();
    fill_v5(&db, env.partitions).await;

    let out = migrate(&env, "plain").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = rows_by_table(&db).await;
    for (t, rows) in &plain {
        assert_eq!(rows.len(), V5_USERS.len(), "{t}: rows lost or added");
        for (u, p) in rows {
            assert_eq!(*p, env.partition_of(u), "{t}: partition of {u}");
        }
    }
    let key: String = db
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'freebusy_pkey'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, "PRIMARY KEY (partition, user_addr, uid, instance)");

    // Then into the LIST layout: the same rows, each in its partition's child.
    let out = migrate(&env, "list").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows_by_table(&db).await, plain);
    for t in TABLES {
        let misplaced: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM {t} WHERE tableoid::regclass::text <> '{t}_p' || partition"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(misplaced, 0, "{t}: rows outside their partition's child");
    }
    // Idempotent, and the dead letters' sequence survived the move.
    let again = migrate(&env, "list").await;
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("LIST-partitioned"));
    let next: i64 = db
        .query_one("SELECT nextval('dead_letters_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, V5_USERS.len() as i64 + 1);

    // The processor goes on with the migrated rows: a new message of alice.
    let alice = V5_USERS[0];
    let mail = imip_mail(
        "REQUEST",
        alice,
        "after-v6@migration",
        &[vevent(&[
            "UID:after-v6@migration",
            "SEQUENCE:0",
            "DTSTAMP:20270101T000000Z",
            "DTSTART:20270301T100000Z",
            "DTEND:20270301T110000Z",
            &format!("ORGANIZER:mailto:{alice}"),
            "ATTENDEE:mailto:x@example.net",
        ])],
    );
    let out = env.ingest(&["--sender", alice], &mail).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let processor = env.start_processor(&[]);
    env.wait_applied().await;
    processor.terminate().await;
    let seq: i64 = db
        .query_one(
            "SELECT last_seq FROM user_events WHERE partition = $1 AND user_addr = $2",
            &[&env.partition_of(alice), &alice],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        seq > 1,
        "alice's events continue after her migrated sequence 1"
    );
    let log = env.message_log_of(alice).await;
    assert_eq!(log.last().map(|l| l.1.as_str()), Some("applied"), "{log:?}");
}

#[tokio::test]
async fn migration_v6_refuses_rows_without_a_partition_count() {
    let env = database_at_v5().await;
    let db = env.pg().await;
    fill_v5(&db, env.partitions).await;
    let out = migrate(&env, "plain").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no partitions count"), "{err}");
    let objects: i64 = db
        .query_one("SELECT count(*) FROM objects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(objects, V5_USERS.len() as i64, "nothing changed");
}

/// `name` of the pre-V6 release in `IMIPFLOW_BASE_BIN_DIR`, pointed at `env`.
fn base_command(dir: &std::path::Path, env: &TestEnv, name: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(dir.join(name));
    cmd.envs(env.vars());
    cmd.env_remove("IMIP_CONFIG");
    cmd.kill_on_drop(true);
    cmd
}

/// The same move on a database that the binaries of the release before V6
/// filled (build them from commit 77a797f and name their directory in
/// `IMIPFLOW_BASE_BIN_DIR`; without it this test says so and checks
/// nothing): real rows of every table, then the new `migrate` straight into
/// the LIST layout.
#[tokio::test]
async fn migration_v6_moves_what_the_v5_binaries_wrote() {
    let Some(dir) = std::env::var_os("IMIPFLOW_BASE_BIN_DIR").map(std::path::PathBuf::from) else {
        eprintln!("IMIPFLOW_BASE_BIN_DIR not set: nothing checked");
        return;
    };
    let env = TestEnv::unmigrated();
    let out = env
        .run_with(
            base_command(&dir, &env, "imip-processor"),
            &["migrate"],
            b"",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ingest = async |args: &[&str], mail: &[u8]| {
        let out = env
            .run_with(base_command(&dir, &env, "imip-ingest"), args, mail)
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (i, u) in V5_USERS.iter().enumerate() {
        let single = imip_mail(
            "REQUEST",
            u,
            &format!("s{i}@v5"),
            &[vevent(&[
                &format!("UID:single{i}@v5"),
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270301T100000Z",
                "DTEND:20270301T110000Z",
                &format!("ORGANIZER:mailto:{u}"),
                "ATTENDEE:mailto:guest@example.net",
            ])],
        );
        ingest(&["--sender", u], &single).await;
        let weekly = imip_mail(
            "REQUEST",
            u,
            &format!("w{i}@v5"),
            &[vevent(&[
                &format!("UID:weekly{i}@v5"),
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270302T100000Z",
                "DTEND:20270302T110000Z",
                "RRULE:FREQ=WEEKLY",
                &format!("ORGANIZER:mailto:{u}"),
            ])],
        );
        ingest(&["--sender", u], &weekly).await;
        let invite = imip_mail(
            "REQUEST",
            "boss@elsewhere.example",
            &format!("i{i}@v5"),
            &[vevent(&[
                &format!("UID:invite{i}@v5"),
                "SEQUENCE:0",
                "DTSTAMP:20270101T000000Z",
                "DTSTART:20270303T100000Z",
                "DTEND:20270303T110000Z",
                "ORGANIZER:mailto:boss@elsewhere.example",
                &format!("ATTENDEE:mailto:{u}"),
            ])],
        );
        let args = [
            "--sender",
            "boss@elsewhere.example",
            "--direction",
            "incoming",
            "--recipient",
            u,
        ];
        ingest(&args, &invite).await;
    }
    // A payload no processor can apply: a dead letter.
    imipflow_tests::publish_payloads(
        &env,
        &[serde_json::json!({"user": V5_USERS[1], "dedupe_id": "broken@v5", "method": 7})],
    )
    .await;
    let mut cmd = base_command(&dir, &env, "imip-processor");
    cmd.arg("run")
        .env("IMIP_LEASE_MS", "5000")
        .stdin(std::process::Stdio::null());
    let mut old = cmd.spawn().unwrap();
    env.wait_applied().await;
    old.kill().await.unwrap();

    let db = env.pg().await;
    let mut before = BTreeMap::new();
    for t in TABLES {
        let rows = db
            .query(&format!("SELECT user_addr FROM {t} ORDER BY 1"), &[])
            .await
            .unwrap();
        let users: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert!(!users.is_empty(), "{t}: the V5 binaries wrote no row");
        before.insert(t, users);
    }
    let out = migrate(&env, "list").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (t, rows) in rows_by_table(&db).await {
        let users: Vec<String> = rows.iter().map(|(u, _)| u.clone()).collect();
        assert_eq!(users, before[t], "{t}: rows lost or added");
        for (u, p) in rows {
            assert_eq!(p, env.partition_of(&u), "{t}: partition of {u}");
        }
    }
}

// ------------------------------------------------------- partition-local

#[path = "sharding/local.rs"]
mod local;

#[tokio::test]
async fn a_lanes_statements_touch_only_its_partition() {
    local::run().await;
}

/// Waits for PostgreSQL's statistics of finished backends to be visible.
pub async fn settle(db: &tokio_postgres::Client) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
}
