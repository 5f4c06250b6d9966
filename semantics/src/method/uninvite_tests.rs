//! Tests of [`super::uninvite`]: a CANCEL that names only some attendees
//! uninvites them whatever its STATUS (Outlook's `STATUS:CANCELLED`,
//! Thunderbird's own STATUS, sabre's none), one that names all or none
//! cancels, per instance too, and seen by the removed attendee it is a
//! cancel of the event for them.

use super::test_fixtures::{att, ctx_with, payload_of, weekly_meeting, z};
use super::*;
use crate::model::{Disposition, Outcome, UidState};
use imipflow_schema::{Component, Direction, Method, PartStat, Time};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const UID: &str = "u1";

/// Alice's weekly meeting (three Mondays from 15 March 2027, 09:00 UTC)
/// with Bob, Carol and Dave.
fn series() -> Component {
    weekly_meeting(
        UID,
        "2027-03-15T09:00:00Z",
        3,
        ALICE,
        vec![
            att(BOB, PartStat::Accepted),
            att(CAROL, PartStat::NeedsAction),
            att(DAVE, PartStat::Accepted),
        ],
    )
}

/// The CANCEL Alice's client sends: SEQUENCE 1, naming `who`, with `status`.
fn cancel_of(who: &[&str], status: Option<Status>) -> Component {
    let mut c = series();
    c.sequence = 1;
    c.dtstamp = Some(z("2027-02-01T00:00:00Z"));
    c.status = status;
    c.attendees = who.iter().map(|a| att(a, PartStat::NeedsAction)).collect();
    c
}

/// The same CANCEL for the instance of 22 March only.
fn instance_cancel(who: &[&str], status: Option<Status>) -> Component {
    let mut c = cancel_of(who, status);
    c.rrule.clear();
    c.recurrence_id = Some(RecurrenceId {
        time: Time::utc(z("2027-03-22T09:00:00Z")),
        range: None,
    });
    c.start = Some(Time::utc(z("2027-03-22T09:00:00Z")));
    c.end = Some(Time::utc(z("2027-03-22T10:00:00Z")));
    c
}

fn run(state: &UidState, user: &str, sender: &str, c: Component) -> Outcome {
    let method = Method::Cancel;
    let mut p = payload_of(user, method, vec![c]);
    if user != sender {
        p.direction = Direction::Incoming;
        p.sender = sender.into();
    }
    let o = apply(state, &p, UID, &ctx_with(1000, &[]));
    assert_eq!(o.disposition, Disposition::Applied, "{o:#?}");
    o
}

/// `user`'s copy of the series: Alice's own as she sent it, or an
/// attendee's as stored once they answered (the invitation itself waits in
/// the queue, so it is built here).
fn stored(user: &str) -> UidState {
    if user == ALICE {
        let p = payload_of(user, Method::Request, vec![series()]);
        let o = apply(&UidState::default(), &p, UID, &ctx_with(1000, &[]));
        assert_eq!(o.disposition, Disposition::Applied);
        return o.state;
    }
    UidState {
        objects: vec![StoredObject {
            recurrence_id: None,
            component: series(),
            timezones: BTreeMap::new(),
            raw: "".into(),
            answers: BTreeMap::new(),
        }],
        pending: Vec::new(),
    }
}

fn addresses(o: &StoredObject) -> Vec<&str> {
    o.component
        .attendees
        .iter()
        .map(|a| a.address.as_str())
        .collect()
}

#[test]
fn a_cancel_naming_some_attendees_uninvites_them_whatever_its_status() {
    let s = stored(ALICE);
    let busy = materialise(&s, ALICE, &ctx_with(1000, &[])).0;
    assert_eq!(busy.len(), 3);
    // Outlook/Exchange: STATUS:CANCELLED; Thunderbird: the event's own
    // STATUS; sabre/dav and Apple's CalendarServer: none.
    for status in [Some(Status::Cancelled), Some(Status::Confirmed), None] {
        let o = run(&s, ALICE, ALICE, cancel_of(&[CAROL], status.clone()));
        assert_eq!(o.state.objects.len(), 1, "{status:?}");
        assert_eq!(
            addresses(&o.state.objects[0]),
            vec![BOB, DAVE],
            "{status:?}"
        );
        assert_eq!(o.state.objects[0].component.sequence, 1);
        assert_eq!(
            o.state.objects[0].component.status, None,
            "the event's STATUS stays"
        );
        assert_eq!(
            o.periods, busy,
            "the organizer's busy time stays ({status:?})"
        );
    }
    // Two of three: still an uninvite.
    let o = run(
        &s,
        ALICE,
        ALICE,
        cancel_of(&[CAROL, DAVE], Some(Status::Cancelled)),
    );
    assert_eq!(addresses(&o.state.objects[0]), vec![BOB]);
}

#[test]
fn a_cancel_naming_everyone_or_nobody_cancels_the_event() {
    let s = stored(ALICE);
    for who in [&[BOB, CAROL, DAVE][..], &[]] {
        for status in [Some(Status::Cancelled), None] {
            let o = run(&s, ALICE, ALICE, cancel_of(who, status));
            assert!(o.state.objects.is_empty(), "{who:?}");
            assert!(o.periods.is_empty());
        }
    }
}

#[test]
fn the_organizer_is_set_aside_on_both_sides() {
    // Google and sabre list the organizer as an attendee as well.
    let mut with_alice = series();
    with_alice
        .attendees
        .insert(0, att(ALICE, PartStat::Accepted));
    let p = payload_of(ALICE, Method::Request, vec![with_alice]);
    let s = apply(&UidState::default(), &p, UID, &ctx_with(1000, &[])).state;
    let o = run(&s, ALICE, ALICE, cancel_of(&[ALICE, CAROL], None));
    assert_eq!(addresses(&o.state.objects[0]), vec![ALICE, BOB, DAVE]);
    let o = run(
        &s,
        ALICE,
        ALICE,
        cancel_of(&[ALICE], Some(Status::Cancelled)),
    );
    assert!(
        o.state.objects.is_empty(),
        "naming only the organizer names nobody"
    );
    let o = run(
        &s,
        ALICE,
        ALICE,
        cancel_of(&[ALICE, BOB, CAROL, DAVE], None),
    );
    assert!(o.state.objects.is_empty());
}

#[test]
fn an_instance_cancel_naming_some_attendees_uninvites_them_from_that_instance() {
    let s = stored(ALICE);
    let busy = materialise(&s, ALICE, &ctx_with(1000, &[])).0;
    let o = run(
        &s,
        ALICE,
        ALICE,
        instance_cancel(&[CAROL], Some(Status::Cancelled)),
    );
    assert_eq!(o.state.objects.len(), 2);
    assert_eq!(addresses(&o.state.objects[0]), vec![BOB, CAROL, DAVE]);
    assert!(o.state.objects[0].component.exdate.is_empty());
    assert_eq!(
        o.state.objects[1].recurrence_id,
        Some(z("2027-03-22T09:00:00Z"))
    );
    assert_eq!(addresses(&o.state.objects[1]), vec![BOB, DAVE]);
    assert_eq!(o.periods, busy);
    // Naming everyone cancels the instance.
    let o = run(&s, ALICE, ALICE, instance_cancel(&[BOB, CAROL, DAVE], None));
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(o.state.objects[0].component.exdate.len(), 1);
    assert_eq!(o.periods.len(), 2);
}

#[test]
fn the_removed_attendee_receiving_the_cancel_loses_the_event() {
    // Carol's copy; Alice's CANCEL names Carol (Outlook: STATUS:CANCELLED,
    // Thunderbird: its own STATUS, sabre: none): for Carol it is cancelled.
    let s = stored(CAROL);
    for status in [Some(Status::Cancelled), Some(Status::Confirmed), None] {
        let o = run(&s, CAROL, ALICE, cancel_of(&[CAROL], status.clone()));
        assert!(o.state.objects.is_empty(), "{status:?}");
        assert!(o.queue.is_empty(), "nothing was pending");
    }
    // Naming Carol among others: Carol is removed, so for her it is cancelled.
    let o = run(&s, CAROL, ALICE, cancel_of(&[CAROL, DAVE], None));
    assert!(o.state.objects.is_empty());
    // Naming only Dave: Dave is uninvited, Carol keeps the event.
    let o = run(
        &s,
        CAROL,
        ALICE,
        cancel_of(&[DAVE], Some(Status::Cancelled)),
    );
    assert_eq!(addresses(&o.state.objects[0]), vec![BOB, CAROL]);
    // One instance naming Carol: that instance is gone for her.
    let o = run(&s, CAROL, ALICE, instance_cancel(&[CAROL], None));
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(o.state.objects[0].component.exdate.len(), 1);
}
