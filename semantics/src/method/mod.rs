//! The method semantics of SPEC §2 as pure functions: what one iTIP message
//! does to one user's stored objects of one UID, and the free/busy periods
//! that follow from them.
//!
//! No I/O and no clock: the store loads a [`UidState`], [`apply`] returns an
//! [`Outcome`] (new state, all materialised periods, change events), the store
//! writes it. Time comes from [`Ctx`] (the payload's ingest time), so a replay
//! computes the same records.
//!
//! Materialised periods are bounded (`ctx.max_instances`, and for series with
//! an RRULE `ctx.now + ctx.horizon`; a UID without RRULE is materialised
//! whole). When [`Outcome::open_ended`] is set they are not all there is:
//! they are exactly the periods of instances starting before
//! [`Outcome::complete_until`]; answer a query window with the materialised
//! periods that start before it plus the [`periods_in_window`] results that
//! start at or after it (or with [`periods_in_window`] alone, which is
//! complete at any distance).
//!
//! Decisions where SPEC is silent are documented on the functions that take them.

mod delegation;
mod queue;
mod recurrence;
mod uninvite;

use crate::model::{
    AnswerStamp, Change, Ctx, Disposition, FbType, Outcome, Period, QueueOp, StoredObject,
    UidState, is_scheduling_method,
};
use chrono::{DateTime, Utc};
use imipflow_schema::{
    Attendee, Component, ComponentKind, Direction, Method, PartStat, Payload, Range, RecurrenceId,
    Status, Time, TimeKind, Transparency, Zone, normalize_address,
};
use recurrence::{Instance, Series, local_of, resolve};
use std::collections::{BTreeMap, BTreeSet};

/// Materialised periods of a UID and how far they are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialisation {
    /// Sorted by start; one period per instance start.
    pub periods: Vec<Period>,
    /// Instances exist that are not materialised (past the horizon or the instance limit).
    pub open_ended: bool,
    /// When open-ended: the periods are exactly those of instances starting before this instant.
    pub complete_until: Option<DateTime<Utc>>,
}

/// Applies the components of `payload` whose UID is `uid` to that UID's stored state.
///
/// `payload.user` is the user U whose records change. Messages other than
/// REQUEST/PUBLISH/REPLY/CANCEL on VEVENTs are ignored; an incoming message is
/// applied only when its envelope sender is a manager (SPEC §3).
pub fn apply(state: &UidState, payload: &Payload, uid: &str, ctx: &Ctx) -> Outcome {
    let user = norm(&payload.user);
    let from_other = payload.direction == Direction::Incoming
        && !ctx.managers.iter().any(|m| same(m, &payload.sender));
    let result = if from_other {
        incoming(state, payload, uid, ctx, &user)
    } else {
        transition(state, payload, uid, ctx, &user)
    };
    match result {
        Ok((new, queue)) => {
            let mut o = applied(state, new, uid, &user, ctx);
            o.queue = queue;
            o
        }
        Err(disposition) => {
            let m = materialise_bounded(state, &user, ctx);
            Outcome {
                disposition,
                state: state.clone(),
                periods: m.periods,
                open_ended: m.open_ended,
                complete_until: m.complete_until,
                queue: Vec::new(),
                changes: Vec::new(),
            }
        }
    }
}

/// Periods of a stored UID that intersect `[from, to)`, re-expanding recurrence
/// in the event's own zone (for windows beyond the materialised horizon, any
/// distance ahead). At most 100 000 periods.
pub fn periods_in_window(
    state: &UidState,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ctx: &Ctx,
) -> Vec<Period> {
    let user = norm(user);
    periods_of(state, &user, &recurrence::window(state, ctx, from, to))
}

/// [`periods_in_window`] with at most `cap` periods (at most 100 000): the
/// first ones by start, and whether periods were left out. A query over many
/// series gives each what remains of its own cap, so that the answer, not
/// each series, is bounded.
pub fn periods_in_window_capped(
    state: &UidState,
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ctx: &Ctx,
    cap: usize,
) -> (Vec<Period>, bool) {
    let user = norm(user);
    let (instances, cut) = recurrence::window_capped(state, ctx, from, to, cap);
    (periods_of(state, &user, &instances), cut)
}

/// All materialised periods of a state (what [`apply`] returns in
/// `Outcome.periods`), and whether it is open-ended.
pub fn materialise(state: &UidState, user: &str, ctx: &Ctx) -> (Vec<Period>, bool) {
    let m = materialise_bounded(state, user, ctx);
    (m.periods, m.open_ended)
}

/// [`materialise`], also telling up to where the materialised periods are complete.
pub fn materialise_bounded(state: &UidState, user: &str, ctx: &Ctx) -> Materialisation {
    let user = norm(user);
    let m = recurrence::materialise(state, ctx);
    Materialisation {
        periods: periods_of(state, &user, &m.instances),
        open_ended: m.open_ended,
        complete_until: m.complete_until,
    }
}

/// The free/busy type U has for one object (SPEC §2 "Busy means"): none for
/// TRANSPARENT or CANCELLED; BUSY-TENTATIVE for STATUS:TENTATIVE. As organizer
/// (or when there is no organizer) U is busy for what U requests; as attendee
/// per U's PARTSTAT: ACCEPTED follows the event's status, TENTATIVE is
/// tentative, anything else (NEEDS-ACTION, DECLINED, DELEGATED) gives no record.
/// When U is neither organizer nor attendee (U wrote it as the organizer's
/// SENT-BY, or a manager did) U is treated as having requested it.
pub fn busy_type(c: &Component, user: &str) -> Option<FbType> {
    if c.kind != ComponentKind::Event
        || c.transp == Transparency::Transparent
        || c.status == Some(Status::Cancelled)
    {
        return None;
    }
    let base = if c.status == Some(Status::Tentative) {
        FbType::BusyTentative
    } else {
        FbType::Busy
    };
    if c.organizer.as_ref().is_none_or(|o| same(&o.address, user)) {
        return Some(base);
    }
    match c.attendees.iter().find(|a| same(&a.address, user)) {
        Some(a) => match a.partstat {
            PartStat::Accepted => Some(base),
            PartStat::Tentative => Some(FbType::BusyTentative),
            _ => None,
        },
        None => Some(base),
    }
}

fn norm(address: &str) -> String {
    normalize_address(address).unwrap_or_default()
}

fn same(a: &str, b: &str) -> bool {
    norm(a) == norm(b)
}

/// Periods of busy instances; instances sharing a start (the record key) merge
/// into one, the longer and busier winning.
fn periods_of(state: &UidState, user: &str, instances: &[Instance]) -> Vec<Period> {
    let strength = |t: FbType| match t {
        FbType::BusyTentative => 0,
        FbType::Busy => 1,
        FbType::BusyUnavailable => 2,
    };
    let mut out: Vec<Period> = Vec::with_capacity(instances.len());
    for i in instances {
        if i.end <= i.start {
            continue;
        }
        let Some(fbtype) = state
            .objects
            .get(i.source)
            .and_then(|o| busy_type(&o.component, user))
        else {
            continue;
        };
        let p = Period {
            start: i.start,
            end: i.end,
            fbtype,
            recurrence_id: i.rid,
        };
        // Instances come sorted by start, so equal starts are adjacent.
        match out.last_mut().filter(|q| q.start == p.start) {
            Some(q) => {
                q.end = q.end.max(p.end);
                if strength(p.fbtype) > strength(q.fbtype) {
                    q.fbtype = p.fbtype;
                }
            }
            None => out.push(p),
        }
    }
    out.sort();
    out
}

/// One component of the message, with its RECURRENCE-ID resolved.
struct Msg<'a> {
    c: &'a Component,
    rid: Option<DateTime<Utc>>,
    this_and_future: bool,
}

fn stamp(c: &Component) -> AnswerStamp {
    AnswerStamp {
        sequence: c.sequence,
        dtstamp: c.dtstamp,
    }
}

/// RFC 5546 §2.1.5: lower SEQUENCE is older; equal SEQUENCE is decided by
/// DTSTAMP when both have one. Equal stamps are not older (a re-send applies).
fn older(msg: AnswerStamp, stored: AnswerStamp) -> bool {
    msg.sequence < stored.sequence
        || (msg.sequence == stored.sequence
            && matches!((msg.dtstamp, stored.dtstamp), (Some(m), Some(s)) if m < s))
}

fn describe(s: AnswerStamp) -> String {
    match s.dtstamp {
        Some(d) => format!("SEQUENCE {} DTSTAMP {}", s.sequence, d.to_rfc3339()),
        None => format!("SEQUENCE {}", s.sequence),
    }
}

fn stale(what: &str, msg: AnswerStamp, stored: AnswerStamp) -> Disposition {
    Disposition::Stale(format!(
        "{what}: message has {}, stored has {}",
        describe(msg),
        describe(stored)
    ))
}

/// U's own mail (or a manager's for U): checks, selection and dispatch;
/// `Err` carries a disposition that changes nothing. U's REQUEST or CANCEL
/// (U organizes) leaves nothing pending; U's answer accepts what it answers
/// ([`queue::accept`]).
fn transition(
    state: &UidState,
    payload: &Payload,
    uid: &str,
    ctx: &Ctx,
    user: &str,
) -> Result<(UidState, Vec<QueueOp>), Disposition> {
    let msgs = select(payload, uid, ctx)?;
    check_trust(&payload.method, &msgs, uid, state, user, Actor::User)?;
    match payload.method {
        Method::Request | Method::Publish => {
            let new = request(state, &msgs, Source::of(payload))?;
            Ok((new, queue::remove_all(state)))
        }
        Method::Reply => {
            let (proposed, ops) = queue::accept(state, &msgs, payload, ctx);
            let new = reply(&proposed, &msgs, Source::of(payload), user, ctx)?;
            Ok((new, ops))
        }
        Method::Cancel => Ok((cancel(state, &msgs, user, ctx)?, queue::remove_all(state))),
        ref other => Err(Disposition::Ignored(format!(
            "method {other} has no effect on the user's records"
        ))),
    }
}

/// Where stored components come from: a message, or a pending request.
#[derive(Clone, Copy)]
struct Source<'a> {
    zones: &'a BTreeMap<String, Zone>,
    raw: &'a str,
}

impl<'a> Source<'a> {
    fn of(payload: &'a Payload) -> Self {
        Source {
            zones: &payload.timezones,
            raw: &payload.raw,
        }
    }
}

/// Who acts on U's records: U (U's own outgoing mail, or a manager's for U)
/// or someone else delivering mail to U (the envelope sender, SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor<'a> {
    User,
    Other(&'a str),
}

/// SPEC §3, a message delivered to U by someone other than a manager: a
/// REQUEST from its organizer waits in U's queue (no busy time until U
/// answers); a CANCEL from the organizer removes the pending entry and U's
/// records of the event; a REPLY from an attendee to an event U organizes
/// merges that attendee's answer into U's object (newer wins per attendee).
/// "The organizer" is the one U has stored (objects, else the pending
/// request), not whoever the message names (see [`check_organizer`]).
fn incoming(
    state: &UidState,
    payload: &Payload,
    uid: &str,
    ctx: &Ctx,
    user: &str,
) -> Result<(UidState, Vec<QueueOp>), Disposition> {
    let msgs = select(payload, uid, ctx)?;
    let sender = norm(&payload.sender);
    let actor = Actor::Other(&sender);
    match payload.method {
        Method::Request | Method::Publish => {
            check_organizer(&payload.method, &msgs, uid, state, user, actor)?;
            Ok((state.clone(), queue::requested(state, &msgs, payload)?))
        }
        Method::Cancel => {
            check_organizer(&Method::Cancel, &msgs, uid, state, user, actor)?;
            let ops = queue::cancelled(state, &msgs, user, ctx);
            Ok((cancel(state, &msgs, user, ctx)?, ops))
        }
        Method::Reply => {
            check_reply(&msgs, uid, &sender)?;
            let organizes = state.objects.iter().any(|o| {
                o.component
                    .organizer
                    .as_ref()
                    .is_some_and(|org| same(&org.address, user))
            });
            if !organizes {
                return Err(Disposition::Ignored(format!(
                    "REPLY from {sender} for {uid}: {user} organizes no such event"
                )));
            }
            for m in &msgs {
                may_answer(state, m.c, &sender, uid, user)?;
            }
            Ok((
                reply(state, &msgs, Source::of(payload), &sender, ctx)?,
                Vec::new(),
            ))
        }
        ref other => Err(Disposition::Ignored(format!(
            "incoming {other} has no effect on the user's records"
        ))),
    }
}

/// The message's VEVENTs of this UID, one per key; `Err` when there is nothing to apply.
fn select<'a>(payload: &'a Payload, uid: &str, ctx: &Ctx) -> Result<Vec<Msg<'a>>, Disposition> {
    let mine: Vec<&Component> = payload.components.iter().filter(|c| c.uid == uid).collect();
    if mine.is_empty() {
        return Err(Disposition::Ignored(format!(
            "no component with UID {uid:?}"
        )));
    }
    if !is_scheduling_method(&payload.method) {
        return Err(Disposition::Ignored(format!(
            "method {} has no effect on the user's records",
            payload.method
        )));
    }
    let events: Vec<&Component> = mine
        .iter()
        .copied()
        .filter(|c| c.kind == ComponentKind::Event)
        .collect();
    if events.is_empty() {
        let kinds: BTreeSet<&str> = mine.iter().map(|c| c.kind.as_str()).collect();
        let kinds = kinds.into_iter().collect::<Vec<_>>().join(", ");
        let why = if mine.iter().any(|c| c.kind == ComponentKind::FreeBusy) {
            "exchanged free/busy never replaces the user's own records"
        } else {
            "only VEVENTs affect free/busy"
        };
        return Err(Disposition::Ignored(format!("{kinds} ignored: {why}")));
    }
    let msgs = dedupe(&events, &payload.timezones, ctx);
    if msgs.is_empty() {
        return Err(Disposition::Ignored(
            "no RECURRENCE-ID of the message could be resolved".into(),
        ));
    }
    Ok(msgs)
}

/// One component per key (SPEC "Duplicates"): of copies with the same
/// RECURRENCE-ID the newest wins, the first among equals. Components whose
/// RECURRENCE-ID cannot be turned into an instant are dropped.
fn dedupe<'a>(events: &[&'a Component], zones: &BTreeMap<String, Zone>, ctx: &Ctx) -> Vec<Msg<'a>> {
    let mut out: Vec<Msg<'a>> = Vec::new();
    for c in events {
        let rid = match &c.recurrence_id {
            None => None,
            Some(r) => match resolve(&r.time, zones, ctx.default_tz) {
                Some(t) => Some(t),
                None => continue,
            },
        };
        let this_and_future = c
            .recurrence_id
            .as_ref()
            .is_some_and(|r| r.range == Some(Range::ThisAndFuture));
        let m = Msg {
            c,
            rid,
            this_and_future,
        };
        match out.iter_mut().find(|o| o.rid == rid) {
            Some(o) => {
                if older(stamp(o.c), stamp(c)) {
                    *o = m;
                }
            }
            None => out.push(m),
        }
    }
    out
}

/// SPEC "Trust" for U's own mail (or a manager's for U): REQUEST, PUBLISH
/// and CANCEL per [`check_organizer`], REPLY per [`check_reply`]. Every
/// component must pass, so that a message is never half applied.
fn check_trust(
    method: &Method,
    msgs: &[Msg<'_>],
    uid: &str,
    state: &UidState,
    user: &str,
    actor: Actor<'_>,
) -> Result<(), Disposition> {
    match method {
        Method::Reply => check_reply(msgs, uid, user),
        _ => check_organizer(method, msgs, uid, state, user, actor),
    }
}

/// Who may send a REQUEST, PUBLISH or CANCEL for a UID. The organizer is the
/// one recorded for it (every stored object's, and the pending request's):
///
/// * a message naming another ORGANIZER than a recorded one is an organizer
///   change and is refused (RFC 5546 §6.1.3: the receiver cannot know whether
///   the change was agreed; Cyrus rejects it the same way);
/// * U may act only on what U organizes, or on U's own events without an
///   ORGANIZER (U re-organizing someone else's event is refused);
/// * anyone else must be the recorded organizer (the envelope sender is
///   compared; SENT-BY is recorded in the reason and grants nothing); an
///   event U stored without ORGANIZER is U's own and nobody else changes it
///   (as Cyrus); with nothing recorded, the sender must be the ORGANIZER the
///   message names.
fn check_organizer(
    method: &Method,
    msgs: &[Msg<'_>],
    uid: &str,
    state: &UidState,
    user: &str,
    actor: Actor<'_>,
) -> Result<(), Disposition> {
    let recorded: Vec<Option<&str>> = state
        .objects
        .iter()
        .map(|o| o.component.organizer.as_ref().map(|p| p.address.as_str()))
        .chain(state.pending.iter().map(|p| p.organizer.as_deref()))
        .collect();
    for m in msgs {
        let named = m.c.organizer.as_ref();
        let note = named
            .and_then(|o| o.sent_by.as_deref())
            .map(|s| format!(" (SENT-BY {s} grants nothing)"))
            .unwrap_or_default();
        let refuse = |why: String| {
            Err(Disposition::Refused(format!(
                "{method} for {uid}: {why}{note}"
            )))
        };
        if let Some(n) = named
            && let Some(r) = recorded.iter().flatten().find(|r| !same(r, &n.address))
        {
            return refuse(format!(
                "organizer change from {r} to {} refused",
                n.address
            ));
        }
        match actor {
            Actor::User => {
                if let Some(r) = recorded.iter().flatten().find(|r| !same(r, user)) {
                    return refuse(format!("organizer is {r}, not {user}"));
                }
                if let Some(n) = named
                    && !same(&n.address, user)
                {
                    return refuse(format!("organizer is {}, not {user}", n.address));
                }
            }
            Actor::Other(sender) => {
                if recorded.iter().any(Option::is_none) {
                    return refuse(format!(
                        "{user} stored it without ORGANIZER (their own event); {sender} cannot change it"
                    ));
                }
                let organizer = recorded
                    .iter()
                    .flatten()
                    .copied()
                    .next()
                    .or(named.map(|n| n.address.as_str()));
                match organizer {
                    None => return refuse(format!("no ORGANIZER; {sender} is not its organizer")),
                    Some(o) if !same(o, sender) => {
                        return refuse(format!("organizer is {o}, sender is {sender}"));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// A REPLY must carry an entry of its sender (or name the sender as someone's
/// delegate, which merges nothing), and must not speak for anyone else (see
/// [`answer_of`]).
fn check_reply(msgs: &[Msg<'_>], uid: &str, sender: &str) -> Result<(), Disposition> {
    for m in msgs {
        let own = m.c.attendees.iter().any(|a| same(&a.address, sender));
        let named =
            m.c.attendees
                .iter()
                .any(|a| a.delegated_to.iter().any(|d| same(d, sender)));
        if !own && !named {
            let note = if m
                .c
                .attendees
                .iter()
                .any(|a| a.sent_by.as_deref().is_some_and(|s| same(s, sender)))
            {
                "; SENT-BY grants nothing"
            } else {
                ""
            };
            return Err(Disposition::Refused(format!(
                "REPLY for {uid}: {sender} is not an attendee or delegate{note}"
            )));
        }
        answer_of(m.c, sender)?;
    }
    Ok(())
}

/// What one component of a REPLY may change: its sender's own entry and, when
/// that entry delegates (PARTSTAT=DELEGATED, DELEGATED-TO), the entries of the
/// delegates it names (RFC 5546 §4.2.5). `Err` when the component speaks for
/// someone else: an entry SENT-BY the sender, or one claiming DELEGATED-FROM
/// the sender that the sender's own entry does not delegate to. Entries of
/// other attendees that claim nothing are copies and change nothing.
struct Answer<'a> {
    own: Option<&'a Attendee>,
    delegates: Vec<&'a Attendee>,
}

fn answer_of<'a>(c: &'a Component, sender: &str) -> Result<Answer<'a>, Disposition> {
    let own = c.attendees.iter().find(|a| same(&a.address, sender));
    let mut delegates = Vec::new();
    for a in c.attendees.iter().filter(|a| !same(&a.address, sender)) {
        if a.sent_by.as_deref().is_some_and(|s| same(s, sender)) {
            return Err(Disposition::Refused(format!(
                "REPLY for {}: {sender} answers for {} as SENT-BY; SENT-BY grants nothing",
                c.uid, a.address
            )));
        }
        if a.delegated_from.iter().any(|d| same(d, sender)) {
            let delegated = own.is_some_and(|o| {
                o.partstat == PartStat::Delegated
                    && o.delegated_to.iter().any(|t| same(t, &a.address))
            });
            if !delegated {
                return Err(Disposition::Refused(format!(
                    "REPLY for {}: {} claims delegation from {sender}, whose own entry does not delegate to them",
                    c.uid, a.address
                )));
            }
            delegates.push(a);
        }
    }
    Ok(Answer { own, delegates })
}

/// Whether the sender of an incoming REPLY may answer U's event: an attendee
/// U has stored, or a delegate. A delegate is accepted when a stored
/// attendee's DELEGATED-TO names them, or when the message carries both
/// lines of the delegation (the delegate's DELEGATED-FROM the delegator, the
/// delegator's PARTSTAT=DELEGATED with DELEGATED-TO the delegate, RFC 5546
/// §4.2.6) and the delegator is a stored attendee. The delegator's line is
/// then applied too, unstamped ([`delegation::merge`]).
fn may_answer(
    state: &UidState,
    c: &Component,
    sender: &str,
    uid: &str,
    user: &str,
) -> Result<(), Disposition> {
    let stored: Vec<&Attendee> = state
        .objects
        .iter()
        .flat_map(|o| o.component.attendees.iter())
        .collect();
    let is_stored = |x: &str| stored.iter().any(|a| same(&a.address, x));
    let Some(own) = c.attendees.iter().find(|a| same(&a.address, sender)) else {
        return Err(Disposition::Refused(format!(
            "REPLY from {sender} for {uid}: carries no answer of {sender}"
        )));
    };
    if is_stored(sender) {
        return Ok(());
    }
    let by_stored = stored
        .iter()
        .any(|a| a.delegated_to.iter().any(|t| same(t, sender)));
    let shown = own.delegated_from.iter().any(|d| {
        is_stored(d)
            && c.attendees.iter().any(|x| {
                same(&x.address, d)
                    && x.partstat == PartStat::Delegated
                    && x.delegated_to.iter().any(|t| same(t, sender))
            })
    });
    if by_stored || shown {
        return Ok(());
    }
    Err(Disposition::Refused(if own.delegated_from.is_empty() {
        format!("REPLY from {sender} for {uid}: not an attendee of {user}'s event")
    } else {
        format!(
            "REPLY from {sender} for {uid}: delegation from {} is neither stored nor shown by the delegator's own entry",
            own.delegated_from.join(", ")
        )
    }))
}

/// The zones a component's times refer to, taken from the payload.
fn zones_used(c: &Component, zones: &BTreeMap<String, Zone>) -> BTreeMap<String, Zone> {
    let times = c
        .start
        .iter()
        .chain(c.end.iter())
        .chain(c.recurrence_id.iter().map(|r| &r.time))
        .chain(c.rdate.iter())
        .chain(c.exdate.iter());
    times
        .filter_map(|t| t.tzid.as_deref())
        .filter_map(|id| zones.get(id).map(|z| (id.to_owned(), z.clone())))
        .collect()
}

fn stored(m: &Msg<'_>, src: Source<'_>, answers: BTreeMap<String, AnswerStamp>) -> StoredObject {
    StoredObject {
        recurrence_id: m.rid,
        component: m.c.clone(),
        timezones: zones_used(m.c, src.zones),
        // One allocation for every object this message stores.
        raw: crate::model::Raw::shared(src.raw),
        answers,
    }
}

fn sort_objects(objects: &mut [StoredObject]) {
    objects.sort_by_key(|o| o.recurrence_id);
}

/// REQUEST/PUBLISH. A master replaces the stored series: stored specific
/// recurrences the message does not carry are removed, those it carries are
/// stored (not compared with the message's own master: the organizer sent them
/// together). Without a master, each specific recurrence replaces its stored
/// counterpart if not older, or, when new, if the stored master's SEQUENCE is
/// not higher. Stored attendee answer stamps survive a new version, so that
/// replies older than the last one applied stay stale.
fn request(state: &UidState, msgs: &[Msg<'_>], src: Source<'_>) -> Result<UidState, Disposition> {
    let old_master = state.objects.iter().find(|o| o.recurrence_id.is_none());
    let master_msg = msgs.iter().find(|m| m.rid.is_none());
    let mut objects = match master_msg {
        Some(m) => {
            if let Some(om) = old_master
                && older(stamp(m.c), stamp(&om.component))
            {
                return Err(stale("series", stamp(m.c), stamp(&om.component)));
            }
            let answers = old_master.map(|o| o.answers.clone()).unwrap_or_default();
            vec![stored(m, src, answers)]
        }
        None => state.objects.clone(),
    };
    let mut applied = master_msg.is_some();
    let mut last_stale = None;
    for m in msgs.iter().filter(|m| m.rid.is_some()) {
        let existing = state.objects.iter().find(|o| o.recurrence_id == m.rid);
        if master_msg.is_none() {
            let reference = match (existing, old_master) {
                (Some(e), _) => older(stamp(m.c), stamp(&e.component)).then(|| stamp(&e.component)),
                (None, Some(om)) => {
                    (om.component.sequence > m.c.sequence).then(|| stamp(&om.component))
                }
                (None, None) => None,
            };
            if let Some(s) = reference {
                last_stale = Some(stale("recurrence", stamp(m.c), s));
                continue;
            }
        }
        let answers = existing.map(|o| o.answers.clone()).unwrap_or_default();
        objects.retain(|o| o.recurrence_id != m.rid);
        objects.push(stored(m, src, answers));
        applied = true;
    }
    if !applied {
        return Err(last_stale.unwrap_or_else(|| Disposition::Stale("nothing newer".into())));
    }
    sort_objects(&mut objects);
    Ok(UidState {
        objects,
        pending: state.pending.clone(),
    })
}

/// Merges the sender's own answer (stamped `at`) into a stored object, and
/// adds the delegates it names that the object does not list yet, as
/// NEEDS-ACTION: a delegate answers for themselves, so their entry is not
/// stamped and an existing one is left as it is.
fn merge_answers(o: &mut StoredObject, own: &Attendee, delegates: &[&Attendee], at: AnswerStamp) {
    match o
        .component
        .attendees
        .iter_mut()
        .find(|x| same(&x.address, &own.address))
    {
        Some(x) => {
            x.partstat = own.partstat.clone();
            x.delegated_to = own.delegated_to.clone();
            x.delegated_from = own.delegated_from.clone();
        }
        None => o.component.attendees.push(own.clone()),
    }
    o.answers.insert(norm(&own.address), at);
    for d in delegates {
        if !o
            .component
            .attendees
            .iter()
            .any(|x| same(&x.address, &d.address))
        {
            let mut d = (*d).clone();
            d.partstat = PartStat::NeedsAction;
            o.component.attendees.push(d);
        }
    }
}

/// A specific recurrence made from the master's instance at `rid`, for
/// per-instance changes (a REPLY or an attendee removal for one instance) of
/// an instance that has no stored object of its own.
fn derived_override(master: &StoredObject, rid: DateTime<Utc>, ctx: &Ctx) -> StoredObject {
    let mut c = master.component.clone();
    c.rrule.clear();
    c.rdate.clear();
    c.exdate.clear();
    let mut rid_time = Time::utc(rid);
    if let Some(series) = Series::of(master, ctx.default_tz) {
        let t = &series.timing;
        let local = series
            .occurrence_at(rid)
            .and_then(|o| o.local)
            .or_else(|| local_of(&t.zone, rid));
        let end = t.end_for(local, rid);
        let end_local = local_of(&t.zone, end);
        let st = master.component.start.as_ref();
        let (start, end) = match (st.map(|s| s.kind), local, end_local) {
            (Some(TimeKind::Date), Some(l), Some(e)) => {
                (Time::date(l.date()), Time::date(e.date()))
            }
            (Some(TimeKind::Zoned), Some(l), Some(e)) => {
                let tzid = st.and_then(|s| s.tzid.as_deref()).unwrap_or("UTC");
                (Time::zoned(l, tzid, rid), Time::zoned(e, tzid, end))
            }
            (Some(TimeKind::Floating), Some(l), Some(e)) => {
                let tzid = st.and_then(|s| s.tzid.as_deref());
                (Time::floating(l, tzid), Time::floating(e, tzid))
            }
            _ => (Time::utc(rid), Time::utc(end)),
        };
        rid_time = start.clone();
        c.start = Some(start);
        c.end = Some(end);
        c.duration_seconds = None;
    }
    c.recurrence_id = Some(RecurrenceId {
        time: rid_time,
        range: None,
    });
    StoredObject {
        recurrence_id: Some(rid),
        component: c,
        timezones: master.timezones.clone(),
        raw: master.raw.clone(),
        answers: BTreeMap::new(),
    }
}

/// REPLY. The sender's answer (PARTSTAT, DELEGATED-TO/FROM; see
/// [`answer_of`] for what else a REPLY may change) is merged into the object
/// of that recurrence, or the master. Newer wins per attendee and per
/// recurrence against `StoredObject::answers`. A reply for one instance that
/// has no stored object of its own creates one from the master's instance (the
/// master's times, which are authoritative; the reply's are U's copy of them).
/// A reply to the whole series also updates the sender's entry in specific
/// recurrences that have no answer of the sender's own. A reply to an object U
/// has no record of stores the reply's component as it is. A delegate's
/// reply also marks its delegator DELEGATED ([`delegation`]).
fn reply(
    state: &UidState,
    msgs: &[Msg<'_>],
    src: Source<'_>,
    user: &str,
    ctx: &Ctx,
) -> Result<UidState, Disposition> {
    let mut objects = state.objects.clone();
    let mut applied = false;
    let mut answered = false;
    let mut last_stale = None;
    for m in msgs {
        let Answer {
            own: Some(own),
            delegates,
        } = answer_of(m.c, user)?
        else {
            continue;
        };
        answered = true;
        let at = stamp(m.c);
        let delegators = delegation::delegators(m.c, &own.address);
        match objects.iter().position(|o| o.recurrence_id == m.rid) {
            Some(i) => {
                let o = &mut objects[i];
                if let Some(s) = o.answers.get(&norm(&own.address))
                    && older(at, *s)
                {
                    last_stale = Some(stale("answer", at, *s));
                    continue;
                }
                merge_answers(o, own, &delegates, at);
                delegation::merge(o, &delegators, at);
            }
            None => {
                let master = objects.iter().find(|o| o.recurrence_id.is_none());
                let mut o = match (m.rid, master) {
                    (Some(rid), Some(master)) => derived_override(master, rid, ctx),
                    _ => stored(m, src, BTreeMap::new()),
                };
                merge_answers(&mut o, own, &delegates, at);
                delegation::merge(&mut o, &delegators, at);
                objects.push(o);
            }
        }
        applied = true;
        if m.rid.is_none() {
            for o in objects.iter_mut().filter(|o| o.recurrence_id.is_some()) {
                delegation::merge(o, &delegators, at);
                if o.answers.contains_key(&norm(&own.address)) {
                    continue;
                }
                if let Some(x) = o
                    .component
                    .attendees
                    .iter_mut()
                    .find(|x| same(&x.address, &own.address))
                {
                    x.partstat = own.partstat.clone();
                    x.delegated_to = own.delegated_to.clone();
                    x.delegated_from = own.delegated_from.clone();
                }
            }
        }
    }
    if !answered {
        // Trusted only as the target of someone else's delegation: nothing of U's to merge.
        return Err(Disposition::Ignored(format!(
            "the REPLY carries no answer of {user}"
        )));
    }
    if !applied {
        return Err(last_stale.unwrap_or_else(|| Disposition::Stale("nothing newer".into())));
    }
    sort_objects(&mut objects);
    Ok(UidState {
        objects,
        pending: state.pending.clone(),
    })
}

/// CANCEL. For everyone or for the attendees it lists, by whom it names
/// and whatever its STATUS ([`uninvite::scope`]); uninvited attendees are
/// removed and free/busy stays ([`uninvite::remove`]). For everyone:
/// the whole UID goes; one recurrence goes as if by EXDATE; THISANDFUTURE
/// ends the series before that instance (UNTIL, or COUNT for counted rules).
/// Newer wins against the stored object of that key, or for an instance
/// without one against the master's SEQUENCE. A CANCEL for something unknown
/// is recorded and removes nothing.
fn cancel(
    state: &UidState,
    msgs: &[Msg<'_>],
    user: &str,
    ctx: &Ctx,
) -> Result<UidState, Disposition> {
    let mut objects = state.objects.clone();
    let mut applied = false;
    let mut last_stale = None;
    for m in msgs {
        let master_i = objects.iter().position(|o| o.recurrence_id.is_none());
        let target_i = objects.iter().position(|o| o.recurrence_id == m.rid);
        let reference = target_i.or(if m.rid.is_some() { master_i } else { None });
        let Some(ref_i) = reference else {
            applied = true;
            continue;
        };
        let r = stamp(&objects[ref_i].component);
        let is_older = if target_i.is_some() {
            older(stamp(m.c), r)
        } else {
            r.sequence > m.c.sequence
        };
        if is_older {
            last_stale = Some(stale("cancel", stamp(m.c), r));
            continue;
        }
        applied = true;

        if let uninvite::Scope::Attendees(listed) =
            uninvite::scope(m.c, &objects[ref_i].component, user)
        {
            uninvite::remove(&mut objects, m, &listed, target_i, ref_i, ctx);
            continue;
        }

        match m.rid {
            None => objects.clear(),
            Some(rid) if !m.this_and_future => {
                objects.retain(|o| o.recurrence_id != Some(rid));
                if let Some(mi) = objects.iter().position(|o| o.recurrence_id.is_none()) {
                    let single = Series::of(&objects[mi], ctx.default_tz)
                        .is_some_and(|s| !s.is_recurring() && s.timing.start == rid);
                    if single {
                        // The only instance of a non-recurring event: the event is gone.
                        objects.clear();
                    } else {
                        add_exdate(&mut objects[mi], rid, ctx);
                    }
                }
            }
            Some(rid) => {
                objects.retain(|o| o.recurrence_id.is_none_or(|r| r < rid));
                let mi = objects.iter().position(|o| o.recurrence_id.is_none());
                if let Some(mi) = mi {
                    let master = &mut objects[mi];
                    match Series::of(master, ctx.default_tz) {
                        Some(series) if series.timing.start < rid => {
                            let rules = series.rules_truncated(&master.component.rrule, rid);
                            let c = &mut master.component;
                            c.rrule = rules;
                            let zones = master.timezones.clone();
                            c.rdate.retain(|t| {
                                resolve(t, &zones, ctx.default_tz).is_some_and(|u| u < rid)
                            });
                        }
                        // The first instance is cancelled too: nothing of the series remains.
                        _ => objects.clear(),
                    }
                }
            }
        }
    }
    if !applied {
        return Err(last_stale.unwrap_or_else(|| Disposition::Stale("nothing newer".into())));
    }
    sort_objects(&mut objects);
    Ok(UidState {
        objects,
        pending: state.pending.clone(),
    })
}

/// Cancels one instance of a master by EXDATE, written like its DTSTART
/// (a DATE for all-day series) so that the stored object stays valid iCalendar.
fn add_exdate(master: &mut StoredObject, rid: DateTime<Utc>, ctx: &Ctx) {
    let zones = master.timezones.clone();
    let c = &mut master.component;
    if c.exdate
        .iter()
        .any(|t| resolve(t, &zones, ctx.default_tz) == Some(rid))
    {
        return;
    }
    let date = c
        .start
        .as_ref()
        .filter(|s| s.kind == TimeKind::Date)
        .map(|_| rid.with_timezone(&ctx.default_tz).date_naive());
    c.exdate.push(match date {
        Some(d) => Time::date(d),
        None => Time::utc(rid),
    });
}

/// The outcome of an applied message: object changes (by key, master first),
/// then the free/busy difference when there is one.
/// The outcome of an applied transition: object changes by recurrence id.
/// The free/busy change is not made here: it is the difference between the
/// periods *stored* and `periods`, which only the writer knows
/// (`crate::apply`), and materialising the old state again for it cost as
/// much as the new one.
fn applied(old: &UidState, new: UidState, uid: &str, user: &str, ctx: &Ctx) -> Outcome {
    let Materialisation {
        periods,
        open_ended,
        complete_until,
    } = materialise_bounded(&new, user, ctx);
    type BeforeAfter<'a> = (Option<&'a StoredObject>, Option<&'a StoredObject>);
    let mut keys: BTreeMap<Option<DateTime<Utc>>, BeforeAfter<'_>> = BTreeMap::new();
    for o in &old.objects {
        keys.entry(o.recurrence_id).or_default().0 = Some(o);
    }
    for o in &new.objects {
        keys.entry(o.recurrence_id).or_default().1 = Some(o);
    }
    let mut changes = Vec::new();
    for (rid, (before, after)) in keys {
        match (before, after) {
            (Some(_), None) => changes.push(Change::ObjectRemoved {
                uid: uid.to_owned(),
                recurrence_id: rid,
            }),
            (b, Some(a)) if b != Some(a) => changes.push(Change::ObjectChanged {
                uid: uid.to_owned(),
                recurrence_id: rid,
                sequence: a.component.sequence,
            }),
            _ => {}
        }
    }
    Outcome {
        disposition: Disposition::Applied,
        state: new,
        periods,
        open_ended,
        complete_until,
        queue: Vec::new(),
        changes,
    }
}

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
pub(crate) mod test_fixtures;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
#[cfg(test)]
mod uninvite_tests;
