//! Tests of the trust rules (SPEC §2 "Trust", issue 12): REQUEST and CANCEL
//! are checked against the organizer U has stored (objects or the pending
//! request), an organizer change is refused, SENT-BY grants nothing, a REPLY
//! changes only its sender's own answer, and a delegate is accepted only when
//! the delegation is stored or shown by both of its lines.

use super::test_fixtures::{att, ctx_with, z};
use super::*;
use crate::model::{Ctx, Disposition, Pending, QueueChange, QueueOp, StoredObject, UidState};
use chrono::Duration;
use imipflow_schema::{
    Attendee, Component, ComponentKind, Direction, Method, PartStat, Party, Payload, Time,
    Transparency,
};
use std::collections::BTreeMap;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const MALLORY: &str = "mallory@example.net";
const UID: &str = "m1";

fn ctx() -> Ctx {
    ctx_with(1000, &[])
}

fn party(address: &str, sent_by: Option<&str>) -> Party {
    Party {
        address: address.into(),
        cn: None,
        sent_by: sent_by.map(str::to_owned),
    }
}

/// A one-hour meeting organised by `organizer` (none: a personal event).
fn meeting(organizer: Option<&str>, sequence: i64, attendees: Vec<Attendee>) -> Component {
    Component {
        kind: ComponentKind::Event,
        uid: UID.into(),
        recurrence_id: None,
        sequence,
        dtstamp: Some(z("2027-01-01T00:00:00Z") + Duration::days(sequence)),
        start: Some(Time::utc(z("2027-03-15T09:00:00Z"))),
        end: Some(Time::utc(z("2027-03-15T10:00:00Z"))),
        duration_seconds: None,
        all_day: false,
        floating: false,
        rrule: vec![],
        rdate: vec![],
        exdate: vec![],
        status: None,
        transp: Transparency::Opaque,
        summary: Some("Planning".into()),
        organizer: organizer.map(|o| party(o, None)),
        attendees,
    }
}

/// Alice's meeting as an attendee stores it, with the attendee's answer.
fn alices(bob: PartStat) -> Component {
    meeting(
        Some(ALICE),
        0,
        vec![att(ALICE, PartStat::Accepted), att(BOB, bob)],
    )
}

fn state(c: Component) -> UidState {
    UidState {
        objects: vec![StoredObject {
            recurrence_id: None,
            component: c,
            timezones: BTreeMap::new(),
            raw: "".into(),
            answers: BTreeMap::new(),
        }],
        pending: Vec::new(),
    }
}

/// A message to `user` from `sender`: U's own when they are the same.
fn mail(method: Method, user: &str, sender: &str, components: Vec<Component>) -> Payload {
    Payload {
        version: imipflow_schema::PAYLOAD_VERSION,
        method,
        user: user.into(),
        direction: if user == sender {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        sender: sender.into(),
        recipients: vec![],
        message_id: None,
        dedupe_id: "d".into(),
        object_index: 0,
        object_count: 1,
        ingested_at: z("2027-03-01T00:00:00Z"),
        components,
        timezones: BTreeMap::new(),
        warnings: vec![],
        raw: String::new(),
    }
}

fn run(s: &UidState, p: &Payload) -> Outcome {
    apply(s, p, UID, &ctx())
}

/// Asserts a refusal whose reason contains `why` that changed nothing.
fn refused(s: &UidState, p: &Payload, why: &str) {
    let o = run(s, p);
    match &o.disposition {
        Disposition::Refused(r) => assert!(r.contains(why), "{why:?} not in {r:?}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
    assert_eq!(&o.state, s);
    assert!(o.changes.is_empty());
    assert!(o.queue.is_empty());
}

fn applied(s: &UidState, p: &Payload) -> Outcome {
    let o = run(s, p);
    assert_eq!(o.disposition, Disposition::Applied, "{o:#?}");
    o
}

fn partstat(s: &UidState, who: &str) -> Option<PartStat> {
    s.objects[0]
        .component
        .attendees
        .iter()
        .find(|a| a.address == who)
        .map(|a| a.partstat.clone())
}

// ---- REQUEST and CANCEL: the stored organizer ------------------------------

#[test]
fn an_outsiders_cancel_is_refused_whatever_organizer_it_names() {
    let s = state(alices(PartStat::Accepted));
    let mut own = alices(PartStat::Accepted);
    own.sequence = 1;
    own.organizer = Some(party(MALLORY, None));
    refused(
        &s,
        &mail(Method::Cancel, BOB, MALLORY, vec![own]),
        "organizer change",
    );
    let mut as_alice = alices(PartStat::Accepted);
    as_alice.sequence = 1;
    as_alice.organizer = Some(party(ALICE, Some(MALLORY)));
    refused(
        &s,
        &mail(Method::Cancel, BOB, MALLORY, vec![as_alice.clone()]),
        "SENT-BY",
    );
    // Alice herself, with an assistant's SENT-BY, still cancels.
    let o = applied(&s, &mail(Method::Cancel, BOB, ALICE, vec![as_alice]));
    assert!(o.state.objects.is_empty());
    assert!(o.periods.is_empty());
}

#[test]
fn an_organizer_change_is_refused_even_from_the_stored_organizer() {
    let s = state(alices(PartStat::Accepted));
    let mut handed_over = alices(PartStat::Accepted);
    handed_over.sequence = 1;
    handed_over.organizer = Some(party(CAROL, None));
    for m in [Method::Request, Method::Cancel] {
        refused(
            &s,
            &mail(m, BOB, ALICE, vec![handed_over.clone()]),
            "organizer change from alice@example.com to carol@example.org",
        );
    }
    // The organizer's own update is queued as before.
    let mut update = alices(PartStat::NeedsAction);
    update.sequence = 1;
    let o = applied(&s, &mail(Method::Request, BOB, ALICE, vec![update]));
    assert!(o.enqueues());
    assert_eq!(o.state, s);
}

#[test]
fn an_incoming_request_is_checked_against_the_pending_organizer() {
    let s = UidState {
        objects: vec![],
        pending: vec![Pending {
            recurrence_id: None,
            organizer: Some(format!("mailto:{ALICE}")),
            sequence: 1,
            dtstamp: Some(z("2027-01-02T00:00:00Z")),
            proposal: Default::default(),
        }],
    };
    let mut hers = meeting(Some(MALLORY), 5, vec![att(BOB, PartStat::NeedsAction)]);
    refused(
        &s,
        &mail(Method::Request, BOB, MALLORY, vec![hers.clone()]),
        "organizer change",
    );
    hers.organizer = Some(party(ALICE, Some(MALLORY)));
    refused(
        &s,
        &mail(Method::Request, BOB, MALLORY, vec![hers.clone()]),
        "organizer is mailto:alice@example.com, sender is mallory@example.net",
    );
    refused(
        &s,
        &mail(Method::Cancel, BOB, MALLORY, vec![hers]),
        "sender is mallory",
    );
    // Alice's newer version replaces it; an older one is stale.
    let newer = meeting(Some(ALICE), 2, vec![att(BOB, PartStat::NeedsAction)]);
    assert!(applied(&s, &mail(Method::Request, BOB, ALICE, vec![newer])).enqueues());
    let older = meeting(Some(ALICE), 0, vec![att(BOB, PartStat::NeedsAction)]);
    let o = run(&s, &mail(Method::Request, BOB, ALICE, vec![older]));
    assert!(matches!(o.disposition, Disposition::Stale(_)), "{o:?}");
    assert!(!o.enqueues());
    // Alice cancels her pending invitation.
    let cancel = meeting(Some(ALICE), 2, vec![att(BOB, PartStat::NeedsAction)]);
    assert_eq!(
        applied(&s, &mail(Method::Cancel, BOB, ALICE, vec![cancel])).queue,
        [QueueOp::Remove(None)]
    );
}

#[test]
fn an_event_stored_without_organizer_is_the_users_own() {
    let s = state(meeting(None, 0, vec![]));
    let theirs = meeting(Some(MALLORY), 1, vec![att(BOB, PartStat::NeedsAction)]);
    for m in [Method::Request, Method::Cancel] {
        refused(
            &s,
            &mail(m, BOB, MALLORY, vec![theirs.clone()]),
            "without ORGANIZER",
        );
    }
    // Bob may make it a meeting he organizes.
    let mine = meeting(Some(BOB), 1, vec![att(CAROL, PartStat::NeedsAction)]);
    applied(&s, &mail(Method::Request, BOB, BOB, vec![mine]));
}

#[test]
fn an_incoming_request_without_any_organizer_is_refused() {
    let c = meeting(None, 0, vec![att(BOB, PartStat::NeedsAction)]);
    refused(
        &UidState::default(),
        &mail(Method::Request, BOB, MALLORY, vec![c]),
        "no ORGANIZER",
    );
}

// ---- the user's own mail: no re-organizing --------------------------------

#[test]
fn the_user_cannot_reorganize_someone_elses_event() {
    let s = state(alices(PartStat::Accepted));
    let mut taken = alices(PartStat::Accepted);
    taken.sequence = 1;
    taken.organizer = Some(party(BOB, None));
    for m in [Method::Request, Method::Publish, Method::Cancel] {
        refused(
            &s,
            &mail(m, BOB, BOB, vec![taken.clone()]),
            "organizer change from alice@example.com to bob@example.org",
        );
    }
    // Nor without an ORGANIZER line.
    taken.organizer = None;
    refused(
        &s,
        &mail(Method::Request, BOB, BOB, vec![taken.clone()]),
        "organizer is alice@example.com, not bob@example.org",
    );
    // Nor a pending invitation.
    let pending = UidState {
        objects: vec![],
        pending: vec![Pending {
            recurrence_id: None,
            organizer: Some(ALICE.into()),
            sequence: 0,
            dtstamp: None,
            proposal: Default::default(),
        }],
    };
    taken.organizer = Some(party(BOB, None));
    refused(
        &pending,
        &mail(Method::Request, BOB, BOB, vec![taken]),
        "organizer change",
    );
}

#[test]
fn the_users_own_event_keeps_the_users_organizer() {
    let mine = meeting(Some(BOB), 0, vec![att(CAROL, PartStat::NeedsAction)]);
    let s = state(mine.clone());
    let mut moved = mine.clone();
    moved.sequence = 1;
    applied(&s, &mail(Method::Request, BOB, BOB, vec![moved.clone()]));
    moved.organizer = Some(party(CAROL, None));
    refused(
        &s,
        &mail(Method::Request, BOB, BOB, vec![moved.clone()]),
        "organizer change",
    );
    // Writing as someone's SENT-BY does not make U their organizer.
    moved.organizer = Some(party(CAROL, Some(BOB)));
    refused(
        &UidState::default(),
        &mail(Method::Request, BOB, BOB, vec![moved]),
        "SENT-BY",
    );
}

// ---- REPLY: only the sender's own answer -----------------------------------

/// Alice's own meeting with Bob and Carol, Carol having accepted.
fn organizers_copy() -> UidState {
    let mut s = state(meeting(
        Some(ALICE),
        0,
        vec![
            att(ALICE, PartStat::Accepted),
            att(BOB, PartStat::NeedsAction),
            att(CAROL, PartStat::Accepted),
        ],
    ));
    s.objects[0].answers.insert(
        CAROL.into(),
        AnswerStamp {
            sequence: 0,
            dtstamp: Some(z("2027-02-01T00:00:00Z")),
        },
    );
    s
}

fn reply(stamp: &str, attendees: Vec<Attendee>) -> Component {
    let mut c = meeting(Some(ALICE), 0, attendees);
    c.dtstamp = Some(z(stamp));
    c
}

#[test]
fn a_reply_speaking_for_another_attendee_is_refused() {
    let s = organizers_copy();
    let mut forged = att(CAROL, PartStat::Declined);
    forged.sent_by = Some(BOB.into());
    let r = reply(
        "2027-02-05T00:00:00Z",
        vec![att(BOB, PartStat::Accepted), forged],
    );
    refused(&s, &mail(Method::Reply, ALICE, BOB, vec![r]), "SENT-BY");
    let mut forged = att(CAROL, PartStat::Declined);
    forged.delegated_from = vec![BOB.into()];
    let r = reply(
        "2027-02-05T00:00:00Z",
        vec![att(BOB, PartStat::Accepted), forged],
    );
    refused(
        &s,
        &mail(Method::Reply, ALICE, BOB, vec![r]),
        "claims delegation from bob@example.org",
    );
    // Bob's answer as SENT-BY for Carol, without an entry of his own.
    let mut forged = att(CAROL, PartStat::Declined);
    forged.sent_by = Some(BOB.into());
    let r = reply("2027-02-05T00:00:00Z", vec![forged]);
    refused(&s, &mail(Method::Reply, ALICE, BOB, vec![r]), "SENT-BY");
    // Carol's real later answer is not stale.
    let r = reply(
        "2027-02-03T00:00:00Z",
        vec![att(CAROL, PartStat::Tentative)],
    );
    let o = applied(&s, &mail(Method::Reply, ALICE, CAROL, vec![r]));
    assert_eq!(partstat(&o.state, CAROL), Some(PartStat::Tentative));
}

#[test]
fn copies_of_other_attendees_entries_change_nothing() {
    let s = organizers_copy();
    let r = reply(
        "2027-02-05T00:00:00Z",
        vec![att(BOB, PartStat::Accepted), att(CAROL, PartStat::Declined)],
    );
    let o = applied(&s, &mail(Method::Reply, ALICE, BOB, vec![r]));
    assert_eq!(partstat(&o.state, BOB), Some(PartStat::Accepted));
    assert_eq!(partstat(&o.state, CAROL), Some(PartStat::Accepted));
    assert_eq!(
        o.state.objects[0].answers[CAROL].dtstamp,
        Some(z("2027-02-01T00:00:00Z")),
        "Carol's answer keeps its own stamp"
    );
}

#[test]
fn the_users_own_reply_cannot_answer_for_others_either() {
    let s = state(meeting(
        Some(ALICE),
        0,
        vec![
            att(ALICE, PartStat::Accepted),
            att(BOB, PartStat::NeedsAction),
            att(CAROL, PartStat::Accepted),
        ],
    ));
    let mut forged = att(CAROL, PartStat::Declined);
    forged.sent_by = Some(BOB.into());
    let r = reply(
        "2027-02-05T00:00:00Z",
        vec![att(BOB, PartStat::Accepted), forged],
    );
    refused(&s, &mail(Method::Reply, BOB, BOB, vec![r]), "SENT-BY");
}

// ---- delegation -----------------------------------------------------------

fn delegating(from: &str, to: &str) -> (Attendee, Attendee) {
    let mut delegator = att(from, PartStat::Delegated);
    delegator.delegated_to = vec![to.into()];
    let mut delegate = att(to, PartStat::Accepted);
    delegate.delegated_from = vec![from.into()];
    (delegator, delegate)
}

#[test]
fn a_delegate_is_accepted_when_the_stored_delegator_delegated_to_them() {
    let s = organizers_copy();
    let (delegator, delegate) = delegating(CAROL, DAVE);
    // Carol tells Alice (RFC 5546 §4.2.5, with the delegate's entry): Dave is
    // added, but as NEEDS-ACTION: Carol does not answer for him.
    let r = reply(
        "2027-02-02T00:00:00Z",
        vec![delegator.clone(), delegate.clone()],
    );
    let s = applied(&s, &mail(Method::Reply, ALICE, CAROL, vec![r])).state;
    assert_eq!(partstat(&s, CAROL), Some(PartStat::Delegated));
    assert_eq!(partstat(&s, DAVE), Some(PartStat::NeedsAction));
    assert!(!s.objects[0].answers.contains_key(DAVE));
    // Dave answers for himself.
    let r = reply("2027-02-01T12:00:00Z", vec![delegate.clone()]);
    let o = applied(&s, &mail(Method::Reply, ALICE, DAVE, vec![r]));
    assert_eq!(partstat(&o.state, DAVE), Some(PartStat::Accepted));
    // Had Carol named Dave only in her own DELEGATED-TO (RFC 5546's own
    // example), Dave is not listed, but the stored delegation admits him.
    let r = reply("2027-02-02T00:00:00Z", vec![delegator]);
    let s = applied(
        &organizers_copy(),
        &mail(Method::Reply, ALICE, CAROL, vec![r]),
    )
    .state;
    assert_eq!(partstat(&s, DAVE), None);
    let r = reply("2027-02-03T00:00:00Z", vec![delegate]);
    let o = applied(&s, &mail(Method::Reply, ALICE, DAVE, vec![r]));
    assert_eq!(partstat(&o.state, DAVE), Some(PartStat::Accepted));
}

#[test]
fn a_delegate_showing_both_lines_is_accepted_and_both_lines_are_applied() {
    let s = organizers_copy();
    let (delegator, delegate) = delegating(BOB, DAVE);
    let r = reply(
        "2027-02-02T00:00:00Z",
        vec![delegate.clone(), delegator.clone()],
    );
    let o = applied(&s, &mail(Method::Reply, ALICE, DAVE, vec![r]));
    assert_eq!(partstat(&o.state, DAVE), Some(PartStat::Accepted));
    // RFC 5546 §4.2.6: the delegator's line is applied too, unstamped.
    assert_eq!(partstat(&o.state, BOB), Some(PartStat::Delegated));
    let bob = o.state.objects[0]
        .component
        .attendees
        .iter()
        .find(|a| a.address == BOB)
        .unwrap();
    assert_eq!(bob.delegated_to, vec![DAVE.to_string()]);
    assert!(!o.state.objects[0].answers.contains_key(BOB));
    let dave = o.state.objects[0]
        .component
        .attendees
        .iter()
        .find(|a| a.address == DAVE)
        .unwrap();
    assert_eq!(dave.delegated_from, vec![BOB.to_string()]);
    // Without the delegator's line, or from a delegator nobody invited: refused.
    let r = reply("2027-02-02T00:00:00Z", vec![delegate]);
    refused(
        &s,
        &mail(Method::Reply, ALICE, DAVE, vec![r]),
        "delegation from bob@example.org",
    );
    let (delegator, delegate) = delegating(MALLORY, DAVE);
    let r = reply("2027-02-02T00:00:00Z", vec![delegate, delegator]);
    refused(
        &s,
        &mail(Method::Reply, ALICE, DAVE, vec![r]),
        "delegation from mallory@example.net",
    );
}

#[test]
fn a_delegates_reply_does_not_override_a_newer_answer_of_the_delegator() {
    // Carol accepted on 1 February (organizers_copy); a delegate's reply
    // stamped before that is not applied to her line, one after it is.
    let (delegator, delegate) = delegating(CAROL, DAVE);
    let r = reply(
        "2027-01-15T00:00:00Z",
        vec![delegate.clone(), delegator.clone()],
    );
    let o = applied(
        &organizers_copy(),
        &mail(Method::Reply, ALICE, DAVE, vec![r]),
    );
    assert_eq!(partstat(&o.state, DAVE), Some(PartStat::Accepted));
    assert_eq!(partstat(&o.state, CAROL), Some(PartStat::Accepted));
    let r = reply("2027-02-05T00:00:00Z", vec![delegate, delegator]);
    let s = applied(
        &organizers_copy(),
        &mail(Method::Reply, ALICE, DAVE, vec![r]),
    )
    .state;
    assert_eq!(partstat(&s, CAROL), Some(PartStat::Delegated));
    // Carol's own later answer is hers: not stale against the delegate's stamp.
    let r = reply("2027-02-03T00:00:00Z", vec![att(CAROL, PartStat::Accepted)]);
    let o = applied(&s, &mail(Method::Reply, ALICE, CAROL, vec![r]));
    assert_eq!(partstat(&o.state, CAROL), Some(PartStat::Accepted));
}

#[test]
fn a_delegators_line_that_does_not_match_the_delegate_is_not_applied() {
    // Bob's line delegates to Carol, not to Dave: Dave's DELEGATED-FROM Bob
    // is not shown by it, so the reply is refused and Bob's line unapplied.
    let (mut delegator, delegate) = delegating(BOB, DAVE);
    delegator.delegated_to = vec![CAROL.into()];
    let r = reply("2027-02-02T00:00:00Z", vec![delegate, delegator]);
    refused(
        &organizers_copy(),
        &mail(Method::Reply, ALICE, DAVE, vec![r]),
        "delegation from bob@example.org",
    );
    // Dave listed already (stored delegation), the message's Bob line is
    // DELEGATED but to someone else: Dave's answer applies, Bob's line not.
    let mut s = organizers_copy();
    let (stored_bob, stored_dave) = delegating(BOB, DAVE);
    s.objects[0].component.attendees[1] = stored_bob;
    s.objects[0].component.attendees.push(stored_dave.clone());
    let mut other = att(BOB, PartStat::Delegated);
    other.delegated_to = vec![MALLORY.into()];
    let r = reply("2027-02-02T00:00:00Z", vec![stored_dave, other]);
    let o = applied(&s, &mail(Method::Reply, ALICE, DAVE, vec![r]));
    let bob = o.state.objects[0]
        .component
        .attendees
        .iter()
        .find(|a| a.address == BOB)
        .unwrap();
    assert_eq!(bob.delegated_to, vec![DAVE.to_string()]);
}

#[test]
fn a_delegates_reply_sent_by_the_delegate_user_marks_the_delegator_in_their_copy() {
    // Outgoing: Dave's own client sends the delegate's reply; Dave's copy
    // (the request Bob forwarded) shows Bob as DELEGATED too.
    let (stored_bob, mut stored_dave) = delegating(BOB, DAVE);
    stored_dave.partstat = PartStat::NeedsAction;
    let mut bob_pending = stored_bob.clone();
    bob_pending.partstat = PartStat::NeedsAction;
    bob_pending.delegated_to.clear();
    let s = state(meeting(Some(ALICE), 0, vec![bob_pending, stored_dave]));
    let (delegator, delegate) = delegating(BOB, DAVE);
    let r = reply("2027-02-02T00:00:00Z", vec![delegate, delegator]);
    let o = applied(&s, &mail(Method::Reply, DAVE, DAVE, vec![r]));
    assert_eq!(partstat(&o.state, DAVE), Some(PartStat::Accepted));
    assert_eq!(partstat(&o.state, BOB), Some(PartStat::Delegated));
}

#[test]
fn a_pending_entry_is_carried_unchanged_through_an_outcome() {
    let mut s = organizers_copy();
    s.pending = vec![Pending {
        recurrence_id: None,
        organizer: Some(ALICE.into()),
        sequence: 0,
        dtstamp: None,
        proposal: Default::default(),
    }];
    let r = reply("2027-02-05T00:00:00Z", vec![att(BOB, PartStat::Accepted)]);
    let o = applied(&s, &mail(Method::Reply, ALICE, BOB, vec![r]));
    assert_eq!(o.state.pending, s.pending);
    assert!(!o.changes.iter().any(|c| matches!(
        c,
        Change::QueueChanged {
            change: QueueChange::Added,
            ..
        }
    )));
}
