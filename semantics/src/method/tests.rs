//! Tests of the method semantics: every rule of SPEC §2, with exact UTC instants.

use super::test_fixtures::{att, ctx_with, payload_of, z};
use super::*;
use crate::model::{AnswerStamp, Change, Ctx, Disposition, FbType, Period, UidState};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use imipflow_schema::{
    Component, ComponentKind, Direction, Method, Observance, PartStat, Party, Payload, Range,
    RecurrenceId, Status, Time, Transparency, YearlyRule, Zone, ZoneRules,
};
use std::collections::BTreeMap;

const U: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const CAROL: &str = "carol@example.org";
const DAVE: &str = "dave@example.org";
const MANAGER: &str = "calendar@example.org";
const UID: &str = "ev1";

// ---- builders -------------------------------------------------------------

fn n(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn ctx() -> Ctx {
    ctx_with(1000, &[MANAGER])
}

fn ctx_tz(tz: chrono_tz::Tz) -> Ctx {
    Ctx {
        default_tz: tz,
        ..ctx()
    }
}

fn iana(name: &str) -> Zone {
    Zone::Iana { name: name.into() }
}

/// Outlook's "W. Europe Standard Time" written as VTIMEZONE rules under a name nobody knows.
fn custom_rules() -> Zone {
    let yearly = |month, start: &str, from, to, daylight| Observance {
        daylight,
        start: n(start),
        offset_from: from,
        offset_to: to,
        rule: Some(YearlyRule {
            month,
            nth_weekday: Some((-1, 6)),
            month_day: None,
            until: None,
            count: None,
        }),
        rdates: vec![],
    };
    Zone::Rules(ZoneRules {
        observances: vec![
            yearly(10, "1601-10-28T03:00:00", 7200, 3600, false),
            yearly(3, "1601-03-25T02:00:00", 3600, 7200, true),
        ],
    })
}

fn zones() -> BTreeMap<String, Zone> {
    [
        ("Europe/Berlin".to_owned(), iana("Europe/Berlin")),
        ("America/New_York".to_owned(), iana("America/New_York")),
        ("Customized Time Zone".to_owned(), custom_rules()),
        (
            "Fixed+0530".to_owned(),
            Zone::Fixed {
                offset_seconds: 19_800,
            },
        ),
    ]
    .into()
}

/// A local time in one of [`zones`].
fn at(tzid: &str, local: &str) -> Time {
    let utc = zones()[tzid].to_utc(n(local)).unwrap();
    Time::zoned(n(local), tzid, utc)
}

fn berlin(local: &str) -> Time {
    at("Europe/Berlin", local)
}

fn utc(s: &str) -> Time {
    Time::utc(z(s))
}

fn party(address: &str) -> Party {
    Party {
        address: address.into(),
        cn: None,
        sent_by: None,
    }
}

/// A VEVENT organised by U with BOB and CAROL invited.
fn event(start: Time, end: Option<Time>) -> Component {
    Component {
        kind: ComponentKind::Event,
        uid: UID.into(),
        recurrence_id: None,
        sequence: 0,
        dtstamp: Some(z("2027-01-01T00:00:00Z")),
        start: Some(start),
        end,
        duration_seconds: None,
        all_day: false,
        floating: false,
        rrule: vec![],
        rdate: vec![],
        exdate: vec![],
        status: None,
        transp: Transparency::Opaque,
        summary: Some("Meeting".into()),
        organizer: Some(party(U)),
        attendees: vec![
            att(U, PartStat::Accepted),
            att(BOB, PartStat::NeedsAction),
            att(CAROL, PartStat::NeedsAction),
        ],
    }
}

/// A weekly one-hour meeting on Tuesdays at 10:00 in Berlin, from 2027-03-16.
fn weekly(rule: &str) -> Component {
    let mut c = event(
        berlin("2027-03-16T10:00:00"),
        Some(berlin("2027-03-16T11:00:00")),
    );
    c.rrule = vec![rule.into()];
    c
}

/// The same event organised by BOB, with U invited.
fn invited(mut c: Component, partstat: PartStat) -> Component {
    c.organizer = Some(party(BOB));
    c.attendees = vec![att(BOB, PartStat::Accepted), att(U, partstat)];
    c
}

fn seq(mut c: Component, sequence: i64, dtstamp: &str) -> Component {
    c.sequence = sequence;
    c.dtstamp = Some(z(dtstamp));
    c
}

/// Makes `c` the specific recurrence whose original start is `rid`.
fn instance(mut c: Component, rid: Time, start: Time, end: Time) -> Component {
    c.rrule.clear();
    c.recurrence_id = Some(RecurrenceId {
        time: rid,
        range: None,
    });
    c.start = Some(start);
    c.end = Some(end);
    c
}

fn this_and_future(mut c: Component) -> Component {
    if let Some(r) = &mut c.recurrence_id {
        r.range = Some(Range::ThisAndFuture);
    }
    c
}

fn payload(method: Method, components: Vec<Component>) -> Payload {
    Payload {
        recipients: vec![BOB.into()],
        message_id: Some("m1@example.org".into()),
        dedupe_id: "dedupe".into(),
        timezones: zones(),
        ..payload_of(U, method, components)
    }
}

fn run_with(state: &UidState, method: Method, components: Vec<Component>, ctx: &Ctx) -> Outcome {
    with_freebusy_change(
        state,
        apply(state, &payload(method, components), UID, ctx),
        ctx,
    )
}

/// The outcome with the free/busy change the writer adds (`crate::apply`,
/// the difference from the stored periods), stored here being what `state`
/// materialises: these tests read transitions with their busy time.
fn with_freebusy_change(state: &UidState, mut o: Outcome, ctx: &Ctx) -> Outcome {
    if o.disposition != Disposition::Applied {
        return o;
    }
    let before: BTreeSet<Period> = materialise(state, U, ctx).0.into_iter().collect();
    let after: BTreeSet<Period> = o.periods.iter().copied().collect();
    let added: Vec<Period> = after.difference(&before).copied().collect();
    let removed: Vec<Period> = before.difference(&after).copied().collect();
    if !added.is_empty() || !removed.is_empty() {
        o.changes.push(Change::FreeBusyChanged {
            uid: UID.into(),
            added,
            removed,
        });
    }
    o
}

fn run(state: &UidState, method: Method, components: Vec<Component>) -> Outcome {
    run_with(state, method, components, &ctx())
}

/// Applies and insists that it applied.
fn ok(state: &UidState, method: Method, components: Vec<Component>) -> Outcome {
    let o = run(state, method, components);
    assert_eq!(o.disposition, Disposition::Applied, "{o:#?}");
    o
}

fn starts(periods: &[Period]) -> Vec<DateTime<Utc>> {
    periods.iter().map(|p| p.start).collect()
}

fn spans(periods: &[Period]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    periods.iter().map(|p| (p.start, p.end)).collect()
}

fn fb_change(o: &Outcome) -> Option<(Vec<Period>, Vec<Period>)> {
    o.changes.iter().find_map(|c| match c {
        Change::FreeBusyChanged { added, removed, .. } => Some((added.clone(), removed.clone())),
        _ => None,
    })
}

fn partstat_of(o: &StoredObject, who: &str) -> Option<PartStat> {
    o.component
        .attendees
        .iter()
        .find(|a| a.address == who)
        .map(|a| a.partstat.clone())
}

fn empty() -> UidState {
    UidState::default()
}

// ---- REQUEST / PUBLISH ----------------------------------------------------

#[test]
fn request_stores_the_event_and_makes_the_organizer_busy() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let o = ok(&empty(), Method::Request, vec![c.clone()]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(o.state.objects[0].component, c);
    assert_eq!(
        o.state.objects[0].raw,
        "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
    );
    let p = Period {
        start: z("2027-03-15T09:00:00Z"),
        end: z("2027-03-15T10:00:00Z"),
        fbtype: FbType::Busy,
        recurrence_id: None,
    };
    assert_eq!(o.periods, vec![p]);
    assert!(!o.open_ended);
    assert!(o.queue.is_empty(), "nothing was pending");
    assert_eq!(
        o.changes,
        vec![
            Change::ObjectChanged {
                uid: UID.into(),
                recurrence_id: None,
                sequence: 0
            },
            Change::FreeBusyChanged {
                uid: UID.into(),
                added: vec![p],
                removed: vec![]
            },
        ]
    );
}

#[test]
fn publish_behaves_like_request() {
    let mut c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    c.organizer = None;
    c.attendees.clear();
    let o = ok(&empty(), Method::Publish, vec![c]);
    assert_eq!(starts(&o.periods), vec![z("2027-03-15T09:00:00Z")]);
}

#[test]
fn weekly_series_keeps_berlin_wall_clock_across_dst() {
    let o = ok(
        &empty(),
        Method::Request,
        vec![weekly("FREQ=WEEKLY;BYDAY=TU;COUNT=4")],
    );
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-16T09:00:00Z"), z("2027-03-16T10:00:00Z")),
            (z("2027-03-23T09:00:00Z"), z("2027-03-23T10:00:00Z")),
            (z("2027-03-30T08:00:00Z"), z("2027-03-30T09:00:00Z")),
            (z("2027-04-06T08:00:00Z"), z("2027-04-06T09:00:00Z")),
        ]
    );
    assert_eq!(o.periods[2].recurrence_id, Some(z("2027-03-30T08:00:00Z")));
    assert!(!o.open_ended);
}

#[test]
fn weekly_series_keeps_new_york_wall_clock_across_dst() {
    let mut c = event(
        at("America/New_York", "2027-03-09T09:00:00"),
        Some(at("America/New_York", "2027-03-09T09:30:00")),
    );
    c.rrule = vec!["FREQ=WEEKLY;UNTIL=20270323T235959Z".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-09T14:00:00Z"), z("2027-03-09T14:30:00Z")),
            (z("2027-03-16T13:00:00Z"), z("2027-03-16T13:30:00Z")),
            (z("2027-03-23T13:00:00Z"), z("2027-03-23T13:30:00Z")),
        ]
    );
}

#[test]
fn vtimezone_rules_and_fixed_offsets_expand_like_their_zones() {
    let mut c = event(
        at("Customized Time Zone", "2027-03-16T10:00:00"),
        Some(at("Customized Time Zone", "2027-03-16T11:00:00")),
    );
    c.rrule = vec!["FREQ=WEEKLY;COUNT=3".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-03-16T09:00:00Z"),
            z("2027-03-23T09:00:00Z"),
            z("2027-03-30T08:00:00Z")
        ]
    );
    let mut c = event(
        at("Fixed+0530", "2027-03-16T10:00:00"),
        Some(at("Fixed+0530", "2027-03-16T11:00:00")),
    );
    c.rrule = vec!["FREQ=DAILY;COUNT=2".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T04:30:00Z"), z("2027-03-17T04:30:00Z")]
    );
}

#[test]
fn monthly_last_friday() {
    let mut c = event(
        berlin("2027-01-29T10:00:00"),
        Some(berlin("2027-01-29T11:00:00")),
    );
    c.rrule = vec!["FREQ=MONTHLY;BYDAY=-1FR;COUNT=4".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-01-29T09:00:00Z"),
            z("2027-02-26T09:00:00Z"),
            z("2027-03-26T09:00:00Z"),
            z("2027-04-30T08:00:00Z"),
        ]
    );
}

#[test]
fn exdate_and_rdate() {
    let mut c = weekly("FREQ=WEEKLY;COUNT=3");
    c.exdate = vec![berlin("2027-03-23T10:00:00")];
    c.rdate = vec![utc("2027-03-25T15:00:00Z")];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-16T09:00:00Z"), z("2027-03-16T10:00:00Z")),
            (z("2027-03-25T15:00:00Z"), z("2027-03-25T16:00:00Z")),
            (z("2027-03-30T08:00:00Z"), z("2027-03-30T09:00:00Z")),
        ]
    );
}

#[test]
fn a_moved_instance_replaces_the_generated_one() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let moved = instance(
        master.clone(),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-24T14:00:00"),
        berlin("2027-03-24T15:30:00"),
    );
    let o = ok(&empty(), Method::Request, vec![master, moved]);
    assert_eq!(o.state.objects.len(), 2);
    assert_eq!(
        o.state.objects[1].recurrence_id,
        Some(z("2027-03-23T09:00:00Z"))
    );
    assert_eq!(
        o.periods,
        vec![
            Period {
                start: z("2027-03-16T09:00:00Z"),
                end: z("2027-03-16T10:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2027-03-16T09:00:00Z")),
            },
            Period {
                start: z("2027-03-24T13:00:00Z"),
                end: z("2027-03-24T14:30:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2027-03-23T09:00:00Z")),
            },
            Period {
                start: z("2027-03-30T08:00:00Z"),
                end: z("2027-03-30T09:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2027-03-30T08:00:00Z")),
            },
        ]
    );
    assert_eq!(
        o.changes[..2],
        [
            Change::ObjectChanged {
                uid: UID.into(),
                recurrence_id: None,
                sequence: 0
            },
            Change::ObjectChanged {
                uid: UID.into(),
                recurrence_id: Some(z("2027-03-23T09:00:00Z")),
                sequence: 0
            },
        ]
    );
}

#[test]
fn partial_request_updates_one_recurrence_and_keeps_the_series() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let s1 = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let moved = seq(
        instance(
            master,
            berlin("2027-03-30T10:00:00"),
            berlin("2027-03-30T12:00:00"),
            berlin("2027-03-30T13:00:00"),
        ),
        1,
        "2027-02-01T00:00:00Z",
    );
    let o = ok(&s1, Method::Request, vec![moved]);
    assert_eq!(o.state.objects.len(), 2);
    assert_eq!(o.state.objects[0], s1.objects[0]);
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-03-16T09:00:00Z"),
            z("2027-03-23T09:00:00Z"),
            z("2027-03-30T10:00:00Z")
        ]
    );
    assert_eq!(
        o.changes,
        vec![
            Change::ObjectChanged {
                uid: UID.into(),
                recurrence_id: Some(z("2027-03-30T08:00:00Z")),
                sequence: 1
            },
            Change::FreeBusyChanged {
                uid: UID.into(),
                added: vec![Period {
                    start: z("2027-03-30T10:00:00Z"),
                    end: z("2027-03-30T11:00:00Z"),
                    fbtype: FbType::Busy,
                    recurrence_id: Some(z("2027-03-30T08:00:00Z")),
                }],
                removed: vec![Period {
                    start: z("2027-03-30T08:00:00Z"),
                    end: z("2027-03-30T09:00:00Z"),
                    fbtype: FbType::Busy,
                    recurrence_id: Some(z("2027-03-30T08:00:00Z")),
                }],
            },
        ]
    );
}

#[test]
fn new_series_version_removes_recurrences_it_does_not_carry() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let moved = |rid: &str, start: &str, end: &str| {
        instance(master.clone(), berlin(rid), berlin(start), berlin(end))
    };
    let s1 = ok(
        &empty(),
        Method::Request,
        vec![
            master.clone(),
            moved(
                "2027-03-23T10:00:00",
                "2027-03-23T12:00:00",
                "2027-03-23T13:00:00",
            ),
            moved(
                "2027-03-30T10:00:00",
                "2027-03-30T12:00:00",
                "2027-03-30T13:00:00",
            ),
        ],
    )
    .state;
    assert_eq!(s1.objects.len(), 3);
    let v2 = seq(master.clone(), 1, "2027-02-01T00:00:00Z");
    let keep = seq(
        moved(
            "2027-03-30T10:00:00",
            "2027-03-30T14:00:00",
            "2027-03-30T15:00:00",
        ),
        1,
        "2027-02-01T00:00:00Z",
    );
    let o = ok(&s1, Method::Request, vec![v2, keep]);
    assert_eq!(
        o.state
            .objects
            .iter()
            .map(|o| o.recurrence_id)
            .collect::<Vec<_>>(),
        vec![None, Some(z("2027-03-30T08:00:00Z"))]
    );
    assert!(o.changes.contains(&Change::ObjectRemoved {
        uid: UID.into(),
        recurrence_id: Some(z("2027-03-23T09:00:00Z"))
    }));
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-03-16T09:00:00Z"),
            z("2027-03-23T09:00:00Z"),
            z("2027-03-30T12:00:00Z")
        ]
    );
}

#[test]
fn this_and_future_shifts_every_later_instance_but_not_later_overrides() {
    let master = weekly("FREQ=WEEKLY;COUNT=5");
    let later = instance(
        master.clone(),
        berlin("2027-04-06T10:00:00"),
        berlin("2027-04-06T16:00:00"),
        berlin("2027-04-06T17:00:00"),
    );
    let s1 = ok(&empty(), Method::Request, vec![master.clone(), later]).state;
    // From the 23rd on: an hour later and twice as long.
    let shift = seq(
        this_and_future(instance(
            master,
            berlin("2027-03-23T10:00:00"),
            berlin("2027-03-23T11:00:00"),
            berlin("2027-03-23T13:00:00"),
        )),
        1,
        "2027-02-01T00:00:00Z",
    );
    let o = ok(&s1, Method::Request, vec![shift]);
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-16T09:00:00Z"), z("2027-03-16T10:00:00Z")),
            (z("2027-03-23T10:00:00Z"), z("2027-03-23T12:00:00Z")),
            (z("2027-03-30T09:00:00Z"), z("2027-03-30T11:00:00Z")),
            (z("2027-04-06T14:00:00Z"), z("2027-04-06T15:00:00Z")),
            (z("2027-04-13T09:00:00Z"), z("2027-04-13T11:00:00Z")),
        ]
    );
    assert_eq!(o.periods[2].recurrence_id, Some(z("2027-03-30T08:00:00Z")));
    // The same answer from a far-away window query.
    let w = periods_in_window(
        &o.state,
        U,
        z("2027-03-30T10:00:00Z"),
        z("2027-04-14T00:00:00Z"),
        &ctx(),
    );
    assert_eq!(w, o.periods[2..].to_vec());
}

#[test]
fn thisandfuture_status_applies_to_later_instances() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let mut t = this_and_future(instance(
        master.clone(),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T11:00:00"),
    ));
    t.status = Some(Status::Tentative);
    let o = ok(&empty(), Method::Request, vec![master, t]);
    assert_eq!(
        o.periods.iter().map(|p| p.fbtype).collect::<Vec<_>>(),
        vec![FbType::Busy, FbType::BusyTentative, FbType::BusyTentative]
    );
}

#[test]
fn duplicates_in_one_message_apply_once() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let o = ok(&empty(), Method::Request, vec![c.clone(), c.clone()]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(
        o.changes
            .iter()
            .filter(|c| matches!(c, Change::ObjectChanged { .. }))
            .count(),
        1
    );
    assert_eq!(o.periods.len(), 1);
    // The newer copy wins, whichever comes first.
    let newer = seq(c.clone(), 2, "2027-02-01T00:00:00Z");
    let o = ok(&empty(), Method::Request, vec![c, newer.clone()]);
    assert_eq!(o.state.objects[0].component, newer);
}

#[test]
fn resending_the_same_version_changes_nothing() {
    let c = weekly("FREQ=WEEKLY;COUNT=3");
    let s1 = ok(&empty(), Method::Request, vec![c.clone()]).state;
    let o = ok(&s1, Method::Request, vec![c]);
    assert_eq!(o.state, s1);
    assert!(o.changes.is_empty());
    assert!(o.queue.is_empty(), "nothing was pending");
}

#[test]
fn invalid_rrule_stores_a_single_event() {
    let c = weekly("FREQ=SOMETIMES;BYDAY=XX");
    let o = ok(&empty(), Method::Request, vec![c.clone()]);
    assert_eq!(o.state.objects[0].component, c);
    assert_eq!(
        o.periods,
        vec![Period {
            start: z("2027-03-16T09:00:00Z"),
            end: z("2027-03-16T10:00:00Z"),
            fbtype: FbType::Busy,
            recurrence_id: None,
        }]
    );
}

// ---- busy means / time ----------------------------------------------------

#[test]
fn transparency_and_status_decide_the_record() {
    let base = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let mut transparent = base.clone();
    transparent.transp = Transparency::Transparent;
    assert!(
        ok(&empty(), Method::Request, vec![transparent])
            .periods
            .is_empty()
    );
    let mut cancelled = base.clone();
    cancelled.status = Some(Status::Cancelled);
    assert!(
        ok(&empty(), Method::Request, vec![cancelled])
            .periods
            .is_empty()
    );
    let mut tentative = base.clone();
    tentative.status = Some(Status::Tentative);
    let o = ok(&empty(), Method::Request, vec![tentative]);
    assert_eq!(o.periods[0].fbtype, FbType::BusyTentative);
    let mut confirmed = base;
    confirmed.status = Some(Status::Confirmed);
    let o = ok(&empty(), Method::Request, vec![confirmed]);
    assert_eq!(o.periods[0].fbtype, FbType::Busy);
}

#[test]
fn all_day_events_occupy_whole_days_in_the_users_zone() {
    let ctx = ctx_tz(chrono_tz::Europe::Berlin);
    let mut c = event(
        Time::date(d("2027-03-15")),
        Some(Time::date(d("2027-03-17"))),
    );
    c.all_day = true;
    let o = run_with(&empty(), Method::Request, vec![c.clone()], &ctx);
    assert_eq!(
        spans(&o.periods),
        vec![(z("2027-03-14T23:00:00Z"), z("2027-03-16T23:00:00Z"))]
    );
    // No DTEND: one day. Across the DST change the day is 23 hours long.
    c.start = Some(Time::date(d("2027-03-28")));
    c.end = None;
    let o = run_with(&empty(), Method::Request, vec![c.clone()], &ctx);
    assert_eq!(
        spans(&o.periods),
        vec![(z("2027-03-27T23:00:00Z"), z("2027-03-28T22:00:00Z"))]
    );
    // A transparent all-day event leaves no record.
    c.transp = Transparency::Transparent;
    assert!(
        run_with(&empty(), Method::Request, vec![c], &ctx)
            .periods
            .is_empty()
    );
}

#[test]
fn all_day_weekly_series_follows_local_midnight() {
    let ctx = ctx_tz(chrono_tz::Europe::Berlin);
    let mut c = event(
        Time::date(d("2027-03-21")),
        Some(Time::date(d("2027-03-22"))),
    );
    c.all_day = true;
    c.rrule = vec!["FREQ=WEEKLY;UNTIL=20270404".into()];
    let o = run_with(&empty(), Method::Request, vec![c], &ctx);
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-20T23:00:00Z"), z("2027-03-21T23:00:00Z")),
            (z("2027-03-27T23:00:00Z"), z("2027-03-28T22:00:00Z")),
            (z("2027-04-03T22:00:00Z"), z("2027-04-04T22:00:00Z")),
        ]
    );
}

#[test]
fn floating_times_use_the_users_zone() {
    let ctx = ctx_tz(chrono_tz::America::New_York);
    let mut c = event(
        Time::floating(n("2027-03-12T09:00:00"), None),
        Some(Time::floating(n("2027-03-12T10:00:00"), None)),
    );
    c.floating = true;
    c.rrule = vec!["FREQ=DAILY;COUNT=3".into()];
    let o = run_with(&empty(), Method::Request, vec![c], &ctx);
    assert_eq!(
        spans(&o.periods),
        vec![
            (z("2027-03-12T14:00:00Z"), z("2027-03-12T15:00:00Z")),
            (z("2027-03-13T14:00:00Z"), z("2027-03-13T15:00:00Z")),
            (z("2027-03-14T13:00:00Z"), z("2027-03-14T14:00:00Z")),
        ]
    );
    // An unknown TZID arrives as floating with its TZID kept: same treatment.
    let c = event(
        Time::floating(n("2027-03-12T09:00:00"), Some("Nowhere")),
        Some(Time::floating(n("2027-03-12T10:00:00"), Some("Nowhere"))),
    );
    let o = run_with(&empty(), Method::Request, vec![c], &ctx);
    assert_eq!(starts(&o.periods), vec![z("2027-03-12T14:00:00Z")]);
}

#[test]
fn zero_length_events_leave_no_record_and_duration_counts() {
    let c = event(utc("2027-03-15T09:00:00Z"), None);
    let o = ok(&empty(), Method::Request, vec![c.clone()]);
    assert_eq!(o.state.objects.len(), 1);
    assert!(o.periods.is_empty());
    let mut c = c;
    c.duration_seconds = Some(5400);
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(
        spans(&o.periods),
        vec![(z("2027-03-15T09:00:00Z"), z("2027-03-15T10:30:00Z"))]
    );
}

// ---- recurrence bounds ----------------------------------------------------

#[test]
fn infinite_daily_series_is_materialised_to_the_horizon_and_answered_beyond() {
    let mut c = event(
        berlin("2027-03-01T09:00:00"),
        Some(berlin("2027-03-01T10:00:00")),
    );
    c.rrule = vec!["FREQ=DAILY".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert!(o.open_ended);
    // 2027-03-01 up to the horizon 2028-03-01T00:00Z (2028 is a leap year).
    assert_eq!(o.periods.len(), 366);
    assert_eq!(o.complete_until, Some(z("2028-03-01T00:00:00Z")));
    assert_eq!(o.periods.last().unwrap().start, z("2028-02-29T08:00:00Z"));

    let t = std::time::Instant::now();
    let w = periods_in_window(
        &o.state,
        U,
        z("2032-03-26T12:00:00Z"),
        z("2032-03-30T00:00:00Z"),
        &ctx(),
    );
    assert!(t.elapsed() < std::time::Duration::from_millis(500));
    assert_eq!(
        w,
        vec![
            Period {
                start: z("2032-03-27T08:00:00Z"),
                end: z("2032-03-27T09:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2032-03-27T08:00:00Z")),
            },
            Period {
                start: z("2032-03-28T07:00:00Z"),
                end: z("2032-03-28T08:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2032-03-28T07:00:00Z")),
            },
            Period {
                start: z("2032-03-29T07:00:00Z"),
                end: z("2032-03-29T08:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2032-03-29T07:00:00Z")),
            },
        ]
    );
    // A window that starts inside an instance still returns it.
    let w = periods_in_window(
        &o.state,
        U,
        z("2032-07-01T07:30:00Z"),
        z("2032-07-01T07:31:00Z"),
        &ctx(),
    );
    assert_eq!(starts(&w), vec![z("2032-07-01T07:00:00Z")]);
    // And far windows agree with the materialised periods where they overlap.
    let w = periods_in_window(
        &o.state,
        U,
        z("2027-03-01T00:00:00Z"),
        z("2028-03-01T00:00:00Z"),
        &ctx(),
    );
    assert_eq!(w, o.periods);
}

#[test]
fn window_queries_respect_exdates_until_and_count_far_ahead() {
    let mut c = weekly("FREQ=WEEKLY;UNTIL=20320101T000000Z");
    c.exdate = vec![berlin("2031-12-23T10:00:00")];
    let s = ok(&empty(), Method::Request, vec![c]).state;
    let w = periods_in_window(
        &s,
        U,
        z("2031-12-10T00:00:00Z"),
        z("2032-02-01T00:00:00Z"),
        &ctx(),
    );
    assert_eq!(
        starts(&w),
        vec![z("2031-12-16T09:00:00Z"), z("2031-12-30T09:00:00Z")]
    );
    let c = weekly("FREQ=WEEKLY;COUNT=300");
    let s = ok(&empty(), Method::Request, vec![c]).state;
    // The 300th instance is 299 weeks (2093 days) after 2027-03-16: 2032-12-07 (CET).
    let w = periods_in_window(
        &s,
        U,
        z("2032-11-20T00:00:00Z"),
        z("2033-01-01T00:00:00Z"),
        &ctx(),
    );
    assert_eq!(
        starts(&w),
        vec![
            z("2032-11-23T09:00:00Z"),
            z("2032-11-30T09:00:00Z"),
            z("2032-12-07T09:00:00Z"),
        ]
    );
}

#[test]
fn secondly_rule_without_end_is_bounded_and_fast() {
    let t = std::time::Instant::now();
    let mut c = event(utc("2027-03-01T09:00:00Z"), None);
    c.duration_seconds = Some(1);
    c.rrule = vec!["FREQ=SECONDLY".into()];
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(o.periods.len(), 1000);
    assert!(o.open_ended);
    assert_eq!(o.complete_until, Some(z("2027-03-01T09:16:40Z")));
    let w = periods_in_window(
        &o.state,
        U,
        z("2032-03-01T09:00:00Z"),
        z("2032-03-01T09:00:10Z"),
        &ctx(),
    );
    assert_eq!(w.len(), 10);
    assert_eq!(w[0].start, z("2032-03-01T09:00:00Z"));
    assert!(
        t.elapsed() < std::time::Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn hostile_rules_finish_quickly() {
    let t = std::time::Instant::now();
    for rule in [
        "FREQ=SECONDLY;COUNT=4000000000",
        "FREQ=MINUTELY;BYSETPOS=1,2,3,-1;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23;BYMINUTE=0,10,20,30,40,50;BYSETPOS=-1",
        "FREQ=DAILY;INTERVAL=65535",
    ] {
        let mut c = event(
            utc("2027-03-01T09:00:00Z"),
            Some(utc("2027-03-01T09:00:01Z")),
        );
        c.rrule = vec![rule.into()];
        let o = ok(&empty(), Method::Request, vec![c]);
        assert!(o.periods.len() <= 1000, "{rule}");
        let _ = periods_in_window(
            &o.state,
            U,
            z("2031-01-01T00:00:00Z"),
            z("2031-01-02T00:00:00Z"),
            &ctx(),
        );
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn instance_limit_makes_the_series_open_ended() {
    let ctx = Ctx {
        max_instances: 5,
        ..ctx()
    };
    let o = run_with(
        &empty(),
        Method::Request,
        vec![weekly("FREQ=WEEKLY;COUNT=20")],
        &ctx,
    );
    assert_eq!(o.periods.len(), 5);
    assert!(o.open_ended);
    assert_eq!(o.complete_until, Some(z("2027-04-20T08:00:00Z")));
    let (p, open) = materialise(&o.state, U, &ctx);
    assert_eq!((p, open), (o.periods.clone(), true));
}

#[test]
fn finite_events_past_the_horizon_are_materialised() {
    let c = event(
        utc("2030-03-15T09:00:00Z"),
        Some(utc("2030-03-15T10:00:00Z")),
    );
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(starts(&o.periods), vec![z("2030-03-15T09:00:00Z")]);
    assert!(!o.open_ended);
    assert_eq!(o.complete_until, None);
}

// ---- REPLY ----------------------------------------------------------------

/// U's copy of BOB's weekly series (3 instances), U not yet answered.
fn invited_series() -> UidState {
    let c = invited(weekly("FREQ=WEEKLY;COUNT=3"), PartStat::NeedsAction);
    let object = StoredObject {
        recurrence_id: None,
        component: c,
        timezones: zones(),
        raw: "BOB'S INVITATION".into(),
        answers: BTreeMap::new(),
    };
    UidState {
        objects: vec![object],
        ..UidState::default()
    }
}

/// U's reply: the component with U's entry only.
fn answer(c: Component, partstat: PartStat, sequence: i64, dtstamp: &str) -> Component {
    let mut c = seq(c, sequence, dtstamp);
    c.attendees = vec![att(U, partstat)];
    c
}

#[test]
fn invited_but_unanswered_means_no_record() {
    let s = invited_series();
    assert!(materialise(&s, U, &ctx()).0.is_empty());
}

#[test]
fn reply_to_the_series_sets_the_answer_and_free_busy_follows() {
    let s = invited_series();
    let r = answer(
        s.objects[0].component.clone(),
        PartStat::Accepted,
        0,
        "2027-02-01T00:00:00Z",
    );
    let o = ok(&s, Method::Reply, vec![r]);
    let m = &o.state.objects[0];
    assert_eq!(partstat_of(m, U), Some(PartStat::Accepted));
    assert_eq!(partstat_of(m, BOB), Some(PartStat::Accepted));
    assert_eq!(m.raw, "BOB'S INVITATION");
    assert_eq!(
        m.answers.get(U),
        Some(&AnswerStamp {
            sequence: 0,
            dtstamp: Some(z("2027-02-01T00:00:00Z"))
        })
    );
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-03-16T09:00:00Z"),
            z("2027-03-23T09:00:00Z"),
            z("2027-03-30T08:00:00Z")
        ]
    );
    assert!(o.periods.iter().all(|p| p.fbtype == FbType::Busy));
    assert!(o.queue.is_empty(), "nothing was pending");
    assert_eq!(o.changes.len(), 2);

    let r = answer(
        s.objects[0].component.clone(),
        PartStat::Tentative,
        0,
        "2027-02-02T00:00:00Z",
    );
    let o = ok(&o.state, Method::Reply, vec![r]);
    assert!(o.periods.iter().all(|p| p.fbtype == FbType::BusyTentative));

    for ps in [
        PartStat::Declined,
        PartStat::Delegated,
        PartStat::NeedsAction,
    ] {
        let r = answer(
            s.objects[0].component.clone(),
            ps,
            0,
            "2027-02-03T00:00:00Z",
        );
        assert!(ok(&o.state, Method::Reply, vec![r]).periods.is_empty());
    }
}

#[test]
fn reply_per_recurrence_and_series_reply_keeps_instance_answers() {
    let s = invited_series();
    let master = s.objects[0].component.clone();
    let accept = answer(
        master.clone(),
        PartStat::Accepted,
        0,
        "2027-02-01T00:00:00Z",
    );
    let s = ok(&s, Method::Reply, vec![accept]).state;

    // Decline the second instance only.
    let decline = answer(
        instance(
            master.clone(),
            berlin("2027-03-23T10:00:00"),
            berlin("2027-03-23T10:00:00"),
            berlin("2027-03-23T11:00:00"),
        ),
        PartStat::Declined,
        0,
        "2027-02-02T00:00:00Z",
    );
    let o = ok(&s, Method::Reply, vec![decline]);
    assert_eq!(o.state.objects.len(), 2);
    let inst = &o.state.objects[1];
    assert_eq!(inst.recurrence_id, Some(z("2027-03-23T09:00:00Z")));
    assert_eq!(partstat_of(inst, U), Some(PartStat::Declined));
    assert_eq!(partstat_of(inst, BOB), Some(PartStat::Accepted));
    assert!(inst.component.rrule.is_empty());
    assert_eq!(inst.component.start, Some(berlin("2027-03-23T10:00:00")));
    assert_eq!(inst.component.end, Some(berlin("2027-03-23T11:00:00")));
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T09:00:00Z"), z("2027-03-30T08:00:00Z")]
    );
    assert_eq!(
        fb_change(&o),
        Some((
            vec![],
            vec![Period {
                start: z("2027-03-23T09:00:00Z"),
                end: z("2027-03-23T10:00:00Z"),
                fbtype: FbType::Busy,
                recurrence_id: Some(z("2027-03-23T09:00:00Z")),
            }]
        ))
    );

    // A later answer to the whole series: the declined instance keeps its own answer.
    let tentative = answer(master, PartStat::Tentative, 0, "2027-02-03T00:00:00Z");
    let o = ok(&o.state, Method::Reply, vec![tentative]);
    assert_eq!(
        partstat_of(&o.state.objects[1], U),
        Some(PartStat::Declined)
    );
    assert_eq!(
        o.periods
            .iter()
            .map(|p| (p.start, p.fbtype))
            .collect::<Vec<_>>(),
        vec![
            (z("2027-03-16T09:00:00Z"), FbType::BusyTentative),
            (z("2027-03-30T08:00:00Z"), FbType::BusyTentative),
        ]
    );
}

#[test]
fn series_reply_updates_overrides_without_their_own_answer() {
    let mut s = invited_series();
    let master = s.objects[0].component.clone();
    // BOB moved the second instance (U's copy came via the incoming flow).
    let moved = instance(
        master.clone(),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T15:00:00"),
        berlin("2027-03-23T16:00:00"),
    );
    s.objects.push(StoredObject {
        recurrence_id: Some(z("2027-03-23T09:00:00Z")),
        component: moved,
        timezones: zones(),
        raw: Default::default(),
        answers: BTreeMap::new(),
    });
    let accept = answer(master, PartStat::Accepted, 0, "2027-02-01T00:00:00Z");
    let o = ok(&s, Method::Reply, vec![accept]);
    assert_eq!(
        partstat_of(&o.state.objects[1], U),
        Some(PartStat::Accepted)
    );
    assert!(o.state.objects[1].answers.is_empty());
    assert_eq!(
        starts(&o.periods),
        vec![
            z("2027-03-16T09:00:00Z"),
            z("2027-03-23T14:00:00Z"),
            z("2027-03-30T08:00:00Z")
        ]
    );
}

#[test]
fn older_reply_is_stale() {
    let s = invited_series();
    let master = s.objects[0].component.clone();
    let s = ok(
        &s,
        Method::Reply,
        vec![answer(
            master.clone(),
            PartStat::Accepted,
            1,
            "2027-02-05T00:00:00Z",
        )],
    )
    .state;
    for (sequence, dtstamp) in [(1, "2027-02-04T00:00:00Z"), (0, "2027-02-09T00:00:00Z")] {
        let o = run(
            &s,
            Method::Reply,
            vec![answer(
                master.clone(),
                PartStat::Declined,
                sequence,
                dtstamp,
            )],
        );
        assert!(matches!(o.disposition, Disposition::Stale(_)), "{o:?}");
        assert_eq!(o.state, s);
        assert!(o.changes.is_empty());
        assert!(o.queue.is_empty());
        assert_eq!(o.periods.len(), 3);
    }
    let o = ok(
        &s,
        Method::Reply,
        vec![answer(
            master,
            PartStat::Declined,
            1,
            "2027-02-06T00:00:00Z",
        )],
    );
    assert!(o.periods.is_empty());
}

#[test]
fn reply_to_an_unknown_object_stores_what_it_carries() {
    let mut r = invited(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        PartStat::Accepted,
    );
    r.attendees = vec![att(U, PartStat::Accepted)];
    let o = ok(&empty(), Method::Reply, vec![r.clone()]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(o.state.objects[0].component, r);
    assert_eq!(
        spans(&o.periods),
        vec![(z("2027-03-15T09:00:00Z"), z("2027-03-15T10:00:00Z"))]
    );
    r.attendees = vec![att(U, PartStat::Declined)];
    let o = ok(&empty(), Method::Reply, vec![r]);
    assert_eq!(o.state.objects.len(), 1);
    assert!(o.periods.is_empty());
}

#[test]
fn delegation_is_merged() {
    let s = invited_series();
    let mut r = seq(s.objects[0].component.clone(), 0, "2027-02-01T00:00:00Z");
    let mut me = att(U, PartStat::Delegated);
    me.delegated_to = vec![DAVE.into()];
    let mut delegate = att(DAVE, PartStat::NeedsAction);
    delegate.delegated_from = vec![U.into()];
    r.attendees = vec![me, delegate, att(BOB, PartStat::Declined)];
    let o = ok(&s, Method::Reply, vec![r]);
    let m = &o.state.objects[0];
    let mine = m
        .component
        .attendees
        .iter()
        .find(|a| a.address == U)
        .unwrap();
    assert_eq!(mine.partstat, PartStat::Delegated);
    assert_eq!(mine.delegated_to, vec![DAVE.to_owned()]);
    assert_eq!(partstat_of(m, DAVE), Some(PartStat::NeedsAction));
    // BOB's entry is not U's to change.
    assert_eq!(partstat_of(m, BOB), Some(PartStat::Accepted));
    assert!(o.periods.is_empty());
}

// ---- CANCEL ---------------------------------------------------------------

#[test]
fn cancel_of_one_instance_removes_it_as_if_by_exdate() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let moved = instance(
        master.clone(),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T12:00:00"),
        berlin("2027-03-23T13:00:00"),
    );
    let s = ok(
        &empty(),
        Method::Request,
        vec![master.clone(), moved.clone()],
    )
    .state;
    let c = seq(moved, 1, "2027-02-01T00:00:00Z");
    let o = ok(&s, Method::Cancel, vec![c]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(
        o.state.objects[0].component.exdate,
        vec![utc("2027-03-23T09:00:00Z")]
    );
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T09:00:00Z"), z("2027-03-30T08:00:00Z")]
    );
    assert_eq!(
        o.changes,
        vec![
            Change::ObjectChanged {
                uid: UID.into(),
                recurrence_id: None,
                sequence: 0
            },
            Change::ObjectRemoved {
                uid: UID.into(),
                recurrence_id: Some(z("2027-03-23T09:00:00Z"))
            },
            Change::FreeBusyChanged {
                uid: UID.into(),
                added: vec![],
                removed: vec![Period {
                    start: z("2027-03-23T11:00:00Z"),
                    end: z("2027-03-23T12:00:00Z"),
                    fbtype: FbType::Busy,
                    recurrence_id: Some(z("2027-03-23T09:00:00Z")),
                }],
            },
        ]
    );
    assert!(o.queue.is_empty(), "nothing was pending");
}

#[test]
fn cancel_of_an_unstored_instance_adds_an_exdate_and_stale_instance_cancel_is_refused() {
    let master = seq(weekly("FREQ=WEEKLY;COUNT=3"), 2, "2027-01-01T00:00:00Z");
    let s = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let c = instance(
        master.clone(),
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T11:00:00"),
    );
    let o = run(
        &s,
        Method::Cancel,
        vec![seq(c.clone(), 1, "2027-02-01T00:00:00Z")],
    );
    assert!(matches!(o.disposition, Disposition::Stale(_)));
    let o = ok(&s, Method::Cancel, vec![seq(c, 2, "2027-02-01T00:00:00Z")]);
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T09:00:00Z"), z("2027-03-23T09:00:00Z")]
    );
}

#[test]
fn cancel_of_an_all_day_instance_writes_a_date_exdate() {
    let ctx = ctx_tz(chrono_tz::Europe::Berlin);
    let mut c = event(
        Time::date(d("2027-03-21")),
        Some(Time::date(d("2027-03-22"))),
    );
    c.rrule = vec!["FREQ=DAILY;COUNT=3".into()];
    let s = run_with(&empty(), Method::Request, vec![c.clone()], &ctx).state;
    let one = instance(
        c,
        Time::date(d("2027-03-22")),
        Time::date(d("2027-03-22")),
        Time::date(d("2027-03-23")),
    );
    let o = run_with(&s, Method::Cancel, vec![one], &ctx);
    assert_eq!(o.disposition, Disposition::Applied);
    assert_eq!(
        o.state.objects[0].component.exdate,
        vec![Time::date(d("2027-03-22"))]
    );
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-20T23:00:00Z"), z("2027-03-22T23:00:00Z")]
    );
}

#[test]
fn cancel_of_the_whole_event_removes_everything() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let moved = instance(
        master.clone(),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T12:00:00"),
        berlin("2027-03-23T13:00:00"),
    );
    let s = ok(&empty(), Method::Request, vec![master.clone(), moved]).state;
    let mut c = master;
    c.status = Some(Status::Cancelled);
    let o = ok(&s, Method::Cancel, vec![c]);
    assert!(o.state.objects.is_empty());
    assert!(o.periods.is_empty());
    assert_eq!(
        o.changes[..2],
        [
            Change::ObjectRemoved {
                uid: UID.into(),
                recurrence_id: None
            },
            Change::ObjectRemoved {
                uid: UID.into(),
                recurrence_id: Some(z("2027-03-23T09:00:00Z"))
            },
        ]
    );
    let (added, removed) = fb_change(&o).unwrap();
    assert!(added.is_empty());
    assert_eq!(removed.len(), 3);
}

#[test]
fn cancel_this_and_future_ends_the_series() {
    let master = weekly("FREQ=WEEKLY");
    let later = instance(
        master.clone(),
        berlin("2027-04-06T10:00:00"),
        berlin("2027-04-06T12:00:00"),
        berlin("2027-04-06T13:00:00"),
    );
    let s = ok(&empty(), Method::Request, vec![master.clone(), later]).state;
    assert!(materialise(&s, U, &ctx()).1);
    let c = this_and_future(instance(
        master.clone(),
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T11:00:00"),
    ));
    let o = ok(&s, Method::Cancel, vec![c]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(
        o.state.objects[0].component.rrule,
        vec!["FREQ=WEEKLY;UNTIL=20270330T075959Z".to_owned()]
    );
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T09:00:00Z"), z("2027-03-23T09:00:00Z")]
    );
    assert!(!o.open_ended);
    assert!(o.changes.contains(&Change::ObjectRemoved {
        uid: UID.into(),
        recurrence_id: Some(z("2027-04-06T08:00:00Z"))
    }));
    assert!(
        periods_in_window(
            &o.state,
            U,
            z("2030-01-01T00:00:00Z"),
            z("2031-01-01T00:00:00Z"),
            &ctx()
        )
        .is_empty()
    );

    // From the first instance on: nothing remains.
    let c = this_and_future(instance(
        master.clone(),
        berlin("2027-03-16T10:00:00"),
        berlin("2027-03-16T10:00:00"),
        berlin("2027-03-16T11:00:00"),
    ));
    let o = ok(&s, Method::Cancel, vec![c]);
    assert!(o.state.objects.is_empty());
}

#[test]
fn cancel_for_some_attendees_only_removes_them() {
    let master = weekly("FREQ=WEEKLY;COUNT=3");
    let s = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let mut c = seq(master.clone(), 1, "2027-02-01T00:00:00Z");
    c.attendees = vec![att(CAROL, PartStat::NeedsAction)];
    let o = ok(&s, Method::Cancel, vec![c]);
    let m = &o.state.objects[0];
    assert_eq!(
        m.component
            .attendees
            .iter()
            .map(|a| a.address.as_str())
            .collect::<Vec<_>>(),
        vec![U, BOB]
    );
    assert_eq!(m.component.sequence, 1);
    assert_eq!(o.periods, materialise(&s, U, &ctx()).0);
    assert_eq!(
        o.changes,
        vec![Change::ObjectChanged {
            uid: UID.into(),
            recurrence_id: None,
            sequence: 1
        }]
    );

    // Only for one instance: that instance gets an object of its own without CAROL.
    let mut one = instance(
        master,
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T11:00:00"),
    );
    one.attendees = vec![
        att(U, PartStat::Accepted),
        att(CAROL, PartStat::NeedsAction),
    ];
    let o = ok(&s, Method::Cancel, vec![one]);
    assert_eq!(o.state.objects.len(), 2);
    assert_eq!(partstat_of(&o.state.objects[1], CAROL), None);
    assert_eq!(
        partstat_of(&o.state.objects[0], CAROL),
        Some(PartStat::NeedsAction)
    );
    assert_eq!(o.periods, materialise(&s, U, &ctx()).0);
    assert!(fb_change(&o).is_none());
}

#[test]
fn cancel_listing_every_attendee_cancels_for_everyone() {
    let master = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let s = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let mut c = master.clone();
    c.attendees = vec![
        att(BOB, PartStat::NeedsAction),
        att(CAROL, PartStat::NeedsAction),
    ];
    let o = ok(&s, Method::Cancel, vec![c]);
    assert!(o.state.objects.is_empty());
    let mut c = master;
    c.attendees.clear();
    let o = ok(&s, Method::Cancel, vec![c]);
    assert!(o.state.objects.is_empty());
}

#[test]
fn cancel_of_an_unknown_object_is_recorded_and_removes_nothing() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let o = ok(&empty(), Method::Cancel, vec![c]);
    assert!(o.state.objects.is_empty());
    assert!(o.changes.is_empty());
    assert!(o.queue.is_empty(), "nothing was pending");
}

#[test]
fn stale_cancel_changes_nothing() {
    let c = seq(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        3,
        "2027-01-01T00:00:00Z",
    );
    let s = ok(&empty(), Method::Request, vec![c.clone()]).state;
    let o = run(&s, Method::Cancel, vec![seq(c, 2, "2027-02-01T00:00:00Z")]);
    assert!(matches!(o.disposition, Disposition::Stale(_)));
    assert_eq!(o.state, s);
    assert_eq!(o.periods.len(), 1);
}

// ---- newer wins -----------------------------------------------------------

#[test]
fn older_requests_are_stale() {
    let c = seq(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        2,
        "2027-02-01T00:00:00Z",
    );
    let s = ok(&empty(), Method::Request, vec![c.clone()]).state;
    let moved = |mut c: Component| {
        c.start = Some(utc("2027-03-16T09:00:00Z"));
        c.end = Some(utc("2027-03-16T10:00:00Z"));
        c
    };
    for (sequence, dtstamp) in [(1, "2027-03-01T00:00:00Z"), (2, "2027-01-31T00:00:00Z")] {
        let o = run(
            &s,
            Method::Request,
            vec![moved(seq(c.clone(), sequence, dtstamp))],
        );
        match &o.disposition {
            Disposition::Stale(why) => assert!(why.contains("SEQUENCE"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(o.state, s);
        assert!(o.changes.is_empty());
        assert!(o.queue.is_empty());
    }
    // Same sequence, later stamp: applies.
    let o = ok(
        &s,
        Method::Request,
        vec![moved(seq(c, 2, "2027-02-02T00:00:00Z"))],
    );
    assert_eq!(starts(&o.periods), vec![z("2027-03-16T09:00:00Z")]);
}

#[test]
fn new_override_is_stale_when_the_master_is_newer() {
    let master = seq(weekly("FREQ=WEEKLY;COUNT=3"), 3, "2027-01-01T00:00:00Z");
    let s = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let moved = instance(
        master,
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T12:00:00"),
        berlin("2027-03-23T13:00:00"),
    );
    let o = run(
        &s,
        Method::Request,
        vec![seq(moved.clone(), 2, "2027-02-01T00:00:00Z")],
    );
    assert!(matches!(o.disposition, Disposition::Stale(_)));
    let o = ok(
        &s,
        Method::Request,
        vec![seq(moved, 3, "2027-02-01T00:00:00Z")],
    );
    assert_eq!(o.state.objects.len(), 2);
}

// ---- trust ----------------------------------------------------------------

#[test]
fn request_or_cancel_by_someone_other_than_the_organizer_is_refused() {
    let c = invited(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        PartStat::Accepted,
    );
    for m in [Method::Request, Method::Publish, Method::Cancel] {
        let o = run(&empty(), m.clone(), vec![c.clone()]);
        assert!(
            matches!(o.disposition, Disposition::Refused(_)),
            "{m}: {o:?}"
        );
        assert!(o.state.objects.is_empty());
        assert!(o.changes.is_empty());
        assert!(o.queue.is_empty());
    }
    // U writing as the organizer's SENT-BY is not: SENT-BY grants nothing.
    let mut c = c;
    c.organizer.as_mut().unwrap().sent_by = Some(U.into());
    let o = run(&empty(), Method::Request, vec![c]);
    assert!(
        matches!(&o.disposition, Disposition::Refused(r) if r.contains("SENT-BY")),
        "{o:?}"
    );
    assert!(o.state.objects.is_empty());
}

#[test]
fn reply_by_a_non_attendee_is_refused() {
    let s = invited_series();
    let mut r = seq(s.objects[0].component.clone(), 0, "2027-02-01T00:00:00Z");
    r.attendees = vec![att(CAROL, PartStat::Declined)];
    let o = run(&s, Method::Reply, vec![r]);
    assert!(matches!(o.disposition, Disposition::Refused(_)));
    assert_eq!(o.state, s);
}

#[test]
fn organizer_comparison_ignores_case_and_mailto() {
    let mut c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    c.organizer = Some(party("mailto:Alice@Example.org"));
    let o = ok(&empty(), Method::Request, vec![c]);
    assert_eq!(o.periods.len(), 1);
}

// ---- ignored --------------------------------------------------------------

#[test]
fn other_methods_and_components_are_ignored() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let s = ok(&empty(), Method::Request, vec![c.clone()]).state;
    for m in [
        Method::Add,
        Method::Refresh,
        Method::Counter,
        Method::DeclineCounter,
        Method::Other("X-FOO".into()),
    ] {
        let o = run(&s, m.clone(), vec![c.clone()]);
        assert!(matches!(o.disposition, Disposition::Ignored(_)), "{m}");
        assert_eq!(o.state, s);
        assert!(o.changes.is_empty());
        assert!(o.queue.is_empty());
        assert_eq!(o.periods.len(), 1);
    }
    for kind in [
        ComponentKind::Todo,
        ComponentKind::Journal,
        ComponentKind::FreeBusy,
    ] {
        let mut other = c.clone();
        other.kind = kind.clone();
        other.start = Some(utc("2027-03-20T09:00:00Z"));
        let o = run(&s, Method::Request, vec![other]);
        match &o.disposition {
            Disposition::Ignored(why) => assert!(why.contains(kind.as_str()), "{why}"),
            d => panic!("{kind}: {d:?}"),
        }
        assert_eq!(o.state, s);
        assert_eq!(starts(&o.periods), vec![z("2027-03-15T09:00:00Z")]);
    }
}

#[test]
fn components_of_other_uids_are_not_applied() {
    let mut c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    c.uid = "other".into();
    let o = run(&empty(), Method::Request, vec![c]);
    assert!(matches!(o.disposition, Disposition::Ignored(_)));
}

#[test]
fn incoming_messages_apply_only_from_managers() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let mut p = payload(Method::Request, vec![c]);
    p.direction = Direction::Incoming;
    p.sender = BOB.into();
    // Bob is not the organizer (U is): a spoof of the manager path is refused.
    let o = apply(&empty(), &p, UID, &ctx());
    assert!(
        matches!(o.disposition, Disposition::Refused(_)),
        "{:?}",
        o.disposition
    );
    assert!(o.state.objects.is_empty());
    assert!(!o.enqueues());
    p.sender = "Calendar@Example.org".into();
    let o = apply(&empty(), &p, UID, &ctx());
    assert_eq!(o.disposition, Disposition::Applied);
    assert_eq!(starts(&o.periods), vec![z("2027-03-15T09:00:00Z")]);
}

#[test]
fn busy_type_as_attendee_follows_partstat_and_status() {
    let base = invited(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        PartStat::Accepted,
    );
    assert_eq!(busy_type(&base, U), Some(FbType::Busy));
    let mut t = base.clone();
    t.status = Some(Status::Tentative);
    assert_eq!(busy_type(&t, U), Some(FbType::BusyTentative));
    let t = invited(base.clone(), PartStat::Tentative);
    assert_eq!(busy_type(&t, U), Some(FbType::BusyTentative));
    for ps in [
        PartStat::Declined,
        PartStat::NeedsAction,
        PartStat::Delegated,
    ] {
        assert_eq!(busy_type(&invited(base.clone(), ps), U), None);
    }
    // The organizer is busy whatever the organizer's own attendee entry says.
    let mut mine = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    mine.attendees[0].partstat = PartStat::NeedsAction;
    assert_eq!(busy_type(&mine, U), Some(FbType::Busy));
}

#[test]
fn instance_answers_are_ordered_per_recurrence() {
    let s = invited_series();
    let master = s.objects[0].component.clone();
    let one = |ps, dtstamp| {
        answer(
            instance(
                master.clone(),
                berlin("2027-03-23T10:00:00"),
                berlin("2027-03-23T10:00:00"),
                berlin("2027-03-23T11:00:00"),
            ),
            ps,
            0,
            dtstamp,
        )
    };
    let s = ok(
        &s,
        Method::Reply,
        vec![one(PartStat::Accepted, "2027-02-05T00:00:00Z")],
    )
    .state;
    let o = run(
        &s,
        Method::Reply,
        vec![one(PartStat::Declined, "2027-02-04T00:00:00Z")],
    );
    assert!(matches!(o.disposition, Disposition::Stale(_)));
    // The series has no answer yet, so an older series answer still applies there…
    let o = ok(
        &s,
        Method::Reply,
        vec![answer(
            master,
            PartStat::Declined,
            0,
            "2027-02-01T00:00:00Z",
        )],
    );
    // …and leaves the instance's own (newer) answer alone.
    assert_eq!(
        o.periods,
        vec![Period {
            start: z("2027-03-23T09:00:00Z"),
            end: z("2027-03-23T10:00:00Z"),
            fbtype: FbType::Busy,
            recurrence_id: Some(z("2027-03-23T09:00:00Z")),
        }]
    );
}

#[test]
fn reply_written_as_sent_by_is_refused_and_a_bare_delegation_target_is_ignored() {
    let s = invited_series();
    let mut r = seq(s.objects[0].component.clone(), 0, "2027-02-01T00:00:00Z");
    let mut boss = att(CAROL, PartStat::Accepted);
    boss.sent_by = Some(U.into());
    r.attendees = vec![boss];
    let o = run(&s, Method::Reply, vec![r.clone()]);
    assert!(
        matches!(&o.disposition, Disposition::Refused(r) if r.contains("SENT-BY")),
        "{o:?}"
    );
    assert_eq!(o.state, s);
    // U only named as someone else's delegate: trusted, but nothing of U's to merge.
    let mut delegator = att(CAROL, PartStat::Delegated);
    delegator.delegated_to = vec![U.into()];
    r.attendees = vec![delegator];
    let o = run(&s, Method::Reply, vec![r]);
    assert!(matches!(o.disposition, Disposition::Ignored(_)), "{o:?}");
    assert_eq!(o.state, s);
}

#[test]
fn cancel_by_recurrence_id_of_a_single_event_removes_it() {
    let c = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    let s = ok(&empty(), Method::Request, vec![c.clone()]).state;
    let one = instance(
        c,
        utc("2027-03-15T09:00:00Z"),
        utc("2027-03-15T09:00:00Z"),
        utc("2027-03-15T10:00:00Z"),
    );
    let o = ok(&s, Method::Cancel, vec![one]);
    assert!(o.state.objects.is_empty());
    assert!(o.periods.is_empty());
}

#[test]
fn specific_recurrence_of_an_unknown_series_is_stored_on_its_own() {
    let one = instance(
        weekly("FREQ=WEEKLY"),
        berlin("2027-03-23T10:00:00"),
        berlin("2027-03-23T12:00:00"),
        berlin("2027-03-23T13:00:00"),
    );
    let o = ok(&empty(), Method::Request, vec![one]);
    assert_eq!(o.state.objects.len(), 1);
    assert_eq!(
        o.periods,
        vec![Period {
            start: z("2027-03-23T11:00:00Z"),
            end: z("2027-03-23T12:00:00Z"),
            fbtype: FbType::Busy,
            recurrence_id: Some(z("2027-03-23T09:00:00Z")),
        }]
    );
}

#[test]
fn cancel_this_and_future_of_a_counted_series_lowers_its_count() {
    let master = weekly("FREQ=WEEKLY;COUNT=5");
    let s = ok(&empty(), Method::Request, vec![master.clone()]).state;
    let c = this_and_future(instance(
        master,
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T10:00:00"),
        berlin("2027-03-30T11:00:00"),
    ));
    let o = ok(&s, Method::Cancel, vec![c]);
    assert_eq!(
        o.state.objects[0].component.rrule,
        vec!["FREQ=WEEKLY;COUNT=2".to_owned()]
    );
    assert_eq!(
        starts(&o.periods),
        vec![z("2027-03-16T09:00:00Z"), z("2027-03-23T09:00:00Z")]
    );
    let (added, removed) = fb_change(&o).unwrap();
    assert!(added.is_empty());
    assert_eq!(
        starts(&removed),
        vec![
            z("2027-03-30T08:00:00Z"),
            z("2027-04-06T08:00:00Z"),
            z("2027-04-13T08:00:00Z")
        ]
    );
}

#[test]
fn extreme_times_do_not_panic() {
    let mut c = event(
        utc("9999-12-30T09:00:00Z"),
        Some(utc("9999-12-31T23:59:59Z")),
    );
    c.rrule = vec!["FREQ=SECONDLY;INTERVAL=3600".into()];
    let shifted = this_and_future(instance(
        c.clone(),
        utc("9999-12-30T10:00:00Z"),
        utc("0001-01-01T00:00:00Z"),
        utc("9999-12-31T00:00:00Z"),
    ));
    let early = event(
        utc("0001-01-01T00:00:00Z"),
        Some(utc("9999-12-31T00:00:00Z")),
    );
    for comps in [vec![c.clone(), shifted], vec![early]] {
        let o = run(&empty(), Method::Request, comps);
        assert_eq!(o.disposition, Disposition::Applied);
        let _ = periods_in_window(
            &o.state,
            U,
            z("0001-01-01T00:00:00Z"),
            z("9999-12-31T23:59:59Z"),
            &ctx(),
        );
        let _ = periods_in_window(
            &o.state,
            U,
            z("9999-12-31T00:00:00Z"),
            z("9999-12-31T23:59:59Z"),
            &ctx(),
        );
    }
}

// ---- incoming (SPEC §3) ---------------------------------------------------

fn incoming_from(sender: &str, method: Method, components: Vec<Component>) -> Payload {
    let mut p = payload(method, components);
    p.direction = Direction::Incoming;
    p.sender = sender.into();
    p
}

#[test]
fn an_incoming_request_waits_in_the_queue_without_busy_time() {
    let c = invited(
        event(
            utc("2027-03-15T09:00:00Z"),
            Some(utc("2027-03-15T10:00:00Z")),
        ),
        PartStat::NeedsAction,
    );
    let o = apply(
        &empty(),
        &incoming_from(BOB, Method::Request, vec![c.clone()]),
        UID,
        &ctx(),
    );
    assert_eq!(o.disposition, Disposition::Applied);
    assert!(o.enqueues());
    assert!(
        matches!(&o.queue[..], [crate::model::QueueOp::Add(p)] if p.recurrence_id.is_none()),
        "{:?}",
        o.queue
    );
    assert!(o.state.objects.is_empty());
    assert!(o.periods.is_empty());
    assert!(o.changes.is_empty());
    // From someone who is not the organizer: refused, not queued.
    let o = apply(
        &empty(),
        &incoming_from(CAROL, Method::Request, vec![c]),
        UID,
        &ctx(),
    );
    assert!(matches!(o.disposition, Disposition::Refused(_)));
    assert!(!o.enqueues());
}

#[test]
fn an_incoming_cancel_from_the_organizer_removes_the_entry_and_the_records() {
    let state = invited_series();
    let mut c = invited(weekly("FREQ=WEEKLY;COUNT=3"), PartStat::NeedsAction);
    c.sequence = 1;
    c.status = Some(Status::Cancelled);
    let o = apply(
        &state,
        &incoming_from(BOB, Method::Cancel, vec![c.clone()]),
        UID,
        &ctx(),
    );
    assert_eq!(o.disposition, Disposition::Applied);
    assert!(o.queue.is_empty(), "nothing was pending");
    assert!(o.state.objects.is_empty());
    assert!(o.periods.is_empty());
    let o = apply(
        &state,
        &incoming_from(DAVE, Method::Cancel, vec![c]),
        UID,
        &ctx(),
    );
    assert!(matches!(o.disposition, Disposition::Refused(_)));
    assert_eq!(o.state, state);
}

#[test]
fn an_incoming_reply_merges_the_attendees_answer_into_the_organizers_object() {
    // U organizes; Bob answers.
    let mut mine = event(
        utc("2027-03-15T09:00:00Z"),
        Some(utc("2027-03-15T10:00:00Z")),
    );
    mine.organizer = Some(party(U));
    mine.attendees = vec![att(U, PartStat::Accepted), att(BOB, PartStat::NeedsAction)];
    let state = ok(&empty(), Method::Request, vec![mine.clone()]).state;
    let mut answer = mine.clone();
    answer.attendees = vec![att(BOB, PartStat::Accepted)];
    answer.dtstamp = Some(z("2027-01-02T00:00:00Z"));
    let o = apply(
        &state,
        &incoming_from(BOB, Method::Reply, vec![answer.clone()]),
        UID,
        &ctx(),
    );
    assert_eq!(o.disposition, Disposition::Applied);
    let bob = o.state.objects[0]
        .component
        .attendees
        .iter()
        .find(|a| a.address == BOB)
        .unwrap();
    assert_eq!(bob.partstat, PartStat::Accepted);
    assert_eq!(starts(&o.periods), vec![z("2027-03-15T09:00:00Z")]);
    // An older answer from Bob is stale.
    let mut older = answer.clone();
    older.attendees = vec![att(BOB, PartStat::Declined)];
    older.dtstamp = Some(z("2027-01-01T12:00:00Z"));
    let o2 = apply(
        &o.state,
        &incoming_from(BOB, Method::Reply, vec![older]),
        UID,
        &ctx(),
    );
    assert!(
        matches!(o2.disposition, Disposition::Stale(_)),
        "{:?}",
        o2.disposition
    );
    // Carol is not an attendee: refused.
    let mut carol = answer;
    carol.attendees = vec![att(CAROL, PartStat::Accepted)];
    let o3 = apply(
        &o.state,
        &incoming_from(CAROL, Method::Reply, vec![carol]),
        UID,
        &ctx(),
    );
    assert!(matches!(o3.disposition, Disposition::Refused(_)));
}
