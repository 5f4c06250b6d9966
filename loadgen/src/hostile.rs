//! Hostile traffic mixed into the normal traffic of [`crate::mails`]: the
//! attacks of docs/hostile-input.md, aimed at the normal users by someone who
//! knows what an attendee or a mailing list knows (UIDs, organizers, who is
//! invited), plus mailboxes of attackers' own that try to exhaust the server.
//!
//! The mix keeps every normal mail, in its order; each attack is a mail of
//! its own, so a run of the mix must leave every normal user exactly as a run
//! of the normal mails alone does (the long-run check in docs/reliability.md).

use crate::{Delivery, Mail};
use imipflow_schema::Direction;

/// What one hostile mail tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attack {
    /// An outsider cancels a normal user's invitation by its UID, naming the
    /// real organizer in ORGANIZER.
    SpoofedCancel,
    /// The same with `ORGANIZER;SENT-BY=<outsider>`.
    SentByCancel,
    /// An outsider re-sends a pending invitation with their own organizer.
    OutsiderRequest,
    /// An attendee answers for another attendee (SENT-BY on that line).
    ForgedReply,
    /// An outsider claims a delegation from an invited attendee.
    DelegateClaim,
    /// A mailing list's copy of a normal invitation (envelope sender the
    /// list's bounce address), delivered just before the user's own copy.
    ListCopy,
    /// An attacker's own mail with 40 hourly series.
    SeriesFlood,
    /// An attacker's own VEVENT with 5,000 RRULE lines.
    RruleLines,
    /// An attacker's master with 300 overrides.
    OverrideFlood,
    /// A 3,000-character UID.
    LongUid,
    /// A 4 KB envelope sender.
    LongEnvelope,
}

impl Attack {
    pub const ALL: [Attack; 11] = [
        Attack::SpoofedCancel,
        Attack::SentByCancel,
        Attack::OutsiderRequest,
        Attack::ForgedReply,
        Attack::DelegateClaim,
        Attack::ListCopy,
        Attack::SeriesFlood,
        Attack::RruleLines,
        Attack::OverrideFlood,
        Attack::LongUid,
        Attack::LongEnvelope,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::SpoofedCancel => "spoofed_cancel",
            Attack::SentByCancel => "sent_by_cancel",
            Attack::OutsiderRequest => "outsider_request",
            Attack::ForgedReply => "forged_reply",
            Attack::DelegateClaim => "delegate_claim",
            Attack::ListCopy => "list_copy",
            Attack::SeriesFlood => "series_flood",
            Attack::RruleLines => "rrule_lines",
            Attack::OverrideFlood => "override_flood",
            Attack::LongUid => "long_uid",
            Attack::LongEnvelope => "long_envelope",
        }
    }

    /// Whether the attack is aimed at the server's resources rather than at
    /// another user's records: such mail may also arrive by other means than
    /// ingest (a payload written straight to the stream), so a test may plan
    /// it with ingest's limits lifted to reach the processor's own bounds.
    pub fn exhausts(self) -> bool {
        matches!(
            self,
            Attack::SeriesFlood | Attack::RruleLines | Attack::OverrideFlood
        )
    }
}

/// One mail of the mix.
#[derive(Debug, Clone)]
pub struct Mixed {
    pub mail: Mail,
    /// `None` for a normal mail.
    pub attack: Option<Attack>,
}

/// The attacker's own mailbox (its records are not compared).
pub const ATTACKER: &str = "mallory@evil.example";

/// What the calendar part of a normal mail says.
struct Seen {
    method: String,
    uid: String,
    organizer: Option<String>,
    attendees: Vec<String>,
    /// Whether the component names one instance (RECURRENCE-ID).
    instance: bool,
}

fn seen(mail: &Mail) -> Option<Seen> {
    let text = String::from_utf8_lossy(&mail.bytes);
    let start = text.find("BEGIN:VCALENDAR")?;
    let end = text[start..].find("END:VCALENDAR")? + start;
    let mut s = Seen {
        method: String::new(),
        uid: String::new(),
        organizer: None,
        attendees: Vec::new(),
        instance: false,
    };
    for line in text[start..end].split("\r\n") {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let address = || {
            line.rsplit_once("mailto:")
                .map(|(_, a)| a.trim().to_ascii_lowercase())
        };
        match name.split(';').next().unwrap_or("") {
            "METHOD" => s.method = value.to_owned(),
            "RECURRENCE-ID" => s.instance = true,
            "UID" if s.uid.is_empty() => s.uid = value.to_owned(),
            "ORGANIZER" if s.organizer.is_none() => s.organizer = address(),
            "ATTENDEE" => {
                if let Some(a) = address().filter(|a| !s.attendees.contains(a)) {
                    s.attendees.push(a);
                }
            }
            _ => {}
        }
    }
    (!s.uid.is_empty()).then_some(s)
}

/// An invitation a normal user holds: (user, UID, organizer, attendees).
#[derive(Clone)]
struct Known {
    user: String,
    uid: String,
    organizer: String,
    attendees: Vec<String>,
}

fn mail(user: &str, direction: Direction, sender: &str, to: &str, id: &str, ics: &str) -> Mail {
    let bytes = format!(
        "From: <{sender}>\r\nTo: <{to}>\r\nSubject: hostile\r\nMessage-ID: <{id}>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n{ics}",
        method = ics
            .split("\r\n")
            .find_map(|l| l.strip_prefix("METHOD:"))
            .unwrap_or("REQUEST"),
    )
    .into_bytes();
    Mail {
        user: user.to_owned(),
        number: 0,
        direction,
        sender: sender.to_owned(),
        recipients: vec![to.to_owned()],
        bytes,
        delivery: Delivery::First,
    }
}

fn calendar(method: &str, body: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipflow//hostile//EN\r\nMETHOD:{method}\r\n{body}END:VCALENDAR\r\n"
    )
}

const STAMP: &str = "DTSTAMP:20290101T000000Z";

/// The mail of `attack` number `n`, aimed at what is known so far; `None`
/// when nothing suitable is known yet.
fn make(attack: Attack, n: usize, invites: &[Known], owned: &[Known]) -> Option<Mail> {
    let id = format!("hostile.{}.{n}@evil.example", attack.name());
    let pick = |v: &[Known]| (!v.is_empty()).then(|| v[n % v.len()].clone());
    Some(match attack {
        Attack::SpoofedCancel | Attack::SentByCancel => {
            let k = pick(invites)?;
            let organizer = if attack == Attack::SentByCancel {
                format!(
                    "ORGANIZER;SENT-BY=\"mailto:{ATTACKER}\":mailto:{}",
                    k.organizer
                )
            } else {
                format!("ORGANIZER:mailto:{}", k.organizer)
            };
            let ics = calendar(
                "CANCEL",
                &format!(
                    "BEGIN:VEVENT\r\nUID:{}\r\nSEQUENCE:99\r\n{STAMP}\r\nDTSTART:20270301T090000Z\r\n{organizer}\r\nATTENDEE:mailto:{}\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n",
                    k.uid, k.user
                ),
            );
            mail(&k.user, Direction::Incoming, ATTACKER, &k.user, &id, &ics)
        }
        Attack::OutsiderRequest => {
            let k = pick(invites)?;
            let ics = calendar(
                "REQUEST",
                &format!(
                    "BEGIN:VEVENT\r\nUID:{}\r\nSEQUENCE:99\r\n{STAMP}\r\nDTSTART:20270301T090000Z\r\nDTEND:20270301T100000Z\r\nSUMMARY:Phishing\r\nORGANIZER:mailto:{ATTACKER}\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{}\r\nEND:VEVENT\r\n",
                    k.uid, k.user
                ),
            );
            mail(&k.user, Direction::Incoming, ATTACKER, &k.user, &id, &ics)
        }
        Attack::ForgedReply | Attack::DelegateClaim => {
            // Aimed at a normal organizer: an attendee (or an outsider) speaks
            // for another attendee.
            let k = pick(owned)?;
            let (sender, line) = if attack == Attack::ForgedReply {
                if k.attendees.len() < 2 {
                    return None;
                }
                let (forger, victim) = (&k.attendees[0], &k.attendees[1]);
                (
                    forger.clone(),
                    format!(
                        "ATTENDEE;PARTSTAT=DECLINED;SENT-BY=\"mailto:{forger}\":mailto:{victim}"
                    ),
                )
            } else {
                let victim = k.attendees.first()?;
                (
                    ATTACKER.to_owned(),
                    format!(
                        "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:{victim}\":mailto:{ATTACKER}"
                    ),
                )
            };
            let ics = calendar(
                "REPLY",
                &format!(
                    "BEGIN:VEVENT\r\nUID:{}\r\nSEQUENCE:0\r\n{STAMP}\r\nORGANIZER:mailto:{}\r\n{line}\r\nEND:VEVENT\r\n",
                    k.uid, k.organizer
                ),
            );
            mail(&k.user, Direction::Incoming, &sender, &k.user, &id, &ics)
        }
        Attack::SeriesFlood => {
            let mut body = String::new();
            for s in 0..40 {
                body.push_str(&format!(
                    "BEGIN:VEVENT\r\nUID:flood-{n}-{s}@evil.example\r\nSEQUENCE:0\r\n{STAMP}\r\nDTSTART:20270101T{:02}0000Z\r\nDURATION:PT30M\r\nRRULE:FREQ=HOURLY\r\nORGANIZER:mailto:{ATTACKER}\r\nEND:VEVENT\r\n",
                    s % 24
                ));
            }
            mail(
                ATTACKER,
                Direction::Outgoing,
                ATTACKER,
                "victims@example.org",
                &id,
                &calendar("REQUEST", &body),
            )
        }
        Attack::RruleLines => {
            let mut body = format!(
                "BEGIN:VEVENT\r\nUID:rrules-{n}@evil.example\r\nSEQUENCE:0\r\n{STAMP}\r\nDTSTART:20270101T090000Z\r\nDURATION:PT30M\r\nORGANIZER:mailto:{ATTACKER}\r\n"
            );
            for i in 0..5000 {
                body.push_str(&format!("RRULE:FREQ=MINUTELY;INTERVAL={}\r\n", i % 59 + 1));
            }
            body.push_str("END:VEVENT\r\n");
            mail(
                ATTACKER,
                Direction::Outgoing,
                ATTACKER,
                "victims@example.org",
                &id,
                &calendar("REQUEST", &body),
            )
        }
        Attack::OverrideFlood => {
            let uid = format!("overrides-{n}@evil.example");
            let mut body = format!(
                "BEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:0\r\n{STAMP}\r\nDTSTART:20270101T090000Z\r\nDURATION:PT30M\r\nRRULE:FREQ=DAILY;COUNT=400\r\nSUMMARY:{}\r\nORGANIZER:mailto:{ATTACKER}\r\nEND:VEVENT\r\n",
                "x".repeat(200)
            );
            for d in 0..300 {
                let day = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).expect("constant")
                    + chrono::Duration::days(d);
                let day = day.format("%Y%m%d");
                body.push_str(&format!(
                    "BEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:0\r\n{STAMP}\r\nRECURRENCE-ID:{day}T090000Z\r\nDTSTART:{day}T100000Z\r\nDURATION:PT30M\r\nSUMMARY:moved\r\nORGANIZER:mailto:{ATTACKER}\r\nEND:VEVENT\r\n"
                ));
            }
            mail(
                ATTACKER,
                Direction::Outgoing,
                ATTACKER,
                "victims@example.org",
                &id,
                &calendar("REQUEST", &body),
            )
        }
        Attack::LongUid => {
            let ics = calendar(
                "REQUEST",
                &format!(
                    "BEGIN:VEVENT\r\nUID:{}\r\nSEQUENCE:0\r\n{STAMP}\r\nDTSTART:20270301T090000Z\r\nDURATION:PT1H\r\nORGANIZER:mailto:{ATTACKER}\r\nEND:VEVENT\r\n",
                    "u".repeat(3000)
                ),
            );
            mail(
                ATTACKER,
                Direction::Outgoing,
                ATTACKER,
                "victims@example.org",
                &id,
                &ics,
            )
        }
        Attack::LongEnvelope => {
            let sender = format!("{}@evil.example", "m".repeat(4096));
            let ics = calendar(
                "REQUEST",
                &format!(
                    "BEGIN:VEVENT\r\nUID:long-envelope-{n}@evil.example\r\nSEQUENCE:0\r\n{STAMP}\r\nDTSTART:20270301T090000Z\r\nDURATION:PT1H\r\nORGANIZER:mailto:{sender}\r\nEND:VEVENT\r\n"
                ),
            );
            let mut m = mail(
                &sender,
                Direction::Outgoing,
                &sender,
                "victims@example.org",
                &id,
                &ics,
            );
            m.user = sender;
            m
        }
        Attack::ListCopy => unreachable!("made from the normal mail it copies"),
    })
}

/// `normal` with hostile mails mixed in: after a normal mail, one attack with
/// probability `percent` (cycling through [`Attack::ALL`]), and a mailing
/// list's copy before some of the invitations delivered to normal users.
/// Deterministic for a seed.
pub fn mix(normal: Vec<Mail>, seed: u64, percent: u32) -> Vec<Mixed> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x006e_6173_7479);
    let mut out = Vec::with_capacity(normal.len() * (100 + percent as usize) / 100);
    let mut invites: Vec<Known> = Vec::new();
    let mut owned: Vec<Known> = Vec::new();
    let mut n = 0usize;
    for m in normal {
        let s = seen(&m);
        if let Some(s) = &s {
            let organizer = s.organizer.clone().unwrap_or_default();
            let known = Known {
                user: m.user.clone(),
                uid: s.uid.clone(),
                organizer: organizer.clone(),
                attendees: s.attendees.clone(),
            };
            let first_request = s.method == "REQUEST" && m.delivery == Delivery::First;
            // Once its organizer cancelled the whole event, nothing of it is
            // stored: a REQUEST for its UID from anyone is a new invitation
            // (to the queue), not an attack on a stored one.
            if s.method == "CANCEL" && !s.instance {
                invites.retain(|k| !(k.user == m.user && k.uid == s.uid));
                owned.retain(|k| !(k.user == m.user && k.uid == s.uid));
            }
            if first_request && m.direction == Direction::Incoming {
                if rng.u32(..100) < percent {
                    let mut copy = m.clone();
                    copy.sender = "list-bounces@lists.example".to_owned();
                    out.push(Mixed {
                        mail: copy,
                        attack: Some(Attack::ListCopy),
                    });
                }
                invites.push(known);
            } else if first_request && organizer == m.user && s.attendees.len() >= 2 {
                owned.push(known);
            }
        }
        out.push(Mixed {
            mail: m,
            attack: None,
        });
        if rng.u32(..100) < percent {
            // The next attack that can be made from what is known so far.
            for k in 0..Attack::ALL.len() {
                let attack = Attack::ALL[(n + k) % Attack::ALL.len()];
                if attack == Attack::ListCopy {
                    continue;
                }
                if let Some(mail) = make(attack, n, &invites, &owned) {
                    out.push(Mixed {
                        mail,
                        attack: Some(attack),
                    });
                    break;
                }
            }
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_keeps_every_normal_mail_in_order_and_makes_every_attack() {
        let normal = crate::mails(&crate::Config::new(11, 20, 600));
        let mixed = mix(normal.clone(), 11, 25);
        let kept: Vec<&Mail> = mixed
            .iter()
            .filter(|m| m.attack.is_none())
            .map(|m| &m.mail)
            .collect();
        assert_eq!(kept.len(), normal.len());
        assert!(kept.iter().zip(&normal).all(|(a, b)| a.bytes == b.bytes));
        for a in Attack::ALL {
            assert!(
                mixed.iter().any(|m| m.attack == Some(a)),
                "{} never made",
                a.name()
            );
        }
    }
}
