//! Tests of the pure batch step: loaded state and stream messages in, rows
//! and verdicts out, no database.

use super::*;
use crate::method::test_fixtures::{ctx_with, payload_of, z};
use crate::model::FbType;
use chrono::Duration;
use imipflow_schema::{
    Component, ComponentKind, Direction, Method, PAYLOAD_VERSION, Party, Time, Transparency,
};

const U: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

fn rules() -> Rules {
    Rules {
        semantics: ctx_with(5000, &[]),
        limits: Limits {
            max_periods_per_message: 20_000,
            max_objects_per_user: 100,
            max_freebusy_per_user: 1000,
        },
        namespace: "ns".into(),
        max_payload: events::DEFAULT_MAX_PAYLOAD,
        event_time: z("2027-03-02T00:00:00Z"),
    }
}

/// A half-hour event `uid` organised by `organizer`.
fn event(uid: &str, organizer: &str, start: &str, sequence: i64) -> Component {
    Component {
        kind: ComponentKind::Event,
        uid: uid.into(),
        recurrence_id: None,
        sequence,
        dtstamp: Some(z("2027-01-01T00:00:00Z")),
        start: Some(Time::utc(z(start))),
        end: Some(Time::utc(z(start) + Duration::minutes(30))),
        duration_seconds: None,
        all_day: false,
        floating: false,
        rrule: vec![],
        rdate: vec![],
        exdate: vec![],
        status: None,
        transp: Transparency::Opaque,
        summary: None,
        organizer: Some(Party {
            address: organizer.into(),
            cn: None,
            sent_by: None,
        }),
        attendees: vec![],
    }
}

/// U's own message `method` with `components`, deduped by `id`.
fn payload(id: &str, method: Method, components: Vec<Component>) -> Payload {
    Payload {
        dedupe_id: id.into(),
        raw: format!("BEGIN:VCALENDAR\r\nX-ID:{id}\r\nEND:VCALENDAR\r\n"),
        ..payload_of(U, method, components)
    }
}

/// BOB's invitation of U, waiting in U's queue when applied.
fn invitation(id: &str, sequence: i64) -> Payload {
    Payload {
        direction: Direction::Incoming,
        sender: BOB.into(),
        ..payload(
            id,
            Method::Request,
            vec![event("inv", BOB, "2027-04-01T09:00:00Z", sequence)],
        )
    }
}

fn json(payloads: &[Payload]) -> Vec<Vec<u8>> {
    payloads
        .iter()
        .map(|p| serde_json::to_vec(p).unwrap())
        .collect()
}

/// Applies `payloads` as stream messages 1, 2, ... to `loaded`.
fn run(loaded: &Loaded, payloads: &[Payload], rules: &Rules) -> Writes {
    let bytes = json(payloads);
    let msgs: Vec<Msg> = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| Msg {
            seq: i as i64 + 1,
            bytes: b,
        })
        .collect();
    apply(loaded, &msgs, rules)
}

fn verdicts(w: &Writes) -> Vec<Verdict> {
    w.outcomes.iter().map(|h| h.verdict.clone()).collect()
}

fn applied() -> Verdict {
    Verdict::Done(Disposition::Applied)
}

fn kinds(w: &Writes) -> Vec<(i64, &'static str)> {
    w.outbox.iter().map(|o| (o.seq, o.kind.as_str())).collect()
}

/// The state `payloads` leave, as a later batch would load it.
fn stored(payloads: &[Payload]) -> Loaded {
    let w = run(&Loaded::default(), payloads, &rules());
    let mut loaded = Loaded::default();
    for r in &w.objects {
        let s = loaded.uids.entry(r.key.clone()).or_default();
        s.objects.push(r.object.clone());
        s.rows += 1;
        s.referenced.insert(r.digest.clone());
    }
    for t in &w.texts {
        loaded
            .uids
            .entry(t.key.clone())
            .or_default()
            .texts
            .insert(t.digest.clone());
    }
    for (k, p) in &w.busy {
        loaded.uids.entry(k.clone()).or_default().busy.insert(*p);
    }
    for q in &w.queue_removed {
        let slot = loaded.uids.entry(q.key.clone()).or_default();
        slot.pending
            .retain(|p| recurrence_key(p.recurrence_id) != q.recurrence_key);
    }
    for (k, e) in &w.queue {
        let slot = loaded.uids.entry(k.clone()).or_default();
        slot.pending.retain(|p| p.recurrence_id != e.recurrence_id);
        slot.pending.push(Pending {
            recurrence_id: e.recurrence_id,
            organizer: e.organizer.clone(),
            sequence: e.sequence,
            dtstamp: e.dtstamp,
            proposal: crate::model::Proposal {
                components: serde_json::from_value(e.data["components"].clone()).unwrap(),
                timezones: serde_json::from_value(e.data["timezones"].clone()).unwrap(),
                raw: e.data["raw"].as_str().map(Into::into).unwrap_or_default(),
            },
        });
    }
    for l in &w.log {
        loaded.logged.insert((l.user.clone(), l.dedupe_id.clone()));
    }
    for (u, d) in &w.usage {
        loaded.usage.insert(u.clone(), *d);
    }
    loaded.last_seq.extend(w.last_seq.iter().cloned());
    loaded
}

#[test]
fn a_request_writes_its_object_period_events_and_log_line() {
    let w = run(
        &Loaded::default(),
        &[payload(
            "m1",
            Method::Request,
            vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
        )],
        &rules(),
    );
    assert_eq!(verdicts(&w), vec![applied()]);
    assert_eq!(w.objects.len(), 1);
    assert_eq!(w.texts.len(), 1);
    assert_eq!(w.objects[0].digest, w.texts[0].digest);
    assert_eq!(
        w.busy,
        vec![(
            UidKey::new(U, "a"),
            Period {
                start: z("2027-03-15T09:00:00Z"),
                end: z("2027-03-15T09:30:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: None,
            }
        )]
    );
    assert_eq!(
        kinds(&w),
        vec![(1, "object.changed"), (2, "freebusy.changed")]
    );
    assert_eq!(w.outbox[0].event_id, "ns:alice@example.org:1");
    assert_eq!(w.last_seq, vec![(U.to_owned(), 2)]);
    assert_eq!(
        w.usage,
        vec![(
            U.to_owned(),
            Usage {
                objects: 1,
                freebusy: 1
            }
        )]
    );
    assert_eq!(w.log.len(), 1);
    assert_eq!((w.log[0].seq, w.log[0].method.as_str()), (1, "REQUEST"));
    // Nothing was stored: nothing to delete.
    assert!(w.uids_cleared.is_empty() && w.objects_removed.is_empty());
    assert!(w.busy_removed.is_empty() && w.open_removed.is_empty());
}

#[test]
fn duplicates_are_skipped_within_the_batch_and_against_the_log() {
    let m = payload(
        "m1",
        Method::Request,
        vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
    );
    let w = run(&Loaded::default(), &[m.clone(), m.clone()], &rules());
    assert_eq!(verdicts(&w), vec![applied(), Verdict::Duplicate]);
    assert_eq!((w.log.len(), w.outbox.len(), w.objects.len()), (1, 2, 1));

    let mut loaded = Loaded::default();
    loaded.logged.insert((U.to_owned(), "m1".to_owned()));
    let w = run(&loaded, &[m], &rules());
    assert_eq!(verdicts(&w), vec![Verdict::Duplicate]);
    assert_eq!(
        w,
        Writes {
            outcomes: w.outcomes.clone(),
            ..Writes::default()
        }
    );
}

#[test]
fn later_messages_see_what_earlier_ones_left() {
    let create = payload(
        "m1",
        Method::Request,
        vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
    );
    let cancel = payload(
        "m2",
        Method::Cancel,
        vec![event("a", U, "2027-03-15T09:00:00Z", 1)],
    );
    let w = run(
        &Loaded::default(),
        &[create.clone(), cancel.clone()],
        &rules(),
    );
    assert_eq!(verdicts(&w), vec![applied(), applied()]);
    // Created and cancelled in one batch: the database never sees the object.
    assert!(w.objects.is_empty() && w.busy.is_empty() && w.busy_removed.is_empty());
    assert_eq!(
        kinds(&w),
        vec![
            (1, "object.changed"),
            (2, "freebusy.changed"),
            (3, "object.removed"),
            (4, "freebusy.changed")
        ]
    );
    assert!(w.usage.is_empty());

    // Across two batches, the second removes what the first stored.
    let loaded = stored(&[create]);
    let w = run(&loaded, &[cancel], &rules());
    assert_eq!(
        w.busy_removed,
        vec![(UidKey::new(U, "a"), z("2027-03-15T09:00:00Z"))]
    );
    assert_eq!(w.objects_removed.len(), 1);
    assert_eq!(kinds(&w)[0].0, 3, "numbered after the loaded last sequence");
    assert_eq!(
        w.usage,
        vec![(
            U.to_owned(),
            Usage {
                objects: -1,
                freebusy: -1
            }
        )]
    );
}

#[test]
fn the_free_busy_change_is_the_difference_of_stored_periods() {
    let key = UidKey::new(U, "a");
    let ghost = Period {
        start: z("2027-03-10T09:00:00Z"),
        end: z("2027-03-10T10:00:00Z"),
        fbtype: FbType::Busy,
        recurrence_id: None,
    };
    let mut loaded = Loaded::default();
    loaded
        .uids
        .entry(key.clone())
        .or_default()
        .busy
        .insert(ghost);
    let w = run(
        &loaded,
        &[payload(
            "m1",
            Method::Request,
            vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
        )],
        &rules(),
    );
    let fb = &w.outbox[1].body["data"];
    assert_eq!(fb["removed"].as_array().map(Vec::len), Some(1), "{fb}");
    assert_eq!(fb["added"].as_array().map(Vec::len), Some(1), "{fb}");
    assert_eq!(w.busy_removed, vec![(key, ghost.start)]);
}

#[test]
fn a_newer_request_replaces_the_pending_one_an_older_does_not() {
    let w = run(&Loaded::default(), &[invitation("i1", 1)], &rules());
    assert_eq!(verdicts(&w), vec![applied()]);
    assert_eq!(w.queue.len(), 1);
    assert!(
        w.objects.is_empty() && w.busy.is_empty(),
        "the calendar is left alone"
    );
    assert_eq!(kinds(&w), vec![(1, "queue.changed")]);

    let loaded = stored(&[invitation("i1", 1)]);
    let w = run(&loaded, &[invitation("i0", 0)], &rules());
    assert!(w.queue.is_empty() && w.outbox.is_empty());
    assert_eq!(w.log.len(), 1, "logged all the same");
    let w = run(&loaded, &[invitation("i2", 2)], &rules());
    assert_eq!(w.queue[0].1.sequence, 2);
    assert_eq!(kinds(&w), vec![(2, "queue.changed")]);

    // Within one batch as across batches.
    let w = run(
        &Loaded::default(),
        &[invitation("i2", 2), invitation("i1", 1)],
        &rules(),
    );
    assert_eq!((w.queue.len(), w.queue[0].1.sequence), (1, 2));
}

#[test]
fn a_message_over_the_quota_is_refused_and_leaves_nothing() {
    let mut r = rules();
    r.limits.max_objects_per_user = 1;
    let w = run(
        &Loaded::default(),
        &[
            payload(
                "m1",
                Method::Request,
                vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
            ),
            payload(
                "m2",
                Method::Request,
                vec![
                    event("b", U, "2027-03-16T09:00:00Z", 0),
                    event("c", U, "2027-03-17T09:00:00Z", 0),
                ],
            ),
        ],
        &r,
    );
    assert_eq!(w.outcomes[0].verdict, applied());
    assert!(
        matches!(&w.outcomes[1].verdict, Verdict::Done(Disposition::Refused(r)) if r.contains("IMIP_MAX_OBJECTS_PER_USER")),
        "{:?}",
        w.outcomes[1]
    );
    // Only the first message's rows, events and usage.
    assert!(w.objects.iter().all(|o| o.key.uid == "a"));
    assert_eq!(w.outbox.len(), 2);
    assert_eq!(
        w.usage,
        vec![(
            U.to_owned(),
            Usage {
                objects: 1,
                freebusy: 1
            }
        )]
    );
    assert_eq!(w.log.len(), 2);
}

#[test]
fn a_message_over_the_period_limit_is_refused_whole() {
    let mut r = rules();
    r.limits.max_periods_per_message = 1;
    let w = run(
        &Loaded::default(),
        &[payload(
            "m1",
            Method::Request,
            vec![
                event("b", U, "2027-03-16T09:00:00Z", 0),
                event("c", U, "2027-03-17T09:00:00Z", 0),
            ],
        )],
        &r,
    );
    assert!(matches!(
        &w.outcomes[0].verdict,
        Verdict::Done(Disposition::Refused(_))
    ));
    assert!(w.objects.is_empty() && w.busy.is_empty() && w.outbox.is_empty());
}

#[test]
fn events_continue_the_loaded_sequence_per_user_in_message_order() {
    let mut loaded = Loaded::default();
    loaded.last_seq.insert(U.to_owned(), 41);
    let other = Payload {
        user: BOB.into(),
        sender: BOB.into(),
        ..payload(
            "b1",
            Method::Request,
            vec![event("x", BOB, "2027-03-15T09:00:00Z", 0)],
        )
    };
    let w = run(
        &loaded,
        &[
            payload(
                "m1",
                Method::Request,
                vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
            ),
            other,
            payload(
                "m2",
                Method::Request,
                vec![event("b", U, "2027-03-16T09:00:00Z", 0)],
            ),
        ],
        &rules(),
    );
    let seqs: Vec<(&str, i64)> = w.outbox.iter().map(|o| (o.user.as_str(), o.seq)).collect();
    assert_eq!(
        seqs,
        vec![(U, 42), (U, 43), (BOB, 1), (BOB, 2), (U, 44), (U, 45)]
    );
    assert_eq!(w.last_seq, vec![(U.to_owned(), 45), (BOB.to_owned(), 2)]);
}

#[test]
fn a_message_whose_events_cannot_fit_is_dead_lettered_alone() {
    let mut r = rules();
    r.max_payload = 4096;
    let huge = "u".repeat(5000);
    let w = run(
        &Loaded::default(),
        &[
            payload(
                "m1",
                Method::Request,
                vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
            ),
            payload(
                "m2",
                Method::Request,
                vec![event(&huge, U, "2027-03-16T09:00:00Z", 0)],
            ),
            payload(
                "m3",
                Method::Request,
                vec![event("c", U, "2027-03-17T09:00:00Z", 0)],
            ),
        ],
        &r,
    );
    assert_eq!(w.outcomes[0].verdict, applied());
    assert!(
        matches!(w.outcomes[1].verdict, Verdict::DeadLettered(_)),
        "{:?}",
        w.outcomes[1]
    );
    assert_eq!(w.outcomes[2].verdict, applied());
    assert_eq!(w.dead_letters.len(), 1);
    assert_eq!(
        (w.dead_letters[0].seq, w.dead_letters[0].user.as_str()),
        (2, U)
    );
    // Nothing of it: no rows, no log line, no gap in the sequence, no usage.
    assert!(w.objects.iter().all(|o| o.key.uid != huge));
    assert_eq!(w.log.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(
        kinds(&w).iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        w.usage,
        vec![(
            U.to_owned(),
            Usage {
                objects: 2,
                freebusy: 2
            }
        )]
    );
}

#[test]
fn an_unreadable_payload_is_dead_lettered_and_the_batch_goes_on() {
    let good = json(&[payload(
        "m1",
        Method::Request,
        vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
    )]);
    let old = serde_json::to_vec(&Payload {
        version: PAYLOAD_VERSION + 1,
        ..payload("m0", Method::Request, vec![])
    })
    .unwrap();
    let msgs = [
        Msg {
            seq: 1,
            bytes: b"{not json",
        },
        Msg {
            seq: 2,
            bytes: &old,
        },
        Msg {
            seq: 3,
            bytes: &good[0],
        },
    ];
    let w = apply(&Loaded::default(), &msgs, &rules());
    assert_eq!(
        w.dead_letters
            .iter()
            .map(|d| d.user.as_str())
            .collect::<Vec<_>>(),
        vec!["unknown", U]
    );
    assert!(
        w.dead_letters[1].error.starts_with("payload version 2"),
        "{}",
        w.dead_letters[1].error
    );
    assert_eq!(w.outcomes[2].verdict, applied());
}

#[test]
fn an_unchanged_object_is_not_rewritten_an_unreadable_uid_is() {
    let create = payload(
        "m1",
        Method::Request,
        vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
    );
    let moved = payload(
        "m2",
        Method::Request,
        vec![event("a", U, "2027-03-15T10:00:00Z", 1)],
    );
    let mut loaded = stored(&[create]);
    let w = run(&loaded, std::slice::from_ref(&moved), &rules());
    assert_eq!(w.objects_removed.len(), 1);
    assert!(w.uids_cleared.is_empty());
    loaded
        .uids
        .get_mut(&UidKey::new(U, "a"))
        .unwrap()
        .unreadable = true;
    let w = run(&loaded, &[moved], &rules());
    assert_eq!(w.uids_cleared, vec![UidKey::new(U, "a")]);
    assert!(w.objects_removed.is_empty());
}

#[test]
fn keys_name_each_user_uid_and_message_once() {
    let bytes = json(&[
        payload(
            "m1",
            Method::Request,
            vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
        ),
        payload(
            "m2",
            Method::Request,
            vec![event("a", U, "2027-03-15T09:00:00Z", 1)],
        ),
    ]);
    let parsed: Vec<Parsed> = bytes
        .iter()
        .map(|b| parse(Msg { seq: 1, bytes: b }))
        .collect();
    let k = keys(&parsed);
    assert_eq!(k.uids, vec![UidKey::new(U, "a")]);
    assert_eq!(k.users, vec![U.to_owned()]);
    assert_eq!(k.logged.len(), 2);
}

#[test]
fn rematerialise_repairs_only_what_differs() {
    let create = payload(
        "m1",
        Method::Request,
        vec![event("a", U, "2027-03-15T09:00:00Z", 0)],
    );
    let intact = stored(&[create]);
    let r = rematerialise(&intact, U, &rules(), |_, _| {}).unwrap();
    assert_eq!((r.uids, r.changed.len(), r.events), (1, 0, 0));
    assert!(r.writes.busy.is_empty() && r.writes.outbox.is_empty() && r.writes.usage.is_empty());

    let mut broken = intact.clone();
    broken
        .uids
        .get_mut(&UidKey::new(U, "a"))
        .unwrap()
        .busy
        .clear();
    broken.usage.insert(
        U.to_owned(),
        Usage {
            objects: 1,
            freebusy: 0,
        },
    );
    let r = rematerialise(&broken, U, &rules(), |_, _| {}).unwrap();
    assert_eq!(
        (r.changed.clone(), r.periods_added, r.events),
        (vec!["a".to_owned()], 1, 1)
    );
    assert_eq!(r.writes.busy.len(), 1);
    assert_eq!(kinds(&r.writes), vec![(3, "freebusy.changed")]);
    assert_eq!(
        r.writes.usage,
        vec![(
            U.to_owned(),
            Usage {
                objects: 0,
                freebusy: 1
            }
        )]
    );
}
