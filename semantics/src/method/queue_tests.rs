//! Tests of [`super::queue`]: pending entries per recurrence key (a CANCEL
//! of one instance leaves another instance's pending update), a series
//! request superseding older instance updates, staleness per key, and the
//! user's answer storing the queued invitation rather than the thin REPLY.

use super::test_fixtures::{att, ctx_with, payload_of, weekly_meeting, z};
use super::*;
use crate::model::{Disposition, Outcome, QueueOp, UidState};
use imipflow_schema::{Component, Direction, Method, PartStat, Time};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const UID: &str = "weekly";

/// Alice's weekly meeting, Mondays 5 April – 26 April 2027 at 09:00 UTC,
/// inviting Bob, Carol and Dave.
fn series() -> Component {
    let mut c = weekly_meeting(
        UID,
        "2027-04-05T09:00:00Z",
        4,
        ALICE,
        vec![
            att(BOB, PartStat::NeedsAction),
            att(CAROL, PartStat::Accepted),
            att(DAVE, PartStat::Tentative),
        ],
    );
    c.dtstamp = Some(z("2027-03-01T00:00:00Z"));
    c.summary = Some("Planning".into());
    c
}

/// Alice's update (or cancel) of one instance: `day` at 09:00 UTC, moved
/// to 14:00 for an update, with SEQUENCE `sequence`.
fn instance(day: &str, sequence: i64) -> Component {
    let mut c = series();
    c.rrule.clear();
    c.sequence = sequence;
    c.dtstamp = Some(z("2027-03-10T00:00:00Z") + chrono::Duration::days(sequence));
    c.recurrence_id = Some(RecurrenceId {
        time: Time::utc(z(&format!("{day}T09:00:00Z"))),
        range: None,
    });
    c.start = Some(Time::utc(z(&format!("{day}T14:00:00Z"))));
    c.end = Some(Time::utc(z(&format!("{day}T15:00:00Z"))));
    c
}

fn incoming(state: &UidState, method: Method, c: Vec<Component>) -> Outcome {
    let mut p = payload_of(BOB, method, c);
    p.direction = Direction::Incoming;
    p.sender = ALICE.into();
    apply(state, &p, UID, &ctx_with(1000, &[]))
}

/// Bob's own REPLY to `state` as his client sends it: only Bob, with
/// `partstat`, no SUMMARY.
fn bobs_reply(state: &UidState, mut c: Component, partstat: PartStat) -> Outcome {
    c.attendees = vec![att(BOB, partstat)];
    c.summary = None;
    let p = payload_of(BOB, Method::Reply, vec![c]);
    apply(state, &p, UID, &ctx_with(1000, &[]))
}

/// The state with the queue ops of `o` applied, as the batch step keeps them.
fn after(state: &UidState, o: &Outcome) -> UidState {
    let mut s = o.state.clone();
    s.pending = state.pending.clone();
    for op in &o.queue {
        match op {
            QueueOp::Add(p) | QueueOp::Amend(p) => {
                s.pending.retain(|q| q.recurrence_id != p.recurrence_id);
                s.pending.push(p.clone());
            }
            QueueOp::Remove(rid) => s.pending.retain(|q| q.recurrence_id != *rid),
        }
    }
    s
}

fn applied(state: &UidState, o: Outcome) -> UidState {
    assert_eq!(o.disposition, Disposition::Applied, "{o:#?}");
    after(state, &o)
}

fn keys(s: &UidState) -> Vec<Option<DateTime<Utc>>> {
    let mut k: Vec<_> = s.pending.iter().map(|p| p.recurrence_id).collect();
    k.sort();
    k
}

/// Bob has accepted the series: his copy is Alice's invitation with his answer.
fn accepted_series() -> UidState {
    let s = applied(
        &UidState::default(),
        incoming(&UidState::default(), Method::Request, vec![series()]),
    );
    let o = bobs_reply(&s, series(), PartStat::Accepted);
    applied(&s, o)
}

#[test]
fn a_cancel_of_one_instance_leaves_another_instances_pending_update() {
    let s = accepted_series();
    assert!(s.pending.is_empty(), "accepting the series dequeued it");
    // Alice moves 12 April: it waits for Bob's answer.
    let s = applied(
        &s,
        incoming(&s, Method::Request, vec![instance("2027-04-12", 1)]),
    );
    assert_eq!(keys(&s), [Some(z("2027-04-12T09:00:00Z"))]);
    // Then she cancels 19 April.
    let o = incoming(&s, Method::Cancel, vec![instance("2027-04-19", 2)]);
    assert!(
        !o.queue
            .contains(&QueueOp::Remove(Some(z("2027-04-12T09:00:00Z")))),
        "{:?}",
        o.queue
    );
    let s = applied(&s, o);
    assert_eq!(keys(&s), [Some(z("2027-04-12T09:00:00Z"))]);
    let master = &s.objects[0].component;
    assert_eq!(master.exdate, [Time::utc(z("2027-04-19T09:00:00Z"))]);
    // A CANCEL of the pending instance itself removes its entry.
    let o = incoming(&s, Method::Cancel, vec![instance("2027-04-12", 3)]);
    assert_eq!(o.queue, [QueueOp::Remove(Some(z("2027-04-12T09:00:00Z")))]);
}

#[test]
fn a_series_request_supersedes_the_instance_updates_it_is_not_older_than() {
    let s = accepted_series();
    let s = applied(
        &s,
        incoming(&s, Method::Request, vec![instance("2027-04-12", 1)]),
    );
    let s = applied(
        &s,
        incoming(&s, Method::Request, vec![instance("2027-04-19", 3)]),
    );
    assert_eq!(keys(&s).len(), 2);
    let mut update = series();
    update.sequence = 2;
    update.dtstamp = Some(z("2027-03-12T00:00:00Z"));
    let s = applied(&s, incoming(&s, Method::Request, vec![update]));
    // 12 April (SEQUENCE 1) is superseded, 19 April (SEQUENCE 3) is newer.
    assert_eq!(keys(&s), [None, Some(z("2027-04-19T09:00:00Z"))]);
}

#[test]
fn an_instance_request_older_than_its_pending_entry_is_stale() {
    let s = accepted_series();
    let s = applied(
        &s,
        incoming(&s, Method::Request, vec![instance("2027-04-12", 2)]),
    );
    let o = incoming(&s, Method::Request, vec![instance("2027-04-12", 1)]);
    assert!(matches!(o.disposition, Disposition::Stale(_)), "{o:?}");
    assert!(o.queue.is_empty());
    // Another instance is not compared with it.
    let o = incoming(&s, Method::Request, vec![instance("2027-04-19", 1)]);
    assert_eq!(o.disposition, Disposition::Applied);
}

#[test]
fn accepting_a_pending_invitation_stores_the_invitation_with_the_answer() {
    let mut invitation = series();
    invitation.summary = Some("Planning, with agenda".into());
    let s = applied(
        &UidState::default(),
        incoming(&UidState::default(), Method::Request, vec![invitation]),
    );
    let o = bobs_reply(&s, series(), PartStat::Accepted);
    assert_eq!(o.queue, [QueueOp::Remove(None)]);
    let c = &o.state.objects[0].component;
    assert_eq!(
        c.organizer.as_ref().map(|o| o.address.as_str()),
        Some(ALICE)
    );
    assert_eq!(c.summary.as_deref(), Some("Planning, with agenda"));
    let answers: Vec<(String, PartStat)> = c
        .attendees
        .iter()
        .map(|a| (a.address.clone(), a.partstat.clone()))
        .collect();
    assert_eq!(
        answers,
        [
            (BOB.to_owned(), PartStat::Accepted),
            (CAROL.to_owned(), PartStat::Accepted),
            (DAVE.to_owned(), PartStat::Tentative),
        ]
    );
    assert_eq!(c.rrule, ["FREQ=WEEKLY;COUNT=4"]);
    assert_eq!(o.periods.len(), 4, "Bob is busy for every instance");
    assert!(o.state.objects[0].answers.contains_key(BOB));
}

#[test]
fn declining_keeps_the_invitation_without_busy_time() {
    let s = applied(
        &UidState::default(),
        incoming(&UidState::default(), Method::Request, vec![series()]),
    );
    let o = bobs_reply(&s, series(), PartStat::Declined);
    assert_eq!(o.queue, [QueueOp::Remove(None)]);
    assert_eq!(o.state.objects[0].component.attendees.len(), 3);
    assert!(o.periods.is_empty());
}

#[test]
fn accepting_a_pending_instance_update_stores_its_new_time() {
    let s = accepted_series();
    let s = applied(
        &s,
        incoming(&s, Method::Request, vec![instance("2027-04-12", 1)]),
    );
    let o = bobs_reply(&s, instance("2027-04-12", 1), PartStat::Accepted);
    assert_eq!(o.queue, [QueueOp::Remove(Some(z("2027-04-12T09:00:00Z")))]);
    let starts: Vec<DateTime<Utc>> = o.periods.iter().map(|p| p.start).collect();
    assert!(starts.contains(&z("2027-04-12T14:00:00Z")), "{starts:?}");
    assert!(!starts.contains(&z("2027-04-12T09:00:00Z")), "{starts:?}");
    let moved = o
        .state
        .objects
        .iter()
        .find(|o| o.recurrence_id == Some(z("2027-04-12T09:00:00Z")))
        .expect("the override");
    assert_eq!(moved.component.attendees.len(), 3);
}

#[test]
fn answering_one_instance_of_a_pending_series_stores_the_series_and_keeps_it_pending() {
    let s = applied(
        &UidState::default(),
        incoming(&UidState::default(), Method::Request, vec![series()]),
    );
    let mut one = series();
    one.rrule.clear();
    one.recurrence_id = Some(RecurrenceId {
        time: Time::utc(z("2027-04-19T09:00:00Z")),
        range: None,
    });
    one.start = Some(Time::utc(z("2027-04-19T09:00:00Z")));
    one.end = Some(Time::utc(z("2027-04-19T10:00:00Z")));
    let o = bobs_reply(&s, one, PartStat::Accepted);
    assert!(
        o.queue.is_empty(),
        "the series' own answer is still to come"
    );
    let starts: Vec<DateTime<Utc>> = o.periods.iter().map(|p| p.start).collect();
    assert_eq!(starts, [z("2027-04-19T09:00:00Z")]);
    assert_eq!(
        o.state.objects.len(),
        2,
        "the series and its answered instance"
    );
}

#[test]
fn a_cancel_of_one_instance_of_a_pending_series_takes_it_out_of_the_proposal() {
    let s = applied(
        &UidState::default(),
        incoming(&UidState::default(), Method::Request, vec![series()]),
    );
    let o = incoming(&s, Method::Cancel, vec![instance("2027-04-19", 1)]);
    let [QueueOp::Amend(p)] = &o.queue[..] else {
        panic!("{:?}", o.queue)
    };
    assert_eq!(
        p.proposal.components[0].exdate,
        [Time::utc(z("2027-04-19T09:00:00Z"))]
    );
    let s = applied(&s, o);
    let o = bobs_reply(&s, series(), PartStat::Accepted);
    let starts: Vec<DateTime<Utc>> = o.periods.iter().map(|p| p.start).collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(!starts.contains(&z("2027-04-19T09:00:00Z")));
}

#[test]
fn a_reply_with_nothing_pending_keeps_the_reply_rule() {
    let o = bobs_reply(&UidState::default(), series(), PartStat::Accepted);
    assert_eq!(o.disposition, Disposition::Applied);
    assert!(o.queue.is_empty());
    assert_eq!(o.state.objects[0].component.attendees.len(), 1);
}
