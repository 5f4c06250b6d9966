//! Tests of the bounds on one message and one user (`crate::limits`), of the
//! capped window query and of the shared raw text, on the pure functions.

use super::test_fixtures::{ctx_with, payload_of, z};
use super::*;
use crate::limits::{Limits, MessageBudget, Usage, freebusy_rows, quota};
use crate::model::{Ctx, Disposition, Outcome, Pending, Period, QueueOp, UidState};
use chrono::Duration;
use imipflow_schema::{
    Component, ComponentKind, Method, Party, Payload, RecurrenceId, Time, Transparency,
};

const U: &str = "alice@example.org";

fn ctx() -> Ctx {
    ctx_with(5000, &[])
}

fn limits() -> Limits {
    Limits {
        max_periods_per_message: 20_000,
        max_objects_per_user: 10,
        max_freebusy_per_user: 100,
    }
}

/// A one-hour event organised by U; `rule` makes it a series.
fn event(uid: &str, start: &str, rule: Option<&str>) -> Component {
    Component {
        kind: ComponentKind::Event,
        uid: uid.into(),
        recurrence_id: None,
        sequence: 0,
        dtstamp: Some(z("2027-01-01T00:00:00Z")),
        start: Some(Time::utc(z(start))),
        end: Some(Time::utc(z(start) + Duration::minutes(30))),
        duration_seconds: None,
        all_day: false,
        floating: false,
        rrule: rule.map(|r| vec![r.to_owned()]).unwrap_or_default(),
        rdate: vec![],
        exdate: vec![],
        status: None,
        transp: Transparency::Opaque,
        summary: None,
        organizer: Some(Party {
            address: U.into(),
            cn: None,
            sent_by: None,
        }),
        attendees: vec![],
    }
}

fn payload(method: Method, components: Vec<Component>) -> Payload {
    Payload {
        raw: "BEGIN:VCALENDAR\r\n".repeat(1000),
        ..payload_of(U, method, components)
    }
}

fn usage(objects: i64, freebusy: i64) -> Usage {
    Usage { objects, freebusy }
}

fn refusal(r: Result<(), Disposition>) -> String {
    match r {
        Err(Disposition::Refused(why)) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn quota_refuses_a_message_that_grows_the_user_past_either_quota() {
    let l = limits();
    assert!(
        quota(usage(9, 90), usage(1, 10), &l).is_ok(),
        "exactly at quota"
    );
    let why = refusal(quota(usage(9, 0), usage(2, 0), &l));
    assert!(why.contains("IMIP_MAX_OBJECTS_PER_USER = 10"), "{why}");
    assert!(why.contains("11 stored objects"), "{why}");
    let why = refusal(quota(usage(1, 95), usage(1, 6), &l));
    assert!(why.contains("IMIP_MAX_FREEBUSY_PER_USER = 100"), "{why}");
}

#[test]
fn quota_lets_removals_and_unchanged_counts_through_when_over() {
    let l = limits();
    // Over both (the quotas were lowered): removing passes, keeping passes.
    assert!(quota(usage(50, 500), usage(-1, -60), &l).is_ok());
    assert!(quota(usage(50, 500), usage(0, 0), &l).is_ok());
    // An update that moves rows around without adding any.
    assert!(quota(usage(50, 500), usage(0, -1), &l).is_ok());
    // Adding one of what is over quota is refused.
    assert!(quota(usage(50, 500), usage(-1, 1), &l).is_err());
    // Adding what is under quota passes, though the other kind is over.
    assert!(quota(usage(5, 500), usage(1, -10), &l).is_ok());
}

fn hourly(uid: &str) -> Outcome {
    let p = payload(
        Method::Request,
        vec![event(uid, "2027-03-01T00:00:00Z", Some("FREQ=HOURLY"))],
    );
    apply(&UidState::default(), &p, uid, &ctx())
}

#[test]
fn the_message_budget_refuses_once_the_uids_together_pass_the_limit() {
    let one = hourly("h");
    assert_eq!(one.periods.len(), 5000, "each UID capped at 5,000");
    let mut budget = MessageBudget::new(&limits());
    for _ in 0..4 {
        assert!(budget.charge(&one).is_ok(), "20,000 periods fit");
    }
    let why = refusal(budget.charge(&one));
    assert!(
        why.contains("IMIP_MAX_PERIODS_PER_MESSAGE = 20000") && why.contains("nothing applied"),
        "{why}"
    );
}

#[test]
fn the_message_budget_counts_only_what_would_be_written() {
    let mut budget = MessageBudget::new(&Limits {
        max_periods_per_message: 1,
        ..limits()
    });
    let mut not_applied = hourly("h");
    not_applied.disposition = Disposition::Stale("older".into());
    assert!(budget.charge(&not_applied).is_ok());
    let mut pending = hourly("h");
    pending.queue = vec![QueueOp::Add(Pending {
        recurrence_id: None,
        organizer: None,
        sequence: 0,
        dtstamp: None,
        proposal: Default::default(),
    })];
    assert!(budget.charge(&pending).is_ok());
    assert!(budget.charge(&hourly("h")).is_err());
}

#[test]
fn freebusy_rows_are_counted_by_instance_key() {
    let p = |start: &str, rid: Option<&str>| Period {
        start: z(start),
        end: z(start) + Duration::hours(1),
        fbtype: crate::model::FbType::Busy,
        recurrence_id: rid.map(z),
    };
    let periods = [
        p("2027-03-01T09:00:00Z", None),
        // A moved instance is keyed by its original start.
        p("2027-03-02T15:00:00Z", Some("2027-03-02T09:00:00Z")),
        p("2027-03-02T16:00:00Z", Some("2027-03-02T09:00:00Z")),
    ];
    assert_eq!(freebusy_rows(&periods), 2);
    let change = Usage::change(usage(3, 5), 1, 2);
    assert_eq!(change, usage(-2, -3));
}

#[test]
fn the_objects_of_one_message_share_one_raw_text() {
    let mut comps = vec![event(
        "s",
        "2027-03-01T09:00:00Z",
        Some("FREQ=DAILY;COUNT=400"),
    )];
    for i in 1..=300 {
        let rid = z("2027-03-01T09:00:00Z") + Duration::days(i);
        let mut c = event("s", &(rid + Duration::hours(1)).to_rfc3339(), None);
        c.recurrence_id = Some(RecurrenceId {
            time: Time::utc(rid),
            range: None,
        });
        comps.push(c);
    }
    let p = payload(Method::Request, comps);
    let o = apply(&UidState::default(), &p, "s", &ctx());
    assert_eq!(o.disposition, Disposition::Applied);
    assert_eq!(o.state.objects.len(), 301);
    let first = &o.state.objects[0].raw;
    assert_eq!(first.as_str(), p.raw);
    assert!(
        o.state.objects.iter().all(|x| x.raw.same_allocation(first)),
        "one allocation for 301 objects"
    );
    // A later message's text is its own.
    let mut again = payload(
        Method::Request,
        vec![event("t", "2027-03-01T09:00:00Z", None)],
    );
    again.raw = "OTHER".into();
    let t = apply(&UidState::default(), &again, "t", &ctx());
    assert_eq!(t.state.objects[0].raw, "OTHER");
}

#[test]
fn a_capped_window_gives_the_first_periods_and_says_it_was_cut() {
    let p = payload(
        Method::Request,
        vec![event("m", "2027-01-01T00:00:00Z", Some("FREQ=MINUTELY"))],
    );
    let state = apply(&UidState::default(), &p, "m", &ctx()).state;
    let (from, to) = (z("2027-06-01T00:00:00Z"), z("2028-01-01T00:00:00Z"));
    let (periods, cut) = periods_in_window_capped(&state, U, from, to, &ctx(), 100);
    assert_eq!(periods.len(), 100);
    assert!(cut);
    assert_eq!(periods[0].start, from - Duration::minutes(29));
    assert!(periods.windows(2).all(|w| w[0].start < w[1].start));
    // Never more than the per-series cap of 100,000, whatever is asked.
    let (all, cut) = periods_in_window_capped(&state, U, from, to, &ctx(), usize::MAX);
    assert_eq!(all.len(), 100_000);
    assert!(cut);
    // A window the cap does not reach is whole.
    let (few, cut) =
        periods_in_window_capped(&state, U, from, from + Duration::minutes(3), &ctx(), 100);
    assert_eq!(few.len(), 32);
    assert!(!cut);
}

#[test]
fn rules_past_the_eighth_of_a_series_are_not_expanded() {
    // Nine daily rules at different hours; the ninth (23:00) is ignored.
    let mut c = event("r", "2027-03-01T00:00:00Z", None);
    c.rrule = (0..9)
        .map(|h| format!("FREQ=DAILY;COUNT=2;BYHOUR={}", if h < 8 { h } else { 23 }))
        .collect();
    let o = apply(
        &UidState::default(),
        &payload(Method::Request, vec![c.clone()]),
        "r",
        &ctx(),
    );
    assert_eq!(o.periods.len(), 16, "8 rules of 2 instances each");
    assert!(
        o.periods
            .iter()
            .all(|p| p.start.format("%H").to_string() != "23")
    );
    // 5,000 RRULE lines cost what 8 do.
    c.rrule = vec!["FREQ=MINUTELY".to_owned(); 5000];
    let o = apply(
        &UidState::default(),
        &payload(Method::Request, vec![c]),
        "r",
        &ctx(),
    );
    assert_eq!(o.periods.len(), 5000);
}
