//! Deterministic, realistic iMIP traffic for fault tests, long runs and benchmarks.
//!
//! [`mails`] turns a seed into a list of RFC 5322 messages as the MTA would
//! hand them to `imip-ingest`: many users, single and weekly events (some
//! open-ended), updates with rising SEQUENCE, exceptions (RECURRENCE-ID
//! overrides), cancellations of one instance or a whole event, invitations
//! received from outside organisers and from other users, replies, stale
//! re-sends of older versions, the same object carried inline and as
//! `invite.ics`, and re-deliveries of the same mail.
//!
//! [`messages`] turns those mails into the payloads `imip-ingest` would publish
//! (through ingest's own pure [`imipflow_ingest::plan`], so they are exactly
//! what the binary makes), and [`publish`] puts them on the messages stream
//! the way ingest does, only much faster than one process per mail.
//!
//! Every mail belongs to one user and is numbered per user (`number`, also in
//! the Message-ID and in SUMMARY as `[u7 #12]`), so per-user order can be
//! checked from the outside. Same seed, same traffic, byte for byte.
//!
//! [`hostile::mix`] adds the attacks of docs/hostile-input.md to that traffic.

use async_nats::jetstream;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};
use imipflow_ingest::{Envelope, Limits, Output, plan::RawMail};
use imipflow_schema::{Direction, Namespace, partition, user_key};
use thiserror::Error;

pub mod hostile;

#[derive(Debug, Error)]
pub enum LoadgenError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("namespace: {0}")]
    Namespace(String),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Number of users (addresses `u<i>@<domain>`).
    pub users: usize,
    /// Number of mails, re-deliveries included.
    pub messages: usize,
    pub domain: String,
    /// Share of mails delivered a second time later on, in percent.
    pub redelivery_percent: u32,
    /// Share of mails carrying their object twice (inline and `invite.ics`), in percent.
    pub duplicate_part_percent: u32,
}

impl Config {
    pub fn new(seed: u64, users: usize, messages: usize) -> Self {
        Config {
            seed,
            users: users.max(1),
            messages,
            domain: "load.example".to_owned(),
            redelivery_percent: 4,
            duplicate_part_percent: 5,
        }
    }
}

/// How a mail reaches ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The first time.
    First,
    /// The MTA delivers the same mail again soon (lost SMTP ack, MTA retry):
    /// the broker drops it by its `Nats-Msg-Id`.
    Redelivery,
    /// The same mail again after the broker's dedupe window: it reaches the
    /// stream a second time and the processor must recognise it (message log).
    LateRedelivery,
}

/// One mail, as the MTA hands it to `imip-ingest`.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The user whose records the mail changes.
    pub user: String,
    /// This user's n-th mail (from 1); a re-delivery repeats the number.
    pub number: u32,
    pub direction: Direction,
    pub sender: String,
    pub recipients: Vec<String>,
    pub bytes: Vec<u8>,
    pub delivery: Delivery,
}

impl Mail {
    /// The `imip-ingest` arguments the MTA would pass.
    pub fn ingest_args(&self) -> Vec<String> {
        let mut args = vec![
            "--direction".to_owned(),
            match self.direction {
                Direction::Outgoing => "outgoing",
                Direction::Incoming => "incoming",
            }
            .to_owned(),
            "--sender".to_owned(),
            self.sender.clone(),
        ];
        for r in &self.recipients {
            args.push("--recipient".to_owned());
            args.push(r.clone());
        }
        args
    }
}

/// One payload to put on the messages stream.
#[derive(Debug, Clone)]
pub struct Message {
    pub user: String,
    pub number: u32,
    /// The `Nats-Msg-Id` header: the payload's dedupe id, except for a late
    /// re-delivery (which the broker must not drop).
    pub nats_msg_id: String,
    pub dedupe_id: String,
    pub delivery: Delivery,
    /// The payload JSON, exactly as `imip-ingest` serialises it.
    pub json: Vec<u8>,
}

impl Message {
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json).expect("payload JSON")
    }

    /// Subject `imip-ingest` publishes this payload on.
    pub fn subject(&self, ns: &Namespace, partitions: u32) -> String {
        ns.message_subject(partition(&self.user, partitions), &user_key(&self.user))
    }
}

/// The simplest use: `count` payloads of `users` users from `seed`, as JSON
/// values (each has `user` and `dedupe_id`, like ingest's output).
pub fn payloads(seed: u64, users: usize, count: usize) -> Vec<serde_json::Value> {
    messages(&Config::new(seed, users, count))
        .iter()
        .map(Message::value)
        .collect()
}

/// The instant every generated mail's clock starts from; ingestion times and
/// DTSTAMPs rise from here one second per mail.
fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-04T08:00:00Z")
        .expect("constant")
        .with_timezone(&Utc)
}

/// The payloads of the mails of `config`, in delivery order (re-deliveries the
/// broker would drop are included: [`publish`] reports them as duplicates).
pub fn messages(config: &Config) -> Vec<Message> {
    let limits = Limits::default();
    let mut out = Vec::new();
    for (i, mail) in mails(config).into_iter().enumerate() {
        let now = epoch() + Duration::seconds(i as i64);
        // Generated mails are well-formed; a quarantine here would be a
        // generator bug, and dropping it keeps the traffic deterministic.
        out.extend(plan_mail(&mail, &limits, now).into_iter().flatten());
    }
    out
}

/// What ingest's planner makes of one mail at `now`, under `limits`: a
/// message per payload, `None` per quarantine record.
pub fn plan_mail(mail: &Mail, limits: &Limits, now: DateTime<Utc>) -> Vec<Option<Message>> {
    let env = Envelope {
        direction: mail.direction,
        sender: mail.sender.clone(),
        recipients: mail.recipients.clone(),
    };
    let input = RawMail {
        bytes: &mail.bytes,
        total_size: mail.bytes.len() as u64,
        calendar_beyond_limit: false,
    };
    imipflow_ingest::plan(&input, &env, limits, now)
        .outputs
        .into_iter()
        .map(|output| match output {
            Output::Payload { payload, json } => {
                let nats_msg_id = match mail.delivery {
                    Delivery::LateRedelivery => format!("{}~late", payload.dedupe_id),
                    _ => payload.dedupe_id.clone(),
                };
                Some(Message {
                    user: payload.user.clone(),
                    number: mail.number,
                    nats_msg_id,
                    dedupe_id: payload.dedupe_id.clone(),
                    delivery: mail.delivery,
                    json,
                })
            }
            Output::Quarantine(_) => None,
        })
        .collect()
}

/// What [`publish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishReport {
    /// Acknowledged as new messages.
    pub stored: usize,
    /// Acknowledged as duplicates (dropped by the broker's dedupe window).
    pub duplicates: usize,
}

/// Publishes `messages` on the namespace's messages stream as `imip-ingest`
/// does (same subjects, `Nats-Msg-Id`), pipelining up to 256 unacknowledged
/// publishes. Order per user is kept: JetStream stores one connection's
/// publishes in the order they were sent.
pub async fn publish(
    js: &jetstream::Context,
    ns: &Namespace,
    partitions: u32,
    messages: &[Message],
) -> Result<PublishReport, LoadgenError> {
    let mut report = PublishReport::default();
    let mut acks = std::collections::VecDeque::new();
    for m in messages {
        let ack = imipflow_nats::publish_deduped(
            js,
            m.subject(ns, partitions),
            &m.nats_msg_id,
            m.json.clone().into(),
        )
        .await
        .map_err(|e| LoadgenError::Nats(e.to_string()))?;
        acks.push_back(ack);
        if acks.len() >= 256 {
            let ack = acks.pop_front().expect("non-empty");
            count(&mut report, ack.await)?;
        }
    }
    for ack in acks {
        count(&mut report, ack.await)?;
    }
    Ok(report)
}

fn count(
    report: &mut PublishReport,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<(), LoadgenError> {
    let ack = ack.map_err(|e| LoadgenError::Nats(e.to_string()))?;
    if ack.duplicate {
        report.duplicates += 1;
    } else {
        report.stored += 1;
    }
    Ok(())
}

/// The namespace helper, with this crate's error.
pub fn namespace(name: &str) -> Result<Namespace, LoadgenError> {
    Namespace::new(name).map_err(|e| LoadgenError::Namespace(e.to_string()))
}

// ---------------------------------------------------------------------------
// The generator.

/// An event the user organises.
#[derive(Debug, Clone)]
struct Owned {
    uid: String,
    sequence: i64,
    start: NaiveDateTime,
    minutes: i64,
    /// `RRULE` value of a weekly series.
    rrule: Option<String>,
    /// Instances of a series (weeks after the first) that may be overridden.
    weeks: i64,
    attendees: Vec<String>,
    cancelled: bool,
    /// Older versions (sequence, start, dtstamp) a confused client may re-send.
    history: Vec<(i64, NaiveDateTime, DateTime<Utc>)>,
}

/// An event the user was invited to.
#[derive(Debug, Clone)]
struct Invite {
    uid: String,
    organizer: String,
    sequence: i64,
    start: NaiveDateTime,
    minutes: i64,
    rrule: Option<String>,
    others: Vec<String>,
    cancelled: bool,
}

#[derive(Debug, Default)]
struct User {
    address: String,
    index: usize,
    number: u32,
    owned: Vec<Owned>,
    invites: Vec<Invite>,
    next_uid: u32,
}

struct Gen<'a> {
    config: &'a Config,
    rng: fastrand::Rng,
    users: Vec<User>,
    /// DTSTAMP of the mail being made: rises with every mail.
    stamp: DateTime<Utc>,
}

const TZID: &str = "Europe/Berlin";

fn local(t: NaiveDateTime) -> String {
    t.format("%Y%m%dT%H%M%S").to_string()
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Fields of one VEVENT.
struct Event<'a> {
    uid: &'a str,
    sequence: i64,
    dtstamp: DateTime<Utc>,
    start: NaiveDateTime,
    minutes: i64,
    rrule: Option<&'a str>,
    recurrence_id: Option<NaiveDateTime>,
    organizer: &'a str,
    attendees: Vec<(String, &'a str)>,
    summary: String,
    status: Option<&'a str>,
}

impl Event<'_> {
    fn lines(&self) -> String {
        let mut l = vec![
            "BEGIN:VEVENT".to_owned(),
            format!("UID:{}", self.uid),
            format!("SEQUENCE:{}", self.sequence),
            format!("DTSTAMP:{}", utc(self.dtstamp)),
        ];
        if let Some(rid) = self.recurrence_id {
            l.push(format!("RECURRENCE-ID;TZID={TZID}:{}", local(rid)));
        }
        l.push(format!("DTSTART;TZID={TZID}:{}", local(self.start)));
        l.push(format!(
            "DTEND;TZID={TZID}:{}",
            local(self.start + Duration::minutes(self.minutes))
        ));
        if let Some(r) = self.rrule {
            l.push(format!("RRULE:{r}"));
        }
        l.push(format!("SUMMARY:{}", self.summary));
        if let Some(s) = self.status {
            l.push(format!("STATUS:{s}"));
        }
        l.push(format!("ORGANIZER:mailto:{}", self.organizer));
        for (a, partstat) in &self.attendees {
            l.push(format!(
                "ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT={partstat};RSVP=TRUE:mailto:{a}"
            ));
        }
        l.push("END:VEVENT".to_owned());
        l.join("\r\n")
    }
}

fn calendar(method: &str, events: &[Event<'_>]) -> String {
    let body: Vec<String> = events.iter().map(Event::lines).collect();
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow//loadgen//EN\r\nMETHOD:{method}\r\n{}\r\nEND:VCALENDAR\r\n",
        body.join("\r\n")
    )
}

impl Gen<'_> {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(..100) < percent
    }

    fn external(&mut self) -> String {
        format!("x{}@ext.example", self.rng.u32(..500))
    }

    fn some_start(&mut self) -> NaiveDateTime {
        let day = NaiveDate::from_ymd_opt(2027, 3, 1).expect("constant")
            + Duration::days(self.rng.i64(0..150));
        day.and_hms_opt(self.rng.u32(7..18), [0, 15, 30, 45][self.rng.usize(..4)], 0)
            .expect("valid time")
    }

    /// Attendees of a new event: other load users (who then know of it) and outsiders.
    fn attendees(&mut self, organizer: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..self.rng.usize(1..4) {
            let a = if self.users.len() > 1 && self.chance(40) {
                let mut other = self.rng.usize(..self.users.len());
                if other == organizer {
                    other = (other + 1) % self.users.len();
                }
                self.users[other].address.clone()
            } else {
                self.external()
            };
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    fn mail_id(&self, u: usize, n: u32, side: &str) -> String {
        format!("lg{}.{side}.u{u}.{n}@loadgen.example", self.config.seed)
    }

    /// Wraps a calendar object in a mail as clients send it: a text part and
    /// the calendar part, sometimes the calendar again as `invite.ics`.
    fn wrap(&mut self, from: &str, to: &str, message_id: &str, method: &str, ics: &str) -> Vec<u8> {
        let boundary = format!("=_lg_{}", self.rng.u64(..));
        let duplicate = self.chance(self.config.duplicate_part_percent);
        let mut m = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: {method}\r\nMessage-ID: <{message_id}>\r\n\
Date: {}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/{}; boundary=\"{boundary}\"\r\n\r\n\
--{boundary}\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nCalendar message ({method}).\r\n\
--{boundary}\r\nContent-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n{ics}",
            self.stamp.to_rfc2822(),
            if duplicate { "mixed" } else { "alternative" },
        );
        if duplicate {
            m.push_str(&format!(
                "--{boundary}\r\nContent-Type: application/ics; name=\"invite.ics\"\r\n\
Content-Disposition: attachment; filename=\"invite.ics\"\r\n\r\n{ics}"
            ));
        }
        m.push_str(&format!("--{boundary}--\r\n"));
        m.into_bytes()
    }

    /// The next mail of user `u`.
    fn next(&mut self, u: usize) -> Mail {
        self.users[u].number += 1;
        let n = self.users[u].number;
        let me = self.users[u].address.clone();
        let summary = format!("[u{} #{n}]", self.users[u].index);
        let live_owned: Vec<usize> = (0..self.users[u].owned.len())
            .filter(|&i| !self.users[u].owned[i].cancelled)
            .collect();
        let series: Vec<usize> = live_owned
            .iter()
            .copied()
            .filter(|&i| self.users[u].owned[i].rrule.is_some())
            .collect();
        let live_invites: Vec<usize> = (0..self.users[u].invites.len())
            .filter(|&i| !self.users[u].invites[i].cancelled)
            .collect();
        let roll = self.rng.u32(..100);
        let stamp = self.stamp;
        let outgoing = |s: &mut Self, method: &str, ics: String| {
            let to = "team@ext.example";
            let id = s.mail_id(u, n, "out");
            Mail {
                user: me.clone(),
                number: n,
                direction: Direction::Outgoing,
                sender: me.clone(),
                recipients: vec![to.to_owned()],
                bytes: s.wrap(&me, to, &id, method, &ics),
                delivery: Delivery::First,
            }
        };

        // Invitation from an outside organiser, delivered to the user.
        if roll < 14 || (roll < 30 && live_owned.is_empty() && live_invites.is_empty()) {
            let organizer = format!("org{}@ext.example", self.rng.u32(..50));
            let uid = format!("in-{}-{}@loadgen", self.users[u].index, n);
            let start = self.some_start();
            let rrule = self.chance(30).then(|| "FREQ=WEEKLY;COUNT=6".to_owned());
            let others = vec![self.external()];
            let inv = Invite {
                uid,
                organizer,
                sequence: 0,
                start,
                minutes: 30,
                rrule,
                others,
                cancelled: false,
            };
            let mail = self.incoming(u, n, &inv, "REQUEST", &summary);
            self.users[u].invites.push(inv);
            return mail;
        }
        // The organiser of an invitation updates or cancels it.
        if roll < 22 && !live_invites.is_empty() {
            let i = live_invites[self.rng.usize(..live_invites.len())];
            let mut inv = self.users[u].invites[i].clone();
            if inv.organizer.ends_with(&self.config.domain) {
                // A load user's event: its organiser's own mails carry the
                // changes; here the invitee just answers again.
                return self.reply(u, n, i, &summary);
            }
            inv.sequence += 1;
            let method = if self.chance(25) {
                inv.cancelled = true;
                "CANCEL"
            } else {
                inv.start += Duration::hours(1);
                "REQUEST"
            };
            let mail = self.incoming(u, n, &inv, method, &summary);
            self.users[u].invites[i] = inv;
            return mail;
        }
        // The user answers an invitation.
        if roll < 40 && !live_invites.is_empty() {
            let i = live_invites[self.rng.usize(..live_invites.len())];
            return self.reply(u, n, i, &summary);
        }
        // A new event.
        if roll < 55 || live_owned.is_empty() {
            let uid = format!(
                "ev-{}-{}@loadgen",
                self.users[u].index, self.users[u].next_uid
            );
            self.users[u].next_uid += 1;
            let start = self.some_start();
            let (rrule, weeks) = match self.rng.u32(..10) {
                0..=4 => (None, 0),
                5..=8 => (Some("FREQ=WEEKLY;COUNT=8".to_owned()), 8),
                _ => (Some("FREQ=WEEKLY;INTERVAL=2".to_owned()), 20),
            };
            let attendees = self.attendees(u);
            let ev = Owned {
                uid,
                sequence: 0,
                start,
                minutes: [30, 60, 90][self.rng.usize(..3)],
                rrule,
                weeks,
                attendees,
                cancelled: false,
                history: Vec::new(),
            };
            let ics = self.request(&me, &ev, &summary, stamp);
            // Load users among the attendees now know of the invitation.
            for a in &ev.attendees {
                if let Some(other) = self.users.iter_mut().find(|x| &x.address == a) {
                    other.invites.push(Invite {
                        uid: ev.uid.clone(),
                        organizer: me.clone(),
                        sequence: 0,
                        start: ev.start,
                        minutes: ev.minutes,
                        rrule: ev.rrule.clone(),
                        others: ev.attendees.clone(),
                        cancelled: false,
                    });
                }
            }
            self.users[u].owned.push(ev);
            return outgoing(self, "REQUEST", ics);
        }
        let o = live_owned[self.rng.usize(..live_owned.len())];
        // An exception: one instance of a series moved.
        if roll < 65 && !series.is_empty() {
            let o = series[self.rng.usize(..series.len())];
            let ev = self.users[u].owned[o].clone();
            let week = self.rng.i64(1..ev.weeks.max(2));
            let rid = ev.start + Duration::weeks(week);
            let attendees = ev
                .attendees
                .iter()
                .map(|a| (a.clone(), "NEEDS-ACTION"))
                .collect();
            let ics = calendar(
                "REQUEST",
                &[Event {
                    uid: &ev.uid,
                    sequence: ev.sequence,
                    dtstamp: stamp,
                    start: rid + Duration::hours(2),
                    minutes: ev.minutes,
                    rrule: None,
                    recurrence_id: Some(rid),
                    organizer: &me,
                    attendees,
                    summary: summary.clone(),
                    status: None,
                }],
            );
            return outgoing(self, "REQUEST", ics);
        }
        // One instance of a series cancelled.
        if roll < 72 && !series.is_empty() {
            let o = series[self.rng.usize(..series.len())];
            self.users[u].owned[o].sequence += 1;
            let ev = self.users[u].owned[o].clone();
            let rid = ev.start + Duration::weeks(self.rng.i64(1..ev.weeks.max(2)));
            let attendees = ev
                .attendees
                .iter()
                .map(|a| (a.clone(), "NEEDS-ACTION"))
                .collect();
            let ics = calendar(
                "CANCEL",
                &[Event {
                    uid: &ev.uid,
                    sequence: ev.sequence,
                    dtstamp: stamp,
                    start: rid,
                    minutes: ev.minutes,
                    rrule: None,
                    recurrence_id: Some(rid),
                    organizer: &me,
                    attendees,
                    summary: summary.clone(),
                    status: Some("CANCELLED"),
                }],
            );
            return outgoing(self, "CANCEL", ics);
        }
        // The whole event cancelled.
        if roll < 76 {
            let ev = &mut self.users[u].owned[o];
            ev.sequence += 1;
            ev.cancelled = true;
            let ev = ev.clone();
            let attendees = ev
                .attendees
                .iter()
                .map(|a| (a.clone(), "NEEDS-ACTION"))
                .collect();
            let ics = calendar(
                "CANCEL",
                &[Event {
                    uid: &ev.uid,
                    sequence: ev.sequence,
                    dtstamp: stamp,
                    start: ev.start,
                    minutes: ev.minutes,
                    rrule: ev.rrule.as_deref(),
                    recurrence_id: None,
                    organizer: &me,
                    attendees,
                    summary: summary.clone(),
                    status: Some("CANCELLED"),
                }],
            );
            return outgoing(self, "CANCEL", ics);
        }
        // A confused client re-sends an older version: stale, changes nothing.
        if roll < 80 && !self.users[u].owned[o].history.is_empty() {
            let ev = self.users[u].owned[o].clone();
            let (sequence, start, dtstamp) = ev.history[self.rng.usize(..ev.history.len())];
            let old = Owned {
                sequence,
                start,
                ..ev
            };
            let ics = self.request(&me, &old, &summary, dtstamp);
            return outgoing(self, "REQUEST", ics);
        }
        // An update: moved, rising SEQUENCE.
        let ev = &mut self.users[u].owned[o];
        ev.history.push((ev.sequence, ev.start, stamp));
        ev.sequence += 1;
        ev.start += Duration::minutes(30);
        let ev = ev.clone();
        let ics = self.request(&me, &ev, &summary, stamp);
        outgoing(self, "REQUEST", ics)
    }

    fn request(&mut self, me: &str, ev: &Owned, summary: &str, dtstamp: DateTime<Utc>) -> String {
        let attendees = ev
            .attendees
            .iter()
            .map(|a| (a.clone(), "NEEDS-ACTION"))
            .collect();
        calendar(
            "REQUEST",
            &[Event {
                uid: &ev.uid,
                sequence: ev.sequence,
                dtstamp,
                start: ev.start,
                minutes: ev.minutes,
                rrule: ev.rrule.as_deref(),
                recurrence_id: None,
                organizer: me,
                attendees,
                summary: summary.to_owned(),
                status: None,
            }],
        )
    }

    /// A mail from an invitation's organiser to user `u` (direction incoming).
    fn incoming(&mut self, u: usize, n: u32, inv: &Invite, method: &str, summary: &str) -> Mail {
        let me = self.users[u].address.clone();
        let mut attendees = vec![(me.clone(), "NEEDS-ACTION")];
        attendees.extend(inv.others.iter().map(|a| (a.clone(), "NEEDS-ACTION")));
        let ics = calendar(
            method,
            &[Event {
                uid: &inv.uid,
                sequence: inv.sequence,
                dtstamp: self.stamp,
                start: inv.start,
                minutes: inv.minutes,
                rrule: inv.rrule.as_deref(),
                recurrence_id: None,
                organizer: &inv.organizer,
                attendees,
                summary: summary.to_owned(),
                status: (method == "CANCEL").then_some("CANCELLED"),
            }],
        );
        let id = self.mail_id(u, n, "in");
        Mail {
            user: me.clone(),
            number: n,
            direction: Direction::Incoming,
            sender: inv.organizer.clone(),
            recipients: vec![me.clone()],
            bytes: self.wrap(&inv.organizer, &me, &id, method, &ics),
            delivery: Delivery::First,
        }
    }

    /// User `u` answers invitation `i` (the series, or one instance of it).
    fn reply(&mut self, u: usize, n: u32, i: usize, summary: &str) -> Mail {
        let me = self.users[u].address.clone();
        let inv = self.users[u].invites[i].clone();
        let partstat = ["ACCEPTED", "ACCEPTED", "TENTATIVE", "DECLINED"][self.rng.usize(..4)];
        let instance = inv.rrule.is_some() && self.chance(25);
        let rid = instance.then(|| inv.start + Duration::weeks(self.rng.i64(1..4)));
        let ics = calendar(
            "REPLY",
            &[Event {
                uid: &inv.uid,
                sequence: inv.sequence,
                dtstamp: self.stamp,
                start: rid.unwrap_or(inv.start),
                minutes: inv.minutes,
                rrule: if instance { None } else { inv.rrule.as_deref() },
                recurrence_id: rid,
                organizer: &inv.organizer,
                attendees: vec![(me.clone(), partstat)],
                summary: summary.to_owned(),
                status: None,
            }],
        );
        let id = self.mail_id(u, n, "out");
        Mail {
            user: me.clone(),
            number: n,
            direction: Direction::Outgoing,
            sender: me.clone(),
            recipients: vec![inv.organizer.clone()],
            bytes: self.wrap(&me, &inv.organizer, &id, "REPLY", &ics),
            delivery: Delivery::First,
        }
    }
}

/// The mails of `config`, in the order the MTA delivers them.
pub fn mails(config: &Config) -> Vec<Mail> {
    let mut g = Gen {
        config,
        rng: fastrand::Rng::with_seed(config.seed),
        users: (0..config.users)
            .map(|i| User {
                address: format!("u{i}@{}", config.domain),
                index: i,
                ..Default::default()
            })
            .collect(),
        stamp: epoch(),
    };
    let mut out: Vec<Mail> = Vec::with_capacity(config.messages);
    // (due position, mail) of re-deliveries still to come.
    let mut pending: Vec<(usize, Mail)> = Vec::new();
    while out.len() < config.messages {
        g.stamp = epoch() + Duration::seconds(out.len() as i64);
        if let Some(pos) = pending.iter().position(|(due, _)| *due <= out.len()) {
            out.push(pending.remove(pos).1);
            continue;
        }
        let u = g.rng.usize(..config.users);
        let mail = g.next(u);
        if g.chance(config.redelivery_percent) {
            let mut again = mail.clone();
            again.delivery = if g.rng.bool() {
                Delivery::Redelivery
            } else {
                Delivery::LateRedelivery
            };
            pending.push((out.len() + 1 + g.rng.usize(..40), again));
        }
        out.push(mail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_traffic_and_every_mail_becomes_a_payload() {
        let config = Config::new(7, 20, 400);
        let a = messages(&config);
        let b = messages(&config);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.json == y.json));
        // One payload per mail: nothing quarantined, duplicates inside a mail merged.
        assert_eq!(a.len(), 400);
        let methods: std::collections::BTreeSet<String> = a
            .iter()
            .map(|m| m.value()["method"].as_str().unwrap().to_owned())
            .collect();
        for m in ["REQUEST", "REPLY", "CANCEL"] {
            assert!(methods.contains(m), "{m} missing from {methods:?}");
        }
        assert!(a.iter().any(|m| m.delivery == Delivery::LateRedelivery));
        assert!(a.iter().any(|m| m.value()["direction"] == "incoming"));
    }

    #[test]
    fn per_user_numbers_rise_by_one() {
        let mut last = std::collections::HashMap::new();
        for m in mails(&Config::new(3, 10, 300)) {
            if m.delivery != Delivery::First {
                continue;
            }
            let prev = last.insert(m.user.clone(), m.number).unwrap_or(0);
            assert_eq!(m.number, prev + 1, "{}", m.user);
        }
    }
}
